//! What the netstack does with every kind of input that is not a well-behaved connection:
//! unserved addresses, malformed and unsupported packets, stray segments, and each refuse reply.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use proptest::prelude::*;
use svcnet_core::netstack::packet::{
    build_segment, parse, parse_with, syn, Rejection, SegmentSpec,
};
use svcnet_core::netstack::smoltcp::wire::{
    Icmpv4Message, Icmpv4Packet, Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv6Packet,
    TcpControl, TcpPacket,
};
use svcnet_core::netstack::{Config, Event, Netstack, RefuseReason, TcpChecksum};
use svcnet_core::time::Instant;

const SVC4: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));
const SVC6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd12, 0x3456, 0x789a, 1, 0, 0, 0, 1));
const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));

fn ns() -> Netstack {
    let mut ns = Netstack::new(Config::default());
    ns.add_address(SVC4);
    ns.add_address(SVC6);
    ns
}

fn drain(ns: &mut Netstack) -> (Vec<Vec<u8>>, Vec<Event>) {
    let out = std::iter::from_fn(|| ns.poll_transmit(Instant::ZERO)).collect();
    let evs = std::iter::from_fn(|| ns.poll_event()).collect();
    (out, evs)
}

#[test]
fn unserved_addresses_are_never_answered() {
    let mut ns = ns();
    let other = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
    let p = syn(
        SocketAddr::new(CLIENT4, 1000),
        SocketAddr::new(other, 80),
        1,
        1460,
    )
    .unwrap();
    ns.handle_packet(&p, Instant::ZERO);
    // A stray ACK to an unserved address: no RST for the world either.
    let ack = build_segment(&SegmentSpec {
        src: SocketAddr::new(CLIENT4, 1000),
        dst: SocketAddr::new(other, 80),
        control: TcpControl::None,
        seq: 5,
        ack: Some(9),
        window: 100,
        mss: None,
        payload: b"data",
    })
    .unwrap();
    ns.handle_packet(&ack, Instant::ZERO);
    let (out, evs) = drain(&mut ns);
    assert!(out.is_empty() && evs.is_empty());
    assert_eq!(ns.stats().dropped_unserved, 2);
    // Served later: answered; removed again: its held SYN is abandoned, silent again.
    ns.add_address(other);
    ns.handle_packet(&p, Instant::ZERO);
    assert!(matches!(
        ns.poll_event(),
        Some(Event::ConnectRequested { .. })
    ));
    ns.remove_address(other);
    assert!(matches!(
        ns.poll_event(),
        Some(Event::ConnectAbandoned { .. })
    ));
    ns.handle_packet(&ack, Instant::ZERO);
    assert!(ns.poll_transmit(Instant::ZERO).is_none());
}

#[test]
fn stray_segments_to_served_addresses_get_a_rst_but_rsts_do_not() {
    let mut ns = ns();
    for (client, svc) in [(CLIENT4, SVC4), (CLIENT6, SVC6)] {
        let ack = build_segment(&SegmentSpec {
            src: SocketAddr::new(client, 1000),
            dst: SocketAddr::new(svc, 80),
            control: TcpControl::None,
            seq: 5,
            ack: Some(9),
            window: 100,
            mss: None,
            payload: b"data",
        })
        .unwrap();
        ns.handle_packet(&ack, Instant::ZERO);
        let rst = ns.poll_transmit(Instant::ZERO).expect("a RST");
        let seg = parse(&rst).expect("valid");
        assert_eq!(seg.control, TcpControl::Rst);
        assert_eq!(seg.seq, 9, "RST carries the acknowledged number");
        assert_eq!(
            (seg.client, seg.server),
            (SocketAddr::new(svc, 80), SocketAddr::new(client, 1000))
        );
        let rst_in = build_segment(&SegmentSpec {
            src: SocketAddr::new(client, 1000),
            dst: SocketAddr::new(svc, 80),
            control: TcpControl::Rst,
            seq: 5,
            ack: None,
            window: 0,
            mss: None,
            payload: &[],
        })
        .unwrap();
        ns.handle_packet(&rst_in, Instant::ZERO);
        assert!(ns.poll_transmit(Instant::ZERO).is_none());
    }
    assert_eq!(ns.stats().sockets, 0);
}

#[test]
fn malformed_and_unsupported_packets_are_dropped() {
    let good = syn(
        SocketAddr::new(CLIENT4, 1000),
        SocketAddr::new(SVC4, 80),
        1,
        1460,
    )
    .unwrap();
    let good6 = syn(
        SocketAddr::new(CLIENT6, 1000),
        SocketAddr::new(SVC6, 80),
        1,
        1460,
    )
    .unwrap();
    assert!(parse(&good).is_ok() && parse(&good6).is_ok());
    let mut cases: Vec<(Vec<u8>, Rejection)> = vec![
        (vec![], Rejection::Malformed),
        (vec![0x45], Rejection::Malformed),
        (good[..30].to_vec(), Rejection::Malformed),
        (good6[..50].to_vec(), Rejection::Malformed),
    ];
    let mut bad_sum = good.clone();
    let last = bad_sum.len() - 1;
    bad_sum[last] ^= 0xff;
    cases.push((bad_sum, Rejection::Malformed));
    let mut bad_ip_sum = good.clone();
    bad_ip_sum[8] ^= 1; // TTL changes, header checksum does not
    cases.push((bad_ip_sum, Rejection::Malformed));
    let mut fragment = good.clone();
    fragment[6] |= 0x20; // more fragments
    let sum = ipv4_header_checksum(&fragment);
    fragment[10..12].copy_from_slice(&sum.to_be_bytes());
    cases.push((fragment, Rejection::Unsupported));
    let mut udp = good.clone();
    udp[9] = 17;
    let sum = ipv4_header_checksum(&udp);
    udp[10..12].copy_from_slice(&sum.to_be_bytes());
    cases.push((udp, Rejection::NotTcp));
    let mut ext6 = good6.clone();
    ext6[6] = 0; // hop-by-hop options header
    cases.push((ext6, Rejection::Unsupported));
    let multicast = syn(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)), 1000),
        SocketAddr::new(SVC4, 80),
        1,
        1460,
    )
    .unwrap();
    cases.push((multicast, Rejection::BadSource));
    let mut too_long_total = good.clone();
    too_long_total[2..4].copy_from_slice(&2000u16.to_be_bytes());
    cases.push((too_long_total, Rejection::Malformed));
    let mut ns = ns();
    for (i, (p, why)) in cases.iter().enumerate() {
        assert_eq!(parse(p).err(), Some(*why), "case {i}");
        ns.handle_packet(p, Instant::ZERO);
    }
    let (out, evs) = drain(&mut ns);
    assert!(out.is_empty() && evs.is_empty());
    assert_eq!(ns.stats().dropped_invalid, cases.len() as u64);
    // Trailing bytes after the IP packet (a padded read) are cut off, not rejected.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 7]);
    ns.handle_packet(&padded, Instant::ZERO);
    assert!(matches!(
        ns.poll_event(),
        Some(Event::ConnectRequested { .. })
    ));
}

/// A TUN device with checksum offload hands over this host's packets with only the pseudo-header
/// sum in the TCP checksum field, marked as such: those are taken without verifying it, and
/// everything else about the packet is still checked. Unmarked packets are verified.
#[test]
fn trusted_tcp_checksums_are_not_verified_but_everything_else_is() {
    for (client, svc) in [(CLIENT4, SVC4), (CLIENT6, SVC6)] {
        let good = syn(
            SocketAddr::new(client, 1000),
            SocketAddr::new(svc, 80),
            1,
            1460,
        )
        .unwrap();
        // What offload leaves: the TCP checksum field does not match the segment.
        let tcp_at = if client.is_ipv4() { 20 } else { 40 };
        let mut partial = good.clone();
        partial[tcp_at + 16] ^= 0x5a;
        assert_eq!(parse(&partial).err(), Some(Rejection::Malformed));
        assert!(parse_with(&partial, TcpChecksum::Trusted).is_ok());

        let mut ns = ns();
        ns.handle_packet_with(&partial, TcpChecksum::Verify, Instant::ZERO);
        assert_eq!(ns.stats().dropped_invalid, 1);
        ns.handle_packet_with(&partial, TcpChecksum::Trusted, Instant::ZERO);
        assert!(matches!(
            ns.poll_event(),
            Some(Event::ConnectRequested { port: 80, .. })
        ));

        // Trust covers the TCP checksum only: a bad IPv4 header sum, a truncated segment or
        // bad TCP options are still refused.
        let mut truncated = partial.clone();
        truncated.truncate(tcp_at + 10);
        assert!(parse_with(&truncated, TcpChecksum::Trusted).is_err());
        let mut bad_offset = partial.clone();
        bad_offset[tcp_at + 12] = 0x10; // data offset 1 word: shorter than the TCP header
        assert!(parse_with(&bad_offset, TcpChecksum::Trusted).is_err());
        if client.is_ipv4() {
            let mut bad_ip_sum = partial.clone();
            bad_ip_sum[8] ^= 1;
            assert_eq!(
                parse_with(&bad_ip_sum, TcpChecksum::Trusted).err(),
                Some(Rejection::Malformed)
            );
        }
    }
}

fn ipv4_header_checksum(p: &[u8]) -> u16 {
    let mut sum = 0u32;
    for i in (0..20).step_by(2) {
        if i != 10 {
            sum += u32::from(u16::from_be_bytes([p[i], p[i + 1]]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn each_refuse_reason_sends_its_reply() {
    for (client, svc) in [(CLIENT4, SVC4), (CLIENT6, SVC6)] {
        for reason in [
            RefuseReason::Refused,
            RefuseReason::HostUnreachable,
            RefuseReason::Prohibited,
            RefuseReason::Silent,
        ] {
            let mut ns = ns();
            let p = syn(
                SocketAddr::new(client, 1000),
                SocketAddr::new(svc, 80),
                41,
                1460,
            )
            .unwrap();
            ns.handle_packet(&p, Instant::ZERO);
            let Some(Event::ConnectRequested { conn, .. }) = ns.poll_event() else {
                panic!()
            };
            assert!(
                ns.poll_transmit(Instant::ZERO).is_none(),
                "held: no answer yet"
            );
            ns.refuse(conn, reason).unwrap();
            let out: Vec<_> = std::iter::from_fn(|| ns.poll_transmit(Instant::ZERO)).collect();
            match reason {
                RefuseReason::Silent => assert!(out.is_empty()),
                RefuseReason::Refused => {
                    let seg = parse(&out[0]).unwrap();
                    assert_eq!(seg.control, TcpControl::Rst);
                    assert_eq!(seg.ack, Some(42), "RST|ACK acknowledging the SYN");
                }
                _ => {
                    let (ty, code) = icmp_type_code(&out[0]);
                    let expect = match (client, reason) {
                        (IpAddr::V4(_), RefuseReason::HostUnreachable) => (3, 1),
                        (IpAddr::V4(_), _) => (3, 13),
                        (IpAddr::V6(_), RefuseReason::HostUnreachable) => (1, 3),
                        (IpAddr::V6(_), _) => (1, 1),
                    };
                    assert_eq!((ty, code), expect, "{client} {reason:?}");
                }
            }
            assert_eq!(
                ns.refuse(conn, reason),
                Err(svcnet_core::netstack::Error::UnknownConnection)
            );
            assert_eq!(ns.stats().held, 0);
        }
    }
}

fn icmp_type_code(p: &[u8]) -> (u8, u8) {
    match p[0] >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(p).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(ip.next_header(), IpProtocol::Icmp);
            let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum());
            assert_eq!(icmp.msg_type(), Icmpv4Message::DstUnreachable);
            // The quote: the original header and the first 8 bytes (the ports) of TCP.
            let quoted = Ipv4Packet::new_unchecked(icmp.data());
            assert_eq!(quoted.next_header(), IpProtocol::Tcp);
            (3, icmp.msg_code())
        }
        _ => {
            let ip = Ipv6Packet::new_checked(p).unwrap();
            assert_eq!(ip.next_header(), IpProtocol::Icmpv6);
            let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
            assert_eq!(icmp.msg_type(), Icmpv6Message::DstUnreachable);
            (1, icmp.msg_code())
        }
    }
}

#[test]
fn accept_and_refuse_are_checked() {
    let mut ns = ns();
    let p = syn(
        SocketAddr::new(CLIENT4, 1000),
        SocketAddr::new(SVC4, 80),
        1,
        1460,
    )
    .unwrap();
    ns.handle_packet(&p, Instant::ZERO);
    let Some(Event::ConnectRequested {
        conn,
        client,
        address,
        port,
    }) = ns.poll_event()
    else {
        panic!()
    };
    assert_eq!(
        (client, address, port),
        (SocketAddr::new(CLIENT4, 1000), SVC4, 80)
    );
    use svcnet_core::netstack::Error;
    assert_eq!(ns.write(conn, b"x"), Err(Error::NotAccepted));
    ns.accept(conn, Instant::ZERO).unwrap();
    assert_eq!(ns.accept(conn, Instant::ZERO), Err(Error::NotHeld));
    assert_eq!(ns.refuse(conn, RefuseReason::Refused), Err(Error::NotHeld));
    assert_eq!(
        ns.write(conn, b"x"),
        Err(Error::WouldBlock),
        "handshake not done"
    );
    let synack = ns.poll_transmit(Instant::ZERO).unwrap();
    let seg = parse(&synack).unwrap();
    assert_eq!((seg.control, seg.ack), (TcpControl::Syn, Some(2)));
    let _ = TcpPacket::new_checked(&synack[20..]).unwrap();
    ns.reset(conn, Instant::ZERO).unwrap();
    assert_eq!(ns.stats().sockets, 0);
    assert_eq!(
        ns.accept(svcnet_core::netstack::ConnId(999), Instant::ZERO),
        Err(Error::UnknownConnection)
    );
    let _ = Duration::ZERO;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes, and valid packets with arbitrary bytes flipped, never panic, and only
    /// packets to served addresses ever produce output — with checksums verified or trusted
    /// (then flips that the checksum would have caught reach the deeper checks).
    #[test]
    fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200),
                                    flips in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..4),
                                    trusted in any::<bool>()) {
        let checksum = if trusted { TcpChecksum::Trusted } else { TcpChecksum::Verify };
        let mut ns = ns();
        ns.handle_packet_with(&data, checksum, Instant::ZERO);
        let mut p = syn(SocketAddr::new(CLIENT6, 1000), SocketAddr::new(SVC6, 80), 1, 1460).unwrap();
        for (at, x) in flips {
            let i = usize::from(at) % p.len();
            p[i] ^= x;
        }
        ns.handle_packet_with(&p, checksum, Instant::ZERO);
        while let Some(out) = ns.poll_transmit(Instant::ZERO) {
            let seg = parse(&out);
            prop_assert!(seg.is_ok());
        }
    }
}
