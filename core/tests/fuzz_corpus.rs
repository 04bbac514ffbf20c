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
fn netstack_ingress_corpus() {
    replay("netstack_ingress", svcnet_core::fuzzing::netstack_ingress);
}

/// Regenerates the netstack seed corpus: `cargo test -p svcnet-core --test fuzz_corpus -- --ignored`.
#[test]
#[ignore]
fn write_netstack_ingress_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/netstack_ingress");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for (name, data) in svcnet_core::fuzzing::netstack_ingress_seeds() {
        std::fs::write(dir.join(name), data).expect("write seed");
    }
}

#[test]
fn netstack_ingress_seeds_reach_established_and_refused() {
    // The exchange seeds really complete a handshake (so the fuzzer starts from deep states).
    let seeds = svcnet_core::fuzzing::netstack_ingress_seeds();
    assert_eq!(seeds.len(), 15);
    for (name, data) in seeds {
        let run = svcnet_core::fuzzing::netstack_ingress_run(&data);
        if name.ends_with("_exchange") || name.ends_with("_reset") {
            assert_eq!(run.established, 1, "{name}: {run:?}");
        }
        if name.ends_with("_silent") || name == "garbage" {
            assert_eq!(run.sent, 0, "{name}: {run:?}");
        } else {
            assert!(run.sent > 0, "{name}: {run:?}");
        }
    }
}

#[test]
fn registry_merge_corpus() {
    replay("registry_merge", svcnet_core::fuzzing::registry_merge);
}

/// The seed corpus reaches the accepting paths: genuine announcements are stored (by delta
/// and by SWIM broadcast), forged ones are not.
#[test]
fn registry_merge_corpus_reaches_acceptance() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/registry_merge");
    let run = |name: &str| {
        let data = std::fs::read(dir.join(name)).expect("corpus file");
        svcnet_core::fuzzing::registry_merge_run(&data)
    };
    for name in ["delta-then-replay", "swim"] {
        let r = run(name);
        assert_eq!(r.instances().len(), 1, "{name}");
        assert!(
            r.instances()[0].healthy,
            "{name}: the replay of v1 must not win"
        );
    }
    let r = run("forged");
    assert!(r.instances().is_empty());
    assert_eq!(r.stats().rejected.forged, 1);
}

/// SWIM packets from the fuzz peer to the fuzz registry: an announce, a ping carrying
/// membership updates, and a broadcast carrying a signed announcement.
fn swim_messages(
    peer: &svcnet_core::identity::NodeKey,
    own: &svcnet_core::identity::NodeKey,
    announcement: &[u8],
) -> Vec<Vec<u8>> {
    use svcnet_core::registry::foca::{Codec, Header, Member, Message, State};
    use svcnet_core::registry::membership::{SwimCodec, SwimId};
    use svcnet_core::registry::message::encode_swim;

    let src = SwimId {
        node: peer.node_id(),
        generation: 1,
    };
    let dst = SwimId {
        node: own.node_id(),
        generation: 1,
    };
    let mut codec = SwimCodec::default();
    let packet = |codec: &mut SwimCodec, message| {
        let mut out = Vec::new();
        codec
            .encode_header(
                &Header {
                    src,
                    src_incarnation: 0,
                    dst,
                    message,
                },
                &mut out,
            )
            .unwrap();
        out
    };
    let announce = packet(&mut codec, Message::Announce);
    let mut ping = packet(&mut codec, Message::Ping(1));
    ping.extend_from_slice(&2u16.to_be_bytes());
    codec
        .encode_member(&Member::new(src, 0, State::Alive), &mut ping)
        .unwrap();
    codec
        .encode_member(&Member::new(dst, 0, State::Suspect), &mut ping)
        .unwrap();
    let mut broadcast = packet(&mut codec, Message::Broadcast);
    broadcast.extend_from_slice(&(announcement.len() as u16).to_be_bytes());
    broadcast.extend_from_slice(announcement);
    [announce, ping, broadcast]
        .iter()
        .map(|p| encode_swim(p))
        .collect()
}

/// Writes the seed corpus of `registry_merge` (run with `--ignored` after a format change):
/// a delta with a genuine announcement then a replay of an older one, a digest and a request,
/// a forged announcement, and SWIM packets (announce, ping with updates, broadcast).
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
        ("swim", framed(&swim_messages(&peer, &own, &v2))),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn stream_header_corpus() {
    replay("stream_header", svcnet_core::fuzzing::stream_header);
}

#[test]
fn control_messages_corpus() {
    replay("control_messages", svcnet_core::fuzzing::control_messages);
}

#[test]
fn names_corpus() {
    replay("names", svcnet_core::fuzzing::names);
}

#[test]
fn mux_ops_corpus() {
    replay("mux_ops", svcnet_core::fuzzing::mux_ops);
}

#[test]
fn dns_handler_corpus() {
    replay("dns_handler", svcnet_core::fuzzing::dns_handler);
}
