//! Bodies of the fuzz targets in `fuzz/`, as plain functions.
//!
//! cargo-fuzz calls them with coverage-guided input on nightly; `core/tests/fuzz_corpus.rs` runs
//! them over the committed corpora on stable, so every CI run replays every corpus. Each body
//! checks properties, not just absence of panics: a decoded frame re-encodes to the same bytes,
//! and a session fed arbitrary bytes never buffers beyond its limits.

use bytes::{Bytes, BytesMut};

use crate::mux::{Config, Role, Session};
use crate::time::Instant;
use crate::wire::mux as wire;

/// Decodes frames from `data` until the first error or incomplete frame; every frame decoded
/// must re-encode to exactly the bytes it came from.
pub fn mux_frames(data: &[u8]) {
    let mut buf = Bytes::copy_from_slice(data);
    while let Ok(Some((frame, used))) = wire::decode_one(&buf) {
        let mut again = BytesMut::new();
        wire::encode(&frame, &mut again);
        assert_eq!(
            &again[..],
            &buf[..used],
            "frame {frame:?} re-encodes differently"
        );
        let _ = buf.split_to(used);
    }
}

/// Feeds `data` (after a valid preface) to a fresh server session in pieces whose sizes come
/// from the first byte, then drains it; the session must never panic, never buffer more than its
/// windows allow, and either stay open or close with a GOAWAY it can transmit.
pub fn mux_session_input(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(split).max(1);
    let cfg = Config {
        max_incoming_streams: 8,
        ..Config::default()
    };
    // Unread bytes are bounded by the stream windows: the initial window per stream plus the
    // auto-tuning budget (docs/protocol.md §3.6.2).
    let limit = u64::from(cfg.max_incoming_streams) * u64::from(crate::mux::INITIAL_STREAM_WINDOW)
        + cfg.receive_budget;
    let mut now = Instant::ZERO;
    let mut s = Session::new(Role::Server, cfg, now);
    s.handle_input(Bytes::copy_from_slice(&wire::preface()), now);
    let mut out = Vec::new();
    for chunk in rest.chunks(piece) {
        now += std::time::Duration::from_millis(1);
        s.handle_input(Bytes::copy_from_slice(chunk), now);
        out.clear();
        s.poll_transmit(now, &mut out, usize::MAX);
        while let Some(ev) = s.poll_event() {
            // Read whatever became readable, as an application would.
            if let crate::mux::Event::Readable(id) = ev {
                let mut sink = [0u8; 4096];
                while let Ok(n) = s.read(id, &mut sink) {
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        assert!(s.stats().buffered_recv_bytes <= limit);
        s.handle_timeout(now);
    }
}

/// Feeds `data` to a registry as a sequence of registry messages (`len u16 | bytes`, repeated)
/// from an authorized peer, with the clock advancing and timers running between them. The
/// registry must never panic, and whatever it stores must respect its limits and come from an
/// authorized origin (`registry_merge` target; the corpus holds genuinely signed announcements
/// so that the fuzzer starts from accepted input).
pub fn registry_merge(data: &[u8]) {
    let _ = registry_merge_run(data);
}

/// [`registry_merge`]'s body, returning the registry so that tests can check what the corpus
/// reaches.
pub fn registry_merge_run(data: &[u8]) -> crate::registry::Registry {
    use crate::identity::NodeKey;
    use crate::registry::{Registry, RegistryConfig};

    let config = RegistryConfig {
        max_origins: 4,
        max_instances_per_origin: 8,
        max_announcement_bytes: 2048,
        max_message_bytes: 8192,
        ..RegistryConfig::default()
    };
    let (max_origins, max_instances) = (config.max_origins, config.max_instances_per_origin);
    let own = NodeKey::from_seed(FUZZ_OWN_SEED);
    let peer = NodeKey::from_seed(FUZZ_PEER_SEED).node_id();
    let mut now = Instant::from_millis(1_000);
    let mut r = Registry::new(own, 1, config, now);
    r.authorize(peer);
    r.peer_connected(peer, now);
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let take = len.min(rest.len() - 2);
        let message = &rest[2..2 + take];
        rest = &rest[2 + take..];
        let _ = r.handle_message(peer, message, now);
        now += std::time::Duration::from_millis(
            u64::from(message.first().copied().unwrap_or(0)) * 100,
        );
        r.handle_timeout(now);
        while r.poll_transmit().is_some() {}
        while r.poll_event().is_some() {}
        let origins = r.origins();
        assert!(origins.len() <= max_origins);
        assert!(origins.iter().all(|o| *o == peer || *o == r.node_id()));
        assert!(r.instances().len() <= max_origins * max_instances);
    }
    r
}

/// Key seed of the registry under test in [`registry_merge`].
pub const FUZZ_OWN_SEED: [u8; 32] = [1; 32];
/// Key seed of its authorized peer (the corpus signs with it).
pub const FUZZ_PEER_SEED: [u8; 32] = [2; 32];
