//! A paired harness for the netstack: client smoltcp stacks play the kernel behind the TUN and
//! talk to a [`Netstack`] through seeded faulty packet links, on a simulated clock.
//!
//! Each [`PacketLink`] loses, duplicates, corrupts and delays (reorders) packets by a seeded
//! generator. Time moves only when the harness says: [`Harness::run_until`] jumps to the next
//! delivery or timer. Nothing here reads a clock or draws OS randomness, so a seed replays
//! exactly. The owner side is played by the harness too, as simply as a test needs
//! ([`Owner`]): accept everything, echo every byte back, or leave the decisions to the test.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use super::device::QueueDevice;
use super::{core_instant, smol_duration, smol_now, ConnId, Event, Netstack};
use crate::mux::testing::SplitMix64;
use crate::time::Instant;

/// Fault rates in parts per million of packets, and delays.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub loss_ppm: u32,
    pub duplicate_ppm: u32,
    pub corrupt_ppm: u32,
    /// A reordered packet is delayed by up to `jitter` more than the others.
    pub reorder_ppm: u32,
    pub latency: Duration,
    pub jitter: Duration,
}

impl Faults {
    /// No faults, no latency.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// A lossy, reordering, duplicating, corrupting link with 1 ms latency.
    pub fn chaos() -> Faults {
        Faults {
            loss_ppm: 20_000,
            duplicate_ppm: 10_000,
            corrupt_ppm: 10_000,
            reorder_ppm: 30_000,
            latency: Duration::from_millis(1),
            jitter: Duration::from_millis(5),
        }
    }
}

/// One direction of a simulated packet path.
#[derive(Debug)]
pub struct PacketLink {
    queue: BTreeMap<(Instant, u64), Vec<u8>>,
    sent: u64,
    rng: SplitMix64,
    pub faults: Faults,
    /// Packets handed to the link.
    pub packets: u64,
    /// When set, everything sent is lost (a vanished peer).
    pub cut: bool,
    /// FNV-1a over every packet handed to the link, in order: a transcript digest for
    /// determinism checks.
    pub digest: u64,
}

impl PacketLink {
    pub fn new(seed: u64, faults: Faults) -> PacketLink {
        PacketLink {
            queue: BTreeMap::new(),
            sent: 0,
            rng: SplitMix64::new(seed),
            faults,
            packets: 0,
            cut: false,
            digest: 0xcbf2_9ce4_8422_2325,
        }
    }

    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.rng.below(1_000_000) < u64::from(ppm)
    }

    pub fn send(&mut self, now: Instant, mut packet: Vec<u8>) {
        self.packets += 1;
        for b in &packet {
            self.digest = (self.digest ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        if self.cut || self.chance(self.faults.loss_ppm) {
            return;
        }
        if !packet.is_empty() && self.chance(self.faults.corrupt_ppm) {
            let i = self.rng.below(packet.len() as u64) as usize;
            packet[i] ^= 1 << self.rng.below(8);
        }
        let copies = if self.chance(self.faults.duplicate_ppm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = now + self.faults.latency;
            if self.chance(self.faults.reorder_ppm) {
                let jitter = self.faults.jitter.as_micros().max(1) as u64;
                at += Duration::from_micros(self.rng.below(jitter));
            }
            self.sent += 1;
            self.queue.insert((at, self.sent), packet.clone());
        }
    }

    pub fn next_delivery(&self) -> Option<Instant> {
        self.queue.first_key_value().map(|((t, _), _)| *t)
    }

    pub fn take_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        let (&(t, _), _) = self.queue.first_key_value()?;
        if t > now {
            return None;
        }
        self.queue.pop_first().map(|(_, p)| p)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// The destination address of a raw IP packet, if its header is long enough.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let b: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 => {
            let b: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// A smoltcp stack playing the client machine's kernel: one interface with one IPv4 and one
/// IPv6 address, any number of client sockets.
pub struct ClientStack {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    iface: Interface,
    sockets: SocketSet<'static>,
    out: VecDeque<Vec<u8>>,
    inbox: VecDeque<Vec<u8>>,
    mtu: usize,
    next_port: u16,
    pub buffer: usize,
}

impl ClientStack {
    pub fn new(seed: u64, v4: Ipv4Addr, v6: Ipv6Addr, mtu: usize) -> ClientStack {
        let mut out = VecDeque::new();
        let mut dev = QueueDevice {
            rx: None,
            tx: &mut out,
            mtu,
            verify_rx: true,
        };
        let mut cfg = IfaceConfig::new(HardwareAddress::Ip);
        cfg.random_seed = seed;
        let mut iface = Interface::new(cfg, &mut dev, smol_now(Instant::ZERO));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(v4), 32));
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(v6), 128));
        });
        // Everything goes out through the TUN: default routes via the own addresses.
        let _ = iface.routes_mut().add_default_ipv4_route(v4);
        let _ = iface.routes_mut().add_default_ipv6_route(v6);
        ClientStack {
            v4,
            v6,
            iface,
            sockets: SocketSet::new(Vec::new()),
            out,
            inbox: VecDeque::new(),
            mtu,
            next_port: 40_000,
            buffer: 64 * 1024,
        }
    }

    /// Starts a connection to `remote` from the next ephemeral port.
    pub fn connect(&mut self, remote: SocketAddr, now: Instant) -> SocketHandle {
        let port = self.next_port;
        self.next_port = if self.next_port == u16::MAX {
            40_000
        } else {
            self.next_port + 1
        };
        self.connect_from(port, remote, now)
    }

    /// Starts a connection to `remote` from `local_port`.
    pub fn connect_from(
        &mut self,
        local_port: u16,
        remote: SocketAddr,
        now: Instant,
    ) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; self.buffer]),
            tcp::SocketBuffer::new(vec![0u8; self.buffer]),
        );
        s.set_nagle_enabled(false);
        let local: IpAddress = match remote.ip() {
            IpAddr::V4(_) => self.v4.into(),
            IpAddr::V6(_) => self.v6.into(),
        };
        s.connect(self.iface.context(), remote, (local, local_port))
            .expect("client connect");
        let h = self.sockets.add(s);
        self.poll(now);
        h
    }

    pub fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    pub fn remove(&mut self, h: SocketHandle) {
        self.sockets.remove(h);
    }

    pub fn socket_count(&self) -> usize {
        self.sockets.iter().count()
    }

    pub fn owns(&self, addr: IpAddr) -> bool {
        addr == IpAddr::V4(self.v4) || addr == IpAddr::V6(self.v6)
    }

    pub fn deliver(&mut self, packet: Vec<u8>) {
        self.inbox.push_back(packet);
    }

    /// Processes every delivered packet, then sends what is due.
    pub fn poll(&mut self, now: Instant) {
        let t = smol_now(now);
        while let Some(p) = self.inbox.pop_front() {
            let mut dev = QueueDevice {
                rx: Some(&p),
                tx: &mut self.out,
                mtu: self.mtu,
                verify_rx: true,
            };
            self.iface.poll(t, &mut dev, &mut self.sockets);
        }
        let mut dev = QueueDevice {
            rx: None,
            tx: &mut self.out,
            mtu: self.mtu,
            verify_rx: true,
        };
        self.iface.poll(t, &mut dev, &mut self.sockets);
    }

    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.iface
            .poll_at(smol_now(now), &self.sockets)
            .map(core_instant)
    }

    pub fn take_output(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }
}

/// How the harness plays the netstack's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Only records events; the test accepts, refuses, reads and writes.
    Manual,
    /// Accepts every request at once; the test reads and writes.
    AcceptAll,
    /// Accepts every request and echoes every byte back; on the client's EOF, shuts down after
    /// the echo is written.
    Echo,
}

#[derive(Default)]
struct EchoState {
    pending: Vec<u8>,
    eof: bool,
    shut: bool,
}

/// A netstack, client stacks and the links between them, on one simulated clock.
pub struct Harness {
    pub now: Instant,
    pub netstack: Netstack,
    pub clients: Vec<ClientStack>,
    /// Clients → netstack.
    pub uplink: PacketLink,
    /// Netstack → clients.
    pub downlink: PacketLink,
    /// Every event the netstack raised, in order, since the test last drained them.
    pub events: Vec<Event>,
    pub owner: Owner,
    echo: BTreeMap<ConnId, EchoState>,
    /// Bytes the echo owner took from the netstack, over all connections.
    pub echoed: u64,
    /// Print every delivered packet's parsed header to stderr (debugging a failing seed).
    pub trace: bool,
}

impl Harness {
    /// A harness with `clients` client stacks (addresses 10.0.0.N and fd00::N).
    pub fn new(netstack: Netstack, clients: usize, faults: Faults, seed: u64) -> Harness {
        let mtu = netstack.config().mtu;
        let clients = (0..clients)
            .map(|i| {
                let n = u8::try_from(i + 1).expect("at most 255 clients");
                ClientStack::new(
                    seed ^ (0x1000 + i as u64),
                    Ipv4Addr::new(10, 0, 0, n),
                    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n)),
                    mtu,
                )
            })
            .collect();
        Harness {
            now: Instant::ZERO,
            netstack,
            clients,
            uplink: PacketLink::new(seed.wrapping_mul(3).wrapping_add(1), faults),
            downlink: PacketLink::new(seed.wrapping_mul(7).wrapping_add(2), faults),
            events: Vec::new(),
            owner: Owner::Manual,
            echo: BTreeMap::new(),
            echoed: 0,
            trace: false,
        }
    }

    /// Moves everything that is due at `now`: deliveries, stack polls, timers, owner actions.
    pub fn step(&mut self) {
        let now = self.now;
        while let Some(p) = self.uplink.take_due(now) {
            if self.trace {
                eprintln!("{now:?} up   {:?}", super::packet::parse(&p));
            }
            self.netstack.handle_packet(&p, now);
        }
        while let Some(p) = self.downlink.take_due(now) {
            if self.trace {
                eprintln!("{now:?} down {:?}", super::packet::parse(&p));
            }
            if let Some(dst) = destination(&p) {
                if let Some(c) = self.clients.iter_mut().find(|c| c.owns(dst)) {
                    c.deliver(p);
                }
            }
        }
        if self.netstack.poll_timeout().is_some_and(|t| t <= now) {
            self.netstack.handle_timeout(now);
        }
        self.run_owner();
        for c in &mut self.clients {
            c.poll(now);
            while let Some(p) = c.take_output() {
                self.uplink.send(now, p);
            }
        }
        while let Some(p) = self.netstack.poll_transmit(now) {
            self.downlink.send(now, p);
        }
    }

    fn run_owner(&mut self) {
        while let Some(ev) = self.netstack.poll_event() {
            match (&ev, self.owner) {
                (Event::ConnectRequested { conn, .. }, Owner::AcceptAll | Owner::Echo) => {
                    let _ = self.netstack.accept(*conn, self.now);
                    if self.owner == Owner::Echo {
                        self.echo.insert(*conn, EchoState::default());
                    }
                }
                (Event::Closed { conn } | Event::Reset { conn, .. }, Owner::Echo) => {
                    self.echo.remove(conn);
                }
                _ => {}
            }
            self.events.push(ev);
        }
        if self.owner == Owner::Echo {
            self.pump_echo();
        }
    }

    /// Echo owner: read into each connection's pending buffer while it is small (so a slow
    /// client closes the window), write it back, shut down after the client's EOF.
    fn pump_echo(&mut self) {
        let mut buf = vec![0u8; 16 * 1024];
        for (&conn, st) in self.echo.iter_mut() {
            loop {
                if !st.pending.is_empty() {
                    match self.netstack.write(conn, &st.pending) {
                        Ok(n) => {
                            st.pending.drain(..n);
                        }
                        Err(_) => break,
                    }
                }
                if st.eof || st.pending.len() >= 64 * 1024 {
                    break;
                }
                match self.netstack.read(conn, &mut buf) {
                    Ok(0) => st.eof = true,
                    Ok(n) => {
                        self.echoed += n as u64;
                        st.pending.extend_from_slice(&buf[..n]);
                    }
                    Err(_) => break,
                }
            }
            if st.eof && st.pending.is_empty() && !st.shut {
                st.shut = self.netstack.shutdown(conn).is_ok();
            }
        }
    }

    /// The next instant anything is due, if any.
    pub fn next_wakeup(&mut self) -> Option<Instant> {
        let now = self.now;
        let mut next = [
            self.uplink.next_delivery(),
            self.downlink.next_delivery(),
            self.netstack.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        for c in &mut self.clients {
            if let Some(t) = c.poll_at(now) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    /// Steps, jumping the clock to each next wake-up, until `done` holds or `limit` of simulated
    /// time has passed; returns whether `done` held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&mut Harness) -> bool,
    ) -> bool {
        let end = self.now + limit;
        let mut same_instant = 0u32;
        loop {
            self.step();
            if done(self) {
                return true;
            }
            let next = match self.next_wakeup() {
                Some(t) => t.max(self.now),
                None => end,
            };
            if next >= end {
                self.now = end;
                self.step();
                return done(self);
            }
            if next == self.now {
                same_instant += 1;
                if same_instant > 1000 {
                    // Something keeps asking for "now" without progress. The netstack must never
                    // do that (its driver would spin); a client stack may, and is moved past.
                    assert!(
                        self.netstack.poll_timeout() != Some(self.now),
                        "the netstack keeps asking to be polled at {:?} without progress",
                        self.now
                    );
                    self.now += Duration::from_micros(100);
                    same_instant = 0;
                }
            } else {
                same_instant = 0;
                self.now = next;
            }
        }
    }

    /// Runs for `d` of simulated time.
    pub fn advance(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }

    /// Drains the recorded events.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

/// Converts the core's duration to smoltcp's (for tests configuring client sockets).
pub fn to_smol(d: Duration) -> smoltcp::time::Duration {
    smol_duration(d)
}
