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
