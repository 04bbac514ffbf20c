//! User-space TCP termination for the TUN, port-on-demand, on smoltcp: the netstack.
//!
//! Packets from the TUN enter through [`Netstack::handle_packet`]; packets for the TUN leave
//! through [`Netstack::poll_transmit`]. Only addresses the owner serves
//! ([`Netstack::add_address`]) are answered; everything else is dropped silently, so the node never
//! speaks for addresses it does not own.
//!
//! A SYN to (served address, any port) does not create a socket: it is **held** as raw bytes and
//! reported as [`Event::ConnectRequested`]. The owner answers with [`Netstack::accept`] (a socket
//! is created and the held SYN fed to it, so the client's SYN-ACK comes from a live connection) or
//! [`Netstack::refuse`] (a RST or an ICMP unreachable, per [`RefuseReason`]). Until then the
//! client sees nothing, which lets a load balancer try other instances first. Holds are bounded
//! in number and time ([`Config::max_held_syns`], [`Config::hold_timeout`]).
//!
//! Each accepted connection gets its own smoltcp `Interface` with a one-socket `SocketSet`.
//! smoltcp walks every socket of an interface for every packet (`docs/netstack.md`,
//! "Scaling"); with one socket per interface a packet costs one hash lookup of its 4-tuple plus
//! one socket, however many connections exist. Timers are kept in a `BTreeSet` ordered by
//! (deadline, connection), so only due connections are polled.
//!
//! After accept the connection is a byte stream: [`Netstack::read`] takes only as much as the
//! caller has room for, so smoltcp's receive buffer fills and the TCP window closes when the
//! consumer is slow (backpressure without an extra buffer); [`Netstack::write`] copies straight
//! into smoltcp's send buffer, so [`Netstack::shutdown`] (a FIN) can never overtake data.
//!
//! Determinism: no clock (time is a parameter), randomness from [`Config::seed`] (smoltcp's
//! `random_seed` per interface is derived from it and the connection id), maps are looked up but
//! never iterated where the order could be observed.

mod device;
pub mod packet;
pub mod testing;

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustc_hash::{FxHashMap, FxHasher};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{HardwareAddress, IpListenEndpoint, TcpControl};

use crate::time::Instant;
use device::QueueDevice;
pub use packet::{Rejection, TcpChecksum};
use packet::{Segment, Unreachable};
/// The smoltcp this module is built on, for owners and tests that drive client sockets.
pub use smoltcp;

/// Identifies one connection attempt for its whole life. Never reused within a [`Netstack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// How a held SYN is turned down. The errno a Linux client sees is in `docs/netstack.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// A TCP RST|ACK: the client's `connect` fails at once with ECONNREFUSED.
    Refused,
    /// ICMP host unreachable (v4 type 3 code 1, v6 type 1 code 3). Linux treats it as a soft
    /// error while connecting: the client keeps retrying and fails with EHOSTUNREACH on timeout.
    HostUnreachable,
    /// ICMP administratively prohibited (v4 type 3 code 13, v6 type 1 code 1): a hard error,
    /// EHOSTUNREACH (IPv4) or EACCES (IPv6) at once.
    Prohibited,
    /// Nothing is sent: the client retransmits and eventually times out (ETIMEDOUT).
    Silent,
}

/// Why a held SYN ended without an answer from the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbandonReason {
    /// [`Config::hold_timeout`] passed; the client got [`Config::hold_expiry_reply`].
    HoldExpired,
    /// The hold table was full and this was the oldest hold; nothing was sent (the client will
    /// retransmit its SYN, which is a new request).
    Evicted,
    /// The address was removed with [`Netstack::remove_address`]; nothing was sent.
    AddressRemoved,
}

/// Why an accepted connection ended abruptly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCause {
    /// The client sent a RST.
    Peer,
    /// The client stopped answering (retransmission, keep-alive or handshake timeout).
    TimedOut,
}

/// What the netstack tells its owner. Events are edge-triggered: `Readable` and `Writable` come
/// again only after a read or write found nothing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A SYN to `address:port` from `client` is held; answer with [`Netstack::accept`] or
    /// [`Netstack::refuse`].
    ConnectRequested {
        conn: ConnId,
        client: SocketAddr,
        address: IpAddr,
        port: u16,
    },
    /// A held SYN ended without the owner's answer; `conn` is gone.
    ConnectAbandoned { conn: ConnId, reason: AbandonReason },
    /// The three-way handshake of an accepted connection completed.
    Established { conn: ConnId },
    /// Data or the end of the client's stream can be read.
    Readable { conn: ConnId },
    /// A write that returned [`Error::WouldBlock`] (or took less than offered) can be retried.
    Writable { conn: ConnId },
    /// Both directions finished gracefully and the client's EOF was read; `conn` is gone.
    Closed { conn: ConnId },
    /// The connection was aborted (before or after the handshake); `conn` is gone and unread
    /// data is discarded.
    Reset { conn: ConnId, cause: ResetCause },
}

/// Why an owner call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// No such connection: never existed, or already ended (an event said so).
    UnknownConnection,
    /// `accept`/`refuse` on a connection that is not held (already answered).
    NotHeld,
    /// `read`/`write` on a connection that is still held (not accepted).
    NotAccepted,
    /// [`Config::max_connections`] sockets exist; the SYN stays held.
    ConnectionLimit,
    /// Nothing to read yet, or no room to write (or the handshake is not finished); an event
    /// follows.
    WouldBlock,
    /// Write after [`Netstack::shutdown`].
    Finished,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Error::UnknownConnection => "unknown or ended connection",
            Error::NotHeld => "connection is not held",
            Error::NotAccepted => "connection is not accepted yet",
            Error::ConnectionLimit => "connection limit reached",
            Error::WouldBlock => "operation would block",
            Error::Finished => "sending side already shut down",
        };
        f.write_str(s)
    }
}

impl std::error::Error for Error {}

/// Tunables. Every limit is enforced; defaults and the memory arithmetic are in
/// `docs/netstack.md`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of every random choice (smoltcp ISNs, rate-limiter slot hashing).
    pub seed: u64,
    /// IP MTU of the TUN; the MSS announced is MTU − 40 (IPv4) or MTU − 60 (IPv6).
    pub mtu: usize,
    /// smoltcp receive buffer per connection (also the largest TCP window offered).
    pub rx_buffer: usize,
    /// smoltcp send buffer per connection.
    pub tx_buffer: usize,
    /// Most sockets at once, including connections in TIME-WAIT (evicted first when full).
    pub max_connections: usize,
    /// Most SYNs held awaiting accept/refuse; when full the oldest hold is evicted.
    pub max_held_syns: usize,
    /// How long a SYN may be held before the netstack answers it by itself.
    pub hold_timeout: Duration,
    /// The answer given when a hold expires.
    pub hold_expiry_reply: RefuseReason,
    /// Sustained SYNs per second per client address (token bucket refill rate).
    pub syn_rate_per_client: u32,
    /// Token bucket depth per client address.
    pub syn_burst_per_client: u32,
    /// Token buckets, indexed by a seeded hash of the client address (fixed memory; clients
    /// sharing a slot share a budget).
    pub rate_limit_slots: usize,
    /// TCP keep-alive probe interval on accepted connections (`None`: off, not advised).
    pub keep_alive: Option<Duration>,
    /// A connection whose client is silent this long while we wait for it (data unacknowledged,
    /// keep-alive unanswered, handshake incomplete) is reset (`None`: never, not advised).
    pub timeout: Option<Duration>,
    /// smoltcp's delayed-ACK time (`None`: ACK every segment at once).
    pub ack_delay: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0,
            mtu: 1500,
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
            max_connections: 4096,
            max_held_syns: 1024,
            hold_timeout: Duration::from_secs(10),
            hold_expiry_reply: RefuseReason::Refused,
            syn_rate_per_client: 1000,
            syn_burst_per_client: 2000,
            rate_limit_slots: 4096,
            keep_alive: Some(Duration::from_secs(30)),
            timeout: Some(Duration::from_secs(120)),
            ack_delay: Some(Duration::from_millis(10)),
        }
    }
}

/// Bytes of bookkeeping per socket besides its buffers, an upper estimate used by
/// [`Config::memory_bound`]: the smoltcp interface, socket and set, our connection record,
/// the 4-tuple and connection map entries and a timer entry.
pub const CONN_OVERHEAD: usize = 4096;
/// Bytes of bookkeeping per held SYN besides the packet itself.
pub const HOLD_OVERHEAD: usize = 1024;

impl Config {
    /// Checks the values; the error names the field and the reason.
    pub fn validate(&self) -> Result<(), String> {
        if !(1280..=65_535).contains(&self.mtu) {
            return Err(format!(
                "mtu: must be between 1280 and 65535, got {}",
                self.mtu
            ));
        }
        for (name, v) in [("rx_buffer", self.rx_buffer), ("tx_buffer", self.tx_buffer)] {
            if !(1024..=(1 << 30)).contains(&v) {
                return Err(format!("{name}: must be between 1 KiB and 1 GiB, got {v}"));
            }
        }
        if self.max_connections == 0 {
            return Err("max_connections: must be positive".into());
        }
        if self.max_held_syns == 0 {
            return Err("max_held_syns: must be positive".into());
        }
        if self.hold_timeout.is_zero() {
            return Err("hold_timeout: must be positive".into());
        }
        if self.syn_rate_per_client == 0 || self.syn_burst_per_client == 0 {
            return Err("syn_rate_per_client, syn_burst_per_client: must be positive".into());
        }
        if self.rate_limit_slots == 0 || self.rate_limit_slots > (1 << 24) {
            return Err(format!(
                "rate_limit_slots: must be between 1 and {}, got {}",
                1 << 24,
                self.rate_limit_slots
            ));
        }
        Ok(())
    }

    /// Upper bound of the memory the netstack holds, in bytes: every socket with full buffers,
    /// every hold with an MTU-sized SYN, the rate-limit table. Queued output is not counted: it
    /// is bounded by the TCP windows and drained by the owner.
    pub fn memory_bound(&self) -> usize {
        self.max_connections * (self.rx_buffer + self.tx_buffer + CONN_OVERHEAD)
            + self.max_held_syns * (self.mtu + HOLD_OVERHEAD)
            + self.rate_limit_slots * std::mem::size_of::<Bucket>()
    }
}

/// Counters and gauges, for tests, metrics and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// SYNs held now.
    pub held: usize,
    /// smoltcp sockets now (each with its own interface), TIME-WAIT included.
    pub sockets: usize,
    /// Of those, connections the owner can still use.
    pub connections: usize,
    /// Bytes of held SYN packets now.
    pub held_bytes: usize,
    /// Packets dropped because their destination is not served.
    pub dropped_unserved: u64,
    /// Packets dropped by validation ([`Rejection`]).
    pub dropped_invalid: u64,
    /// SYNs dropped by the per-client rate limit.
    pub dropped_syn_rate: u64,
    /// SYNs dropped because [`Config::max_connections`] sockets exist and none is in TIME-WAIT.
    pub dropped_syn_conn_limit: u64,
    /// Holds evicted because [`Config::max_held_syns`] were held.
    pub evicted_holds: u64,
    /// Retransmitted SYNs for a 4-tuple already held or connected.
    pub duplicate_syns: u64,
    /// TIME-WAIT sockets removed to let a new SYN on the same 4-tuple or within the limit in.
    pub time_wait_evictions: u64,
    /// RSTs sent for segments matching no connection.
    pub resets_for_unknown: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FourTuple {
    client: SocketAddr,
    server: SocketAddr,
}

/// A token bucket in micro-tokens, refilled on the core clock.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    micro_tokens: u64,
    last: Instant,
    used: bool,
}

struct Held {
    syn: Vec<u8>,
    seg: Segment,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepted; SYN-ACK sent, waiting for the client's ACK.
    Handshake,
    /// The owner may read and write.
    Open,
    /// The owner saw `Closed`; the socket stays until smoltcp's TIME-WAIT ends.
    Lingering,
}

struct Open {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    phase: Phase,
    /// The next arrival of data or EOF raises `Readable`.
    read_armed: bool,
    /// A write came up short: the next free space raises `Writable`.
    write_wanted: bool,
    /// The owner read the client's EOF.
    eof_read: bool,
    /// The owner called `shutdown`.
    shut: bool,
    /// The client's FIN was seen (any state after it).
    peer_fin: bool,
}

enum State {
    Held(Held),
    Open(Box<Open>),
}

struct Conn {
    tuple: FourTuple,
    state: State,
    /// The deadline registered in `Netstack::timers`, if any.
    timer: Option<Instant>,
    dirty: bool,
}

/// The netstack. See the module documentation.
pub struct Netstack {
    cfg: Config,
    served: BTreeSet<IpAddr>,
    conns: FxHashMap<ConnId, Conn>,
    by_tuple: FxHashMap<FourTuple, ConnId>,
    timers: BTreeSet<(Instant, ConnId)>,
    /// Held connections in arrival order (lazily pruned): eviction picks the oldest.
    held_order: VecDeque<ConnId>,
    /// Connections that entered TIME-WAIT, oldest first (lazily pruned).
    time_wait_order: VecDeque<ConnId>,
    /// Connections touched by owner calls, polled by the next `poll_transmit`.
    dirty: Vec<ConnId>,
    output: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    buckets: Vec<Bucket>,
    next_id: u64,
    stats: Stats,
}

fn smol_now(now: Instant) -> SmolInstant {
    SmolInstant::from_micros(i64::try_from(now.as_micros()).unwrap_or(i64::MAX))
}

fn smol_duration(d: Duration) -> SmolDuration {
    SmolDuration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn core_instant(t: SmolInstant) -> Instant {
    Instant::from_micros(u64::try_from(t.total_micros()).unwrap_or(0))
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn peer_finished(state: tcp::State) -> bool {
    matches!(
        state,
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    )
}

impl Netstack {
    /// A netstack serving no address yet. Panics if `cfg` does not [`Config::validate`]: configs
    /// come from the owner, not the network.
    pub fn new(cfg: Config) -> Netstack {
        if let Err(e) = cfg.validate() {
            panic!("invalid netstack config: {e}");
        }
        Netstack {
            buckets: vec![Bucket::default(); cfg.rate_limit_slots],
            cfg,
            served: BTreeSet::new(),
            conns: FxHashMap::default(),
            by_tuple: FxHashMap::default(),
            timers: BTreeSet::new(),
            held_order: VecDeque::new(),
            time_wait_order: VecDeque::new(),
            dirty: Vec::new(),
            output: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 1,
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Starts answering SYNs to `address`. Returns false if it was served already.
    pub fn add_address(&mut self, address: IpAddr) -> bool {
        self.served.insert(address)
    }

    /// Stops answering new SYNs to `address`: its held SYNs are abandoned
    /// ([`AbandonReason::AddressRemoved`]); accepted connections go on until they end (the owner
    /// may [`Netstack::reset`] them). Returns false if it was not served.
    pub fn remove_address(&mut self, address: IpAddr) -> bool {
        if !self.served.remove(&address) {
            return false;
        }
        let held: Vec<ConnId> = self
            .held_order
            .iter()
            .copied()
            .filter(|id| {
                matches!(self.conns.get(id), Some(c) if matches!(c.state, State::Held(_)) && c.tuple.server.ip() == address)
            })
            .collect();
        for id in held {
            self.remove_conn(id);
            self.events.push_back(Event::ConnectAbandoned {
                conn: id,
                reason: AbandonReason::AddressRemoved,
            });
        }
        true
    }

    /// Served addresses, in order.
    pub fn addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.served.iter()
    }

    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Bytes held now by the structures [`Config::memory_bound`] bounds, estimated the same way.
    pub fn memory_in_use(&self) -> usize {
        self.stats.sockets * (self.cfg.rx_buffer + self.cfg.tx_buffer + CONN_OVERHEAD)
            + self.stats.held * HOLD_OVERHEAD
            + self.stats.held_bytes
            + self.buckets.len() * std::mem::size_of::<Bucket>()
    }

    /// The client and the served endpoint of a live connection.
    pub fn endpoints(&self, conn: ConnId) -> Option<(SocketAddr, SocketAddr)> {
        self.conns
            .get(&conn)
            .map(|c| (c.tuple.client, c.tuple.server))
    }

    /// The smoltcp TCP state of an accepted connection, for diagnostics and tests.
    pub fn tcp_state(&self, conn: ConnId) -> Option<tcp::State> {
        match &self.conns.get(&conn)?.state {
            State::Held(_) => None,
            State::Open(o) => Some(o.sockets.get::<tcp::Socket>(o.handle).state()),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Input from the TUN.

    /// Feeds one packet read from the TUN. Invalid packets and packets to unserved addresses
    /// are dropped (counted in [`Stats`]); nothing here panics on any input.
    pub fn handle_packet(&mut self, packet: &[u8], now: Instant) {
        self.handle_packet_with(packet, TcpChecksum::Verify, now);
    }

    /// [`Netstack::handle_packet`] for a packet whose TCP checksum the source vouches for (or
    /// not): a TUN device with checksum offload hands over the packets this host's TCP made
    /// without computing their checksums at all.
    pub fn handle_packet_with(&mut self, packet: &[u8], checksum: TcpChecksum, now: Instant) {
        let seg = match packet::parse_with(packet, checksum) {
            Ok(seg) => seg,
            Err(_) => {
                self.stats.dropped_invalid += 1;
                return;
            }
        };
        let packet = &packet[..seg.ip_len];
        let tuple = FourTuple {
            client: seg.client,
            server: seg.server,
        };
        let known = self.by_tuple.get(&tuple).copied();
        // Connections accepted while the address was served go on after it is removed; nothing
        // else to an unserved address is ever answered.
        if known.is_none() && !self.served.contains(&seg.server.ip()) {
            self.stats.dropped_unserved += 1;
            return;
        }
        if let Some(id) = known {
            let existing = match self.conns.get(&id).map(|c| &c.state) {
                None => None,
                Some(State::Held(_)) => Some(None),
                Some(State::Open(o)) => Some(Some(o.sockets.get::<tcp::Socket>(o.handle).state())),
            };
            match existing {
                None => {
                    self.by_tuple.remove(&tuple);
                }
                Some(None) => {
                    // A retransmitted SYN (or anything else) for a held SYN: the owner has not
                    // decided yet, so nothing is answered and no second request is raised.
                    if seg.is_syn() {
                        self.stats.duplicate_syns += 1;
                    }
                    return;
                }
                Some(Some(state)) => {
                    let stale = matches!(
                        state,
                        tcp::State::TimeWait | tcp::State::Closed | tcp::State::Listen
                    );
                    if !(seg.is_syn() && stale) {
                        if seg.is_syn() {
                            self.stats.duplicate_syns += 1;
                        }
                        self.poll_conn(id, Some(packet), seg.control == TcpControl::Rst, now);
                        return;
                    }
                    // A new SYN on a 4-tuple whose old connection is in TIME-WAIT: the old
                    // socket would drop it and leave the client in SYN-SENT, so it goes.
                    self.stats.time_wait_evictions += 1;
                    self.remove_conn(id);
                }
            }
        }
        if !self.served.contains(&seg.server.ip()) {
            self.stats.dropped_unserved += 1;
        } else if seg.is_syn() {
            self.new_syn(seg, packet, now);
        } else if seg.control != TcpControl::Rst {
            // A closed port answers anything but a RST with a RST.
            if let Some(rst) = packet::reset_for(&seg) {
                self.stats.resets_for_unknown += 1;
                self.output.push_back(rst);
            }
        }
    }

    fn take_token(&mut self, client: IpAddr, now: Instant) -> bool {
        let mut h = FxHasher::default();
        client.hash(&mut h);
        let slot = (mix(h.finish() ^ self.cfg.seed) % self.buckets.len() as u64) as usize;
        let rate = u64::from(self.cfg.syn_rate_per_client);
        let cap = u64::from(self.cfg.syn_burst_per_client) * 1_000_000;
        let b = &mut self.buckets[slot];
        if !b.used {
            *b = Bucket {
                micro_tokens: cap,
                last: now,
                used: true,
            };
        }
        let elapsed = u64::try_from((now - b.last).as_micros()).unwrap_or(u64::MAX);
        b.micro_tokens = b
            .micro_tokens
            .saturating_add(elapsed.saturating_mul(rate))
            .min(cap);
        b.last = now;
        if b.micro_tokens >= 1_000_000 {
            b.micro_tokens -= 1_000_000;
            true
        } else {
            false
        }
    }

    fn new_syn(&mut self, seg: Segment, packet: &[u8], now: Instant) {
        if packet.len() > self.cfg.mtu {
            self.stats.dropped_invalid += 1;
            return;
        }
        if !self.take_token(seg.client.ip(), now) {
            self.stats.dropped_syn_rate += 1;
            return;
        }
        if self.stats.sockets >= self.cfg.max_connections && !self.evict_time_wait() {
            // Like a full accept queue: drop, the client retransmits later.
            self.stats.dropped_syn_conn_limit += 1;
            return;
        }
        while self.stats.held >= self.cfg.max_held_syns {
            let Some(oldest) = self.held_order.pop_front() else {
                break;
            };
            if matches!(self.conns.get(&oldest), Some(c) if matches!(c.state, State::Held(_))) {
                self.remove_conn(oldest);
                self.stats.evicted_holds += 1;
                self.events.push_back(Event::ConnectAbandoned {
                    conn: oldest,
                    reason: AbandonReason::Evicted,
                });
            }
        }
        let id = ConnId(self.next_id);
        self.next_id += 1;
        let tuple = FourTuple {
            client: seg.client,
            server: seg.server,
        };
        let deadline = now + self.cfg.hold_timeout;
        self.stats.held += 1;
        self.stats.held_bytes += packet.len();
        self.conns.insert(
            id,
            Conn {
                tuple,
                state: State::Held(Held {
                    syn: packet.to_vec(),
                    seg,
                    deadline,
                }),
                timer: None,
                dirty: false,
            },
        );
        self.by_tuple.insert(tuple, id);
        self.held_order.push_back(id);
        self.set_timer(id, Some(deadline));
        self.events.push_back(Event::ConnectRequested {
            conn: id,
            client: seg.client,
            address: seg.server.ip(),
            port: seg.server.port(),
        });
    }

    /// Removes the oldest socket in TIME-WAIT, if any; true if one was removed.
    fn evict_time_wait(&mut self) -> bool {
        while let Some(id) = self.time_wait_order.pop_front() {
            if self.tcp_state(id) == Some(tcp::State::TimeWait) {
                self.remove_conn(id);
                self.stats.time_wait_evictions += 1;
                return true;
            }
        }
        false
    }

    // ---------------------------------------------------------------------------------------
    // Owner decisions.

    /// Accepts a held SYN: a socket is created for it and the SYN-ACK sent.
    /// [`Error::ConnectionLimit`] leaves the SYN held (refuse it, or retry after a connection
    /// ends).
    pub fn accept(&mut self, conn: ConnId, now: Instant) -> Result<(), Error> {
        match self.conns.get(&conn).map(|c| &c.state) {
            None => return Err(Error::UnknownConnection),
            Some(State::Open(_)) => return Err(Error::NotHeld),
            Some(State::Held(_)) => {}
        }
        if self.stats.sockets >= self.cfg.max_connections && !self.evict_time_wait() {
            return Err(Error::ConnectionLimit);
        }
        let c = self.conns.get_mut(&conn).expect("checked above");
        let State::Held(held) = &mut c.state else {
            unreachable!("checked above")
        };
        // The state becomes `Open` below; only the SYN's bytes are needed from the hold.
        let syn = std::mem::take(&mut held.syn);
        self.stats.held -= 1;
        self.stats.held_bytes -= syn.len();

        let mut dev = QueueDevice {
            rx: None,
            tx: &mut self.output,
            mtu: self.cfg.mtu,
            verify_rx: false,
        };
        let mut iface_cfg = IfaceConfig::new(HardwareAddress::Ip);
        iface_cfg.random_seed = mix(self.cfg.seed ^ mix(conn.0));
        let mut iface = Interface::new(iface_cfg, &mut dev, smol_now(now));
        iface.set_any_ip(true);
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; self.cfg.rx_buffer]),
            tcp::SocketBuffer::new(vec![0u8; self.cfg.tx_buffer]),
        );
        socket.set_nagle_enabled(false);
        socket.set_keep_alive(self.cfg.keep_alive.map(smol_duration));
        socket.set_timeout(self.cfg.timeout.map(smol_duration));
        socket.set_ack_delay(self.cfg.ack_delay.map(smol_duration));
        let endpoint = IpListenEndpoint {
            addr: Some(c.tuple.server.ip().into()),
            port: c.tuple.server.port(),
        };
        let listening = socket.listen(endpoint).is_ok();
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        c.state = State::Open(Box::new(Open {
            iface,
            sockets,
            handle,
            phase: Phase::Handshake,
            read_armed: true,
            write_wanted: false,
            eof_read: false,
            shut: false,
            peer_fin: false,
        }));
        self.stats.sockets += 1;
        self.stats.connections += 1;
        if !listening {
            // Only port 0 fails to listen, and `packet::parse` rejects port 0.
            self.end_conn(conn, Some(ResetCause::Peer));
            return Ok(());
        }
        // The socket exists before its SYN is fed, on the same call: no window in which the SYN
        // could meet no socket and be answered with a RST.
        self.poll_conn(conn, Some(&syn), false, now);
        Ok(())
    }

    /// Refuses a held SYN with the reply `reason` names.
    pub fn refuse(&mut self, conn: ConnId, reason: RefuseReason) -> Result<(), Error> {
        match self.conns.get(&conn).map(|c| &c.state) {
            None => return Err(Error::UnknownConnection),
            Some(State::Open(_)) => return Err(Error::NotHeld),
            Some(State::Held(_)) => {}
        }
        let c = self.remove_conn(conn).expect("checked above");
        if let State::Held(held) = c.state {
            self.reply_refused(&held, reason);
        }
        Ok(())
    }

    fn reply_refused(&mut self, held: &Held, reason: RefuseReason) {
        let reply = match reason {
            RefuseReason::Refused => packet::reset_for(&held.seg),
            RefuseReason::HostUnreachable => {
                packet::unreachable_for(&held.seg, &held.syn, Unreachable::Host)
            }
            RefuseReason::Prohibited => {
                packet::unreachable_for(&held.seg, &held.syn, Unreachable::AdminProhibited)
            }
            RefuseReason::Silent => None,
        };
        if let Some(p) = reply {
            self.output.push_back(p);
        }
    }

    // ---------------------------------------------------------------------------------------
    // The byte stream of an accepted connection.

    fn open_mut(&mut self, conn: ConnId) -> Result<&mut Open, Error> {
        match self.conns.get_mut(&conn).map(|c| &mut c.state) {
            None => Err(Error::UnknownConnection),
            Some(State::Held(_)) => Err(Error::NotAccepted),
            Some(State::Open(o)) if o.phase == Phase::Lingering => Err(Error::UnknownConnection),
            Some(State::Open(o)) => Ok(o),
        }
    }

    fn mark_dirty(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(conn);
            }
        }
    }

    /// Reads up to `buf.len()` bytes. `Ok(0)` with a non-empty `buf` is the client's EOF (a
    /// half-close: writing still works). Only what fits in `buf` is taken from smoltcp, so a
    /// slow reader closes the TCP window.
    pub fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, Error> {
        let mut filled = 0;
        self.read_with(conn, buf.len(), |data| {
            buf[filled..filled + data.len()].copy_from_slice(data);
            filled += data.len();
        })
    }

    /// Like [`Netstack::read`], but appends up to `max` bytes to `out`: a caller that hands the
    /// bytes on in an owned buffer saves the copy through a scratch buffer.
    pub fn read_append(
        &mut self,
        conn: ConnId,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<usize, Error> {
        out.reserve(max.min(self.readable_bytes(conn)));
        self.read_with(conn, max, |data| out.extend_from_slice(data))
    }

    /// Takes up to `max` bytes from smoltcp's receive buffer, handing each contiguous piece of
    /// its ring to `sink`; the result as for [`Netstack::read`].
    fn read_with(
        &mut self,
        conn: ConnId,
        max: usize,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<usize, Error> {
        let open = self.open_mut(conn)?;
        if open.phase == Phase::Handshake {
            return Err(Error::WouldBlock);
        }
        let socket = open.sockets.get_mut::<tcp::Socket>(open.handle);
        let mut taken = 0;
        let mut failed = None;
        // The ring may wrap: at most two contiguous pieces.
        for _ in 0..2 {
            if taken == max {
                break;
            }
            let piece = socket.recv(|data| {
                let n = data.len().min(max - taken);
                sink(&data[..n]);
                (n, n)
            });
            match piece {
                Ok(0) => break,
                Ok(n) => taken += n,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let result = match failed {
            _ if taken > 0 => {
                if socket.recv_queue() == 0 {
                    open.read_armed = true;
                }
                Ok(taken)
            }
            None if max == 0 => Ok(0),
            None => {
                open.read_armed = true;
                Err(Error::WouldBlock)
            }
            Some(tcp::RecvError::Finished) => {
                open.eof_read = true;
                Ok(0)
            }
            Some(tcp::RecvError::InvalidState) => {
                // Not readable yet (or any more): wait for the next event.
                open.read_armed = true;
                Err(Error::WouldBlock)
            }
        };
        // A read may open the window (smoltcp sends the update) or complete a graceful close.
        self.mark_dirty(conn);
        result
    }

    /// Bytes readable now without blocking.
    pub fn readable_bytes(&self, conn: ConnId) -> usize {
        match self.conns.get(&conn).map(|c| &c.state) {
            Some(State::Open(o)) => o.sockets.get::<tcp::Socket>(o.handle).recv_queue(),
            _ => 0,
        }
    }

    /// Writes up to `data.len()` bytes into the send buffer; returns how many were taken.
    /// [`Error::WouldBlock`] when none fit (a `Writable` event follows).
    pub fn write(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, Error> {
        let open = self.open_mut(conn)?;
        if open.shut {
            return Err(Error::Finished);
        }
        if open.phase == Phase::Handshake {
            open.write_wanted = true;
            return Err(Error::WouldBlock);
        }
        let socket = open.sockets.get_mut::<tcp::Socket>(open.handle);
        let n = socket.send_slice(data).unwrap_or(0);
        if n < data.len() {
            open.write_wanted = true;
        }
        if n > 0 {
            self.mark_dirty(conn);
        }
        if n == 0 && !data.is_empty() {
            return Err(Error::WouldBlock);
        }
        Ok(n)
    }

    /// Half-closes: a FIN follows every byte already written. Reading goes on.
    pub fn shutdown(&mut self, conn: ConnId) -> Result<(), Error> {
        let open = self.open_mut(conn)?;
        if !open.shut {
            open.shut = true;
            open.sockets.get_mut::<tcp::Socket>(open.handle).close();
            self.mark_dirty(conn);
        }
        Ok(())
    }

    /// Aborts the connection: the client gets a RST, unread and unsent data is discarded, and
    /// `conn` is gone at once (no event).
    pub fn reset(&mut self, conn: ConnId, now: Instant) -> Result<(), Error> {
        self.open_mut(conn)?;
        if let Some(State::Open(open)) = self.conns.get_mut(&conn).map(|c| &mut c.state) {
            open.sockets.get_mut::<tcp::Socket>(open.handle).abort();
            let mut dev = QueueDevice {
                rx: None,
                tx: &mut self.output,
                mtu: self.cfg.mtu,
                verify_rx: false,
            };
            open.iface
                .poll_egress(smol_now(now), &mut dev, &mut open.sockets);
        }
        self.remove_conn(conn);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Output and timers.

    /// The next packet for the TUN, after flushing what owner calls produced (window updates,
    /// written data, FINs).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.dirty);
            for id in &dirty {
                if let Some(c) = self.conns.get_mut(id) {
                    c.dirty = false;
                    self.poll_conn(*id, None, false, now);
                }
            }
            let mut dirty = dirty;
            dirty.clear();
            if self.dirty.is_empty() {
                self.dirty = dirty;
            }
        }
        self.output.pop_front()
    }

    /// Whether packets are queued (without flushing owner calls).
    pub fn has_output(&self) -> bool {
        !self.output.is_empty() || !self.dirty.is_empty()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant at which [`Netstack::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Runs every timer due at `now`: retransmissions, delayed ACKs, keep-alives, timeouts,
    /// TIME-WAIT ends and hold expiries.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(&(t, id)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            if let Some(c) = self.conns.get_mut(&id) {
                c.timer = None;
            }
            due.push(id);
        }
        for id in due {
            let Some(c) = self.conns.get(&id) else {
                continue;
            };
            match &c.state {
                State::Held(h) if h.deadline <= now => {
                    let c = self.remove_conn(id).expect("present");
                    if let State::Held(held) = c.state {
                        self.reply_refused(&held, self.cfg.hold_expiry_reply);
                    }
                    self.events.push_back(Event::ConnectAbandoned {
                        conn: id,
                        reason: AbandonReason::HoldExpired,
                    });
                }
                State::Held(h) => {
                    let d = h.deadline;
                    self.set_timer(id, Some(d));
                }
                State::Open(_) => self.poll_conn(id, None, false, now),
            }
        }
    }

    fn set_timer(&mut self, id: ConnId, at: Option<Instant>) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.timer == at {
            return;
        }
        if let Some(old) = c.timer.take() {
            self.timers.remove(&(old, id));
        }
        if let Some(t) = at {
            self.timers.insert((t, id));
            c.timer = Some(t);
        }
    }

    /// Polls one connection's interface (feeding `packet` if any), then turns its state into
    /// events and reschedules its timer.
    fn poll_conn(&mut self, id: ConnId, packet: Option<&[u8]>, rst: bool, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let State::Open(open) = &mut c.state else {
            return;
        };
        let mut dev = QueueDevice {
            rx: packet,
            tx: &mut self.output,
            mtu: self.cfg.mtu,
            verify_rx: false,
        };
        let t = smol_now(now);
        let before = open.sockets.get::<tcp::Socket>(open.handle).state();
        open.iface.poll(t, &mut dev, &mut open.sockets);

        let socket = open.sockets.get::<tcp::Socket>(open.handle);
        let state = socket.state();
        // smoltcp closes a socket without input only when it gives up (retransmission or
        // keep-alive timeout): reaching CLOSED on a timer-only poll is an abort even from
        // LAST-ACK, where our FIN — and possibly data before it — was never acknowledged.
        let timed_out =
            packet.is_none() && state == tcp::State::Closed && before != tcp::State::Closed;
        let mut ended: Option<Option<ResetCause>> = None;
        let cause = if rst {
            ResetCause::Peer
        } else {
            ResetCause::TimedOut
        };
        if peer_finished(state) {
            open.peer_fin = true;
        }
        if open.phase == Phase::Handshake {
            match state {
                tcp::State::SynReceived => {}
                // A RST in SYN-RECEIVED puts a smoltcp socket back to LISTEN: for us the attempt
                // is over (and a listening socket must never linger).
                tcp::State::Listen | tcp::State::Closed => ended = Some(Some(cause)),
                _ => {
                    open.phase = Phase::Open;
                    self.events.push_back(Event::Established { conn: id });
                }
            }
        }
        if open.phase == Phase::Open && ended.is_none() {
            let socket = open.sockets.get::<tcp::Socket>(open.handle);
            let rx_empty = socket.recv_queue() == 0;
            let graceful_end = state == tcp::State::TimeWait
                || (state == tcp::State::Closed
                    && open.peer_fin
                    && open.shut
                    && !rst
                    && !timed_out);
            if state == tcp::State::Closed && !graceful_end || state == tcp::State::Listen {
                ended = Some(Some(cause));
            } else {
                if open.read_armed && (!rx_empty || open.peer_fin) {
                    open.read_armed = false;
                    self.events.push_back(Event::Readable { conn: id });
                }
                if open.write_wanted && socket.may_send() {
                    let free = socket.send_capacity() - socket.send_queue();
                    if free >= (socket.send_capacity() / 4).max(1) {
                        open.write_wanted = false;
                        self.events.push_back(Event::Writable { conn: id });
                    }
                }
                if graceful_end && open.eof_read && rx_empty {
                    if state == tcp::State::TimeWait {
                        open.phase = Phase::Lingering;
                        self.stats.connections -= 1;
                        self.time_wait_order.push_back(id);
                        self.events.push_back(Event::Closed { conn: id });
                    } else {
                        ended = Some(None);
                    }
                }
            }
        }
        if open.phase == Phase::Lingering && state != tcp::State::TimeWait {
            // TIME-WAIT over: the socket goes without a further event.
            self.remove_conn(id);
            return;
        }
        match ended {
            Some(reason) => self.end_conn(id, reason),
            None => {
                let next = open
                    .iface
                    .poll_at(t, &open.sockets)
                    .map(|at| core_instant(at).max(now));
                self.set_timer(id, next);
            }
        }
    }

    /// Ends an accepted connection the owner can still see, with `Closed` (None) or `Reset`.
    fn end_conn(&mut self, id: ConnId, reset: Option<ResetCause>) {
        if self.remove_conn(id).is_some() {
            self.events.push_back(match reset {
                None => Event::Closed { conn: id },
                Some(cause) => Event::Reset { conn: id, cause },
            });
        }
    }

    /// Forgets a connection and everything indexing it; frees its socket and interface.
    fn remove_conn(&mut self, id: ConnId) -> Option<Conn> {
        let mut c = self.conns.remove(&id)?;
        if self.by_tuple.get(&c.tuple) == Some(&id) {
            self.by_tuple.remove(&c.tuple);
        }
        if let Some(t) = c.timer.take() {
            self.timers.remove(&(t, id));
        }
        match &c.state {
            State::Held(h) => {
                self.stats.held -= 1;
                self.stats.held_bytes -= h.syn.len();
            }
            State::Open(o) => {
                self.stats.sockets -= 1;
                if o.phase != Phase::Lingering {
                    self.stats.connections -= 1;
                }
            }
        }
        // Keep the lazily pruned queues from growing past the live set under churn.
        if self.held_order.len() > 2 * self.stats.held + 64 {
            let conns = &self.conns;
            self.held_order
                .retain(|i| matches!(conns.get(i), Some(c) if matches!(c.state, State::Held(_))));
        }
        if self.time_wait_order.len() > 2 * self.stats.sockets + 64 {
            let conns = &self.conns;
            self.time_wait_order.retain(|i| conns.contains_key(i));
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// [`CONN_OVERHEAD`] is an estimate the memory bound relies on: check it covers the heap a
    /// connection holds besides its buffers (the boxed record with its interface, the socket in
    /// its set, a map entry in each of the two maps with hash-table slack, a timer entry).
    #[test]
    fn conn_overhead_covers_the_per_connection_structures() {
        let socket_slot = size_of::<tcp::Socket<'static>>() + 64;
        let maps = 2 * (size_of::<(ConnId, Conn)>() + size_of::<(FourTuple, ConnId)>());
        let timer = 2 * size_of::<(Instant, ConnId)>();
        let per = size_of::<Open>() + socket_slot + maps + timer;
        assert!(per <= CONN_OVERHEAD, "{per} > {CONN_OVERHEAD}");
        // And holds: the record plus map entries, besides the SYN bytes counted separately.
        let held = 2 * (size_of::<(ConnId, Conn)>() + size_of::<(FourTuple, ConnId)>())
            + 2 * size_of::<(Instant, ConnId)>()
            + size_of::<ConnId>();
        assert!(held <= HOLD_OVERHEAD, "{held} > {HOLD_OVERHEAD}");
        eprintln!("per connection {per} bytes, per hold {held} bytes");
    }
}
