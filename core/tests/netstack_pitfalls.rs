//! The pitfalls other smoltcp-based TCP terminators fell into (docs/netstack.md, "Pitfalls"),
//! one test each, through the paired harness.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use svcnet_core::netstack::smoltcp::iface::SocketHandle;
use svcnet_core::netstack::smoltcp::socket::tcp::State;
use svcnet_core::netstack::smoltcp::wire::{Ipv4Packet, Ipv6Packet, TcpOption, TcpPacket};
use svcnet_core::netstack::testing::{Faults, Harness, Owner};
use svcnet_core::netstack::{Config, ConnId, Event, Netstack, ResetCause};

const SVC4: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));
const SVC6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd12, 0x3456, 0x789a, 1, 0, 0, 0, 1));

fn harness_with(cfg: Config, clients: usize, faults: Faults, owner: Owner) -> Harness {
    let mut ns = Netstack::new(cfg);
    ns.add_address(SVC4);
    ns.add_address(SVC6);
    let mut h = Harness::new(ns, clients, faults, 7);
    h.owner = owner;
    h
}

fn harness(owner: Owner) -> Harness {
    harness_with(Config::default(), 1, Faults::none(), owner)
}

fn requests(evs: &[Event]) -> Vec<ConnId> {
    evs.iter()
        .filter_map(|e| match e {
            Event::ConnectRequested { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect()
}

fn established(h: &mut Harness, client: usize, sock: SocketHandle) -> bool {
    // Both ends: the client once the SYN-ACK arrived, the netstack once the final ACK did.
    h.run_until(Duration::from_secs(10), |h| {
        h.clients[client].socket(sock).state() == State::Established
            && requests(&h.events)
                .last()
                .is_some_and(|c| h.events.contains(&Event::Established { conn: *c }))
    })
}

/// Reads everything the client socket has; true once the server's FIN was seen.
fn client_drain(h: &mut Harness, client: usize, sock: SocketHandle, into: &mut Vec<u8>) -> bool {
    let s = h.clients[client].socket(sock);
    let mut buf = [0u8; 4096];
    loop {
        match s.recv_slice(&mut buf) {
            Ok(0) => return false,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(_) => return true,
        }
    }
}

/// Reads everything the netstack has for `conn`; true at EOF.
fn server_drain(h: &mut Harness, conn: ConnId, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match h.netstack.read(conn, &mut buf) {
            Ok(0) => return true,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(_) => return false,
        }
    }
}

fn only_conn(h: &mut Harness) -> ConnId {
    let r = requests(&h.events);
    assert_eq!(r.len(), 1, "{:?}", h.events);
    r[0]
}

#[test]
fn concurrent_syns_to_one_port_each_get_a_socket() {
    let mut h = harness_with(Config::default(), 3, Faults::none(), Owner::Echo);
    let mut socks = Vec::new();
    for c in 0..3 {
        for _ in 0..4 {
            let s = h.clients[c].connect(SocketAddr::new(SVC4, 80), h.now);
            socks.push((c, s));
        }
    }
    // All twelve SYNs are in flight together, to one port.
    assert!(
        h.run_until(Duration::from_secs(5), |h| socks.iter().all(|&(c, s)| h
            .clients[c]
            .socket(s)
            .state()
            == State::Established))
    );
    assert_eq!(requests(&h.events).len(), 12);
    assert_eq!(h.netstack.stats().sockets, 12);
    for &(c, s) in &socks {
        h.clients[c].socket(s).send_slice(&[c as u8; 100]).unwrap();
    }
    let mut echoes = vec![Vec::new(); socks.len()];
    assert!(h.run_until(Duration::from_secs(5), |h| {
        for (i, &(c, s)) in socks.iter().enumerate() {
            client_drain(h, c, s, &mut echoes[i]);
        }
        echoes.iter().all(|e| e.len() == 100)
    }));
    for (i, &(c, _)) in socks.iter().enumerate() {
        assert_eq!(echoes[i], vec![c as u8; 100]);
    }
}

#[test]
fn retransmitted_syn_while_held_and_after_accept_makes_no_second_socket() {
    let mut h = harness(Owner::Manual);
    let sock = h.clients[0].connect(SocketAddr::new(SVC4, 22), h.now);
    // Held for 3.5 s: the client retransmits its SYN (at 1 s and 3 s).
    h.advance(Duration::from_millis(3500));
    let conn = only_conn(&mut h);
    assert!(
        h.netstack.stats().duplicate_syns >= 2,
        "{:?}",
        h.netstack.stats()
    );
    assert_eq!(h.netstack.stats().held, 1);
    // Accept after the delay: the connection works.
    h.netstack.accept(conn, h.now).unwrap();
    assert!(established(&mut h, 0, sock));
    // A duplicated SYN after accept goes to the existing socket, no new request or socket.
    let dup = svcnet_core::netstack::packet::syn(
        SocketAddr::new(IpAddr::V4(h.clients[0].v4), 40_000),
        SocketAddr::new(SVC4, 22),
        12345,
        1460,
    )
    .unwrap();
    h.netstack.handle_packet(&dup, h.now);
    h.advance(Duration::from_millis(100));
    assert_eq!(requests(&h.events).len(), 1);
    assert_eq!(h.netstack.stats().sockets, 1);
    assert_eq!(h.clients[0].socket(sock).state(), State::Established);
}

#[test]
fn duplicating_link_creates_no_orphan_sockets() {
    let faults = Faults {
        duplicate_ppm: 500_000,
        reorder_ppm: 200_000,
        jitter: Duration::from_millis(3),
        latency: Duration::from_millis(1),
        ..Faults::none()
    };
    let mut h = harness_with(Config::default(), 1, faults, Owner::Echo);
    let socks: Vec<_> = (0..20)
        .map(|p| h.clients[0].connect(SocketAddr::new(SVC6, 1000 + p), h.now))
        .collect();
    assert!(
        h.run_until(Duration::from_secs(10), |h| socks.iter().all(|&s| h
            .clients[0]
            .socket(s)
            .state()
            == State::Established))
    );
    assert_eq!(requests(&h.events).len(), 20);
    assert_eq!(h.netstack.stats().sockets, 20);
    for &s in &socks {
        h.clients[0].socket(s).close();
    }
    assert!(h.run_until(Duration::from_secs(60), |h| h.netstack.stats().sockets == 0));
}

#[test]
fn syn_reusing_a_tuple_in_time_wait_evicts_the_old_socket() {
    let mut h = harness(Owner::AcceptAll);
    let remote = SocketAddr::new(SVC4, 8080);
    let sock = h.clients[0].connect_from(50_000, remote, h.now);
    assert!(established(&mut h, 0, sock));
    let conn = only_conn(&mut h);
    // The netstack closes first, so it is the side that ends in TIME-WAIT.
    h.netstack.shutdown(conn).unwrap();
    assert!(h.run_until(Duration::from_secs(2), |h| h.clients[0]
        .socket(sock)
        .state()
        == State::CloseWait));
    h.clients[0].socket(sock).close();
    let mut sink = Vec::new();
    assert!(
        h.run_until(Duration::from_secs(2), |h| server_drain(h, conn, &mut sink)
            && h.netstack.tcp_state(conn) == Some(State::TimeWait))
    );
    h.advance(Duration::from_millis(50));
    assert!(h.events.contains(&Event::Closed { conn }));
    assert_eq!(h.netstack.stats().sockets, 1, "TIME-WAIT keeps its socket");
    h.clients[0].remove(sock);
    // Same 4-tuple, well within the 10 s TIME-WAIT.
    let again = h.clients[0].connect_from(50_000, remote, h.now);
    assert!(
        established(&mut h, 0, again),
        "client stuck in {}",
        h.clients[0].socket(again).state()
    );
    assert_eq!(h.netstack.stats().time_wait_evictions, 1);
    assert_eq!(requests(&h.events).len(), 2);
    assert_eq!(h.netstack.stats().sockets, 1);
}

#[test]
fn half_close_from_the_client_then_server_keeps_writing() {
    let mut h = harness(Owner::AcceptAll);
    let sock = h.clients[0].connect(SocketAddr::new(SVC6, 443), h.now);
    assert!(established(&mut h, 0, sock));
    let conn = only_conn(&mut h);
    h.clients[0].socket(sock).send_slice(b"request").unwrap();
    h.clients[0].socket(sock).close();
    let mut got = Vec::new();
    assert!(h.run_until(Duration::from_secs(2), |h| server_drain(h, conn, &mut got)));
    assert_eq!(got, b"request");
    // The client's half is closed; the server's is open: it answers after the EOF.
    assert_eq!(h.netstack.write(conn, b"response after eof"), Ok(18));
    h.netstack.shutdown(conn).unwrap();
    let mut back = Vec::new();
    assert!(h.run_until(Duration::from_secs(2), |h| client_drain(
        h, 0, sock, &mut back
    )));
    assert_eq!(back, b"response after eof");
    assert!(h.run_until(Duration::from_secs(2), |h| h
        .events
        .contains(&Event::Closed { conn })));
    assert!(h.run_until(Duration::from_secs(30), |h| h.netstack.stats().sockets == 0));
}

#[test]
fn half_close_from_the_server_then_client_keeps_writing() {
    let mut h = harness(Owner::AcceptAll);
    let sock = h.clients[0].connect(SocketAddr::new(SVC4, 25), h.now);
    assert!(established(&mut h, 0, sock));
    let conn = only_conn(&mut h);
    h.netstack.write(conn, b"banner").unwrap();
    h.netstack.shutdown(conn).unwrap();
    assert_eq!(
        h.netstack.write(conn, b"x"),
        Err(svcnet_core::netstack::Error::Finished)
    );
    let mut back = Vec::new();
    assert!(h.run_until(Duration::from_secs(2), |h| client_drain(
        h, 0, sock, &mut back
    )));
    assert_eq!(back, b"banner");
    h.clients[0]
        .socket(sock)
        .send_slice(b"still talking")
        .unwrap();
    h.clients[0].socket(sock).close();
    let mut got = Vec::new();
    assert!(h.run_until(Duration::from_secs(2), |h| server_drain(h, conn, &mut got)));
    assert_eq!(got, b"still talking");
    assert!(h.run_until(Duration::from_secs(2), |h| h
        .events
        .contains(&Event::Closed { conn })));
    assert!(h.run_until(Duration::from_secs(30), |h| h.netstack.stats().sockets == 0));
}

#[test]
fn client_rst_mid_stream_resets_and_frees() {
    let mut h = harness(Owner::AcceptAll);
    let sock = h.clients[0].connect(SocketAddr::new(SVC4, 3306), h.now);
    assert!(established(&mut h, 0, sock));
    let conn = only_conn(&mut h);
    h.clients[0].socket(sock).send_slice(&[1; 5000]).unwrap();
    h.advance(Duration::from_millis(5));
    h.clients[0].socket(sock).abort();
    assert!(h.run_until(Duration::from_secs(1), |h| h
        .events
        .iter()
        .any(|e| matches!(e, Event::Reset { .. }))));
    assert!(h.events.contains(&Event::Reset {
        conn,
        cause: ResetCause::Peer
    }));
    assert_eq!(h.netstack.stats().sockets, 0);
    assert_eq!(
        h.netstack.read(conn, &mut [0; 10]),
        Err(svcnet_core::netstack::Error::UnknownConnection)
    );
}

#[test]
fn server_reset_mid_stream_reaches_the_client() {
    let mut h = harness(Owner::AcceptAll);
    let sock = h.clients[0].connect(SocketAddr::new(SVC6, 5432), h.now);
    assert!(established(&mut h, 0, sock));
    let conn = only_conn(&mut h);
    h.netstack.write(conn, &[2; 3000]).unwrap();
    h.netstack.reset(conn, h.now).unwrap();
    assert_eq!(h.netstack.stats().sockets, 0);
    assert!(h.run_until(Duration::from_secs(1), |h| h.clients[0]
        .socket(sock)
        .state()
        == State::Closed));
}

#[test]
fn zero_window_backpressure_then_all_data_arrives() {
    let cfg = Config {
        rx_buffer: 16 * 1024,
        ..Config::default()
    };
    let mut h = harness_with(cfg, 1, Faults::none(), Owner::AcceptAll);
    h.clients[0].buffer = 256 * 1024;
    let sock = h.clients[0].connect(SocketAddr::new(SVC4, 9000), h.now);
    assert!(established(&mut h, 0, sock));
    let conn = only_conn(&mut h);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let n = h.clients[0].socket(sock).send_slice(&data).unwrap();
    assert_eq!(n, data.len());
    // The owner does not read: the window closes at the netstack's buffer size.
    h.advance(Duration::from_secs(3));
    assert_eq!(h.netstack.readable_bytes(conn), 16 * 1024);
    assert!(h.clients[0].socket(sock).send_queue() >= data.len() - 16 * 1024);
    assert_eq!(h.clients[0].socket(sock).state(), State::Established);
    // Reading in small pieces re-opens the window; everything arrives intact.
    let mut got = Vec::new();
    assert!(h.run_until(Duration::from_secs(60), |h| {
        let mut buf = [0u8; 1000];
        while let Ok(n) = h.netstack.read(conn, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got.len() == data.len()
    }));
    assert!(got == data);
}

fn syn_ack_mss(packet: &[u8]) -> Option<u16> {
    let bytes = match packet[0] >> 4 {
        4 => Ipv4Packet::new_checked(packet).ok()?.payload().to_vec(),
        _ => Ipv6Packet::new_checked(packet).ok()?.payload().to_vec(),
    };
    let tcp = TcpPacket::new_checked(&bytes[..]).ok()?;
    if !tcp.syn() {
        return None;
    }
    let mut opts = tcp.options();
    while !opts.is_empty() {
        let (rest, opt) = TcpOption::parse(opts).ok()?;
        if let TcpOption::MaxSegmentSize(m) = opt {
            return Some(m);
        }
        opts = rest;
    }
    None
}

#[test]
fn mss_follows_the_mtu_and_segments_fit() {
    for (mtu, svc, header) in [
        (1280, SVC4, 40),
        (9000, SVC4, 40),
        (1280, SVC6, 60),
        (1500, SVC6, 60),
    ] {
        let cfg = Config {
            mtu,
            ..Config::default()
        };
        let mut h = harness_with(cfg, 1, Faults::none(), Owner::Manual);
        let client = SocketAddr::new(
            match svc {
                IpAddr::V4(_) => IpAddr::V4(h.clients[0].v4),
                IpAddr::V6(_) => IpAddr::V6(h.clients[0].v6),
            },
            41_000,
        );
        let syn = svcnet_core::netstack::packet::syn(client, SocketAddr::new(svc, 80), 1, 65_000)
            .unwrap();
        h.netstack.handle_packet(&syn, h.now);
        let Some(Event::ConnectRequested { conn, .. }) = h.netstack.poll_event() else {
            panic!("no request")
        };
        h.netstack.accept(conn, h.now).unwrap();
        let synack = h.netstack.poll_transmit(h.now).expect("syn-ack");
        assert_eq!(
            syn_ack_mss(&synack),
            Some((mtu - header) as u16),
            "mtu {mtu}"
        );
        // Data segments never exceed the MTU.
        h.owner = Owner::AcceptAll;
        let sock = h.clients[0].connect(SocketAddr::new(svc, 81), h.now);
        assert!(established(&mut h, 0, sock));
        let c2 = requests(&h.events)[0];
        h.netstack.write(c2, &vec![9u8; 100_000]).unwrap();
        let mut largest = 0;
        for _ in 0..200 {
            while let Some(p) = h.netstack.poll_transmit(h.now) {
                largest = largest.max(p.len());
                h.downlink.send(h.now, p);
            }
            h.step();
            h.now += Duration::from_millis(1);
        }
        assert!(
            largest > 1000 && largest <= mtu,
            "largest {largest}, mtu {mtu}"
        );
    }
}

#[test]
fn nagle_is_off() {
    let mut h = harness(Owner::AcceptAll);
    let sock = h.clients[0].connect(SocketAddr::new(SVC4, 6379), h.now);
    assert!(established(&mut h, 0, sock));
    let conn = only_conn(&mut h);
    // Two small writes with the first one unacknowledged: both leave at once.
    h.netstack.write(conn, b"a").unwrap();
    let first = h.netstack.poll_transmit(h.now);
    h.netstack.write(conn, b"b").unwrap();
    let second = h.netstack.poll_transmit(h.now);
    assert!(first.is_some() && second.is_some());
    let _ = sock;
}

#[test]
fn keep_alive_and_timeout_free_connections_to_vanished_clients() {
    let cfg = Config {
        keep_alive: Some(Duration::from_secs(10)),
        timeout: Some(Duration::from_secs(30)),
        ..Config::default()
    };
    let mut h = harness_with(cfg, 1, Faults::none(), Owner::AcceptAll);
    let idle = h.clients[0].connect(SocketAddr::new(SVC4, 1), h.now);
    let busy = h.clients[0].connect(SocketAddr::new(SVC4, 2), h.now);
    assert!(established(&mut h, 0, idle) && established(&mut h, 0, busy));
    let conns = requests(&h.events);
    // A live idle client answers keep-alives: nothing times out in 2 minutes.
    h.advance(Duration::from_secs(120));
    assert_eq!(h.netstack.stats().connections, 2);
    // The client machine vanishes: both connections (idle, and one with unacked data) end.
    h.netstack.write(conns[1], &[0; 1000]).unwrap();
    h.uplink.cut = true;
    h.downlink.cut = true;
    h.advance(Duration::from_secs(90));
    for c in conns {
        assert!(
            h.events.contains(&Event::Reset {
                conn: c,
                cause: ResetCause::TimedOut
            }),
            "{:?}",
            h.events
        );
    }
    assert_eq!(h.netstack.stats().sockets, 0);
}

#[test]
fn handshake_never_completed_times_out() {
    let cfg = Config {
        timeout: Some(Duration::from_secs(20)),
        ..Config::default()
    };
    let mut h = harness_with(cfg, 1, Faults::none(), Owner::Manual);
    let syn = svcnet_core::netstack::packet::syn(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)), 1234),
        SocketAddr::new(SVC4, 80),
        77,
        1460,
    )
    .unwrap();
    h.netstack.handle_packet(&syn, h.now);
    let Some(Event::ConnectRequested { conn, .. }) = h.netstack.poll_event() else {
        panic!()
    };
    h.netstack.accept(conn, h.now).unwrap();
    assert_eq!(h.netstack.stats().sockets, 1);
    h.advance(Duration::from_secs(60));
    assert_eq!(
        h.netstack.stats().sockets,
        0,
        "{:?}",
        h.netstack.tcp_state(conn)
    );
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e, Event::Reset { conn: c, .. } if *c == conn)));
}

#[test]
fn shutdown_right_after_a_large_write_loses_nothing() {
    let cfg = Config {
        tx_buffer: 32 * 1024,
        ..Config::default()
    };
    let faults = Faults {
        loss_ppm: 20_000,
        latency: Duration::from_millis(2),
        ..Faults::none()
    };
    let mut h = harness_with(cfg, 1, faults, Owner::AcceptAll);
    let sock = h.clients[0].connect(SocketAddr::new(SVC6, 8443), h.now);
    assert!(established(&mut h, 0, sock));
    let conn = only_conn(&mut h);
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let mut written = 0;
    let mut got = Vec::new();
    let mut shut = false;
    assert!(h.run_until(Duration::from_secs(120), |h| {
        while written < data.len() {
            match h.netstack.write(conn, &data[written..]) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        if written == data.len() && !shut {
            // Immediately after the last byte was taken: the FIN must not overtake it.
            h.netstack.shutdown(conn).unwrap();
            shut = true;
        }
        client_drain(h, 0, sock, &mut got)
    }));
    assert_eq!(got.len(), data.len());
    assert!(got == data);
}

#[test]
fn removing_an_address_keeps_its_live_connections_but_takes_no_new_ones() {
    let mut h = harness(Owner::AcceptAll);
    let sock = h.clients[0].connect(SocketAddr::new(SVC4, 7000), h.now);
    assert!(established(&mut h, 0, sock));
    let conn = only_conn(&mut h);
    assert!(h.netstack.remove_address(SVC4));
    h.clients[0].socket(sock).send_slice(b"still here").unwrap();
    let mut got = Vec::new();
    assert!(h.run_until(Duration::from_secs(2), |h| {
        server_drain(h, conn, &mut got);
        got.len() == 10
    }));
    assert_eq!(got, b"still here");
    let other = h.clients[0].connect(SocketAddr::new(SVC4, 7001), h.now);
    h.advance(Duration::from_secs(2));
    assert_eq!(
        requests(&h.events).len(),
        1,
        "no request for a removed address"
    );
    assert_eq!(
        h.clients[0].socket(other).state(),
        State::SynSent,
        "and no answer"
    );
}

#[test]
fn eof_read_after_the_socket_already_closed_still_ends_gracefully() {
    let mut h = harness(Owner::AcceptAll);
    let sock = h.clients[0].connect(SocketAddr::new(SVC6, 7002), h.now);
    assert!(established(&mut h, 0, sock));
    let conn = only_conn(&mut h);
    // The client sends and closes; the owner shuts down without reading anything.
    h.clients[0].socket(sock).send_slice(b"unread").unwrap();
    h.clients[0].socket(sock).close();
    assert!(
        h.run_until(Duration::from_secs(2), |h| h.netstack.tcp_state(conn)
            == Some(State::CloseWait))
    );
    h.netstack.shutdown(conn).unwrap();
    assert!(
        h.run_until(Duration::from_secs(2), |h| h.netstack.tcp_state(conn)
            == Some(State::Closed))
    );
    assert!(
        !h.events.contains(&Event::Closed { conn }),
        "not before the owner read the EOF"
    );
    let mut got = Vec::new();
    assert!(server_drain(&mut h, conn, &mut got));
    assert_eq!(got, b"unread");
    h.advance(Duration::from_millis(10));
    assert!(h.events.contains(&Event::Closed { conn }));
    assert_eq!(h.netstack.stats().sockets, 0);
}

/// The same seed gives the same packet transcript, byte for byte (no clock, no OS randomness,
/// no map-order dependence anywhere in the netstack or the harness).
#[test]
fn same_seed_same_transcript() {
    fn transcript(seed: u64) -> (u64, u64, usize) {
        let cfg = Config {
            seed,
            ..Config::default()
        };
        let mut h = harness_with(cfg, 2, Faults::chaos(), Owner::Echo);
        let mut socks = Vec::new();
        for i in 0..20u16 {
            let c = usize::from(i % 2);
            let svc = if i % 3 == 0 { SVC6 } else { SVC4 };
            socks.push((
                c,
                h.clients[c].connect(SocketAddr::new(svc, 100 + i), h.now),
            ));
        }
        h.run_until(Duration::from_secs(5), |h| {
            for &(c, s) in &socks {
                let s = h.clients[c].socket(s);
                if s.may_send() && s.send_queue() == 0 {
                    let _ = s.send_slice(&[7; 3000]);
                }
            }
            false
        });
        (h.downlink.digest, h.uplink.digest, h.events.len())
    }
    assert_eq!(transcript(3), transcript(3));
    assert_ne!(transcript(3).0, transcript(4).0);
}
