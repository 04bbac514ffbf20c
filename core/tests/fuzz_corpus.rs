//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through the target bodies on
//! stable, so CI exercises them on every run.

use std::path::PathBuf;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "corpus {} is empty", dir.display());
    for path in entries {
        let data = std::fs::read(&path).expect("corpus file");
        body(&data);
    }
}

#[test]
fn mux_frames_corpus() {
    replay("mux_frames", svcnet_core::fuzzing::mux_frames);
}

#[test]
fn mux_session_input_corpus() {
    replay("mux_session_input", svcnet_core::fuzzing::mux_session_input);
}

#[test]
fn registry_merge_corpus() {
    replay("registry_merge", svcnet_core::fuzzing::registry_merge);
}

/// Writes the seed corpus of `registry_merge` (run with `--ignored` after a format change):
/// a delta with a genuine announcement then a replay of an older one, a digest and a request,
/// and a forged announcement.
#[test]
#[ignore]
fn regenerate_registry_merge_corpus() {
    use svcnet_core::addressing::{RoleName, ServiceName};
    use svcnet_core::fuzzing::{FUZZ_OWN_SEED, FUZZ_PEER_SEED};
    use svcnet_core::identity::NodeKey;
    use svcnet_core::registry::message::{encode_delta, encode_digest, encode_request};
    use svcnet_core::registry::{Announcement, InstanceSpec, Stamp};

    let peer = NodeKey::from_seed(FUZZ_PEER_SEED);
    let own = NodeKey::from_seed(FUZZ_OWN_SEED);
    let ann = |version, healthy| Announcement {
        origin: peer.node_id(),
        stamp: Stamp {
            incarnation: 1,
            version,
        },
        lease_ms: 30_000,
        instances: vec![InstanceSpec {
            service: ServiceName::parse("couch").unwrap(),
            role: RoleName::parse("couchdb").unwrap(),
            version: semver::Version::parse("3.2.2").unwrap(),
            healthy,
            port: Some(5984),
        }],
    };
    let framed = |messages: &[Vec<u8>]| {
        let mut out = Vec::new();
        for m in messages {
            out.extend_from_slice(&(m.len() as u16).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    };
    let v2 = ann(2, true).sign(&peer);
    let v1 = ann(1, false).sign(&peer);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/registry_merge");
    std::fs::create_dir_all(&dir).unwrap();
    let files = [
        (
            "delta-then-replay",
            framed(&[
                encode_delta(&[(30_000, &v2)]),
                encode_delta(&[(30_000, &v1)]),
            ]),
        ),
        (
            "digest-and-request",
            framed(&[
                encode_digest(
                    &[0; 32],
                    &[0xff; 32],
                    &[(peer.node_id(), ann(9, true).stamp)],
                ),
                encode_request(&[own.node_id().to_bytes(), peer.node_id().to_bytes()]),
            ]),
        ),
        (
            "forged",
            framed(&[encode_delta(&[(30_000, &ann(3, true).sign(&own))])]),
        ),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
