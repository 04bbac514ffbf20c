//! Membership and failure detection: SWIM, by the `foca` crate, driven without I/O or clocks.
//!
//! foca is sans-IO (`no_std` + `alloc`): it takes its identity type, a codec, a random number
//! generator and a runtime that receives "send these bytes to member M" and "call me back in D"
//! (see the foca docs, `foca::Runtime`). Here:
//! - the identity is [`SwimId`]: the node id plus a *generation*; foca's `Identity::addr` is the
//!   node id, and a higher generation wins an address conflict, so a node that restarts (or was
//!   wrongly declared down and renews itself) replaces its old identity at once;
//! - the codec is a small fixed binary layout (`docs/registry.md` §5), bounds-checked;
//! - the generator is the core's seeded SplitMix64 behind `rand_core::RngCore`;
//! - the runtime queues packets (to become the registry's `poll_transmit`) and turns foca's
//!   relative timers into absolute instants kept in a `BTreeMap`, so time is always a parameter;
//! - custom broadcasts carry signed announcements: foca piggybacks them on its probes and
//!   gossip and re-disseminates what each receiver accepts, which spreads registry deltas to
//!   nodes that are not directly connected. The broadcast handler verifies each announcement
//!   (signature, authorization, freshness) *before* foca re-disseminates it, so forged or
//!   replayed ones stop at the first honest node.
//!
//! foca owns its broadcast handler and offers no accessor to it, so the handler and the
//! registry share one small state ([`GossipShared`]) behind `Arc<Mutex<…>>`: the registry is
//! the only user, the lock is never contended, and a poisoned lock is recovered, not unwrapped.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BufMut};
use foca::{
    BroadcastHandler, Codec, Foca, Header, Identity, Invalidates, Member, Message,
    OwnedNotification, Runtime, State, Timer,
};

use crate::identity::{NodeId, NODE_ID_LEN};
use crate::rng::SplitMix64;
use crate::time::Instant;

use super::announce::{peek_stamp, AnnounceError, Announcement, DecodeLimits, Stamp};

/// A node's SWIM identity: its node id and a generation (starts at the frontend's incarnation,
/// +1 on every automatic rejoin).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SwimId {
    /// The node.
    pub node: NodeId,
    /// Generation: higher replaces lower.
    pub generation: u64,
}

impl Identity for SwimId {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(SwimId {
            node: self.node,
            generation: self.generation.wrapping_add(1),
        })
    }

    fn addr(&self) -> NodeId {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Encoded length of a [`SwimId`].
const SWIM_ID_LEN: usize = NODE_ID_LEN + 8;

/// Why a foca packet did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwimCodecError(pub &'static str);

impl fmt::Display for SwimCodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed SWIM packet: {}", self.0)
    }
}

impl std::error::Error for SwimCodecError {}

/// The binary codec of foca headers and members (`docs/registry.md` §5).
///
/// Every packet names several identities (and up to hundreds in its membership updates);
/// validating a node id decompresses a curve point, so validated ids are remembered (up to
/// [`SWIM_ID_CACHE`] of them; the cache is emptied when full).
#[derive(Clone, Debug, Default)]
pub struct SwimCodec {
    valid: BTreeMap<[u8; NODE_ID_LEN], NodeId>,
}

/// Most validated node ids a [`SwimCodec`] remembers.
pub const SWIM_ID_CACHE: usize = 8192;

impl SwimCodec {
    fn node(&mut self, bytes: [u8; NODE_ID_LEN]) -> Result<NodeId, SwimCodecError> {
        if let Some(id) = self.valid.get(&bytes) {
            return Ok(*id);
        }
        let id = NodeId::from_bytes(bytes).map_err(|_| SwimCodecError("bad node id"))?;
        if self.valid.len() >= SWIM_ID_CACHE {
            self.valid.clear();
        }
        self.valid.insert(bytes, id);
        Ok(id)
    }

    fn get_id(&mut self, buf: &mut impl Buf) -> Result<SwimId, SwimCodecError> {
        if buf.remaining() < SWIM_ID_LEN {
            return Err(SwimCodecError("truncated identity"));
        }
        let mut node = [0u8; NODE_ID_LEN];
        buf.copy_to_slice(&mut node);
        Ok(SwimId {
            node: self.node(node)?,
            generation: buf.get_u64(),
        })
    }
}

fn put_id(buf: &mut impl BufMut, id: &SwimId) {
    buf.put_slice(id.node.as_bytes());
    buf.put_u64(id.generation);
}

fn get_u8(buf: &mut impl Buf) -> Result<u8, SwimCodecError> {
    if buf.remaining() < 1 {
        return Err(SwimCodecError("truncated"));
    }
    Ok(buf.get_u8())
}

fn get_u16(buf: &mut impl Buf) -> Result<u16, SwimCodecError> {
    if buf.remaining() < 2 {
        return Err(SwimCodecError("truncated"));
    }
    Ok(buf.get_u16())
}

impl Codec<SwimId> for SwimCodec {
    type Error = SwimCodecError;

    fn encode_header(
        &mut self,
        header: &Header<SwimId>,
        mut buf: impl BufMut,
    ) -> Result<(), SwimCodecError> {
        // Largest header: 2 ids + incarnation + tag + id + probe number.
        if buf.remaining_mut() < 3 * SWIM_ID_LEN + 4 {
            return Err(SwimCodecError("no room for the header"));
        }
        put_id(&mut buf, &header.src);
        buf.put_u16(header.src_incarnation);
        put_id(&mut buf, &header.dst);
        match &header.message {
            Message::Ping(n) => {
                buf.put_u8(0);
                buf.put_u8(*n);
            }
            Message::Ack(n) => {
                buf.put_u8(1);
                buf.put_u8(*n);
            }
            Message::PingReq {
                target,
                probe_number,
            } => {
                buf.put_u8(2);
                put_id(&mut buf, target);
                buf.put_u8(*probe_number);
            }
            Message::IndirectPing {
                origin,
                probe_number,
            } => {
                buf.put_u8(3);
                put_id(&mut buf, origin);
                buf.put_u8(*probe_number);
            }
            Message::IndirectAck {
                target,
                probe_number,
            } => {
                buf.put_u8(4);
                put_id(&mut buf, target);
                buf.put_u8(*probe_number);
            }
            Message::ForwardedAck {
                origin,
                probe_number,
            } => {
                buf.put_u8(5);
                put_id(&mut buf, origin);
                buf.put_u8(*probe_number);
            }
            Message::Announce => buf.put_u8(6),
            Message::Feed => buf.put_u8(7),
            Message::Gossip => buf.put_u8(8),
            Message::Broadcast => buf.put_u8(9),
            Message::TurnUndead => buf.put_u8(10),
        }
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<SwimId>, SwimCodecError> {
        let src = self.get_id(&mut buf)?;
        let src_incarnation = get_u16(&mut buf)?;
        let dst = self.get_id(&mut buf)?;
        let message = match get_u8(&mut buf)? {
            0 => Message::Ping(get_u8(&mut buf)?),
            1 => Message::Ack(get_u8(&mut buf)?),
            2 => Message::PingReq {
                target: self.get_id(&mut buf)?,
                probe_number: get_u8(&mut buf)?,
            },
            3 => Message::IndirectPing {
                origin: self.get_id(&mut buf)?,
                probe_number: get_u8(&mut buf)?,
            },
            4 => Message::IndirectAck {
                target: self.get_id(&mut buf)?,
                probe_number: get_u8(&mut buf)?,
            },
            5 => Message::ForwardedAck {
                origin: self.get_id(&mut buf)?,
                probe_number: get_u8(&mut buf)?,
            },
            6 => Message::Announce,
            7 => Message::Feed,
            8 => Message::Gossip,
            9 => Message::Broadcast,
            10 => Message::TurnUndead,
            _ => return Err(SwimCodecError("unknown message type")),
        };
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    fn encode_member(
        &mut self,
        member: &Member<SwimId>,
        mut buf: impl BufMut,
    ) -> Result<(), SwimCodecError> {
        // foca requires a clean buffer when the item does not fit.
        if buf.remaining_mut() < SWIM_ID_LEN + 3 {
            return Err(SwimCodecError("no room for a member"));
        }
        put_id(&mut buf, member.id());
        buf.put_u16(member.incarnation());
        buf.put_u8(match member.state() {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down => 2,
        });
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<SwimId>, SwimCodecError> {
        let id = self.get_id(&mut buf)?;
        let incarnation = get_u16(&mut buf)?;
        let state = match get_u8(&mut buf)? {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            _ => return Err(SwimCodecError("unknown member state")),
        };
        Ok(Member::new(id, incarnation, state))
    }
}

/// The core's seeded generator as a `rand_core` RNG (what foca draws from).
#[derive(Debug, Clone)]
pub struct SeededRng(SplitMix64);

impl rand_core::RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        (self.0.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.0.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Counters of announcements refused, wherever they arrived (foca broadcast or anti-entropy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RejectCounts {
    /// Signature did not verify, or the origin is not authorized.
    pub forged: u64,
    /// Older than what is held (replays).
    pub replayed: u64,
    /// Exactly what is held (normal with gossip: not an attack, counted for tuning).
    pub duplicates: u64,
    /// Longer than the configured limit, or more instances than allowed.
    pub oversized: u64,
    /// Did not decode.
    pub malformed: u64,
}

/// State shared by the registry and foca's broadcast handler.
#[derive(Debug)]
pub struct GossipShared {
    /// This node (its own announcements are never taken from others).
    pub own: NodeId,
    /// Decoding limits.
    pub limits: DecodeLimits,
    /// `None`: any origin with a valid signature; else only these (and `own`).
    pub authorized: Option<BTreeSet<NodeId>>,
    /// Newest stamp accepted per origin, by raw key bytes (mirrors the replica, tombstones
    /// included).
    pub seen: BTreeMap<[u8; NODE_ID_LEN], Stamp>,
    /// Announcements accepted from foca, to be applied to the replica.
    pub inbox: VecDeque<(Announcement, Vec<u8>)>,
    /// Refusals.
    pub rejected: RejectCounts,
}

/// The outcome of [`GossipShared::check`].
#[derive(Debug)]
pub enum Checked {
    /// Valid and newer than anything seen.
    Fresh(Announcement),
    /// Refused (and counted).
    Refused(AnnounceError),
    /// Not newer than what is held (counted as a replay or a duplicate).
    Stale,
}

impl GossipShared {
    /// Verifies `bytes` as an announcement for this node's replica, counting refusals. Does not
    /// record it as seen: the caller does when it stores it.
    pub fn check(&mut self, bytes: &[u8]) -> Checked {
        // Cheap checks first: a replay costs no signature verification.
        if let Some((origin, stamp)) = peek_stamp(bytes) {
            // Our own announcements come back through gossip: never taken from others.
            if origin == self.own.to_bytes() {
                self.rejected.duplicates += 1;
                return Checked::Stale;
            }
            match self.seen.get(&origin) {
                Some(held) if *held == stamp => {
                    self.rejected.duplicates += 1;
                    return Checked::Stale;
                }
                Some(held) if *held > stamp => {
                    self.rejected.replayed += 1;
                    return Checked::Stale;
                }
                _ => {}
            }
        }
        match Announcement::verify(bytes, self.limits) {
            Ok(a) => {
                let allowed = match &self.authorized {
                    None => true,
                    Some(set) => set.contains(&a.origin),
                };
                if allowed {
                    Checked::Fresh(a)
                } else {
                    self.rejected.forged += 1;
                    Checked::Refused(AnnounceError::BadSignature)
                }
            }
            Err(e) => {
                match e {
                    AnnounceError::BadSignature | AnnounceError::BadOrigin => {
                        self.rejected.forged += 1
                    }
                    AnnounceError::Oversized { .. } | AnnounceError::TooManyInstances { .. } => {
                        self.rejected.oversized += 1
                    }
                    _ => self.rejected.malformed += 1,
                }
                Checked::Refused(e)
            }
        }
    }
}

pub(crate) fn lock(shared: &Mutex<GossipShared>) -> MutexGuard<'_, GossipShared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// foca's key for a broadcast in flight: newer announcements of the same origin replace older
/// ones in foca's dissemination backlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BroadcastKey {
    origin: [u8; NODE_ID_LEN],
    stamp: Stamp,
}

impl Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.origin == other.origin && self.stamp >= other.stamp
    }
}

/// foca's broadcast handler: verifies and queues announcements.
#[derive(Debug)]
pub struct Gossip {
    shared: Arc<Mutex<GossipShared>>,
}

/// Never produced: refusals are counted, not reported to foca as errors, so that one bad item
/// does not stop foca from reading the rest of the packet.
#[derive(Debug)]
pub struct GossipError;

impl fmt::Display for GossipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("gossip error")
    }
}

impl std::error::Error for GossipError {}

impl BroadcastHandler<SwimId> for Gossip {
    type Key = BroadcastKey;
    type Error = GossipError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&SwimId>,
    ) -> Result<Option<BroadcastKey>, GossipError> {
        let mut shared = lock(&self.shared);
        if sender.is_none() {
            // Our own announcement, added by the registry: always disseminate it.
            return Ok(peek_stamp(data).map(|(origin, stamp)| BroadcastKey { origin, stamp }));
        }
        match shared.check(data) {
            Checked::Fresh(a) => {
                let key = BroadcastKey {
                    origin: a.origin.to_bytes(),
                    stamp: a.stamp,
                };
                shared.seen.insert(a.origin.to_bytes(), a.stamp);
                shared.inbox.push_back((a, data.to_vec()));
                Ok(Some(key))
            }
            Checked::Refused(_) | Checked::Stale => Ok(None),
        }
    }
}

/// Queues what foca asks of its runtime.
#[derive(Debug, Default)]
struct Outbox {
    sends: VecDeque<(NodeId, Vec<u8>)>,
    timers: Vec<(Duration, Timer<SwimId>)>,
    notifications: VecDeque<OwnedNotification<SwimId>>,
}

impl Runtime<SwimId> for Outbox {
    fn notify(&mut self, notification: foca::Notification<'_, SwimId>) {
        self.notifications.push_back(notification.to_owned());
    }

    fn send_to(&mut self, to: SwimId, data: &[u8]) {
        self.sends.push_back((to.node, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<SwimId>, after: Duration) {
        self.timers.push((after, event));
    }
}

/// Why a SWIM packet was dropped.
#[derive(Debug)]
pub enum SwimError {
    /// The packet's source is not the node it came from (impersonation).
    WrongSender,
    /// foca refused it.
    Foca(foca::Error),
    /// The header did not decode.
    Codec(SwimCodecError),
}

/// foca, its runtime queue and its timers.
pub struct Membership {
    foca: Foca<SwimId, SwimCodec, SeededRng, Gossip>,
    /// Decodes headers for the sender check (foca owns its own codec).
    sender_codec: SwimCodec,
    outbox: Outbox,
    timers: BTreeMap<(Instant, u64), Timer<SwimId>>,
    timer_seq: u64,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("identity", self.foca.identity())
            .field("members", &self.foca.num_members())
            .finish()
    }
}

impl Membership {
    /// A new SWIM member `id`.
    pub fn new(
        id: SwimId,
        config: foca::Config,
        seed: u64,
        shared: Arc<Mutex<GossipShared>>,
    ) -> Membership {
        Membership {
            foca: Foca::with_custom_broadcast(
                id,
                config,
                SeededRng(SplitMix64::new(seed)),
                SwimCodec::default(),
                Gossip { shared },
            ),
            sender_codec: SwimCodec::default(),
            outbox: Outbox::default(),
            timers: BTreeMap::new(),
            timer_seq: 0,
        }
    }

    fn absorb_timers(&mut self, now: Instant) {
        for (after, timer) in self.outbox.timers.drain(..) {
            self.timer_seq += 1;
            self.timers.insert((now + after, self.timer_seq), timer);
        }
    }

    /// A packet from `from` (authenticated by the transport). Membership updates about nodes
    /// for which `keep` is false are removed before foca sees the packet (see
    /// [`SwimScope::Connected`](super::SwimScope::Connected)); updates about ourselves are
    /// always kept, so that we can refute suspicions.
    pub fn handle_data(
        &mut self,
        from: NodeId,
        data: &[u8],
        now: Instant,
        keep: &dyn Fn(&NodeId) -> bool,
    ) -> Result<(), SwimError> {
        let mut rest = data;
        let header = self
            .sender_codec
            .decode_header(&mut rest)
            .map_err(SwimError::Codec)?;
        if header.src.node != from {
            return Err(SwimError::WrongSender);
        }
        let own = self.foca.identity().node;
        // foca's framing: header ‖ [count u16 ‖ members] ‖ custom broadcasts, the member list
        // present whenever at least two bytes follow a message other than Broadcast.
        let filtered;
        let packet = if header.message != Message::Broadcast && rest.len() >= 2 {
            let header_len = data.len() - rest.len();
            let count = rest.get_u16();
            let mut kept = Vec::new();
            let mut dropped = false;
            for _ in 0..count {
                let member = self
                    .sender_codec
                    .decode_member(&mut rest)
                    .map_err(SwimError::Codec)?;
                if member.id().node == own || keep(&member.id().node) {
                    kept.push(member);
                } else {
                    dropped = true;
                }
            }
            if dropped {
                let mut out = Vec::with_capacity(data.len());
                out.extend_from_slice(&data[..header_len]);
                out.put_u16(kept.len() as u16);
                for member in &kept {
                    self.sender_codec
                        .encode_member(member, &mut out)
                        .map_err(SwimError::Codec)?;
                }
                out.extend_from_slice(rest);
                filtered = out;
                &filtered[..]
            } else {
                data
            }
        } else {
            data
        };
        let result = self.foca.handle_data(packet, &mut self.outbox);
        self.absorb_timers(now);
        result.map_err(SwimError::Foca)
    }

    /// Introduce ourselves to `peer` (joins its cluster).
    pub fn announce_to(&mut self, peer: NodeId, now: Instant) {
        // The generation is unknown here; foca accepts an Announce for any identity of the
        // destination's address.
        let _ = self.foca.announce(
            SwimId {
                node: peer,
                generation: 0,
            },
            &mut self.outbox,
        );
        self.absorb_timers(now);
    }

    /// Queue one of our own signed announcements for dissemination.
    pub fn add_broadcast(&mut self, bytes: &[u8]) -> bool {
        self.foca.add_broadcast(bytes).unwrap_or(false)
    }

    /// Push pending broadcasts out now rather than waiting for the next probe.
    pub fn broadcast(&mut self, now: Instant) {
        let _ = self.foca.broadcast(&mut self.outbox);
        self.absorb_timers(now);
    }

    /// Leave the cluster (clean shutdown).
    pub fn leave(&mut self, now: Instant) {
        let _ = self.foca.leave_cluster(&mut self.outbox);
        self.absorb_timers(now);
    }

    /// Runs due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            let _ = self.foca.handle_timer(timer, &mut self.outbox);
            self.absorb_timers(now);
        }
    }

    /// Next timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// Next packet to send.
    pub fn poll_send(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.outbox.sends.pop_front()
    }

    /// Next membership notification.
    pub fn poll_notification(&mut self) -> Option<OwnedNotification<SwimId>> {
        self.outbox.notifications.pop_front()
    }

    /// Active members (alive or suspect), by node id, in order.
    pub fn members(&self) -> Vec<NodeId> {
        let mut m: Vec<NodeId> = self.foca.iter_members().map(|m| m.id().node).collect();
        m.sort();
        m.dedup();
        m
    }

    /// Our current SWIM identity.
    pub fn identity(&self) -> SwimId {
        *self.foca.identity()
    }
}
