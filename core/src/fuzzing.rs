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

/// The stream header and dial reply decoders: whatever decodes must survive a round trip
/// (encode, decode again, same value), the two-step decode (prefix, then body) must agree with
/// the one-shot decode, and the consumed length never exceeds the input. The first byte picks
/// which decoder sees the rest.
pub fn stream_header(data: &[u8]) {
    use crate::wire::stream::{DialReply, StreamHeader, HEADER_PREFIX_LEN, REPLY_PREFIX_LEN};
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        if let Ok(Some((header, used))) = StreamHeader::decode(rest) {
            assert!(used <= rest.len());
            let again = header.encode();
            let (back, n) = StreamHeader::decode(&again)
                .expect("re-encoded header decodes")
                .expect("re-encoded header is complete");
            assert_eq!(back, header, "header round trip");
            assert_eq!(n, again.len());
            // Two-step decode as the daemon does it.
            let prefix: [u8; HEADER_PREFIX_LEN] =
                rest[..HEADER_PREFIX_LEN].try_into().expect("prefix");
            let (kind, len) =
                StreamHeader::decode_prefix(&prefix).expect("prefix of a decoded header");
            assert_eq!(HEADER_PREFIX_LEN + len, used);
            let body =
                StreamHeader::decode_body(kind, &rest[HEADER_PREFIX_LEN..used]).expect("body");
            assert_eq!(body, header);
        }
    } else if let Ok(Some((reply, used))) = DialReply::decode(rest) {
        assert!(used <= rest.len());
        let again = reply.encode();
        let (back, n) = DialReply::decode(&again)
            .expect("re-encoded reply decodes")
            .expect("re-encoded reply is complete");
        assert_eq!(back, reply, "reply round trip");
        assert_eq!(n, again.len());
        let prefix: [u8; REPLY_PREFIX_LEN] = rest[..REPLY_PREFIX_LEN].try_into().expect("prefix");
        let (status, len) = DialReply::decode_prefix(&prefix).expect("prefix of a decoded reply");
        assert_eq!(REPLY_PREFIX_LEN + len, used);
        let again = DialReply::from_parts(status, &rest[REPLY_PREFIX_LEN..used]).expect("parts");
        assert_eq!(again, reply);
    }
}

/// Control-stream frames, decoded one after another as the daemon reads them: every decoded
/// message re-encodes to a frame that decodes to the same message.
pub fn control_messages(data: &[u8]) {
    use crate::wire::control::ControlMessage;
    let mut rest = data;
    while let Ok(Some((message, used))) = ControlMessage::decode(rest) {
        assert!(used > 0 && used <= rest.len());
        let again = message.encode();
        let (back, n) = ControlMessage::decode(&again)
            .expect("re-encoded message decodes")
            .expect("re-encoded message is complete");
        assert_eq!(back, message, "control message round trip");
        assert_eq!(n, again.len());
        rest = &rest[used..];
    }
}

/// Name and address parsing: DNS names in a zone (`parse_name`), node ids in text form, node
/// labels, service/role/node names and zones. What parses prints back to text that parses to
/// the same value. The input is split at the first `\n` into a zone and a name.
pub fn names(data: &[u8]) {
    use crate::addressing::{parse_name, NodeLabel, NodeName, RoleName, ServiceName, Zone};
    use crate::identity::NodeId;
    let text = String::from_utf8_lossy(data);
    let (zone_text, name) = text.split_once('\n').unwrap_or(("svcnet", &text));
    let zone = Zone::new(zone_text).unwrap_or_default();
    if let Ok(z) = Zone::new(zone_text) {
        assert_eq!(Zone::new(z.as_str()).expect("zone round trip"), z);
    }
    if let Ok(parsed) = parse_name(&zone, name) {
        let fqdn = parsed.to_fqdn(&zone);
        assert_eq!(
            parse_name(&zone, &fqdn).expect("fqdn parses"),
            parsed,
            "{fqdn}"
        );
    }
    if let Ok(id) = NodeId::parse_text(name) {
        assert_eq!(
            NodeId::parse_text(&id.to_text()).expect("id round trip"),
            id
        );
    }
    if let Ok(label) = NodeLabel::parse(name) {
        assert_eq!(
            NodeLabel::parse(&label.to_string()).expect("label round trip"),
            label
        );
    }
    if let Ok(s) = ServiceName::parse(name) {
        assert_eq!(
            ServiceName::parse(s.as_str()).expect("service round trip"),
            s
        );
    }
    if let Ok(r) = RoleName::parse(name) {
        assert_eq!(RoleName::parse(r.as_str()).expect("role round trip"), r);
    }
    if let Ok(n) = NodeName::parse(name) {
        assert_eq!(
            NodeName::parse(n.as_str()).expect("node name round trip"),
            n
        );
    }
}

/// Mux operation sequences against a model. Two sessions joined by the in-memory harness
/// ([`crate::mux::testing::Pair`]) run operations decoded from `data` — open, write, read,
/// finish, reset on either side, deliver, advance time — while a model keeps, per stream and
/// direction, the bytes written and the bytes read. Properties: what a side reads is always a
/// prefix of what the other side wrote; end of stream is seen only after the writer finished,
/// and then with every byte; a reset stream never yields more data.
pub fn mux_ops(data: &[u8]) {
    use crate::mux::testing::{Pair, Side};
    use crate::mux::{Event, StreamError, StreamId};
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Model {
        /// Per side (0 client, 1 server): written bytes, read bytes, finished, read EOF, and
        /// whether this side knows the stream (the opener at once, the peer after `Opened`).
        sent: [Vec<u8>; 2],
        read: [Vec<u8>; 2],
        finished: [bool; 2],
        eof: [bool; 2],
        known: [bool; 2],
        /// Whether each side has seen the stream reset (its own reset, or the peer's event).
        reset: [bool; 2],
    }
    let side_of = |b: u8| {
        if b & 1 == 0 {
            Side::Client
        } else {
            Side::Server
        }
    };
    let ix = |s: Side| usize::from(s == Side::Server);
    let mut pair = Pair::new(u64::from(data.first().copied().unwrap_or(0)));
    let mut streams: BTreeMap<StreamId, Model> = BTreeMap::new();
    let mut bytes = data.iter().copied();
    let mut buf = vec![0u8; 8192];
    while let (Some(op), Some(arg)) = (bytes.next(), bytes.next()) {
        let side = side_of(arg);
        let s = ix(side);
        let pick = |streams: &BTreeMap<StreamId, Model>| {
            let ids: Vec<StreamId> = streams.keys().copied().collect();
            (!ids.is_empty()).then(|| ids[usize::from(arg >> 1) % ids.len()])
        };
        match op % 8 {
            0 => {
                let now = pair.now;
                if let Ok(id) = pair.session(side).open(now) {
                    let m = streams.entry(id).or_default();
                    m.known[s] = true;
                }
            }
            1 | 2 => {
                let Some(id) = pick(&streams) else { continue };
                let m = streams.get_mut(&id).expect("stream");
                if !m.known[s] || m.finished[s] || m.reset[s] {
                    continue;
                }
                let len = usize::from(arg) * 61 % 20_000;
                let start = m.sent[s].len();
                let chunk: Vec<u8> = (start..start + len)
                    .map(|i| (i * 7 + id as usize) as u8)
                    .collect();
                if let Ok(n) = pair.session(side).write(id, &chunk) {
                    m.sent[s].extend_from_slice(&chunk[..n]);
                }
            }
            3 => {
                let Some(id) = pick(&streams) else { continue };
                let m = streams.get_mut(&id).expect("stream");
                if !m.known[s] || m.eof[s] {
                    continue;
                }
                let result = pair.session(side).read(id, &mut buf);
                if m.reset[s] {
                    assert!(
                        !matches!(result, Ok(n) if n > 0),
                        "stream {id}: data read after the reset"
                    );
                    continue;
                }
                match result {
                    Ok(0) => {
                        assert!(
                            m.finished[1 - s],
                            "stream {id}: EOF before the writer finished"
                        );
                        assert_eq!(
                            m.read[s],
                            m.sent[1 - s],
                            "stream {id}: EOF with bytes missing"
                        );
                        m.eof[s] = true;
                    }
                    Ok(n) => {
                        m.read[s].extend_from_slice(&buf[..n]);
                        assert!(
                            m.sent[1 - s].starts_with(&m.read[s]),
                            "stream {id}: read bytes that were not written"
                        );
                    }
                    Err(StreamError::Blocked) => {}
                    Err(_) => {}
                }
            }
            4 => {
                let Some(id) = pick(&streams) else { continue };
                let m = streams.get_mut(&id).expect("stream");
                if m.known[s]
                    && !m.finished[s]
                    && !m.reset[s]
                    && pair.session(side).finish(id).is_ok()
                {
                    m.finished[s] = true;
                }
            }
            5 => {
                let Some(id) = pick(&streams) else { continue };
                let m = streams.get_mut(&id).expect("stream");
                if m.known[s]
                    && !m.reset[s]
                    && arg & 0x40 != 0
                    && pair.session(side).reset(id, 1).is_ok()
                {
                    m.reset[s] = true;
                }
            }
            6 => pair.run_until_idle(),
            _ => pair.advance(std::time::Duration::from_millis(u64::from(arg) * 10)),
        }
        // Events: the peer learns of streams, resets end them.
        pair.step();
        for side in [Side::Client, Side::Server] {
            let s = ix(side);
            for ev in std::mem::take(pair.events(side)) {
                match ev {
                    Event::Opened(id) => streams.entry(id).or_default().known[s] = true,
                    Event::Reset { stream, .. } => {
                        if let Some(m) = streams.get_mut(&stream) {
                            m.reset[s] = true;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
