//! Forged, replayed, oversized and unauthorized input to a registry: refused, counted, and
//! never spread further.

mod registry_net;

use std::time::Duration;

use bytes::BufMut;
use registry_net::{instance, key, req, role};
use svcnet_core::addressing::{RoleName, ServiceName};
use svcnet_core::identity::NodeKey;
use svcnet_core::registry::foca::{Codec, Header, Message};
use svcnet_core::registry::membership::{SwimCodec, SwimId};
use svcnet_core::registry::message::{encode_delta, encode_swim};
use svcnet_core::registry::{
    Announcement, InstanceSpec, LocalError, Registry, RegistryConfig, RegistryError, Stamp,
};
use svcnet_core::time::Instant;

const T0: Instant = Instant::from_millis(1_000);

/// Victim A (node 0) authorizing B (node 1) only; C (node 2) is a stranger.
fn victim(config: RegistryConfig) -> Registry {
    let mut a = Registry::new(key(0), 1, config, T0);
    a.authorize(key(1).node_id());
    a.peer_connected(key(1).node_id(), T0);
    while a.poll_transmit().is_some() {}
    a
}

fn announcement(origin: &NodeKey, version: u64, instances: usize) -> Announcement {
    Announcement {
        origin: origin.node_id(),
        stamp: Stamp {
            incarnation: 1,
            version,
        },
        lease_ms: 30_000,
        instances: (0..instances)
            .map(|i| InstanceSpec {
                service: ServiceName::parse(&format!("svc{i}")).unwrap(),
                role: RoleName::parse("couchdb").unwrap(),
                version: semver::Version::new(3, 2, 2),
                healthy: true,
                port: None,
            })
            .collect(),
    }
}

fn delta(bytes: &[u8]) -> Vec<u8> {
    encode_delta(&[(30_000, bytes)])
}

#[test]
fn forged_announcements_are_refused_and_counted() {
    let mut a = victim(RegistryConfig::default());
    let (b, c) = (key(1), key(2));
    // Claims to be B, signed by C.
    let forged = announcement(&b, 1, 1).sign(&c);
    a.handle_message(b.node_id(), &delta(&forged), T0).unwrap();
    // Validly signed by C, but C is not authorized to announce; relayed by B.
    let stranger = announcement(&c, 1, 1).sign(&c);
    a.handle_message(b.node_id(), &delta(&stranger), T0)
        .unwrap();
    assert_eq!(a.stats().rejected.forged, 2);
    assert!(a.lookup(&role("couchdb"), &req("*")).is_empty());
    // Nothing was forwarded.
    assert!(a.poll_transmit().is_none());
    // The genuine one is accepted.
    let genuine = announcement(&b, 1, 1).sign(&b);
    a.handle_message(b.node_id(), &delta(&genuine), T0).unwrap();
    assert_eq!(a.lookup(&role("couchdb"), &req("*")).len(), 1);
    assert_eq!(a.stats().accepted, 1);
}

#[test]
fn open_membership_accepts_any_validly_signed_origin_but_not_forgeries() {
    let mut a = victim(RegistryConfig {
        open_membership: true,
        ..RegistryConfig::default()
    });
    let (b, c) = (key(1), key(2));
    a.handle_message(b.node_id(), &delta(&announcement(&c, 1, 1).sign(&c)), T0)
        .unwrap();
    a.handle_message(b.node_id(), &delta(&announcement(&b, 1, 1).sign(&c)), T0)
        .unwrap();
    assert_eq!(a.stats().rejected.forged, 1);
    assert_eq!(a.origins(), vec![c.node_id()]);
}

#[test]
fn replayed_announcements_are_refused_even_after_expiry() {
    let mut a = victim(RegistryConfig::default());
    let b = key(1);
    let v1 = announcement(&b, 1, 1).sign(&b);
    let v2 = announcement(&b, 2, 2).sign(&b);
    a.handle_message(b.node_id(), &delta(&v2), T0).unwrap();
    a.handle_message(b.node_id(), &delta(&v1), T0).unwrap();
    assert_eq!(a.stats().rejected.replayed, 1);
    assert_eq!(a.stamp_of(&b.node_id()).unwrap().version, 2);
    assert_eq!(a.lookup(&role("couchdb"), &req("*")).len(), 2);
    // The same version again is a duplicate, not an attack.
    a.handle_message(b.node_id(), &delta(&v2), T0).unwrap();
    assert_eq!(a.stats().rejected.duplicates, 1);
    // The lease runs out; replaying the last version must not bring it back.
    let later = T0 + Duration::from_secs(31);
    a.handle_timeout(later);
    assert!(a.instances().is_empty());
    a.handle_message(b.node_id(), &delta(&v2), later).unwrap();
    a.handle_message(b.node_id(), &delta(&v1), later).unwrap();
    assert!(
        a.instances().is_empty(),
        "an expired origin was resurrected"
    );
    // A genuinely newer one is accepted.
    let v3 = announcement(&b, 3, 1).sign(&b);
    a.handle_message(b.node_id(), &delta(&v3), later).unwrap();
    assert_eq!(a.instances().len(), 1);
}

#[test]
fn oversized_announcements_and_messages_are_refused() {
    let config = RegistryConfig {
        max_announcement_bytes: 512,
        max_instances_per_origin: 8,
        max_message_bytes: 4096,
        ..RegistryConfig::default()
    };
    let mut a = victim(config);
    let b = key(1);
    // 9 instances: over the instance limit (and about 300 bytes, under the byte limit).
    let too_many = announcement(&b, 1, 9).sign(&b);
    assert!(too_many.len() < 512);
    a.handle_message(b.node_id(), &delta(&too_many), T0)
        .unwrap();
    // Few instances but long names: over the byte limit.
    let mut long = announcement(&b, 2, 8);
    for (i, inst) in long.instances.iter_mut().enumerate() {
        inst.service = ServiceName::parse(&format!("{}{i}", "s".repeat(60))).unwrap();
    }
    let long = long.sign(&b);
    assert!(long.len() > 512);
    a.handle_message(b.node_id(), &delta(&long), T0).unwrap();
    assert_eq!(a.stats().rejected.oversized, 2);
    assert!(a.instances().is_empty());
    // A message over the message limit is dropped before decoding.
    let big = vec![3u8; 5000];
    assert!(matches!(
        a.handle_message(b.node_id(), &big, T0),
        Err(RegistryError::Oversized(5000))
    ));
    assert_eq!(a.stats().malformed_messages, 1);
}

#[test]
fn local_instances_respect_the_same_limits() {
    let mut r = Registry::new(
        key(0),
        1,
        RegistryConfig {
            max_instances_per_origin: 2,
            max_announcement_bytes: 200,
            ..RegistryConfig::default()
        },
        T0,
    );
    let three = vec![
        instance("a", "x@1.0.0"),
        instance("b", "x@1.0.0"),
        instance("c", "x@1.0.0"),
    ];
    assert_eq!(
        r.set_local_instances(three, T0),
        Err(LocalError::TooManyInstances(3))
    );
    assert!(matches!(
        r.set_local_instances(vec![instance("a", "x@1.0.0"), instance("a", "x@2.0.0")], T0),
        Err(LocalError::DuplicateService(_))
    ));
    let long = format!("{}@1.0.0", "r".repeat(63));
    assert!(matches!(
        r.set_local_instances(
            vec![instance(&"s".repeat(63), &long), instance("b", &long)],
            T0
        ),
        Err(LocalError::TooLarge(_))
    ));
    assert_eq!(r.own_stamp(), None, "a refused list must not be announced");
    r.set_local_instances(vec![instance("a", "x@1.0.0")], T0)
        .unwrap();
    assert_eq!(r.instances().len(), 1);
}

#[test]
fn strangers_and_impersonators_are_dropped() {
    let mut a = victim(RegistryConfig::default());
    let (b, c) = (key(1), key(2));
    let genuine = announcement(&b, 1, 1).sign(&b);
    assert!(matches!(
        a.handle_message(c.node_id(), &delta(&genuine), T0),
        Err(RegistryError::Unauthorized(_))
    ));
    assert_eq!(a.stats().unauthorized_messages, 1);
    assert!(a.instances().is_empty());
    // A SWIM packet from B whose header claims to come from C.
    let header = Header {
        src: SwimId {
            node: c.node_id(),
            generation: 1,
        },
        src_incarnation: 0,
        dst: SwimId {
            node: key(0).node_id(),
            generation: 1,
        },
        message: Message::Ping(1),
    };
    let mut packet = Vec::new();
    SwimCodec::default()
        .encode_header(&header, &mut packet)
        .unwrap();
    assert!(matches!(
        a.handle_message(b.node_id(), &encode_swim(&packet), T0),
        Err(RegistryError::Swim(_))
    ));
    assert_eq!(a.stats().swim_errors, 1);
}

/// A forged announcement piggybacked on a SWIM packet (foca's custom broadcast) is refused by
/// the broadcast handler before foca could re-disseminate it; a genuine one is stored.
#[test]
fn forged_gossip_is_refused_before_dissemination() {
    let mut a = victim(RegistryConfig::default());
    let (b, c) = (key(1), key(2));
    let swim_broadcast = |item: &[u8]| {
        let header = Header {
            src: SwimId {
                node: b.node_id(),
                generation: 1,
            },
            src_incarnation: 0,
            dst: SwimId {
                node: key(0).node_id(),
                generation: 1,
            },
            message: Message::Broadcast,
        };
        let mut packet = Vec::new();
        SwimCodec::default()
            .encode_header(&header, &mut packet)
            .unwrap();
        packet.put_u16(item.len() as u16);
        packet.extend_from_slice(item);
        encode_swim(&packet)
    };
    let forged = announcement(&b, 1, 1).sign(&c);
    let _ = a.handle_message(b.node_id(), &swim_broadcast(&forged), T0);
    assert_eq!(a.stats().rejected.forged, 1);
    assert!(a.instances().is_empty());
    let genuine = announcement(&b, 1, 1).sign(&b);
    let _ = a.handle_message(b.node_id(), &swim_broadcast(&genuine), T0);
    assert_eq!(a.instances().len(), 1);
    assert_eq!(a.stats().rejected.forged, 1);
}
