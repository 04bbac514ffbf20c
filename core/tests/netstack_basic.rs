//! Basic netstack behaviour over a clean link: hold, accept, refuse, echo, IPv4 and IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use svcnet_core::netstack::smoltcp::socket::tcp::State;
use svcnet_core::netstack::testing::{Faults, Harness, Owner};
use svcnet_core::netstack::{Config, Event, Netstack, RefuseReason};

const SVC4: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));
const SVC6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd12, 0x3456, 0x789a, 1, 0, 0, 0, 1));

fn harness(owner: Owner) -> Harness {
    let mut ns = Netstack::new(Config::default());
    ns.add_address(SVC4);
    ns.add_address(SVC6);
    let mut h = Harness::new(ns, 1, Faults::none(), 1);
    h.owner = owner;
    h
}

#[test]
fn echo_over_ipv4_and_ipv6() {
    for svc in [SVC4, SVC6] {
        let mut h = harness(Owner::Echo);
        let sock = h.clients[0].connect(SocketAddr::new(svc, 4242), h.now);
        assert!(h.run_until(Duration::from_secs(5), |h| h.clients[0]
            .socket(sock)
            .may_send()));
        let sent = b"hello through the netstack".to_vec();
        h.clients[0].socket(sock).send_slice(&sent).unwrap();
        h.clients[0].socket(sock).close();
        let mut got = Vec::new();
        assert!(h.run_until(Duration::from_secs(5), |h| {
            let s = h.clients[0].socket(sock);
            let mut buf = [0u8; 256];
            while let Ok(n) = s.recv_slice(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            !s.may_recv() && got.len() == sent.len()
        }));
        assert_eq!(got, sent);
        assert!(h.run_until(Duration::from_secs(30), |h| h.netstack.stats().sockets == 0));
        let evs = h.take_events();
        assert!(
            matches!(evs[0], Event::ConnectRequested { port: 4242, address, .. } if address == svc)
        );
        assert!(
            evs.iter().any(|e| matches!(e, Event::Closed { .. })),
            "{evs:?}"
        );
    }
}

#[test]
fn refuse_sends_rst() {
    let mut h = harness(Owner::Manual);
    let sock = h.clients[0].connect(SocketAddr::new(SVC4, 81), h.now);
    h.advance(Duration::from_millis(10));
    let evs = h.take_events();
    let Some(Event::ConnectRequested { conn, .. }) = evs.first().cloned() else {
        panic!("{evs:?}")
    };
    // Held: the client has heard nothing.
    assert_eq!(h.clients[0].socket(sock).state(), State::SynSent);
    h.netstack.refuse(conn, RefuseReason::Refused).unwrap();
    assert!(h.run_until(Duration::from_secs(1), |h| h.clients[0]
        .socket(sock)
        .state()
        == State::Closed));
}
