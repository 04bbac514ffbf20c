//! Behaviour of the multiplexer session, driven through the paired harness with a simulated clock.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use svcnet_core::mux::testing::{Pair, Side};
use svcnet_core::mux::{
    reset_code, Config, ErrorCode, Event, OpenError, Role, Session, StreamError,
    INITIAL_STREAM_WINDOW,
};
use svcnet_core::time::Instant;
use svcnet_core::wire::mux::{self as wire, Frame};

/// Reads everything readable on `id` into `into`; returns true at end of stream.
fn drain(s: &mut Session, id: u32, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 65536];
    loop {
        match s.read(id, &mut buf) {
            Ok(0) => return true,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(StreamError::Blocked) => return false,
            Err(e) => panic!("read on stream {id}: {e}"),
        }
    }
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// Writes all of `data` on `id`, running the pair whenever the stream is blocked, while the
/// other side reads into `sink`.
fn transfer(p: &mut Pair, from: Side, id: u32, data: &[u8], sink: &mut Vec<u8>) {
    let mut off = 0;
    while off < data.len() {
        match p.session(from).write(id, &data[off..]) {
            Ok(n) => off += n,
            Err(StreamError::Blocked) => {}
            Err(e) => panic!("write: {e}"),
        }
        p.run_until_idle();
        drain(p.session(from.other()), id, sink);
    }
}

/// The server reads "request" on `id` and answers "response"; both sides finish and read to the
/// end, and the pair runs until idle.
fn answer_request(p: &mut Pair, id: u32) {
    let mut got = Vec::new();
    drain(&mut p.server, id, &mut got);
    assert_eq!(got, b"request");
    p.server.write(id, b"response").unwrap();
    p.server.finish(id).unwrap();
    p.client.finish(id).unwrap();
    p.run_until_idle();
    let mut resp = Vec::new();
    assert!(drain(&mut p.client, id, &mut resp));
    assert!(drain(&mut p.server, id, &mut got));
    assert_eq!(resp, b"response");
    p.run_until_idle();
}

fn opened(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Opened(id) => Some(*id),
            _ => None,
        })
        .collect()
}

fn closed(events: &[Event]) -> Option<(ErrorCode, bool)> {
    events.iter().find_map(|e| match e {
        Event::Closed { code, remote } => Some((*code, *remote)),
        _ => None,
    })
}

#[test]
fn zero_rtt_open_carries_data_and_fin_in_one_frame() {
    let now = Instant::ZERO;
    let mut c = Session::new(Role::Client, Config::default(), now);
    let id = c.open(now).unwrap();
    assert_eq!(c.write(id, b"hello").unwrap(), 5);
    c.finish(id).unwrap();
    let mut out = Vec::new();
    c.poll_transmit(now, &mut out, usize::MAX);
    let mut all = BytesMut::new();
    for b in &out {
        all.extend_from_slice(b);
    }
    let mut all = all.freeze();
    assert_eq!(&all[..wire::PREFACE_LEN], &wire::preface());
    let _ = all.split_to(wire::PREFACE_LEN);
    let mut data_frames = Vec::new();
    while let Some((f, n)) = wire::decode_one(&all).unwrap() {
        let _ = all.split_to(n);
        if let Frame::Data { .. } = f {
            data_frames.push(f);
        }
    }
    assert_eq!(
        data_frames,
        vec![Frame::Data {
            stream: 1,
            syn: true,
            fin: true,
            payload: Bytes::from_static(b"hello"),
        }]
    );
}

#[test]
fn bytes_flow_both_ways_with_half_close() {
    let mut p = Pair::new(1);
    let id = p.client.open(p.now).unwrap();
    let up = pattern(300_000, 1);
    let mut got_up = Vec::new();
    transfer(&mut p, Side::Client, id, &up, &mut got_up);
    p.client.finish(id).unwrap();
    p.run_until_idle();
    assert!(drain(&mut p.server, id, &mut got_up), "server sees FIN");
    assert_eq!(got_up, up);
    assert_eq!(opened(&p.server_events), vec![id]);
    // The other direction still works after the client's half-close.
    let down = pattern(500_000, 2);
    let mut got_down = Vec::new();
    transfer(&mut p, Side::Server, id, &down, &mut got_down);
    p.server.finish(id).unwrap();
    p.run_until_idle();
    assert!(drain(&mut p.client, id, &mut got_down));
    assert_eq!(got_down, down);
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.server.stream_count(), 0);
    assert_eq!(closed(&p.client_events), None);
}

#[test]
fn reset_reaches_the_peer_with_its_code_and_frees_state() {
    let mut p = Pair::new(2);
    let id = p.client.open(p.now).unwrap();
    p.client.write(id, b"abc").unwrap();
    p.run_until_idle();
    p.server.reset(id, 77).unwrap();
    assert_eq!(p.server.stream_count(), 0);
    p.run_until_idle();
    assert!(p.client_events.contains(&Event::Reset {
        stream: id,
        code: 77
    }));
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.client.write(id, b"x"), Err(StreamError::UnknownStream));
}

#[test]
fn stream_over_the_limit_is_refused_and_the_session_lives() {
    let server_cfg = Config {
        max_incoming_streams: 2,
        ..Config::default()
    };
    let mut p = Pair::with(Config::default(), server_cfg, 3, Duration::from_millis(1));
    let ids: Vec<u32> = (0..3).map(|_| p.client.open(p.now).unwrap()).collect();
    for &id in &ids {
        p.client.write(id, b"ping").unwrap();
    }
    p.run_until_idle();
    assert_eq!(opened(&p.server_events), ids[..2].to_vec());
    assert!(p.client_events.contains(&Event::Reset {
        stream: ids[2],
        code: reset_code::REFUSED
    }));
    assert_eq!(p.server.stats().streams_refused, 1);
    // Once a stream ends, a new one is accepted.
    p.client.reset(ids[0], reset_code::CANCEL).unwrap();
    p.run_until_idle();
    let again = p.client.open(p.now).unwrap();
    p.client.write(again, b"x").unwrap();
    p.run_until_idle();
    assert_eq!(opened(&p.server_events).last(), Some(&again));
    assert_eq!(closed(&p.client_events), None);
    assert_eq!(closed(&p.server_events), None);
}

#[test]
fn open_waits_for_stream_credit() {
    let mut p = Pair::new(4);
    for _ in 0..svcnet_core::mux::INITIAL_MAX_STREAMS {
        p.client.open(p.now).unwrap();
    }
    // Before the server's MAX_STREAMS arrives, the initial credit is all there is.
    assert_eq!(p.client.open(p.now), Err(OpenError::Limit));
    p.run_until_idle();
    assert!(p.client_events.contains(&Event::OpenAvailable));
    assert!(p.client.open(p.now).is_ok());
}

#[test]
fn keepalive_measures_rtt_and_keeps_an_idle_session_up() {
    let mut p = Pair::with(
        Config::default(),
        Config::default(),
        5,
        Duration::from_millis(20),
    );
    p.advance(Duration::from_secs(120));
    assert_eq!(closed(&p.client_events), None);
    assert_eq!(closed(&p.server_events), None);
    let rtt = p.client.rtt().expect("rtt measured");
    assert_eq!(rtt, Duration::from_millis(40));
}

#[test]
fn dead_link_is_detected_by_timers_alone() {
    let mut p = Pair::with(
        Config::default(),
        Config::default(),
        6,
        Duration::from_millis(5),
    );
    let id = p.client.open(p.now).unwrap();
    p.client.write(id, b"x").unwrap();
    p.run_until_idle();
    p.cut();
    let cut_at = p.now;
    p.advance(Duration::from_secs(29));
    assert_eq!(closed(&p.client_events), None, "not before the timeout");
    p.advance(Duration::from_secs(2));
    assert_eq!(
        closed(&p.client_events),
        Some((ErrorCode::KeepaliveTimeout, false))
    );
    assert_eq!(
        closed(&p.server_events),
        Some((ErrorCode::KeepaliveTimeout, false))
    );
    assert!(p.now >= cut_at + Duration::from_secs(30));
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.client.poll_timeout(), None);
}

#[test]
fn stream_window_grows_toward_the_bandwidth_delay_product() {
    let mut p = Pair::with(
        Config::default(),
        Config::default(),
        7,
        Duration::from_millis(10),
    );
    p.advance(Duration::from_millis(100)); // RTT sample
    let id = p.client.open(p.now).unwrap();
    let data = pattern(16 << 20, 3);
    let mut got = Vec::new();
    transfer(&mut p, Side::Client, id, &data, &mut got);
    p.client.finish(id).unwrap();
    p.run_until_idle();
    drain(&mut p.server, id, &mut got);
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    let window = p
        .server
        .stream_recv_window(id)
        .expect("server still has the stream");
    assert!(
        window >= 4 * INITIAL_STREAM_WINDOW,
        "window grew from {INITIAL_STREAM_WINDOW} to only {window}"
    );
    assert!(window <= Config::default().max_stream_window);
}

#[test]
fn window_does_not_grow_for_a_slow_reader() {
    let mut p = Pair::with(
        Config::default(),
        Config::default(),
        8,
        Duration::from_millis(10),
    );
    p.advance(Duration::from_millis(100));
    let id = p.client.open(p.now).unwrap();
    let data = pattern(4 << 20, 4);
    let mut off = 0;
    let mut got = Vec::new();
    while off < data.len() {
        if let Ok(n) = p.client.write(id, &data[off..]) {
            off += n;
        }
        p.run_until_idle();
        // The reader takes a second per window's worth.
        p.advance(Duration::from_secs(1));
        drain(&mut p.server, id, &mut got);
    }
    assert_eq!(
        p.server.stream_recv_window(id),
        Some(INITIAL_STREAM_WINDOW),
        "no growth without a bandwidth-delay reason"
    );
}

#[test]
fn a_stalled_stream_does_not_stall_others() {
    let mut p = Pair::new(9);
    let stalled = p.client.open(p.now).unwrap();
    // Fill the stalled stream's whole window; the server never reads it.
    let big = pattern(INITIAL_STREAM_WINDOW as usize, 5);
    assert_eq!(p.client.write(stalled, &big).unwrap(), big.len());
    assert_eq!(p.client.write(stalled, b"more"), Err(StreamError::Blocked));
    let busy = p.client.open(p.now).unwrap();
    let data = pattern(20 << 20, 6);
    let mut got = Vec::new();
    transfer(&mut p, Side::Client, busy, &data, &mut got);
    assert!(got == data);
    // Control still flows: a PING round trip completes.
    p.advance(Duration::from_secs(11));
    assert!(p.client.rtt().is_some());
    assert_eq!(closed(&p.client_events), None);
}

#[test]
fn go_away_drains_gracefully() {
    let mut p = Pair::new(10);
    let id = p.client.open(p.now).unwrap();
    p.client.write(id, b"request").unwrap();
    p.run_until_idle();
    p.server.go_away();
    p.run_until_idle();
    assert!(p.client_events.contains(&Event::GoAway {
        code: ErrorCode::NoError,
        last_stream: id
    }));
    assert_eq!(p.client.open(p.now), Err(OpenError::GoingAway));
    // The accepted stream completes.
    answer_request(&mut p, id);
    assert_eq!(closed(&p.client_events), Some((ErrorCode::NoError, true)));
    assert_eq!(closed(&p.server_events), Some((ErrorCode::NoError, false)));
}

#[test]
fn go_away_refuses_streams_the_peer_never_accepted() {
    let mut p = Pair::with(
        Config::default(),
        Config::default(),
        11,
        Duration::from_millis(10),
    );
    let accepted = p.client.open(p.now).unwrap();
    p.client.write(accepted, b"a").unwrap();
    p.run_until_idle();
    // The server goes away while the client's next open is in flight.
    let late = p.client.open(p.now).unwrap();
    p.client.write(late, b"b").unwrap();
    p.server.go_away();
    p.run_until_idle();
    assert!(p.client_events.contains(&Event::Reset {
        stream: late,
        code: reset_code::REFUSED
    }));
    assert!(!opened(&p.server_events).contains(&late));
}

#[test]
fn round_robin_interleaves_streams() {
    let now = Instant::ZERO;
    let mut c = Session::new(Role::Client, Config::default(), now);
    let a = c.open(now).unwrap();
    let b = c.open(now).unwrap();
    let data = pattern(200_000, 7);
    c.write(a, &data).unwrap();
    c.write(b, &data).unwrap();
    let mut out = Vec::new();
    c.poll_transmit(now, &mut out, usize::MAX);
    let mut all = BytesMut::new();
    for x in &out {
        all.extend_from_slice(x);
    }
    let mut all = all.freeze();
    let _ = all.split_to(wire::PREFACE_LEN);
    let mut order = Vec::new();
    while let Some((f, n)) = wire::decode_one(&all).unwrap() {
        let _ = all.split_to(n);
        if let Frame::Data {
            stream, payload, ..
        } = f
        {
            assert!(payload.len() <= Config::default().max_frame_size);
            order.push(stream);
        }
    }
    assert!(order.len() >= 20);
    // After both SYN frames, turns alternate until one stream runs out.
    for w in order[..order.len() - 2].windows(2) {
        assert_ne!(w[0], w[1], "order {order:?}");
    }
}

#[test]
fn detach_finishes_and_discards_incoming() {
    let mut p = Pair::new(12);
    let id = p.client.open(p.now).unwrap();
    p.client.write(id, b"last words").unwrap();
    p.client.detach(id);
    p.run_until_idle();
    let mut got = Vec::new();
    assert!(drain(&mut p.server, id, &mut got));
    assert_eq!(got, b"last words");
    // The server may still write; the bytes are discarded with credit returned.
    let junk = pattern(1 << 20, 8);
    let mut off = 0;
    while off < junk.len() {
        off += p.server.write(id, &junk[off..]).unwrap_or(0);
        p.run_until_idle();
    }
    p.server.finish(id).unwrap();
    p.run_until_idle();
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.server.stream_count(), 0);
    assert!(!p
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Reset { .. })));
}

// ---- bad input ---------------------------------------------------------------------------

/// Feeds `input` (after a valid preface) to a fresh server; returns the GOAWAY code it sends
/// and the code it closed with.
fn server_rejects(input: &[u8]) -> (u32, ErrorCode) {
    let now = Instant::ZERO;
    let mut s = Session::new(Role::Server, Config::default(), now);
    let mut all = BytesMut::new();
    all.extend_from_slice(&wire::preface());
    all.extend_from_slice(input);
    s.handle_input(all.freeze(), now);
    let code = s.is_closed().expect("session closed");
    let mut out = Vec::new();
    s.poll_transmit(now, &mut out, usize::MAX);
    let mut bytes = BytesMut::new();
    for b in out {
        bytes.extend_from_slice(&b);
    }
    let mut bytes = bytes.freeze();
    let _ = bytes.split_to(wire::PREFACE_LEN);
    let mut goaway = None;
    while let Some((f, n)) = wire::decode_one(&bytes).unwrap() {
        let _ = bytes.split_to(n);
        if let Frame::GoAway { code, .. } = f {
            goaway = Some(code);
        }
    }
    (goaway.expect("a GOAWAY was sent"), code)
}

fn header(len: usize, kind: u8, fl: u8, stream: u32) -> Vec<u8> {
    let mut b = BytesMut::new();
    wire::put_header(&mut b, len, kind, fl, stream);
    b.to_vec()
}

#[test]
fn oversized_frame_is_a_frame_size_error() {
    let h = header(wire::MAX_DATA_PAYLOAD + 1, wire::frame_type::DATA, 1, 1);
    assert_eq!(
        server_rejects(&h),
        (ErrorCode::FrameSize as u32, ErrorCode::FrameSize)
    );
}

#[test]
fn unknown_frame_type_is_a_protocol_error() {
    let h = header(0, 0x7f, 0, 0);
    assert_eq!(
        server_rejects(&h),
        (ErrorCode::Protocol as u32, ErrorCode::Protocol)
    );
}

#[test]
fn data_beyond_credit_is_a_flow_control_error() {
    let mut input = Vec::new();
    let chunk = vec![0u8; wire::MAX_DATA_PAYLOAD];
    let mut fl = wire::flags::SYN;
    for _ in 0..(INITIAL_STREAM_WINDOW as usize / wire::MAX_DATA_PAYLOAD + 1) {
        input.extend(header(chunk.len(), wire::frame_type::DATA, fl, 1));
        input.extend_from_slice(&chunk);
        fl = 0;
    }
    assert_eq!(
        server_rejects(&input),
        (ErrorCode::FlowControl as u32, ErrorCode::FlowControl)
    );
}

#[test]
fn frame_for_a_never_opened_stream_is_a_stream_id_error() {
    let mut input = header(4, wire::frame_type::WINDOW_UPDATE, 0, 9);
    input.extend_from_slice(&100u32.to_be_bytes());
    assert_eq!(
        server_rejects(&input),
        (ErrorCode::StreamId as u32, ErrorCode::StreamId)
    );
    // A SYN with the server's own parity.
    let input = header(0, wire::frame_type::DATA, wire::flags::SYN, 2);
    assert_eq!(server_rejects(&input).1, ErrorCode::StreamId);
}

#[test]
fn bad_preface_is_a_version_error() {
    let now = Instant::ZERO;
    let mut s = Session::new(Role::Server, Config::default(), now);
    s.handle_input(Bytes::from_static(b"GET / HTTP/1.1\r\n"), now);
    assert_eq!(s.is_closed(), Some(ErrorCode::Version));
    assert!(s.close_message().contains("not an svcnet multiplexer"));
}

#[test]
fn arbitrary_garbage_never_panics_or_allocates_without_bound() {
    let mut rng = svcnet_core::mux::testing::SplitMix64::new(99);
    for _ in 0..2000 {
        let now = Instant::ZERO;
        let mut s = Session::new(Role::Server, Config::default(), now);
        let mut input = wire::preface().to_vec();
        let n = rng.below(200) as usize;
        input.extend((0..n).map(|_| rng.next_u64() as u8));
        s.handle_input(Bytes::from(input), now);
        let mut out = Vec::new();
        s.poll_transmit(now, &mut out, usize::MAX);
        while s.poll_event().is_some() {}
        assert!(s.stats().buffered_recv_bytes <= u64::from(Config::default().connection_window));
    }
}

#[test]
fn dropping_the_pipe_closes_with_transport_error() {
    let mut p = Pair::new(13);
    let id = p.client.open(p.now).unwrap();
    p.client.write(id, b"x").unwrap();
    p.run_until_idle();
    p.server.handle_eof(p.now);
    while let Some(e) = p.server.poll_event() {
        p.server_events.push(e);
    }
    assert_eq!(closed(&p.server_events), Some((ErrorCode::Transport, true)));
    assert_eq!(
        p.server.read(id, &mut [0; 4]),
        Err(StreamError::SessionClosed(ErrorCode::Transport))
    );
}

// ---- stream credit (MAX_STREAMS) ---------------------------------------------------------

/// Opens streams on the client (each with a byte, so the server accepts them) until `open`
/// fails with `Limit` even after the pair ran until idle; returns the streams opened.
fn open_until_limit(p: &mut Pair) -> Vec<u32> {
    let mut ids = Vec::new();
    loop {
        match p.client.open(p.now) {
            Ok(id) => {
                p.client.write(id, b"x").unwrap();
                ids.push(id);
            }
            Err(OpenError::Limit) => {
                p.client_events.clear();
                p.run_until_idle();
                if !p.client_events.contains(&Event::OpenAvailable) {
                    return ids;
                }
            }
            Err(e) => panic!("open: {e}"),
        }
    }
}

fn reset_all(p: &mut Pair, ids: &[u32]) {
    for &id in ids {
        p.client.reset(id, reset_code::CANCEL).unwrap();
    }
    p.run_until_idle();
}

/// The client can hold exactly `max` streams open at once; more wait for one to end.
fn holds_exactly(p: &mut Pair, max: u32) {
    let refused = p.server.stats().streams_refused;
    let mut ids = open_until_limit(p);
    assert_eq!(
        ids.len(),
        max as usize,
        "the client could hold {} streams open, max_incoming_streams is {max}",
        ids.len()
    );
    assert_eq!(p.server.stream_count(), max as usize);
    assert_eq!(p.server.stats().streams_refused, refused, "none refused");
    assert_eq!(p.client.open(p.now), Err(OpenError::Limit));
    // One ends: exactly one more may open.
    let first = ids.remove(0);
    p.client.reset(first, reset_code::CANCEL).unwrap();
    p.client_events.clear();
    p.run_until_idle();
    assert!(p.client_events.contains(&Event::OpenAvailable));
    let again = p
        .client
        .open(p.now)
        .expect("a stream ended: one more may open");
    p.client.write(again, b"x").unwrap();
    ids.push(again);
    assert_eq!(p.client.open(p.now), Err(OpenError::Limit));
    p.run_until_idle();
    assert_eq!(p.server.stream_count(), max as usize);
    assert_eq!(p.client.open(p.now), Err(OpenError::Limit));
    reset_all(p, &ids);
    assert_eq!(p.server.stream_count(), 0);
}

#[test]
fn the_peer_can_always_hold_max_incoming_streams_open() {
    for max in [150u32, 1024] {
        let server_cfg = Config {
            max_incoming_streams: max,
            ..Config::default()
        };
        let mut p = Pair::with(Config::default(), server_cfg, 14, Duration::from_millis(3));
        holds_exactly(&mut p, max);
        // Many short-lived streams, a few at a time.
        let mut done = 0;
        let mut idle_rounds = 0;
        while done < max * 5 / 3 {
            let batch: Vec<u32> = (0..7).filter_map(|_| p.client.open(p.now).ok()).collect();
            if batch.is_empty() {
                idle_rounds += 1;
                assert!(
                    idle_rounds < 10,
                    "no stream credit after {done} short streams"
                );
                p.run_until_idle();
                continue;
            }
            idle_rounds = 0;
            for &id in &batch {
                p.client.write(id, b"y").unwrap();
            }
            p.run_until_idle();
            reset_all(&mut p, &batch);
            done += batch.len() as u32;
        }
        holds_exactly(&mut p, max);
        assert_eq!(p.client.is_closed(), None);
        assert_eq!(p.server.is_closed(), None);
        assert_eq!(p.server.stats().streams_refused, 0);
    }
}

// ---- memory and flow control -------------------------------------------------------------

/// Like `transfer` from the client, but fails if nothing moves for a while instead of hanging.
fn transfer_or_stall(p: &mut Pair, id: u32, data: &[u8], sink: &mut Vec<u8>) {
    let mut off = 0;
    let mut idle = 0;
    while sink.len() < data.len() {
        let before = (off, sink.len());
        match p.client.write(id, &data[off..]) {
            Ok(n) => off += n,
            Err(StreamError::Blocked) => {}
            Err(e) => panic!("write: {e}"),
        }
        p.run_until_idle();
        drain(&mut p.server, id, sink);
        if (off, sink.len()) == before {
            idle += 1;
            assert!(
                idle < 20,
                "stream {id} stalled after {} of {} bytes",
                sink.len(),
                data.len()
            );
        } else {
            idle = 0;
        }
    }
}

/// Writes on `id` until the stream's credit is used up (the server does not read); returns
/// the bytes written.
fn fill_window(p: &mut Pair, id: u32) -> usize {
    let chunk = vec![0x5a; 1 << 20];
    let mut total = 0;
    loop {
        let mut wrote = 0;
        while let Ok(n) = p.client.write(id, &chunk) {
            wrote += n;
        }
        p.run_until_idle();
        total += wrote;
        if wrote == 0 {
            return total;
        }
    }
}

#[test]
fn stalled_readers_with_grown_windows_do_not_stall_other_streams() {
    let mut p = Pair::with(
        Config::default(),
        Config::default(),
        15,
        Duration::from_millis(10),
    );
    // An RTT sample first, so that windows can grow.
    p.advance(Duration::from_millis(100));
    // Four streams whose windows grow to the maximum with a fast reader, then whose reader stops.
    let mut grown = Vec::new();
    for k in 0..4 {
        let id = p.client.open(p.now).unwrap();
        let data = pattern(24 << 20, k);
        let mut got = Vec::new();
        transfer_or_stall(&mut p, id, &data, &mut got);
        assert!(got == data);
        let window = p.server.stream_recv_window(id).unwrap();
        assert_eq!(
            window,
            Config::default().max_stream_window,
            "window of stream {id} grew to the maximum"
        );
        grown.push(id);
    }
    let mut stuck = 0;
    for &id in &grown {
        stuck += fill_window(&mut p, id);
    }
    // Three hundred more streams, each with a full initial window nobody reads.
    let stalled: Vec<u32> = (0..300).map(|_| p.client.open(p.now).unwrap()).collect();
    let block = vec![0xa5; INITIAL_STREAM_WINDOW as usize];
    for &id in &stalled {
        // (Give up after a while, so that a stall shows in the busy transfer below.)
        for _ in 0..20 {
            match p.client.write(id, &block) {
                Ok(n) => {
                    assert_eq!(n, block.len());
                    stuck += n;
                    break;
                }
                Err(StreamError::Blocked) => p.run_until_idle(),
                Err(e) => panic!("write: {e}"),
            }
        }
    }
    p.run_until_idle();
    // Another stream still moves 20 MiB.
    let busy = p.client.open(p.now).unwrap();
    let data = pattern(20 << 20, 9);
    let mut got = Vec::new();
    transfer_or_stall(&mut p, busy, &data, &mut got);
    assert!(got == data);
    let st = p.server.stats();
    let expected = grown.len() * Config::default().max_stream_window as usize
        + stalled.len() * INITIAL_STREAM_WINDOW as usize;
    assert_eq!(stuck, expected, "every stalled stream filled its window");
    assert_eq!(st.buffered_recv_bytes, stuck as u64);
    assert!(
        st.buffered_recv_bytes
            > u64::from(Config::default().connection_window) + u64::from(INITIAL_STREAM_WINDOW),
        "the stalled streams hold {} bytes",
        st.buffered_recv_bytes
    );
    assert!(
        st.buffered_recv_bytes
            <= st.streams as u64 * u64::from(INITIAL_STREAM_WINDOW)
                + Config::default().receive_budget
    );
    // PING round trips still complete: the RTT follows a change of latency.
    let before = p.client.rtt().expect("rtt");
    p.to_server.latency = Duration::from_millis(30);
    p.to_client.latency = Duration::from_millis(30);
    p.advance(Duration::from_secs(60));
    for side in [Side::Client, Side::Server] {
        let rtt = p.session(side).rtt().expect("rtt");
        assert!(
            rtt > before + Duration::from_millis(10),
            "{side:?}: rtt {rtt:?} did not follow the new latency (was {before:?})"
        );
    }
    assert_eq!(closed(&p.client_events), None);
    assert_eq!(closed(&p.server_events), None);
}

#[test]
fn window_growth_stays_within_the_receive_budget() {
    let budget = 4 * u64::from(INITIAL_STREAM_WINDOW);
    let server_cfg = Config {
        receive_budget: budget,
        ..Config::default()
    };
    let mut p = Pair::with(Config::default(), server_cfg, 19, Duration::from_millis(10));
    p.advance(Duration::from_millis(100));
    let growth = |p: &Pair, ids: &[u32]| -> u64 {
        ids.iter()
            .filter_map(|&id| p.server.stream_recv_window(id))
            .map(|w| u64::from(w - INITIAL_STREAM_WINDOW))
            .sum()
    };
    let a = p.client.open(p.now).unwrap();
    let b = p.client.open(p.now).unwrap();
    for (k, &id) in [a, b].iter().enumerate() {
        let data = pattern(8 << 20, k as u8);
        let mut got = Vec::new();
        transfer_or_stall(&mut p, id, &data, &mut got);
        assert!(got == data);
    }
    assert_eq!(growth(&p, &[a, b]), budget, "a used the whole budget");
    assert_eq!(p.server.stream_recv_window(b), Some(INITIAL_STREAM_WINDOW));
    // Removing a stream releases its growth.
    p.client.reset(a, reset_code::CANCEL).unwrap();
    p.run_until_idle();
    let c = p.client.open(p.now).unwrap();
    let data = pattern(8 << 20, 3);
    let mut got = Vec::new();
    transfer_or_stall(&mut p, c, &data, &mut got);
    assert!(p.server.stream_recv_window(c).unwrap() > INITIAL_STREAM_WINDOW);
    assert!(growth(&p, &[b, c]) <= budget);
}

#[test]
fn receive_budget_is_validated() {
    let cfg = Config {
        receive_budget: u64::MAX,
        ..Config::default()
    };
    let err = cfg.validate().unwrap_err();
    assert!(err.starts_with("receive_budget:"), "{err}");
    let cfg = Config {
        receive_budget: 0,
        ..Config::default()
    };
    assert_eq!(cfg.validate(), Ok(()));
}

#[test]
fn blocked_writes_queue_a_stream_once() {
    let now = Instant::ZERO;
    let cfg = Config {
        max_send_buffer: 1000,
        ..Config::default()
    };
    let mut c = Session::new(Role::Client, cfg, now);
    let id = c.open(now).unwrap();
    assert_eq!(c.write(id, &[7; 1000]), Ok(1000));
    for _ in 0..1000 {
        assert_eq!(c.write(id, b"x"), Err(StreamError::Blocked));
    }
    assert_eq!(c.stats().send_waiters, 1);
    let mut out = Vec::new();
    c.poll_transmit(now, &mut out, usize::MAX);
    let mut writable = 0;
    while let Some(e) = c.poll_event() {
        if e == Event::Writable(id) {
            writable += 1;
        }
    }
    assert_eq!(writable, 1);
    assert_eq!(c.stats().send_waiters, 0);
}

// ---- the control queue -------------------------------------------------------------------

#[test]
fn local_resets_never_close_the_session_with_excessive_load() {
    const N: usize = 20_000;
    let server_cfg = Config {
        max_incoming_streams: 32_768,
        ..Config::default()
    };
    let mut p = Pair::with(Config::default(), server_cfg, 16, Duration::ZERO);
    p.run_until_idle(); // the server's MAX_STREAMS arrives
    let ids: Vec<u32> = (0..N).map(|_| p.client.open(p.now).unwrap()).collect();
    p.run_until_idle();
    assert_eq!(opened(&p.server_events).len(), N);
    // Reset all without transmitting in between.
    for &id in &ids {
        p.client.reset(id, 0x1234).unwrap();
    }
    assert_eq!(p.client.is_closed(), None);
    assert!(p.client.stats().control_queue >= N);
    p.run_until_idle();
    let resets = p
        .server_events
        .iter()
        .filter(|e| matches!(e, Event::Reset { code: 0x1234, .. }))
        .count();
    assert_eq!(resets, N);
    assert_eq!(p.server.stream_count(), 0);
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(closed(&p.client_events), None);
    assert_eq!(closed(&p.server_events), None);
}

#[test]
fn refusals_the_peer_causes_still_count_against_the_control_queue() {
    let now = Instant::ZERO;
    let cfg = Config {
        max_incoming_streams: 1,
        max_control_queue: 16,
        ..Config::default()
    };
    let mut s = Session::new(Role::Server, cfg, now);
    let syns: Vec<Frame> = (0..40)
        .map(|i| Frame::Data {
            stream: 2 * i + 1,
            syn: true,
            fin: false,
            payload: Bytes::new(),
        })
        .collect();
    feed(&mut s, true, &syns);
    assert_eq!(s.is_closed(), Some(ErrorCode::ExcessiveLoad));
}

// ---- GOAWAY and close --------------------------------------------------------------------

/// Feeds `frames` (after the preface if `preface`) to `s` as one input.
fn feed(s: &mut Session, preface: bool, frames: &[Frame]) {
    let mut b = BytesMut::new();
    if preface {
        b.extend_from_slice(&wire::preface());
    }
    for f in frames {
        wire::encode(f, &mut b);
    }
    s.handle_input(b.freeze(), Instant::ZERO);
}

/// Transmits everything `s` has queued into the void.
fn transmit(s: &mut Session) {
    let mut out = Vec::new();
    s.poll_transmit(Instant::ZERO, &mut out, usize::MAX);
}

fn goaway(last_stream: u32) -> Frame {
    Frame::GoAway {
        last_stream,
        code: 0,
        message: Bytes::new(),
    }
}

#[test]
fn go_away_refuses_only_live_streams_above_last_stream() {
    let now = Instant::ZERO;
    let mut c = Session::new(Role::Client, Config::default(), now);
    feed(&mut c, true, &[Frame::MaxStreams { count: 1 << 20 }]);
    // 100 000 streams opened and closed, a few kept.
    let mut live = Vec::new();
    for i in 0..100_000u32 {
        let id = c.open(now).unwrap();
        if i % 10_000 == 5_000 {
            live.push(id);
        } else {
            c.reset(id, reset_code::CANCEL).unwrap();
        }
    }
    transmit(&mut c);
    while c.poll_event().is_some() {}
    assert_eq!(c.stream_count(), 10);
    let last = live[4];
    feed(&mut c, false, &[goaway(last)]);
    let mut refused = Vec::new();
    let mut went_away = false;
    while let Some(e) = c.poll_event() {
        match e {
            Event::Reset {
                stream,
                code: reset_code::REFUSED,
            } => refused.push(stream),
            Event::GoAway {
                code: ErrorCode::NoError,
                last_stream,
            } => {
                assert_eq!(last_stream, last);
                went_away = true;
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    assert!(went_away);
    assert_eq!(refused, live[5..].to_vec());
    assert_eq!(c.stream_count(), 5);
    assert_eq!(c.is_closed(), None);
}

#[test]
fn go_away_naming_a_stream_this_side_never_opened_is_a_stream_id_error() {
    for last in [2u32, 4, 3, 1001] {
        let now = Instant::ZERO;
        let mut c = Session::new(Role::Client, Config::default(), now);
        c.open(now).unwrap(); // stream 1
        transmit(&mut c);
        c.open(now).unwrap(); // stream 3: its SYN has not left
        feed(&mut c, true, &[goaway(last)]);
        assert_eq!(
            c.is_closed(),
            Some(ErrorCode::StreamId),
            "last_stream {last}"
        );
    }
    // The ones it did open are fine.
    for last in [0u32, 1] {
        let now = Instant::ZERO;
        let mut c = Session::new(Role::Client, Config::default(), now);
        c.open(now).unwrap();
        transmit(&mut c);
        feed(&mut c, true, &[goaway(last)]);
        let mut events = Vec::new();
        while let Some(e) = c.poll_event() {
            events.push(e);
        }
        assert!(
            events.contains(&Event::GoAway {
                code: ErrorCode::NoError,
                last_stream: last
            }),
            "last_stream {last}: {events:?}"
        );
        assert_ne!(c.is_closed(), Some(ErrorCode::StreamId));
    }
}

#[test]
fn close_without_error_while_streams_are_open_cancels_them() {
    assert_eq!(ErrorCode::from_u32(10), ErrorCode::Cancel);
    assert_eq!(ErrorCode::Cancel.to_string(), "CANCEL");
    let mut p = Pair::new(17);
    let id = p.client.open(p.now).unwrap();
    p.client.write(id, b"request").unwrap();
    p.run_until_idle();
    p.client.close(ErrorCode::NoError, "bye");
    assert_eq!(p.client.is_closed(), Some(ErrorCode::Cancel));
    p.run_until_idle();
    assert_eq!(closed(&p.client_events), Some((ErrorCode::Cancel, false)));
    assert_eq!(closed(&p.server_events), Some((ErrorCode::Cancel, true)));
    assert_eq!(p.server.close_message(), "bye");
    assert_eq!(p.server.stream_count(), 0);
    assert_eq!(
        p.server.read(id, &mut [0; 8]),
        Err(StreamError::SessionClosed(ErrorCode::Cancel))
    );
    // With no stream alive, it is a graceful goodbye on both sides.
    let mut p = Pair::new(18);
    let id = p.client.open(p.now).unwrap();
    p.client.finish(id).unwrap();
    p.run_until_idle();
    p.server.finish(id).unwrap();
    p.run_until_idle();
    assert!(drain(&mut p.server, id, &mut Vec::new()));
    assert!(drain(&mut p.client, id, &mut Vec::new()));
    assert_eq!(p.client.stream_count(), 0);
    p.client.close(ErrorCode::NoError, "done");
    p.run_until_idle();
    assert_eq!(closed(&p.client_events), Some((ErrorCode::NoError, false)));
    assert_eq!(closed(&p.server_events), Some((ErrorCode::NoError, true)));
}

#[test]
fn frames_on_a_stream_whose_syn_has_not_left_are_stream_id_errors() {
    let frames = [
        Frame::Data {
            stream: 3,
            syn: false,
            fin: false,
            payload: Bytes::from_static(b"early"),
        },
        Frame::Data {
            stream: 3,
            syn: false,
            fin: true,
            payload: Bytes::new(),
        },
        Frame::WindowUpdate {
            stream: 3,
            increment: 100,
        },
        Frame::Reset { stream: 3, code: 0 },
    ];
    for f in frames {
        let now = Instant::ZERO;
        let mut c = Session::new(Role::Client, Config::default(), now);
        let sent = c.open(now).unwrap();
        transmit(&mut c);
        let unsent = c.open(now).unwrap();
        assert_eq!((sent, unsent), (1, 3));
        // Frames on the stream whose SYN left are fine.
        feed(
            &mut c,
            true,
            &[Frame::WindowUpdate {
                stream: sent,
                increment: 1,
            }],
        );
        assert_eq!(c.is_closed(), None);
        feed(&mut c, false, std::slice::from_ref(&f));
        assert_eq!(c.is_closed(), Some(ErrorCode::StreamId), "{f:?}");
    }
    // A stream reset before its SYN left was skipped: frames naming it are stale, not errors.
    let now = Instant::ZERO;
    let mut c = Session::new(Role::Client, Config::default(), now);
    let skipped = c.open(now).unwrap();
    c.reset(skipped, reset_code::CANCEL).unwrap();
    c.open(now).unwrap();
    transmit(&mut c);
    feed(
        &mut c,
        true,
        &[Frame::Reset {
            stream: skipped,
            code: 0,
        }],
    );
    assert_eq!(c.is_closed(), None);
}

// ---- ordering of GOAWAY and SYN; graceful end of the pipe ---------------------------------

#[test]
fn go_away_leaves_after_the_syn_of_a_stream_opened_before_it() {
    for warm in [false, true] {
        let mut p = Pair::new(21);
        if warm {
            p.run_until_idle();
        }
        let id = p.client.open(p.now).unwrap();
        p.client.write(id, b"request").unwrap();
        p.client.go_away();
        p.run_until_idle();
        assert_eq!(opened(&p.server_events), vec![id], "warm {warm}");
        assert!(p.server_events.contains(&Event::GoAway {
            code: ErrorCode::NoError,
            last_stream: 0
        }));
        answer_request(&mut p, id);
        assert_eq!(closed(&p.client_events), Some((ErrorCode::NoError, false)));
        assert_eq!(closed(&p.server_events), Some((ErrorCode::NoError, true)));
    }
}

/// The server answers, finishes, goes away and (having no stream left) closes the pipe: the
/// client keeps the complete response readable and closes with NO_ERROR once it has read it.
#[test]
fn a_response_received_in_full_survives_the_peers_graceful_close() {
    let mut p = Pair::new(22);
    let id = p.client.open(p.now).unwrap();
    p.client.write(id, b"request").unwrap();
    p.client.finish(id).unwrap();
    p.run_until_idle();
    let mut got = Vec::new();
    assert!(drain(&mut p.server, id, &mut got));
    assert_eq!(got, b"request");
    p.server.write(id, b"response").unwrap();
    p.server.finish(id).unwrap();
    p.server.go_away();
    p.run_until_idle();
    assert_eq!(closed(&p.server_events), Some((ErrorCode::NoError, false)));
    // The server's driver closes the pipe.
    p.client.handle_eof(p.now);
    while let Some(e) = p.client.poll_event() {
        p.client_events.push(e);
    }
    assert_eq!(closed(&p.client_events), None, "{:?}", p.client_events);
    assert!(!p.client.wants_transmit());
    let mut resp = Vec::new();
    assert!(drain(&mut p.client, id, &mut resp));
    assert_eq!(resp, b"response");
    while let Some(e) = p.client.poll_event() {
        p.client_events.push(e);
    }
    assert_eq!(closed(&p.client_events), Some((ErrorCode::NoError, true)));
    assert_eq!(p.client.stream_count(), 0);
}

/// After the pipe ended, streams whose input is complete stay readable while nothing more can be
/// sent: queued output is dropped, writes fail, timers stop; a stream whose input is incomplete
/// still fails the session.
#[test]
fn after_the_pipe_ends_complete_streams_stay_readable_and_nothing_is_sent() {
    let mut p = Pair::new(23);
    let id = p.client.open(p.now).unwrap();
    p.client.write(id, b"request").unwrap();
    p.run_until_idle();
    p.server.write(id, b"response").unwrap();
    p.server.finish(id).unwrap();
    p.run_until_idle();
    // Output queued on the stream and an unanswered PING are pending when the pipe ends.
    p.client.write(id, b"more").unwrap();
    p.client.handle_timeout(p.now + Duration::from_secs(10));
    assert!(p.client.wants_transmit());
    p.client.handle_eof(p.now);
    assert!(!p.client.wants_transmit());
    let mut out = Vec::new();
    assert_eq!(p.client.poll_transmit(p.now, &mut out, usize::MAX), 0);
    assert!(out.is_empty());
    assert_eq!(p.client.stats().queued_send_bytes, 0);
    assert_eq!(p.client.poll_timeout(), None);
    p.client.handle_timeout(p.now + Duration::from_secs(3600));
    assert_eq!(p.client.write(id, b"x"), Err(StreamError::Finished));
    assert_eq!(p.client.open(p.now), Err(OpenError::GoingAway));
    let mut resp = Vec::new();
    assert!(drain(&mut p.client, id, &mut resp));
    assert_eq!(resp, b"response");
    let mut events = Vec::new();
    while let Some(e) = p.client.poll_event() {
        events.push(e);
    }
    assert_eq!(closed(&events), Some((ErrorCode::NoError, true)));

    // One complete stream and one incomplete: the pipe ending is a transport error.
    let mut p = Pair::new(24);
    let a = p.client.open(p.now).unwrap();
    let b = p.client.open(p.now).unwrap();
    p.client.write(a, b"a").unwrap();
    p.client.write(b, b"b").unwrap();
    p.run_until_idle();
    p.server.write(a, b"done").unwrap();
    p.server.finish(a).unwrap();
    p.server.write(b, b"partial").unwrap();
    p.run_until_idle();
    p.client.handle_eof(p.now);
    assert_eq!(p.client.is_closed(), Some(ErrorCode::Transport));
}
