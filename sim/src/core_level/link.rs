//! A simulated link direction that gives the mux what it needs — a reliable, ordered byte pipe —
//! while the faults happen underneath, the way TCP hides a lossy path.
//!
//! Why a segment layer: the mux requires a reliable ordered pipe, so dropping or reordering
//! *bytes* under it would only test that it breaks when its contract is broken. Real pipes
//! fail differently: packets are lost, duplicated, reordered, corrupted and delayed, and the
//! transport turns that into delay, stalls and, when the path stays dead, a silent pipe. This
//! layer does the same: the sender cuts the session's bytes into numbered segments with a
//! checksum; each segment (and each ack) is subject to seeded loss, duplication, corruption
//! (caught by the checksum, then lost), latency plus jitter (which reorders) and a bandwidth
//! limit; the receiver reassembles in order and acks cumulatively; unacked segments are resent
//! after a timeout that backs off. A cut (partition) loses everything in that direction. What
//! the mux sees is exactly a TCP-like pipe: in order, intact, sometimes slow, sometimes silent.
//!
//! The self-test defect [`crate::Defect::CorruptOneByte`] flips one byte *after* this layer
//! (in the harness, between link and session), i.e. a transport bug the mux cannot detect by
//! itself: the end-to-end invariants must.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use svcnet_core::rng::SplitMix64;
use svcnet_core::time::Instant;

use crate::mix::Mix;

/// Segment payload size.
pub const MSS: usize = 1200;
/// Segments in flight before the sender waits for acks.
pub const WINDOW: usize = 64;
/// Header bytes counted against the bandwidth per packet.
const OVERHEAD: u64 = 40;

#[derive(Debug)]
enum Packet {
    Data { seq: u64, bytes: Bytes, sum: u32 },
    Ack { next: u64 },
}

fn checksum(b: &[u8]) -> u32 {
    let h = blake3::hash(b);
    u32::from_le_bytes([
        h.as_bytes()[0],
        h.as_bytes()[1],
        h.as_bytes()[2],
        h.as_bytes()[3],
    ])
}

/// Counters of one link direction.
#[derive(Debug, Default, Clone)]
pub struct LinkStats {
    pub segments: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub retransmits: u64,
    pub delivered_bytes: u64,
}

/// One direction of a connection: the sender's segment queue, the packets on the wire (data
/// forward, acks backward) and the receiver's reassembly.
pub struct SegLink {
    rng: SplitMix64,
    latency: Duration,
    jitter_ms: u64,
    loss: f64,
    dup: f64,
    corrupt: f64,
    bandwidth: u64,
    rto: Duration,
    // sender
    pending: BytesMut,
    next_seq: u64,
    unacked: BTreeMap<u64, (Bytes, Instant, u32)>,
    // wire: (arrival, order) -> packet
    wire: BTreeMap<(Instant, u64), Packet>,
    order: u64,
    free_at: Instant,
    // receiver
    expect: u64,
    ooo: BTreeMap<u64, Bytes>,
    ready: VecDeque<Bytes>,
    delivered: u64,
    pub stats: LinkStats,
}

impl SegLink {
    pub fn new(seed: u64, mix: &Mix) -> SegLink {
        let latency = Duration::from_millis(mix.latency_ms);
        let jitter = Duration::from_millis(mix.jitter_ms);
        // The timeout covers a round trip at worst jitter plus a full window queued behind the
        // bandwidth limit, so that retransmissions are (almost) never spurious.
        let queue = (WINDOW as u64 * (MSS as u64 + OVERHEAD) * 1_000_000)
            .checked_div(mix.bandwidth)
            .map_or(Duration::ZERO, Duration::from_micros);
        let rto = (latency + jitter) * 2 + queue * 2 + Duration::from_millis(20);
        SegLink {
            rng: SplitMix64::new(seed),
            latency,
            jitter_ms: mix.jitter_ms,
            loss: mix.loss,
            dup: mix.dup,
            corrupt: mix.corrupt,
            bandwidth: mix.bandwidth,
            rto,
            pending: BytesMut::new(),
            next_seq: 0,
            unacked: BTreeMap::new(),
            wire: BTreeMap::new(),
            order: 0,
            free_at: Instant::ZERO,
            expect: 0,
            ooo: BTreeMap::new(),
            ready: VecDeque::new(),
            delivered: 0,
            stats: LinkStats::default(),
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.below(1_000_000) as f64) < p * 1_000_000.0
    }

    /// How many more bytes the sender takes from its session now.
    pub fn room(&self) -> usize {
        (WINDOW.saturating_sub(self.unacked.len()) * MSS).saturating_sub(self.pending.len())
    }

    /// Queues bytes from the sending session.
    pub fn push(&mut self, data: &[Bytes]) {
        for d in data {
            self.pending.extend_from_slice(d);
        }
    }

    /// Whether the sender has nothing unacknowledged or unsent.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.unacked.is_empty()
    }

    /// Puts a packet on the wire at `now`; `cut` is the state of the direction it travels.
    fn transmit(&mut self, now: Instant, pkt: Packet, cut: bool) {
        let size = match &pkt {
            Packet::Data { bytes, .. } => bytes.len() as u64 + OVERHEAD,
            Packet::Ack { .. } => OVERHEAD,
        };
        // Serialisation: a packet leaves when the link is free (bandwidth limit).
        let mut depart = now;
        // Acks travel the other way and are tiny: they do not queue behind this direction's data.
        if self.bandwidth > 0 && matches!(pkt, Packet::Data { .. }) {
            depart = self.free_at.max(now);
            self.free_at = depart + Duration::from_micros(size * 1_000_000 / self.bandwidth);
        }
        if cut || self.chance(self.loss) {
            self.stats.lost += 1;
            return;
        }
        let mut pkt = pkt;
        if let Packet::Data { bytes, .. } = &mut pkt {
            if !bytes.is_empty() && self.chance(self.corrupt) {
                self.stats.corrupted += 1;
                let mut b = BytesMut::from(&bytes[..]);
                let i = self.rng.below(b.len() as u64) as usize;
                b[i] ^= 1 + self.rng.below(255) as u8;
                *bytes = b.freeze();
            }
        }
        let copies = if self.chance(self.dup) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for c in 0..copies {
            let jitter = if self.jitter_ms > 0 {
                Duration::from_micros(self.rng.below(self.jitter_ms * 1000))
            } else {
                Duration::ZERO
            };
            let at = depart + self.latency + jitter + Duration::from_micros(c);
            self.order += 1;
            let p = match (&pkt, c) {
                (Packet::Data { seq, bytes, sum }, _) => Packet::Data {
                    seq: *seq,
                    bytes: bytes.clone(),
                    sum: *sum,
                },
                (Packet::Ack { next }, _) => Packet::Ack { next: *next },
            };
            self.wire.insert((at, self.order), p);
        }
    }

    /// Sends new segments within the window and resends timed-out ones. `cut` is this
    /// direction's partition state.
    pub fn pump(&mut self, now: Instant, cut: bool) -> bool {
        let mut any = false;
        while !self.pending.is_empty() && self.unacked.len() < WINDOW {
            let n = self.pending.len().min(MSS);
            let bytes = self.pending.split_to(n).freeze();
            let seq = self.next_seq;
            self.next_seq += 1;
            let sum = checksum(&bytes);
            self.unacked.insert(seq, (bytes.clone(), now, 0));
            self.stats.segments += 1;
            self.transmit(now, Packet::Data { seq, bytes, sum }, cut);
            any = true;
        }
        let due: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, (_, at, tries))| *at + self.backoff(*tries) <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in due {
            let bytes = {
                let e = self.unacked.get_mut(&seq).expect("due segment");
                e.1 = now;
                e.2 += 1;
                e.0.clone()
            };
            self.stats.retransmits += 1;
            let sum = checksum(&bytes);
            self.transmit(now, Packet::Data { seq, bytes, sum }, cut);
            any = true;
        }
        any
    }

    /// Retransmission timeout after `tries` resends: doubling once, then flat. Kept short
    /// relative to the sessions' keep-alive timeout, so that loss alone (a few resends of one
    /// segment) stalls a session for less than it takes to declare the link dead.
    fn backoff(&self, tries: u32) -> Duration {
        self.rto * (1u32 << tries.min(1))
    }

    /// Stops loss, duplication and corruption (the liveness phase).
    pub fn heal_packet_faults(&mut self) {
        self.loss = 0.0;
        self.dup = 0.0;
        self.corrupt = 0.0;
    }

    /// Delivers the packets due at `now`. `cut` is this direction's partition state (data),
    /// `reverse_cut` the opposite direction's (acks).
    pub fn deliver(&mut self, now: Instant, reverse_cut: bool) -> bool {
        let mut any = false;
        while let Some(entry) = self.wire.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let pkt = entry.remove();
            any = true;
            match pkt {
                Packet::Ack { next } => {
                    while let Some(e) = self.unacked.first_entry() {
                        if *e.key() < next {
                            e.remove();
                        } else {
                            break;
                        }
                    }
                }
                Packet::Data { seq, bytes, sum } => {
                    if checksum(&bytes) != sum {
                        // The checksum catches it: as good as lost.
                        continue;
                    }
                    if seq >= self.expect {
                        self.ooo.insert(seq, bytes);
                    }
                    while let Some(b) = self.ooo.remove(&self.expect) {
                        self.expect += 1;
                        self.delivered += b.len() as u64;
                        self.stats.delivered_bytes += b.len() as u64;
                        self.ready.push_back(b);
                    }
                    let next = self.expect;
                    self.transmit(now, Packet::Ack { next }, reverse_cut);
                }
            }
        }
        any
    }

    /// Bytes ready for the receiving session, in order.
    pub fn take_ready(&mut self) -> Option<Bytes> {
        self.ready.pop_front()
    }

    /// The next instant at which this link has something to do.
    pub fn next_time(&self) -> Option<Instant> {
        let wire = self.wire.keys().next().map(|(t, _)| *t);
        let rto = self
            .unacked
            .values()
            .map(|(_, at, tries)| *at + self.backoff(*tries))
            .min();
        [wire, rto].into_iter().flatten().min()
    }
}
