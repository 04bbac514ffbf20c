//! Validation of packets from the TUN before smoltcp sees them, and the few replies the netstack
//! builds itself (RST and ICMP destination-unreachable for refused or unknown connections).
//!
//! smoltcp has had remote-triggerable panics (`docs/netstack.md`, "Pitfalls"), so nothing reaches
//! it unless the IP header, the TCP header and options parse, lengths agree and checksums verify.
//! Fragments, IPv6 extension headers and non-TCP protocols are dropped: a TUN in front of a TCP
//! terminator never needs them, and every shape smoltcp does not see is one it cannot trip on.

use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable, Icmpv6Packet, Icmpv6Repr,
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber,
};

/// Largest packet accepted from the TUN (the IPv4 total-length and IPv6 payload-length ceiling).
pub const MAX_PACKET: usize = 65_535;
const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const TCP_HEADER: usize = 20;

/// Why a packet from the TUN was not fed to any stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Shorter than its headers say, longer than [`MAX_PACKET`], a bad version, a bad checksum,
    /// malformed TCP options, a port 0, or an impossible flag combination.
    Malformed,
    /// An IPv4 fragment or an IPv6 packet with extension headers.
    Unsupported,
    /// Valid IP, but not TCP.
    NotTcp,
    /// From a multicast, broadcast or unspecified source: nothing may answer it.
    BadSource,
}

/// The facts the netstack needs about a validated TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub control: TcpControl,
    pub seq: u32,
    pub ack: Option<u32>,
    /// Payload bytes (without SYN/FIN).
    pub payload_len: usize,
    /// Length of the IP packet proper (a TUN read may carry trailing bytes; they are cut off).
    pub ip_len: usize,
}

impl Segment {
    /// A connection-opening SYN (no ACK).
    pub fn is_syn(&self) -> bool {
        self.control == TcpControl::Syn && self.ack.is_none()
    }
}

fn checked_source(addr: IpAddr) -> Result<(), Rejection> {
    let bad = match addr {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast() || a.is_unspecified(),
        IpAddr::V6(a) => a.is_multicast() || a.is_unspecified(),
    };
    if bad {
        Err(Rejection::BadSource)
    } else {
        Ok(())
    }
}

/// What the source of a packet vouches for about its TCP checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpChecksum {
    /// Nothing: the checksum is verified (a packet from a network, or from an unknown source).
    Verify,
    /// The host's kernel vouches for the segment: it verified the checksum, or never computed
    /// it because the packet was made on this host (a TUN device with checksum offload marks
    /// such packets; their checksum field holds only the pseudo-header sum). Not verified.
    Trusted,
}

/// Validates a raw IPv4 or IPv6 packet carrying TCP; returns the segment's facts.
pub fn parse(packet: &[u8]) -> Result<Segment, Rejection> {
    parse_with(packet, TcpChecksum::Verify)
}

/// [`parse`], verifying the TCP checksum only if `checksum` says so. (The IPv4 header checksum
/// is always verified: offloads leave it complete.)
pub fn parse_with(packet: &[u8], checksum: TcpChecksum) -> Result<Segment, Rejection> {
    if packet.is_empty() || packet.len() > MAX_PACKET {
        return Err(Rejection::Malformed);
    }
    match packet[0] >> 4 {
        4 => parse_v4(packet, checksum),
        6 => parse_v6(packet, checksum),
        _ => Err(Rejection::Malformed),
    }
}

fn parse_v4(packet: &[u8], checksum: TcpChecksum) -> Result<Segment, Rejection> {
    let ip = Ipv4Packet::new_checked(packet).map_err(|_| Rejection::Malformed)?;
    if !ip.verify_checksum() {
        return Err(Rejection::Malformed);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(Rejection::Unsupported);
    }
    if ip.next_header() != IpProtocol::Tcp {
        return Err(Rejection::NotTcp);
    }
    let ip_len = usize::from(ip.total_len());
    let header_len = usize::from(ip.header_len());
    if ip_len < header_len + TCP_HEADER {
        return Err(Rejection::Malformed);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    checked_source(IpAddr::V4(src))?;
    parse_tcp(
        &packet[header_len..ip_len],
        IpAddr::V4(src),
        IpAddr::V4(dst),
        ip_len,
        checksum,
    )
}

fn parse_v6(packet: &[u8], checksum: TcpChecksum) -> Result<Segment, Rejection> {
    let ip = Ipv6Packet::new_checked(packet).map_err(|_| Rejection::Malformed)?;
    if ip.next_header() != IpProtocol::Tcp {
        // Extension headers (hop-by-hop, routing, fragment, ...) or another protocol.
        return match ip.next_header() {
            IpProtocol::HopByHop
            | IpProtocol::Ipv6Route
            | IpProtocol::Ipv6Frag
            | IpProtocol::Ipv6Opts => Err(Rejection::Unsupported),
            _ => Err(Rejection::NotTcp),
        };
    }
    let ip_len = IPV6_HEADER + usize::from(ip.payload_len());
    if ip_len < IPV6_HEADER + TCP_HEADER {
        return Err(Rejection::Malformed);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    checked_source(IpAddr::V6(src))?;
    parse_tcp(
        &packet[IPV6_HEADER..ip_len],
        IpAddr::V6(src),
        IpAddr::V6(dst),
        ip_len,
        checksum,
    )
}

fn parse_tcp(
    bytes: &[u8],
    src: IpAddr,
    dst: IpAddr,
    ip_len: usize,
    checksum: TcpChecksum,
) -> Result<Segment, Rejection> {
    let tcp = TcpPacket::new_checked(bytes).map_err(|_| Rejection::Malformed)?;
    let (s, d) = (IpAddress::from(src), IpAddress::from(dst));
    if checksum == TcpChecksum::Verify && !tcp.verify_checksum(&s, &d) {
        return Err(Rejection::Malformed);
    }
    // Full parse: options, flag combinations (SYN+FIN, SYN+RST, ...) and ports 0 are rejected
    // here, exactly as smoltcp would reject them, but before any state is touched.
    let repr = TcpRepr::parse(&tcp, &s, &d, &ChecksumCapabilities::ignored())
        .map_err(|_| Rejection::Malformed)?;
    Ok(Segment {
        client: SocketAddr::new(src, repr.src_port),
        server: SocketAddr::new(dst, repr.dst_port),
        control: repr.control,
        seq: repr.seq_number.0 as u32,
        ack: repr.ack_number.map(|a| a.0 as u32),
        payload_len: repr.payload.len(),
        ip_len,
    })
}

/// Fields of a TCP segment for [`build_segment`].
#[derive(Debug, Clone, Copy)]
pub struct SegmentSpec<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub control: TcpControl,
    pub seq: u32,
    pub ack: Option<u32>,
    pub window: u16,
    pub mss: Option<u16>,
    pub payload: &'a [u8],
}

/// Builds a complete IPv4 or IPv6 packet carrying one TCP segment, checksums included (replies
/// of the netstack itself; SYNs for tests, fuzz seeds and the benchmark's flood). `None` if the
/// two addresses are of different families.
pub fn build_segment(spec: &SegmentSpec<'_>) -> Option<Vec<u8>> {
    let repr = TcpRepr {
        src_port: spec.src.port(),
        dst_port: spec.dst.port(),
        control: spec.control,
        seq_number: TcpSeqNumber(spec.seq as i32),
        ack_number: spec.ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: spec.window,
        window_scale: None,
        max_seg_size: spec.mss,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: spec.payload,
    };
    let caps = ChecksumCapabilities::default();
    let tcp_len = repr.buffer_len();
    match (spec.src.ip(), spec.dst.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let ip = Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::Tcp,
                payload_len: tcp_len,
                hop_limit: 64,
            };
            let mut buf = vec![0u8; IPV4_HEADER + tcp_len];
            let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
            ip.emit(&mut p, &caps);
            let mut t = TcpPacket::new_unchecked(&mut buf[IPV4_HEADER..]);
            repr.emit(&mut t, &src.into(), &dst.into(), &caps);
            Some(buf)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let ip = Ipv6Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::Tcp,
                payload_len: tcp_len,
                hop_limit: 64,
            };
            let mut buf = vec![0u8; IPV6_HEADER + tcp_len];
            let mut p = Ipv6Packet::new_unchecked(&mut buf[..]);
            ip.emit(&mut p);
            let mut t = TcpPacket::new_unchecked(&mut buf[IPV6_HEADER..]);
            repr.emit(&mut t, &src.into(), &dst.into(), &caps);
            Some(buf)
        }
        _ => None,
    }
}

/// A connection-opening SYN from `client` to `server` announcing `mss`.
pub fn syn(client: SocketAddr, server: SocketAddr, seq: u32, mss: u16) -> Option<Vec<u8>> {
    build_segment(&SegmentSpec {
        src: client,
        dst: server,
        control: TcpControl::Syn,
        seq,
        ack: None,
        window: 65_535,
        mss: Some(mss),
        payload: &[],
    })
}

fn tcp_packet(
    server: SocketAddr,
    client: SocketAddr,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
) -> Option<Vec<u8>> {
    build_segment(&SegmentSpec {
        src: server,
        dst: client,
        control,
        seq,
        ack,
        window: 0,
        mss: None,
        payload: &[],
    })
}

/// The RST a closed port sends in answer to `seg` (RFC 9293 §3.10.7.1): for a segment with an
/// ACK, `RST` with the acknowledged sequence number; otherwise `RST|ACK` acknowledging the
/// segment. Never called for a segment that is itself a RST.
pub fn reset_for(seg: &Segment) -> Option<Vec<u8>> {
    match seg.ack {
        Some(ack) => tcp_packet(seg.server, seg.client, TcpControl::Rst, ack, None),
        None => {
            let len = seg.payload_len
                + usize::from(matches!(seg.control, TcpControl::Syn | TcpControl::Fin));
            let ack = seg.seq.wrapping_add(len as u32);
            tcp_packet(seg.server, seg.client, TcpControl::Rst, 0, Some(ack))
        }
    }
}

/// Which ICMP destination-unreachable message to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// ICMPv4 type 3 code 1 / ICMPv6 type 1 code 3.
    Host,
    /// ICMPv4 type 3 code 13 / ICMPv6 type 1 code 1.
    AdminProhibited,
}

/// An ICMP destination-unreachable about `original` (a validated packet from `seg.client` to
/// `seg.server`), sent from the server address back to the client. The quote is the original
/// IP header plus 8 bytes for IPv4 (RFC 792), and as much as fits in 1280 bytes for IPv6
/// (RFC 4443 §3.1).
pub fn unreachable_for(seg: &Segment, original: &[u8], kind: Unreachable) -> Option<Vec<u8>> {
    let original = original.get(..seg.ip_len)?;
    match (seg.server.ip(), seg.client.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let orig = Ipv4Packet::new_checked(original).ok()?;
            let header = Ipv4Repr::parse(&orig, &ChecksumCapabilities::ignored()).ok()?;
            let quoted = orig.payload();
            let data = &quoted[..quoted.len().min(8)];
            let reason = match kind {
                Unreachable::Host => Icmpv4DstUnreachable::HostUnreachable,
                Unreachable::AdminProhibited => Icmpv4DstUnreachable::CommProhibited,
            };
            let icmp = Icmpv4Repr::DstUnreachable {
                reason,
                header,
                data,
            };
            let ip = Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::Icmp,
                payload_len: icmp.buffer_len(),
                hop_limit: 64,
            };
            let caps = ChecksumCapabilities::default();
            let mut buf = vec![0u8; IPV4_HEADER + icmp.buffer_len()];
            ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &caps);
            icmp.emit(
                &mut Icmpv4Packet::new_unchecked(&mut buf[IPV4_HEADER..]),
                &caps,
            );
            Some(buf)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let orig = Ipv6Packet::new_checked(original).ok()?;
            let header = Ipv6Repr::parse(&orig).ok()?;
            // 1280 (minimum MTU) − 40 (IPv6) − 8 (ICMPv6 header) − 40 (quoted header).
            let quoted = orig.payload();
            let data = &quoted[..quoted.len().min(1280 - 40 - 8 - 40)];
            let reason = match kind {
                Unreachable::Host => Icmpv6DstUnreachable::AddrUnreachable,
                Unreachable::AdminProhibited => Icmpv6DstUnreachable::AdminProhibit,
            };
            let icmp = Icmpv6Repr::DstUnreachable {
                reason,
                header,
                data,
            };
            let ip = Ipv6Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::Icmpv6,
                payload_len: icmp.buffer_len(),
                hop_limit: 64,
            };
            let caps = ChecksumCapabilities::default();
            let mut buf = vec![0u8; IPV6_HEADER + icmp.buffer_len()];
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
            icmp.emit(
                &src,
                &dst,
                &mut Icmpv6Packet::new_unchecked(&mut buf[IPV6_HEADER..]),
                &caps,
            );
            Some(buf)
        }
        _ => None,
    }
}
