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
