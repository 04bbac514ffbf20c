//! Property tests of the registry's decoders and of a registry fed arbitrary bytes.

use proptest::prelude::*;
use svcnet_core::addressing::{RoleName, ServiceName};
use svcnet_core::identity::NodeKey;
use svcnet_core::registry::announce::DecodeLimits;
use svcnet_core::registry::foca::Codec;
use svcnet_core::registry::membership::SwimCodec;
use svcnet_core::registry::{message, Announcement, InstanceSpec, Stamp};

const LIMITS: DecodeLimits = DecodeLimits {
    max_bytes: 16 * 1024,
    max_instances: 64,
};

fn version() -> impl Strategy<Value = semver::Version> {
    (
        0u64..1000,
        0u64..1000,
        0u64..u64::MAX,
        proptest::option::of("[a-z][a-z0-9]{0,6}(\\.[1-9][0-9]{0,3})?"),
    )
        .prop_map(|(major, minor, patch, pre)| {
            let mut v = semver::Version::new(major, minor, patch);
            if let Some(pre) = pre {
                v.pre = semver::Prerelease::new(&pre).unwrap();
            }
            v
        })
}

fn instances() -> impl Strategy<Value = Vec<InstanceSpec>> {
    proptest::collection::btree_map(
        "[a-z][a-z0-9-]{0,20}[a-z0-9]",
        (
            "[a-z][a-z0-9]{0,30}",
            version(),
            any::<bool>(),
            any::<u16>(),
        ),
        0..20,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(service, (role, version, healthy, port))| InstanceSpec {
                service: ServiceName::parse(&service).unwrap(),
                role: RoleName::parse(&role).unwrap(),
                version,
                healthy,
                port: (port != 0).then_some(port),
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn announcements_round_trip(
        seed in any::<[u8; 32]>(),
        incarnation in any::<u64>(),
        version in any::<u64>(),
        lease_ms in 1u32..=svcnet_core::registry::announce::MAX_LEASE_MS,
        instances in instances(),
    ) {
        let key = NodeKey::from_seed(seed);
        let a = Announcement {
            origin: key.node_id(),
            stamp: Stamp { incarnation, version },
            lease_ms,
            instances,
        };
        let bytes = a.sign(&key);
        prop_assert_eq!(Announcement::verify(&bytes, LIMITS).unwrap(), a);
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Announcement::decode_unverified(&bytes, LIMITS);
        let _ = Announcement::verify(&bytes, LIMITS);
        let _ = svcnet_core::registry::announce::peek_stamp(&bytes);
        let _ = message::decode(&bytes);
        let _ = SwimCodec::default().decode_header(&bytes[..]);
        let _ = SwimCodec::default().decode_member(&bytes[..]);
    }

    /// Arbitrary bytes after a valid prefix reach the deeper decoding paths.
    #[test]
    fn decoders_never_panic_past_valid_prefixes(
        kind in 1u8..=4,
        count in any::<u16>(),
        rest in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut m = vec![kind];
        if kind == message::kind::DIGEST {
            m.extend_from_slice(&[0; 64]);
        }
        m.extend_from_slice(&count.to_be_bytes());
        m.extend_from_slice(&rest);
        let _ = message::decode(&m);
        let mut a = vec![1u8];
        a.extend_from_slice(NodeKey::from_seed([3; 32]).node_id().as_bytes());
        a.extend_from_slice(&[0; 20]);
        a.extend_from_slice(&count.to_be_bytes());
        a.extend_from_slice(&rest);
        let _ = Announcement::decode_unverified(&a, LIMITS);
    }

    #[test]
    fn a_registry_fed_arbitrary_messages_keeps_its_invariants(
        data in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        svcnet_core::fuzzing::registry_merge(&data);
    }
}
