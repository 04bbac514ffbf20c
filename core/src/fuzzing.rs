//! Bodies of the fuzz targets in `fuzz/`, as plain functions.
//!
//! cargo-fuzz calls them with coverage-guided input on nightly; `core/tests/fuzz_corpus.rs` runs
//! them over the committed corpora on stable, so every CI run replays every corpus. Each body
//! checks properties, not just absence of panics: a decoded frame re-encodes to the same bytes,
//! and a session fed arbitrary bytes never buffers beyond its limits, and a netstack fed arbitrary
//! packets never exceeds its configured limits or answers for an address it does not serve.

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

/// The netstack's fuzz configuration: small limits so that the fuzzer reaches them.
fn netstack_fuzz_config() -> crate::netstack::Config {
    crate::netstack::Config {
        max_connections: 4,
        max_held_syns: 4,
        rx_buffer: 4096,
        tx_buffer: 4096,
        syn_burst_per_client: 8,
        syn_rate_per_client: 4,
        rate_limit_slots: 16,
        ..crate::netstack::Config::default()
    }
}

/// The addresses the fuzzed netstack serves (IPv4 and IPv6); the seed corpus targets them.
pub const NETSTACK_FUZZ_SERVED: [std::net::IpAddr; 2] = [
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(100, 64, 0, 1)),
    std::net::IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
];

/// Feeds `data` to a netstack as a sequence of IP packets, each prefixed by a 2-byte big-endian
/// length and a 1-byte op: the op's low bits pick what the owner does next (accept, refuse,
/// read, write, shut down, reset the newest connection, advance time). Invariants checked after
/// every step: held SYNs and sockets within their limits, memory within the configured bound,
/// and every packet sent is valid and comes from a served address.
pub fn netstack_ingress(data: &[u8]) {
    netstack_ingress_run(data);
}

/// What one [`netstack_ingress`] run reached, so tests can check that seeds go deep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetstackRun {
    /// `Established` events seen.
    pub established: usize,
    /// `Closed` events seen.
    pub closed: usize,
    /// Packets the netstack sent.
    pub sent: usize,
}

/// [`netstack_ingress`], returning what the run reached.
pub fn netstack_ingress_run(data: &[u8]) -> NetstackRun {
    use crate::netstack::{packet, Event, Netstack, RefuseReason};

    let mut run = NetstackRun::default();

    let cfg = netstack_fuzz_config();
    let bound = cfg.memory_bound();
    let (max_held, max_conns) = (cfg.max_held_syns, cfg.max_connections);
    let mut ns = Netstack::new(cfg);
    for a in NETSTACK_FUZZ_SERVED {
        ns.add_address(a);
    }
    let mut now = Instant::ZERO;
    let mut conns = Vec::new();
    let mut rest = data;
    let mut buf = [0u8; 512];
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let op = rest[2];
        rest = &rest[3..];
        let take = len.min(rest.len());
        let (pkt, tail) = rest.split_at(take);
        rest = tail;
        ns.handle_packet(pkt, now);
        while let Some(ev) = ns.poll_event() {
            match ev {
                Event::ConnectRequested { conn, .. } => conns.push(conn),
                Event::Established { .. } => run.established += 1,
                Event::Closed { .. } => run.closed += 1,
                _ => {}
            }
        }
        if let Some(&conn) = conns.last() {
            match op & 7 {
                0 => {
                    let _ = ns.accept(conn, now);
                }
                1 => {
                    let reason = [
                        RefuseReason::Refused,
                        RefuseReason::HostUnreachable,
                        RefuseReason::Prohibited,
                        RefuseReason::Silent,
                    ][usize::from(op >> 3) % 4];
                    let _ = ns.refuse(conn, reason);
                }
                2 => {
                    let _ = ns.read(conn, &mut buf);
                }
                3 => {
                    let _ = ns.write(conn, &buf[..usize::from(op >> 3) * 16]);
                }
                4 => {
                    let _ = ns.shutdown(conn);
                }
                5 => {
                    let _ = ns.reset(conn, now);
                }
                _ => {}
            }
        }
        now += std::time::Duration::from_millis(u64::from(op >> 4) * 100);
        if ns.poll_timeout().is_some_and(|t| t <= now) {
            ns.handle_timeout(now);
        }
        while let Some(out) = ns.poll_transmit(now) {
            run.sent += 1;
            let src = match out.first().map(|b| b >> 4) {
                Some(4) => out
                    .get(12..16)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(std::net::IpAddr::from),
                Some(6) => out
                    .get(8..24)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .map(std::net::IpAddr::from),
                _ => None,
            };
            assert!(
                src.is_some_and(|s| NETSTACK_FUZZ_SERVED.contains(&s)),
                "packet from an unserved source: {out:?}"
            );
            // TCP replies must parse as valid segments (ICMP errors are checked for source only).
            let proto = if out[0] >> 4 == 4 { out[9] } else { out[6] };
            if proto == 6 {
                assert!(packet::parse(&out).is_ok(), "invalid packet sent: {out:?}");
            }
        }
        let st = ns.stats();
        assert!(st.held <= max_held && st.sockets <= max_conns, "{st:?}");
        assert!(ns.memory_in_use() <= bound);
    }
    run
}

/// Seed inputs for [`netstack_ingress`]: valid SYNs (IPv4, IPv6) with each owner answer, and
/// complete exchanges (handshake, data, FIN) whose sequence numbers match what the fuzz
/// configuration's netstack answers (it is deterministic). Written to
/// `fuzz/corpus/netstack_ingress/` by the ignored test `write_netstack_ingress_seeds`.
pub fn netstack_ingress_seeds() -> Vec<(String, Vec<u8>)> {
    use crate::netstack::packet::{build_segment, parse, syn, SegmentSpec};
    use crate::netstack::smoltcp::wire::TcpControl;
    use crate::netstack::{Event, Netstack};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    fn record(out: &mut Vec<u8>, packet: &[u8], op: u8) {
        out.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        out.push(op);
        out.extend_from_slice(packet);
    }
    let clients = [
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
    ];
    let mut seeds = Vec::new();
    for (family, (client_ip, served)) in ["v4", "v6"]
        .into_iter()
        .zip(clients.into_iter().zip(NETSTACK_FUZZ_SERVED))
    {
        let client = SocketAddr::new(client_ip, 40_000);
        let server = SocketAddr::new(served, 80);
        let syn = syn(client, server, 1000, 1400).expect("same family");
        // Refusals with each reason (op 1, reason in bits 3..).
        for (i, name) in ["rst", "host_unreachable", "prohibited", "silent"]
            .iter()
            .enumerate()
        {
            let mut out = Vec::new();
            record(&mut out, &syn, 1 | ((i as u8) << 3));
            seeds.push((format!("{family}_syn_refuse_{name}"), out));
        }
        // A held SYN left to expire (op 7 with a time step of 1.5 s, ten times).
        let mut out = Vec::new();
        record(&mut out, &syn, 7);
        for _ in 0..10 {
            record(&mut out, &[], 0xf7);
        }
        seeds.push((format!("{family}_syn_expire"), out));
        // Accept, handshake, data, read, write, FIN, shutdown: replayed against a real netstack
        // to learn its ISN.
        let mut ns = Netstack::new(netstack_fuzz_config());
        ns.add_address(served);
        let now = Instant::ZERO;
        ns.handle_packet(&syn, now);
        let Some(Event::ConnectRequested { conn, .. }) = ns.poll_event() else {
            continue;
        };
        let _ = ns.accept(conn, now);
        let Some(synack) = ns.poll_transmit(now).and_then(|p| parse(&p).ok()) else {
            continue;
        };
        let seg = |control, seq: u32, payload: &[u8]| {
            build_segment(&SegmentSpec {
                src: client,
                dst: server,
                control,
                seq,
                ack: Some(synack.seq.wrapping_add(1)),
                window: 65_535,
                mss: None,
                payload,
            })
            .expect("same family")
        };
        let mut out = Vec::new();
        record(&mut out, &syn, 0);
        record(&mut out, &seg(TcpControl::None, 1001, &[]), 2);
        record(
            &mut out,
            &seg(TcpControl::Psh, 1001, b"GET / HTTP/1.0\r\n\r\n"),
            2,
        );
        record(&mut out, &[], 3 | (4 << 3));
        record(&mut out, &seg(TcpControl::Fin, 1019, &[]), 2);
        record(&mut out, &[], 4);
        record(&mut out, &[], 0x17);
        seeds.push((format!("{family}_exchange"), out));
        let mut out = Vec::new();
        record(&mut out, &syn, 0);
        record(&mut out, &seg(TcpControl::None, 1001, &[]), 2);
        record(&mut out, &seg(TcpControl::Rst, 1001, &[]), 2);
        seeds.push((format!("{family}_reset"), out));
    }
    seeds.push(("garbage".into(), b"\x00\x10\x00not an ip packet".to_vec()));
    seeds
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

/// The DNS responder ([`crate::dns::answer`]): arbitrary bytes never panic, and every reply is a
/// well-formed DNS response to the query it answers (same id, QR set). The first byte picks
/// whether names outside the zone are forwarded.
pub fn dns_handler(data: &[u8]) {
    use crate::addressing::{Name, NetworkPrefix, NodeLabel, Zone};
    use crate::dns::{answer, Outcome};
    let Some((&flags, query)) = data.split_first() else {
        return;
    };
    let zone = Zone::new("svcnet").expect("valid zone");
    let prefix = NetworkPrefix::derive("svcnet");
    let alpha = crate::identity::NodeKey::from_seed([1; 32]).node_id();
    let lookup = |name: &Name| match name {
        Name::Node { node } | Name::Service { node, .. }
            if *node
                == NodeLabel::Name(crate::addressing::NodeName::parse("alpha").expect("name")) =>
        {
            Some(prefix.node_address(&alpha))
        }
        _ => None,
    };
    match answer(query, &zone, flags & 1 == 1, lookup) {
        Outcome::Reply(bytes) => {
            let reply = hickory_proto::op::Message::from_vec(&bytes)
                .expect("every reply parses as a DNS message");
            assert_eq!(
                reply.message_type(),
                hickory_proto::op::MessageType::Response
            );
            assert_eq!(&bytes[..2], &query[..2], "the reply carries the query's id");
        }
        Outcome::Forward => assert!(flags & 1 == 1, "forward only when forwarding"),
        Outcome::Drop => {}
    }
}
