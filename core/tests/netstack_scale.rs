//! Scale and limits: a thousand concurrent connections over a chaotic link, a SYN flood over
//! every port, and each configured limit enforced.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use svcnet_core::netstack::packet::syn;
use svcnet_core::netstack::smoltcp::socket::tcp::State;
use svcnet_core::netstack::testing::{Faults, Harness, Owner};
use svcnet_core::netstack::{AbandonReason, Config, ConnId, Error, Event, Netstack};

fn services() -> Vec<IpAddr> {
    vec![
        IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)),
        IpAddr::V6(Ipv6Addr::new(0xfd12, 0x3456, 0x789a, 1, 0, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0xfd12, 0x3456, 0x789a, 1, 0, 0, 0, 2)),
    ]
}

fn netstack(cfg: Config) -> Netstack {
    let mut ns = Netstack::new(cfg);
    for a in services() {
        ns.add_address(a);
    }
    ns
}

fn requests(evs: &[Event]) -> Vec<ConnId> {
    evs.iter()
        .filter_map(|e| match e {
            Event::ConnectRequested { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect()
}

/// 1,000 concurrent connections from 4 clients to 250 ports of 4 service addresses (IPv4 and
/// IPv6) through a lossy, reordering, duplicating, corrupting link; every byte echoed intact,
/// every connection closed gracefully, no socket left.
#[test]
fn thousand_concurrent_connections_over_a_chaotic_link() {
    let cfg = Config {
        rx_buffer: 8 * 1024,
        tx_buffer: 8 * 1024,
        ..Config::default()
    };
    let mut h = Harness::new(netstack(cfg), 4, Faults::chaos(), 42);
    h.owner = Owner::Echo;
    for c in &mut h.clients {
        c.buffer = 8 * 1024;
    }
    let svcs = services();
    let mut conns = Vec::new();
    for i in 0..1000usize {
        let client = i % 4;
        let remote = SocketAddr::new(svcs[(i / 4) % 4], 1 + (i % 250) as u16 * 200);
        let sock = h.clients[client].connect(remote, h.now);
        let len = 500 + (i * 37) % 3000;
        let data: Vec<u8> = (0..len).map(|j| (i * 131 + j) as u8).collect();
        conns.push((client, sock, data, 0usize, Vec::new(), false));
    }
    let done = h.run_until(Duration::from_secs(600), |h| {
        let mut all = true;
        for (client, sock, data, sent, got, closed) in conns.iter_mut() {
            let s = h.clients[*client].socket(*sock);
            if s.may_send() && *sent < data.len() {
                *sent += s.send_slice(&data[*sent..]).unwrap_or(0);
                if *sent == data.len() {
                    s.close();
                }
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.recv_slice(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if !*closed && *sent == data.len() && !s.is_open() {
                *closed = true;
            }
            all &= *closed;
        }
        all
    });
    let unfinished = conns.iter().filter(|c| !c.5).count();
    assert!(
        done,
        "{unfinished} connections unfinished, stats {:?}",
        h.netstack.stats()
    );
    for (i, (_, _, data, _, got, _)) in conns.iter().enumerate() {
        assert!(
            got == data,
            "connection {i}: {} of {} bytes",
            got.len(),
            data.len()
        );
    }
    assert_eq!(requests(&h.events).len(), 1000);
    // The last FINs and ACKs may still be retransmitting; then everything ends gracefully.
    assert!(h.run_until(Duration::from_secs(60), |h| h.netstack.stats().sockets == 0));
    let closed = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::Closed { .. }))
        .count();
    assert_eq!(closed, 1000);
    let st = h.netstack.stats();
    assert_eq!((st.held, st.connections, st.held_bytes), (0, 0, 0));
    assert!(st.dropped_invalid > 0, "the link corrupted nothing? {st:?}");
    assert!(h.netstack.poll_timeout().is_none());
}

/// A SYN flood over all 65,535 ports of a service, from spoofed sources, while a real client
/// connects: memory stays under the configured bound and the real connections succeed.
#[test]
fn syn_flood_over_every_port_stays_bounded_and_real_clients_get_through() {
    let cfg = Config {
        max_held_syns: 256,
        max_connections: 64,
        hold_timeout: Duration::from_secs(3),
        rx_buffer: 16 * 1024,
        tx_buffer: 16 * 1024,
        ..Config::default()
    };
    let bound = cfg.memory_bound();
    let mut h = Harness::new(netstack(cfg), 1, Faults::none(), 9);
    let svc = services()[0];
    let mut flood_sent = 0u32;
    let mut real = Vec::new();
    let mut max_mem = 0;
    for round in 0..64u32 {
        // 1,024 flood SYNs per millisecond from 256 spoofed sources.
        for k in 0..1024u32 {
            let port = (round * 1024 + k) % 65_535 + 1;
            let src = Ipv4Addr::new(198, 18, (k % 256) as u8, (round % 256) as u8);
            let p = syn(
                SocketAddr::new(IpAddr::V4(src), 1024 + (k as u16)),
                SocketAddr::new(svc, port as u16),
                k,
                1460,
            )
            .unwrap();
            h.netstack.handle_packet(&p, h.now);
            flood_sent += 1;
        }
        if round % 8 == 0 {
            real.push(h.clients[0].connect(SocketAddr::new(svc, 443), h.now));
        }
        // The owner accepts only the real client (say the flood's ports have no instance);
        // flood requests are left to expire or be evicted.
        h.step();
        for ev in std::mem::take(&mut h.events) {
            if let Event::ConnectRequested { conn, client, .. } = ev {
                if h.clients[0].owns(client.ip()) {
                    h.netstack.accept(conn, h.now).unwrap();
                }
            }
        }
        max_mem = max_mem.max(h.netstack.memory_in_use());
        let st = h.netstack.stats();
        assert!(st.held <= 256 && st.sockets <= 64, "{st:?}");
        h.now += Duration::from_millis(1);
    }
    assert!(flood_sent >= 65_535);
    assert!(
        h.run_until(Duration::from_secs(5), |h| real.iter().all(|&s| h.clients
            [0]
        .socket(s)
        .state()
            == State::Established))
    );
    assert!(max_mem <= bound, "{max_mem} > {bound}");
    let st = h.netstack.stats();
    assert!(st.evicted_holds > 60_000, "{st:?}");
    // Every flood hold ends: nothing is left once the hold time passes.
    h.advance(Duration::from_secs(4));
    assert_eq!(h.netstack.stats().held, 0);
}

#[test]
fn per_client_syn_rate_is_enforced() {
    let cfg = Config {
        syn_rate_per_client: 10,
        syn_burst_per_client: 20,
        ..Config::default()
    };
    let mut ns = netstack(cfg);
    let svc = services()[0];
    let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    let mut now = svcnet_core::time::Instant::ZERO;
    for port in 1..=100u16 {
        ns.handle_packet(
            &syn(
                SocketAddr::new(client, port),
                SocketAddr::new(svc, 80),
                0,
                1460,
            )
            .unwrap(),
            now,
        );
    }
    assert_eq!(ns.stats().held, 20, "the burst");
    assert_eq!(ns.stats().dropped_syn_rate, 80);
    // Another client is not affected (it hashes to another slot with 4,096 slots).
    ns.handle_packet(
        &syn(SocketAddr::new(other, 1), SocketAddr::new(svc, 80), 0, 1460).unwrap(),
        now,
    );
    assert_eq!(ns.stats().held, 21);
    // One second refills ten tokens.
    now += Duration::from_secs(1);
    for port in 101..=200u16 {
        ns.handle_packet(
            &syn(
                SocketAddr::new(client, port),
                SocketAddr::new(svc, 80),
                0,
                1460,
            )
            .unwrap(),
            now,
        );
    }
    assert_eq!(ns.stats().held, 31);
}

#[test]
fn connection_limit_is_enforced_and_time_wait_makes_room() {
    let cfg = Config {
        max_connections: 3,
        ..Config::default()
    };
    let mut h = Harness::new(netstack(cfg), 1, Faults::none(), 5);
    h.owner = Owner::Manual;
    let svc = services()[2];
    let socks: Vec<_> = (0..4)
        .map(|p| h.clients[0].connect(SocketAddr::new(svc, 100 + p), h.now))
        .collect();
    h.advance(Duration::from_millis(10));
    let reqs = requests(&h.events);
    assert_eq!(reqs.len(), 4);
    for &c in &reqs[..3] {
        h.netstack.accept(c, h.now).unwrap();
    }
    assert_eq!(
        h.netstack.accept(reqs[3], h.now),
        Err(Error::ConnectionLimit)
    );
    assert_eq!(
        h.netstack.stats().held,
        1,
        "the SYN stays held after a limit error"
    );
    assert!(
        h.run_until(Duration::from_secs(2), |h| socks[..3].iter().all(|&s| h
            .clients[0]
            .socket(s)
            .state()
            == State::Established))
    );
    // At the limit new SYNs are dropped (the client retransmits later).
    h.clients[0].connect(SocketAddr::new(svc, 200), h.now);
    h.advance(Duration::from_millis(10));
    assert_eq!(h.netstack.stats().dropped_syn_conn_limit, 1);
    // A connection closed by the netstack first sits in TIME-WAIT; it is evicted for the held one.
    h.netstack.shutdown(reqs[0]).unwrap();
    h.clients[0].socket(socks[0]).close();
    assert!(h.run_until(Duration::from_secs(2), |h| {
        let _ = h.netstack.read(reqs[0], &mut [0; 16]);
        h.netstack.tcp_state(reqs[0]) == Some(State::TimeWait)
    }));
    h.advance(Duration::from_millis(10));
    h.netstack.accept(reqs[3], h.now).unwrap();
    assert_eq!(h.netstack.stats().time_wait_evictions, 1);
    assert!(h.run_until(Duration::from_secs(2), |h| h.clients[0]
        .socket(socks[3])
        .state()
        == State::Established));
}

#[test]
fn hold_limit_evicts_the_oldest_and_hold_timeout_refuses() {
    let cfg = Config {
        max_held_syns: 2,
        hold_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let mut ns = netstack(cfg);
    let svc = services()[0];
    let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let mut now = svcnet_core::time::Instant::ZERO;
    for port in 1..=3u16 {
        ns.handle_packet(
            &syn(
                SocketAddr::new(client, port),
                SocketAddr::new(svc, 80),
                0,
                1460,
            )
            .unwrap(),
            now,
        );
    }
    let evs: Vec<Event> = std::iter::from_fn(|| ns.poll_event()).collect();
    let reqs = requests(&evs);
    assert_eq!(reqs.len(), 3);
    assert!(evs.contains(&Event::ConnectAbandoned {
        conn: reqs[0],
        reason: AbandonReason::Evicted
    }));
    assert_eq!(ns.stats().held, 2);
    // Eviction is silent (the client retransmits); nothing was sent.
    assert!(ns.poll_transmit(now).is_none());
    assert_eq!(ns.poll_timeout(), Some(now + Duration::from_secs(2)));
    now += Duration::from_secs(2);
    ns.handle_timeout(now);
    let evs: Vec<Event> = std::iter::from_fn(|| ns.poll_event()).collect();
    for &c in &reqs[1..] {
        assert!(evs.contains(&Event::ConnectAbandoned {
            conn: c,
            reason: AbandonReason::HoldExpired
        }));
    }
    // The default expiry reply is a RST per hold.
    let replies: Vec<_> = std::iter::from_fn(|| ns.poll_transmit(now)).collect();
    assert_eq!(replies.len(), 2);
    assert_eq!(ns.stats().held, 0);
    assert_eq!(ns.poll_timeout(), None);
}
