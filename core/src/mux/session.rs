//! The multiplexer session state machine. See the module documentation of [`crate::mux`].

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rustc_hash::FxHashMap;

use crate::time::Instant;
use crate::wire::mux::{
    self as wire, flags, frame_type, reset_code, ErrorCode, Frame, FrameError, Header, StreamId,
    HEADER_LEN, MAX_DATA_PAYLOAD, PREFACE_LEN,
};

/// Credit every stream starts with in each direction, before any WINDOW_UPDATE (protocol constant:
/// it is what makes data in the same flight as the open possible).
pub const INITIAL_STREAM_WINDOW: u32 = 256 * 1024;
/// Connection credit each side starts with, before any WINDOW_UPDATE on stream 0.
pub const INITIAL_CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Streams each side may open before the first MAX_STREAMS arrives.
pub const INITIAL_MAX_STREAMS: u32 = 100;
/// Largest accepted [`Config::receive_budget`] (1 TiB): anything larger is surely a mistake.
const MAX_RECEIVE_BUDGET: u64 = 1 << 40;

/// Payloads smaller than this are copied out of the input buffer, so that a few bytes left unread
/// do not pin a large receive buffer. Larger ones are copied too when the stream already has
/// unread data (see `on_stream_data`): at most one pinned read block per stream with buffered data.
const COPY_BELOW: usize = 4096;
/// Small writes are appended to the previous chunk up to this size, so they leave as one frame.
const COALESCE_BELOW: usize = 16 * 1024;
/// Headers and control frames are written into blocks of this size.
const SCRATCH_BLOCK: usize = 16 * 1024;

/// Which side of the pipe a session is. The client opens odd stream ids, the server even ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Tunables of a session. Every limit is enforced; see `docs/protocol.md` §3.6.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest DATA payload this side sends (1 ..= 64 KiB); also the round-robin quantum.
    pub max_frame_size: usize,
    /// Ceiling for a stream's auto-tuned receive window.
    pub max_stream_window: u32,
    /// Memory budget for window auto-tuning: the growth of all stream receive windows beyond
    /// [`INITIAL_STREAM_WINDOW`], summed over the streams, never exceeds it. Buffered unread data
    /// is thus at most `streams × INITIAL_STREAM_WINDOW + receive_budget`. 0 disables growth.
    pub receive_budget: u64,
    /// Connection receive window: the most bytes the peer may have in flight towards us (sent
    /// and not yet processed by [`Session::handle_input`]); credit is returned as frames are
    /// processed, whether or not the application reads them.
    pub connection_window: u32,
    /// Most concurrent streams the peer may have open towards us; more are refused.
    pub max_incoming_streams: u32,
    /// Most bytes accepted from the application and not yet sent, over all streams.
    pub max_send_buffer: usize,
    /// A PING is sent this often to measure the RTT and keep middleboxes awake.
    pub keepalive_interval: Duration,
    /// With nothing received for this long the link is declared dead.
    pub keepalive_timeout: Duration,
    /// Most control frames queued without the peer reading them before the session is closed
    /// with EXCESSIVE_LOAD.
    pub max_control_queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: 16 * 1024,
            max_stream_window: 16 * 1024 * 1024,
            receive_budget: 64 * 1024 * 1024,
            connection_window: 64 * 1024 * 1024,
            max_incoming_streams: 1024,
            max_send_buffer: 32 * 1024 * 1024,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(30),
            max_control_queue: 16 * 1024,
        }
    }
}

impl Config {
    /// Checks the values; the error names the field and the reason.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_size == 0 || self.max_frame_size > MAX_DATA_PAYLOAD {
            return Err(format!(
                "max_frame_size: must be between 1 and {MAX_DATA_PAYLOAD}, got {}",
                self.max_frame_size
            ));
        }
        if self.max_stream_window < INITIAL_STREAM_WINDOW {
            return Err(format!(
                "max_stream_window: must be at least the initial window {INITIAL_STREAM_WINDOW}, got {}",
                self.max_stream_window
            ));
        }
        if self.receive_budget > MAX_RECEIVE_BUDGET {
            return Err(format!(
                "receive_budget: must be at most {MAX_RECEIVE_BUDGET} (1 TiB), got {}",
                self.receive_budget
            ));
        }
        if self.connection_window < INITIAL_CONNECTION_WINDOW {
            return Err(format!(
                "connection_window: must be at least the initial window {INITIAL_CONNECTION_WINDOW}, got {}",
                self.connection_window
            ));
        }
        if self.max_incoming_streams == 0 || self.max_incoming_streams > (1 << 30) {
            return Err(format!(
                "max_incoming_streams: must be between 1 and {}, got {}",
                1u32 << 30,
                self.max_incoming_streams
            ));
        }
        if self.max_send_buffer == 0 {
            return Err("max_send_buffer: must be positive".into());
        }
        if self.keepalive_interval.is_zero() || self.keepalive_timeout <= self.keepalive_interval {
            return Err(format!(
                "keepalive_timeout ({:?}) must be longer than a non-zero keepalive_interval ({:?})",
                self.keepalive_timeout, self.keepalive_interval
            ));
        }
        if self.max_control_queue < 16 {
            return Err(format!(
                "max_control_queue: must be at least 16, got {}",
                self.max_control_queue
            ));
        }
        Ok(())
    }
}

/// What the session tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer opened a stream.
    Opened(StreamId),
    /// Data or the end of the stream can be read.
    Readable(StreamId),
    /// A write that returned [`StreamError::Blocked`] can be retried.
    Writable(StreamId),
    /// The stream was reset (by the peer, or refused or abandoned by a GOAWAY); its state is gone.
    Reset { stream: StreamId, code: u32 },
    /// [`Session::open`] returned [`OpenError::Limit`] and may now succeed.
    OpenAvailable,
    /// The peer will accept no stream above `last_stream`; the session drains.
    GoAway {
        code: ErrorCode,
        last_stream: StreamId,
    },
    /// The session ended: gracefully (`NoError` after draining) or with an error. No stream
    /// survives it.
    Closed { code: ErrorCode, remote: bool },
}

/// Why a stream operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// Nothing to read yet, or no credit or buffer to write into; an event will follow.
    Blocked,
    /// No such stream: never opened, or already reset or fully closed.
    UnknownStream,
    /// The stream's sending side was finished already.
    Finished,
    /// The session ended with this code.
    SessionClosed(ErrorCode),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Blocked => write!(f, "operation would block"),
            StreamError::UnknownStream => write!(f, "unknown or closed stream"),
            StreamError::Finished => write!(f, "stream already finished for writing"),
            StreamError::SessionClosed(c) => write!(f, "session closed: {c}"),
        }
    }
}

impl std::error::Error for StreamError {}

/// Why [`Session::open`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// The peer's MAX_STREAMS credit is used up; [`Event::OpenAvailable`] follows when it grows.
    Limit,
    /// A GOAWAY was sent or received: no new streams on this session.
    GoingAway,
    /// Stream ids of this session are exhausted; open a new session.
    IdsExhausted,
    /// The session ended with this code.
    Closed(ErrorCode),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Limit => write!(f, "the peer's stream limit is reached"),
            OpenError::GoingAway => write!(f, "the session is going away"),
            OpenError::IdsExhausted => write!(f, "stream ids exhausted"),
            OpenError::Closed(c) => write!(f, "session closed: {c}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub streams: usize,
    pub streams_opened_local: u64,
    pub streams_opened_remote: u64,
    pub streams_refused: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub queued_send_bytes: usize,
    pub buffered_recv_bytes: u64,
    pub control_queue: usize,
    /// Streams queued to be told when the session send buffer has room again (each at most
    /// once).
    pub send_waiters: usize,
    pub rtt: Option<Duration>,
    /// How far receive windows have grown beyond their initial size, over all streams.
    pub window_growth: u64,
}

// Stream flags.
const LOCAL: u16 = 1 << 0;
const SYN_SENT: u16 = 1 << 1;
const FIN_QUEUED: u16 = 1 << 2;
const FIN_SENT: u16 = 1 << 3;
const FIN_RECEIVED: u16 = 1 << 4;
const FIN_READ: u16 = 1 << 5;
const DETACHED: u16 = 1 << 6;
const IN_READY: u16 = 1 << 7;
const UPDATE_QUEUED: u16 = 1 << 8;
const WANT_WRITABLE: u16 = 1 << 9;
const READABLE_SIGNALLED: u16 = 1 << 10;
const IN_BARE: u16 = 1 << 11;
/// In `send_waiters` (at most once).
const SEND_WAITING: u16 = 1 << 12;

/// Bytes in order, as a queue of shared chunks.
#[derive(Default)]
struct ChunkQueue {
    chunks: VecDeque<Bytes>,
    len: usize,
}

/// Bytes the application wrote and the scheduler has not sent yet.
#[derive(Default)]
struct SendQueue {
    chunks: VecDeque<BytesMut>,
    len: usize,
}

/// Per-stream state. Kept small: an idle stream owns no buffer.
struct Stream {
    /// Bytes we may still send (peer's credit minus what we sent).
    send_credit: u32,
    /// Current receive window (auto-tuned).
    recv_window: u32,
    /// Bytes the peer may still send us.
    recv_credit: u32,
    /// Bytes consumed by the application and not yet returned to the peer as credit.
    recv_unacked: u32,
    /// When credit was last returned; drives window growth.
    last_grant: Instant,
    send: Option<Box<SendQueue>>,
    recv: Option<Box<ChunkQueue>>,
    flags: u16,
}

impl Stream {
    fn new(flags: u16, now: Instant) -> Stream {
        Stream {
            send_credit: INITIAL_STREAM_WINDOW,
            recv_window: INITIAL_STREAM_WINDOW,
            recv_credit: INITIAL_STREAM_WINDOW,
            recv_unacked: 0,
            last_grant: now,
            send: None,
            recv: None,
            flags,
        }
    }
    fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
    fn queued(&self) -> usize {
        self.send.as_ref().map_or(0, |q| q.len)
    }
    fn buffered(&self) -> usize {
        self.recv.as_ref().map_or(0, |q| q.len)
    }
    /// Both directions are done as far as this side is concerned.
    fn is_done(&self) -> bool {
        self.has(FIN_SENT) && (self.has(FIN_READ) || (self.has(DETACHED) && self.has(FIN_RECEIVED)))
    }
}

/// The live streams: a dense slab of their state plus an id → slot index.
///
/// Why not one hash map of states: at a million streams such a table spans over 100 MB and
/// every open and every frame pays a cache and TLB miss into it (the open rate fell to half of
/// the rate at a thousand streams). Stream ids are handed out in sequence per side, so the index
/// is a window over recent ids (see [`SideIndex`]); the slab stays dense because removal moves
/// the last state into the hole.
#[derive(Default)]
struct StreamTable {
    /// Streams with odd ids (opened by the client side) and with even ids.
    odd: SideIndex,
    even: SideIndex,
    slab: Slab,
}

impl StreamTable {
    fn side(&self, id: StreamId) -> &SideIndex {
        if id % 2 == 1 {
            &self.odd
        } else {
            &self.even
        }
    }
    fn side_mut(&mut self, id: StreamId) -> &mut SideIndex {
        if id % 2 == 1 {
            &mut self.odd
        } else {
            &mut self.even
        }
    }
    fn slot(&self, id: StreamId) -> Option<u32> {
        if id == 0 {
            return None;
        }
        self.side(id).get((id - 1) >> 1)
    }
    fn get(&self, id: &StreamId) -> Option<&Stream> {
        self.slot(*id).map(|i| &self.slab.get(i).1)
    }
    fn get_mut(&mut self, id: &StreamId) -> Option<&mut Stream> {
        self.slot(*id).map(|i| &mut self.slab.get_mut(i).1)
    }
    fn contains_key(&self, id: &StreamId) -> bool {
        self.slot(*id).is_some()
    }
    fn insert(&mut self, id: StreamId, st: Stream) {
        debug_assert_ne!(id, 0);
        if let Some(i) = self.slot(id) {
            self.slab.get_mut(i).1 = st;
            return;
        }
        let slot = self.slab.push((id, st));
        self.side_mut(id).set((id - 1) >> 1, slot);
    }
    fn remove(&mut self, id: &StreamId) -> Option<Stream> {
        if *id == 0 {
            return None;
        }
        let i = self.side_mut(*id).remove((*id - 1) >> 1)?;
        let (st, moved) = self.slab.swap_remove(i);
        if let Some(moved) = moved {
            self.side_mut(moved).set((moved - 1) >> 1, i);
        }
        Some(st)
    }
    fn len(&self) -> usize {
        self.slab.len
    }
    fn is_empty(&self) -> bool {
        self.slab.len == 0
    }
    fn clear(&mut self) {
        *self = StreamTable::default();
    }
    /// The ids of the live streams, in no particular order.
    fn keys(&self) -> impl Iterator<Item = &StreamId> + '_ {
        self.slab.chunks.iter().flatten().map(|(id, _)| id)
    }
    /// The live streams, in no particular order.
    fn entries_mut(&mut self) -> impl Iterator<Item = &mut (StreamId, Stream)> + '_ {
        self.slab.chunks.iter_mut().flatten()
    }
}

/// Streams per slab chunk.
const CHUNK: usize = 4096;

/// A dense array of (id, state) in fixed-size chunks: growing never copies existing states (a
/// single vector would move the whole table, tens of megabytes at a million streams, while the
/// session is busy), and removal moves the last entry into the hole.
#[derive(Default)]
struct Slab {
    chunks: Vec<Vec<(StreamId, Stream)>>,
    len: usize,
}

impl Slab {
    fn get(&self, slot: u32) -> &(StreamId, Stream) {
        let i = slot as usize;
        &self.chunks[i / CHUNK][i % CHUNK]
    }
    fn get_mut(&mut self, slot: u32) -> &mut (StreamId, Stream) {
        let i = slot as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
    fn push(&mut self, entry: (StreamId, Stream)) -> u32 {
        if self.len % CHUNK == 0 && self.chunks.len() == self.len / CHUNK {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks[self.len / CHUNK].push(entry);
        self.len += 1;
        (self.len - 1) as u32
    }
    /// Removes the entry at `slot`, moving the last one into its place; returns the removed
    /// state and the id of the moved entry, if one moved.
    fn swap_remove(&mut self, slot: u32) -> (Stream, Option<StreamId>) {
        let last_chunk = (self.len - 1) / CHUNK;
        let last = self.chunks[last_chunk].pop().expect("slab entry");
        self.len -= 1;
        // Keep one empty chunk as slack, free the rest.
        while self.chunks.len() > last_chunk + 2
            || (self.chunks.len() == last_chunk + 2 && self.chunks[last_chunk].is_empty())
        {
            self.chunks.pop();
        }
        let i = slot as usize;
        if i == self.len {
            return (last.1, None);
        }
        let moved = last.0;
        let old = std::mem::replace(&mut self.chunks[i / CHUNK][i % CHUNK], last);
        (old.1, Some(moved))
    }
}

const VACANT: u32 = u32::MAX;
/// Entries a window may hold beyond four per live stream before its oldest move to the map.
/// Unit tests use a small slack so that their short runs exercise the map.
const WINDOW_SLACK: usize = if cfg!(test) { 8 } else { 1024 };
/// The far map is shrunk once it is under a quarter full, unless its capacity is this small.
const FAR_MIN_CAPACITY: usize = 64;

/// Slab slots of one side's streams, by stream index (`(id - 1) / 2`).
///
/// Recent indices live in a dense window (an array lookup, and sequential opens touch adjacent
/// memory). A long-lived old stream would make the window span every id opened since, so once
/// the window is over four times its live entries (plus slack), its oldest entries move to a
/// hash map. A peer may skip many ids at once (up to its stream credit, 2^30): an index that far
/// beyond the window moves the window's live entries to the map and restarts the window there,
/// so skipped ids cost nothing. Each index moves at most once: O(1) amortized.
///
/// Memory follows the live streams, not the peak: after every operation the window spans at
/// most `4 × live_in_window + WINDOW_SLACK + 1` entries, its capacity is at most four times its
/// length plus the slack, and the map's capacity is at most about four times its entries (or
/// [`FAR_MIN_CAPACITY`]). Shrinking reallocates only after the length has fallen to a quarter of
/// the capacity, so its cost is paid by the removals before it.
#[derive(Default)]
struct SideIndex {
    base: u32,
    window: VecDeque<u32>,
    live_in_window: usize,
    far: FxHashMap<u32, u32>,
}

impl SideIndex {
    fn get(&self, index: u32) -> Option<u32> {
        if index < self.base {
            return self.far.get(&index).copied();
        }
        match self.window.get((index - self.base) as usize) {
            Some(&slot) if slot != VACANT => Some(slot),
            _ => None,
        }
    }

    /// Inserts or updates the slot of `index`.
    fn set(&mut self, index: u32, slot: u32) {
        if index < self.base {
            self.far.insert(index, slot);
            return;
        }
        if self.window.is_empty() {
            self.base = index;
        }
        let mut off = (index - self.base) as usize;
        if off >= self.window.len() {
            if off > 4 * (self.live_in_window + 1) + WINDOW_SLACK {
                // A large skip: growing the window would allocate for every skipped index (and
                // the next compaction would pop them one by one). Move the live entries to the
                // map and restart the window at `index`. The window was at most
                // `4 × live + slack` long, each entry of it is visited once here.
                let base = self.base;
                for (i, &s) in self.window.iter().enumerate() {
                    if s != VACANT {
                        self.far.insert(base + i as u32, s);
                    }
                }
                self.window.clear();
                self.live_in_window = 0;
                self.base = index;
                off = 0;
            }
            self.window.resize(off + 1, VACANT);
        }
        if self.window[off] == VACANT {
            self.live_in_window += 1;
        }
        self.window[off] = slot;
        self.compact();
    }

    fn remove(&mut self, index: u32) -> Option<u32> {
        if index < self.base {
            let slot = self.far.remove(&index)?;
            if self.far.capacity() > FAR_MIN_CAPACITY && self.far.len() < self.far.capacity() / 4 {
                // Sparse: give the memory back. The capacity after this is below twice the
                // length, so the length must halve again before the next shrink.
                self.far.shrink_to(self.far.len());
            }
            return Some(slot);
        }
        let entry = self.window.get_mut((index - self.base) as usize)?;
        if *entry == VACANT {
            return None;
        }
        let slot = std::mem::replace(entry, VACANT);
        self.live_in_window -= 1;
        self.compact();
        Some(slot)
    }

    fn compact(&mut self) {
        while let Some(&front) = self.window.front() {
            if front != VACANT && self.window.len() <= 4 * self.live_in_window + WINDOW_SLACK {
                break;
            }
            self.window.pop_front();
            if front != VACANT {
                self.far.insert(self.base, front);
                self.live_in_window -= 1;
            }
            self.base += 1;
        }
        if self.window.capacity() > 4 * self.window.len() + WINDOW_SLACK {
            // The length fell to under a quarter of the capacity: shrink to twice the length
            // (plus half the slack), so that it must halve again before the next shrink.
            self.window
                .shrink_to(2 * self.window.len() + WINDOW_SLACK / 2);
        }
    }
}

/// Control frames waiting to be sent, before any data.
enum Control {
    Preface,
    ConnWindow,
    StreamWindow(StreamId),
    MaxStreams,
    /// RESET REFUSED for a SYN the peer sent.
    Refuse(StreamId),
    /// A RESET the application asked for.
    Reset(StreamId, u32),
    /// Our keep-alive PING (at most one queued; it carries the latest sequence number).
    Ping,
    Pong,
    GoAway(StreamId, ErrorCode, Bytes),
}

impl Control {
    /// Whether the peer's input caused this frame, so that it counts against
    /// `max_control_queue`. The others are bounded without the limit: preface, PING and GOAWAY
    /// are queued at most once each, application RESETs at most once per stream.
    fn peer_caused(&self) -> bool {
        match self {
            Control::ConnWindow
            | Control::StreamWindow(_)
            | Control::MaxStreams
            | Control::Refuse(_)
            | Control::Pong => true,
            Control::Preface | Control::Reset(..) | Control::Ping | Control::GoAway(..) => false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Open,
    /// A GOAWAY was sent or received: no new streams; closes once no stream is left.
    Draining,
    Closed(ErrorCode),
}

/// The multiplexer state machine for one pipe.
pub struct Session {
    cfg: Config,
    role: Role,
    state: State,
    streams: StreamTable,

    // Stream accounting. Indices count streams of one side: id = 2 * index + (1 | 2).
    local_next: u32,
    /// One above the highest index of ours whose SYN has left (SYNs leave in index order): the
    /// peer cannot know of any stream of ours at or above it.
    local_syn_next: u32,
    local_limit: u32,
    open_blocked: bool,
    peer_next: u32,
    peer_limit: u32,
    peer_live: u32,
    peer_done: u32,
    max_streams_queued: bool,
    goaway_sent: bool,
    goaway_received: Option<StreamId>,

    // Connection flow control.
    conn_send_credit: u64,
    conn_recv_credit: u64,
    conn_recv_unacked: u64,
    conn_update_queued: bool,
    /// Bytes received and not yet read by the application, over all streams.
    recv_buffered: u64,
    /// Sum over streams of `recv_window - INITIAL_STREAM_WINDOW`; at most `receive_budget`.
    recv_growth: u64,

    // Scheduling.
    control: VecDeque<Control>,
    /// Entries of `control` that count against `max_control_queue` (see `Control::peer_caused`).
    control_counted: usize,
    ping_queued: bool,
    bare: VecDeque<StreamId>,
    ready: VecDeque<StreamId>,
    queued_send_bytes: usize,
    send_waiters: VecDeque<StreamId>,
    scratch: BytesMut,

    events: VecDeque<Event>,

    // Input.
    /// The pipe ended while every live stream's input was complete (see
    /// [`Session::handle_eof`]): the streams stay readable, nothing more is sent.
    input_ended: bool,
    preface_ok: bool,
    preface_sent: bool,
    partial: BytesMut,

    // Liveness.
    last_input: Instant,
    next_ping: Instant,
    ping_seq: u64,
    ping_outstanding: Option<(u64, Instant)>,
    pong_value: Option<u64>,
    srtt: Option<Duration>,

    close_message: Bytes,
    stats: Stats,
}

fn index_of(id: StreamId) -> u32 {
    (id - 1) >> 1
}

impl Session {
    /// A new session. Panics only if `cfg` fails [`Config::validate`] (a programming error:
    /// validate configs from users first).
    pub fn new(role: Role, cfg: Config, now: Instant) -> Session {
        if let Err(e) = cfg.validate() {
            panic!("invalid mux config: {e}");
        }
        let mut s = Session {
            role,
            state: State::Open,
            streams: StreamTable::default(),
            local_next: 0,
            local_syn_next: 0,
            local_limit: INITIAL_MAX_STREAMS,
            open_blocked: false,
            peer_next: 0,
            peer_limit: INITIAL_MAX_STREAMS,
            peer_live: 0,
            peer_done: 0,
            max_streams_queued: false,
            goaway_sent: false,
            goaway_received: None,
            conn_send_credit: u64::from(INITIAL_CONNECTION_WINDOW),
            conn_recv_credit: u64::from(INITIAL_CONNECTION_WINDOW),
            conn_recv_unacked: 0,
            conn_update_queued: false,
            recv_buffered: 0,
            recv_growth: 0,
            control: VecDeque::new(),
            control_counted: 0,
            ping_queued: false,
            bare: VecDeque::new(),
            ready: VecDeque::new(),
            queued_send_bytes: 0,
            send_waiters: VecDeque::new(),
            scratch: BytesMut::new(),
            events: VecDeque::new(),
            input_ended: false,
            preface_ok: false,
            preface_sent: false,
            partial: BytesMut::new(),
            last_input: now,
            next_ping: now + cfg.keepalive_interval,
            ping_seq: 0,
            ping_outstanding: None,
            pong_value: None,
            srtt: None,
            close_message: Bytes::new(),
            stats: Stats::default(),
            cfg,
        };
        s.push_control(Control::Preface);
        if s.cfg.connection_window > INITIAL_CONNECTION_WINDOW {
            s.conn_recv_unacked = u64::from(s.cfg.connection_window - INITIAL_CONNECTION_WINDOW);
            s.conn_update_queued = true;
            s.push_control(Control::ConnWindow);
        }
        s.maybe_grant_streams();
        // An early RTT sample lets windows grow from the start.
        s.send_ping(now);
        s
    }

    /// This session's side.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Smoothed round-trip time from PING/PONG, once measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Whether the session has ended; then only [`Session::poll_transmit`] may still yield a
    /// final GOAWAY.
    pub fn is_closed(&self) -> Option<ErrorCode> {
        match self.state {
            State::Closed(c) => Some(c),
            _ => None,
        }
    }

    /// The human-readable reason the session closed with (sent or received in GOAWAY), if any.
    pub fn close_message(&self) -> String {
        String::from_utf8_lossy(&self.close_message).into_owned()
    }

    /// Number of streams with state here.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.streams = self.streams.len();
        s.queued_send_bytes = self.queued_send_bytes;
        s.buffered_recv_bytes = self.recv_buffered;
        s.control_queue = self.control.len();
        s.send_waiters = self.send_waiters.len();
        s.rtt = self.srtt;
        s.window_growth = self.recv_growth;
        s
    }

    /// Current receive window of a stream (for tests and metrics).
    pub fn stream_recv_window(&self, id: StreamId) -> Option<u32> {
        self.streams.get(&id).map(|s| s.recv_window)
    }

    fn is_local(&self, id: StreamId) -> bool {
        let odd = id % 2 == 1;
        odd == (self.role == Role::Client)
    }

    fn local_id(&self, index: u32) -> StreamId {
        index * 2 + if self.role == Role::Client { 1 } else { 2 }
    }

    // ----------------------------------------------------------------------------------------
    // Application operations

    /// Opens a stream. Data written to it before the next transmit leaves in the same frame as
    /// the open.
    pub fn open(&mut self, now: Instant) -> Result<StreamId, OpenError> {
        match self.state {
            State::Closed(c) => return Err(OpenError::Closed(c)),
            State::Draining => return Err(OpenError::GoingAway),
            State::Open => {}
        }
        if self.local_next >= (1 << 31) - 1 {
            return Err(OpenError::IdsExhausted);
        }
        if self.local_next >= self.local_limit {
            self.open_blocked = true;
            return Err(OpenError::Limit);
        }
        let id = self.local_id(self.local_next);
        self.local_next += 1;
        self.streams.insert(id, Stream::new(LOCAL | IN_BARE, now));
        self.bare.push_back(id);
        self.stats.streams_opened_local += 1;
        Ok(id)
    }

    /// Queues up to `data.len()` bytes on a stream; returns how many were taken.
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        self.check_open()?;
        let room_session = self
            .cfg
            .max_send_buffer
            .saturating_sub(self.queued_send_bytes);
        let st = self
            .streams
            .get_mut(&id)
            .ok_or(StreamError::UnknownStream)?;
        if st.has(FIN_QUEUED) {
            return Err(StreamError::Finished);
        }
        let room_stream = (st.send_credit as usize).saturating_sub(st.queued());
        let n = data.len().min(room_stream).min(room_session);
        if n == 0 {
            if data.is_empty() {
                return Ok(0);
            }
            st.flags |= WANT_WRITABLE;
            if room_session == 0 && !st.has(SEND_WAITING) {
                st.flags |= SEND_WAITING;
                self.add_send_waiter(id);
            }
            return Err(StreamError::Blocked);
        }
        let q = st.send.get_or_insert_with(Default::default);
        match q.chunks.back_mut() {
            Some(last) if last.len() + n <= COALESCE_BELOW => last.extend_from_slice(&data[..n]),
            _ => q.chunks.push_back(BytesMut::from(&data[..n])),
        }
        q.len += n;
        self.queued_send_bytes += n;
        if st.has(SYN_SENT) && !st.has(IN_READY | IN_BARE) {
            st.flags |= IN_READY;
            self.ready.push_back(id);
        }
        Ok(n)
    }

    /// Reads buffered data. `Ok(0)` means the peer finished the stream and everything was read.
    pub fn read(&mut self, id: StreamId, buf: &mut [u8]) -> Result<usize, StreamError> {
        if let State::Closed(c) = self.state {
            return Err(StreamError::SessionClosed(c));
        }
        let st = self
            .streams
            .get_mut(&id)
            .ok_or(StreamError::UnknownStream)?;
        if buf.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        if let Some(q) = st.recv.as_mut() {
            while n < buf.len() {
                let Some(front) = q.chunks.front_mut() else {
                    break;
                };
                let k = front.len().min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&front[..k]);
                front.advance(k);
                if front.is_empty() {
                    q.chunks.pop_front();
                }
                n += k;
            }
            q.len -= n;
            if q.len == 0 {
                st.recv = None;
            }
        }
        if n > 0 {
            self.recv_buffered -= n as u64;
            self.consumed(id, n);
            return Ok(n);
        }
        if st.has(FIN_RECEIVED) {
            st.flags |= FIN_READ;
            self.maybe_free(id);
            return Ok(0);
        }
        st.flags &= !READABLE_SIGNALLED;
        Err(StreamError::Blocked)
    }

    /// Finishes the sending side (half-close): a FIN follows the queued data.
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        self.check_open()?;
        let st = self
            .streams
            .get_mut(&id)
            .ok_or(StreamError::UnknownStream)?;
        if st.has(FIN_QUEUED) {
            return Err(StreamError::Finished);
        }
        st.flags |= FIN_QUEUED;
        if st.queued() == 0 && !st.has(IN_BARE) {
            st.flags |= IN_BARE;
            self.bare.push_back(id);
        }
        Ok(())
    }

    /// Aborts both directions of a stream with `code`; queued and unread data are discarded and
    /// the stream's state is gone at once.
    pub fn reset(&mut self, id: StreamId, code: u32) -> Result<(), StreamError> {
        self.check_open()?;
        let st = self.streams.get(&id).ok_or(StreamError::UnknownStream)?;
        if st.has(SYN_SENT) || !st.has(LOCAL) {
            self.push_control(Control::Reset(id, code));
        }
        self.remove_stream(id);
        Ok(())
    }

    /// The application is done with the stream: the sending side is finished (queued data still
    /// leaves), further incoming data is discarded with its credit returned, and the state is
    /// freed once the peer's FIN or RESET arrives.
    pub fn detach(&mut self, id: StreamId) {
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        st.flags |= DETACHED;
        let unread = st.recv.take().map_or(0, |q| q.len);
        if unread > 0 {
            self.recv_buffered -= unread as u64;
            self.consumed(id, unread);
        }
        if self.state != State::Open && self.state != State::Draining {
            return;
        }
        let st = self.streams.get_mut(&id).expect("present");
        if !st.has(FIN_QUEUED) {
            let _ = self.finish(id);
        }
        self.maybe_free(id);
    }

    /// Starts a graceful drain: the peer may open no more streams (those above the last one
    /// accepted are refused), open streams continue, and the session closes with `NoError` when
    /// none is left.
    pub fn go_away(&mut self) {
        if self.state != State::Open {
            return;
        }
        self.send_goaway(ErrorCode::NoError, Bytes::new());
        self.state = State::Draining;
        self.check_drained();
    }

    /// Ends the session at once with `code`, telling the peer why. All streams are gone.
    ///
    /// `NoError` while streams are alive becomes [`ErrorCode::Cancel`]: the peer must learn that
    /// its streams were discarded, not drain them (use [`Session::go_away`] for that).
    pub fn close(&mut self, code: ErrorCode, message: &str) {
        if let State::Closed(_) = self.state {
            return;
        }
        let code = if code == ErrorCode::NoError && !self.streams.is_empty() {
            ErrorCode::Cancel
        } else {
            code
        };
        self.fail(code, Bytes::copy_from_slice(message.as_bytes()), false);
    }

    fn check_open(&self) -> Result<(), StreamError> {
        match self.state {
            State::Closed(c) => Err(StreamError::SessionClosed(c)),
            _ => Ok(()),
        }
    }

    // ----------------------------------------------------------------------------------------
    // Inputs from the pipe and the clock

    /// Feeds bytes received from the pipe.
    pub fn handle_input(&mut self, mut data: Bytes, now: Instant) {
        if self.is_closed().is_some() || self.input_ended || data.is_empty() {
            return;
        }
        self.last_input = now;
        self.stats.bytes_received += data.len() as u64;
        if !self.preface_ok {
            let need = PREFACE_LEN - self.partial.len();
            let k = need.min(data.len());
            self.partial.extend_from_slice(&data[..k]);
            data.advance(k);
            if self.partial.len() < PREFACE_LEN {
                return;
            }
            let p: [u8; PREFACE_LEN] = self.partial[..].try_into().expect("length");
            self.partial.clear();
            if let Err(e) = wire::check_preface(&p) {
                let msg = match e {
                    wire::PrefaceError::BadMagic => "not an svcnet multiplexer".to_string(),
                    wire::PrefaceError::UnsupportedVersion(v) => {
                        format!(
                            "version {v} not supported; this side speaks {}",
                            wire::VERSION
                        )
                    }
                };
                self.fail(ErrorCode::Version, Bytes::from(msg), false);
                return;
            }
            self.preface_ok = true;
        }
        loop {
            if self.is_closed().is_some() {
                return;
            }
            if !self.partial.is_empty() {
                // Complete the frame begun in an earlier input.
                if self.partial.len() < HEADER_LEN {
                    let k = (HEADER_LEN - self.partial.len()).min(data.len());
                    self.partial.extend_from_slice(&data[..k]);
                    data.advance(k);
                    if self.partial.len() < HEADER_LEN {
                        return;
                    }
                }
                let h = match wire::decode_header(&self.partial[..HEADER_LEN]) {
                    Ok(h) => h,
                    Err(e) => return self.frame_error(e),
                };
                let total = HEADER_LEN + h.length as usize;
                let k = (total - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..k]);
                data.advance(k);
                if self.partial.len() < total {
                    return;
                }
                let frame = self.partial.split().freeze();
                self.handle_frame(h, frame.slice(HEADER_LEN..), now);
                continue;
            }
            if data.is_empty() {
                return;
            }
            if data.len() < HEADER_LEN {
                self.partial.extend_from_slice(&data);
                return;
            }
            let h = match wire::decode_header(&data[..HEADER_LEN]) {
                Ok(h) => h,
                Err(e) => return self.frame_error(e),
            };
            let total = HEADER_LEN + h.length as usize;
            if data.len() < total {
                self.partial.reserve(total);
                self.partial.extend_from_slice(&data);
                return;
            }
            let frame = data.split_to(total);
            self.handle_frame(h, frame.slice(HEADER_LEN..), now);
        }
    }

    /// The pipe ended (the peer closed it, or it broke).
    ///
    /// With no stream left after a GOAWAY, the session closes with `NoError`. If streams are
    /// alive and the input of every one of them is complete (its FIN arrived: a peer that
    /// answered, drained and closed), they stay readable: their queued output is dropped and
    /// their sending side counts as finished (writes fail with [`StreamError::Finished`]),
    /// nothing more is transmitted, timers stop, and the session drains, closing with `NoError`
    /// once the last stream was read to its end (or detached). Otherwise data was lost: the
    /// session fails with `Transport`.
    pub fn handle_eof(&mut self, _now: Instant) {
        if self.is_closed().is_some() || self.input_ended {
            return;
        }
        if self.streams.is_empty() {
            if self.goaway_sent || self.goaway_received.is_some() {
                self.finish_close(ErrorCode::NoError, true);
            } else {
                self.fail(ErrorCode::Transport, Bytes::new(), true);
            }
            return;
        }
        let complete = self
            .streams
            .entries_mut()
            .all(|(_, st)| st.has(FIN_RECEIVED));
        if !complete {
            self.fail(ErrorCode::Transport, Bytes::new(), true);
            return;
        }
        self.input_ended = true;
        self.partial = BytesMut::new();
        self.control.clear();
        self.control_counted = 0;
        self.ping_queued = false;
        self.ping_outstanding = None;
        self.pong_value = None;
        self.bare.clear();
        self.ready.clear();
        self.send_waiters.clear();
        self.queued_send_bytes = 0;
        let mut ids = Vec::with_capacity(self.streams.len());
        let mut writers = Vec::new();
        for (id, st) in self.streams.entries_mut() {
            st.send = None;
            if st.has(WANT_WRITABLE) {
                // Let a blocked writer retry and learn that the stream is finished.
                writers.push(*id);
            }
            st.flags &= !(IN_BARE | IN_READY | SEND_WAITING | WANT_WRITABLE | UPDATE_QUEUED);
            st.flags |= FIN_QUEUED | FIN_SENT;
            ids.push(*id);
        }
        writers.sort_unstable();
        self.events.extend(writers.into_iter().map(Event::Writable));
        if self.state == State::Open {
            self.state = State::Draining;
        }
        // Streams already read to their end, or detached, are done now.
        ids.sort_unstable();
        for id in ids {
            self.maybe_free(id);
        }
        self.check_drained();
    }

    /// Runs timers: keep-alive PINGs and dead-link detection.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_closed().is_some() || self.input_ended {
            return;
        }
        if now >= self.last_input + self.cfg.keepalive_timeout {
            self.fail(
                ErrorCode::KeepaliveTimeout,
                Bytes::from_static(b"nothing received within the keep-alive timeout"),
                false,
            );
            return;
        }
        if now >= self.next_ping {
            self.send_ping(now);
        }
    }

    /// The next instant at which [`Session::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed().is_some() || self.input_ended {
            return None;
        }
        Some(
            self.next_ping
                .min(self.last_input + self.cfg.keepalive_timeout),
        )
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn send_ping(&mut self, now: Instant) {
        self.next_ping = now + self.cfg.keepalive_interval;
        if self.ping_outstanding.is_some() {
            // The earlier one is still unanswered; its RTT sample would be stale anyway.
            self.ping_outstanding = None;
        }
        self.ping_seq += 1;
        self.ping_outstanding = Some((self.ping_seq, now));
        if !self.ping_queued {
            self.ping_queued = true;
            self.push_control(Control::Ping);
        }
    }

    fn frame_error(&mut self, e: FrameError) {
        self.fail(e.code(), Bytes::from(e.to_string()), false);
    }

    fn protocol_error(&mut self, code: ErrorCode, msg: String) {
        self.fail(code, Bytes::from(msg), false);
    }

    fn handle_frame(&mut self, h: Header, payload: Bytes, now: Instant) {
        self.stats.frames_received += 1;
        let frame = match wire::decode_frame(h, payload) {
            Ok(f) => f,
            Err(e) => return self.frame_error(e),
        };
        match frame {
            Frame::Data {
                stream,
                syn,
                fin,
                payload,
            } => self.on_data(stream, syn, fin, payload, now),
            Frame::WindowUpdate { stream, increment } => self.on_window_update(stream, increment),
            Frame::Reset { stream, code } => self.on_reset(stream, code),
            Frame::Ping { ack, opaque } => {
                if ack {
                    if let Some((seq, sent)) = self.ping_outstanding {
                        if seq == opaque {
                            let sample = now - sent;
                            self.srtt = Some(match self.srtt {
                                None => sample,
                                Some(old) => (old * 7 + sample) / 8,
                            });
                            self.ping_outstanding = None;
                        }
                    }
                } else {
                    // Answer only the latest: a flood of PINGs costs one queued PONG.
                    if self.pong_value.replace(opaque).is_none() {
                        self.push_control(Control::Pong);
                    }
                }
            }
            Frame::GoAway {
                last_stream,
                code,
                message,
            } => self.on_goaway(last_stream, ErrorCode::from_u32(code), message),
            Frame::MaxStreams { count } => {
                if count > self.local_limit {
                    self.local_limit = count.min((1 << 31) - 1);
                    if self.open_blocked {
                        self.open_blocked = false;
                        self.events.push_back(Event::OpenAvailable);
                    }
                }
            }
        }
    }

    /// Classifies a frame's stream id: Ok(true) known, Ok(false) stale (closed earlier: ignore),
    /// Err for an id that was never valid. A stream of ours counts as opened only once its SYN
    /// has left: before that the peer cannot know it.
    fn classify(&self, id: StreamId) -> Result<bool, String> {
        let index = index_of(id);
        if self.is_local(id) {
            let st = self.streams.get(&id);
            if index >= self.local_syn_next || st.is_some_and(|st| !st.has(SYN_SENT)) {
                return Err(format!(
                    "frame for stream {id} which this side never opened"
                ));
            }
            return Ok(st.is_some());
        }
        if self.streams.contains_key(&id) {
            return Ok(true);
        }
        if index >= self.peer_next {
            return Err(format!("frame for stream {id} which the peer never opened"));
        }
        Ok(false)
    }

    fn on_data(&mut self, id: StreamId, syn: bool, fin: bool, payload: Bytes, now: Instant) {
        let len = payload.len() as u64;
        if len > self.conn_recv_credit {
            return self.protocol_error(
                ErrorCode::FlowControl,
                format!(
                    "{len} bytes on stream {id} exceed the connection credit {}",
                    self.conn_recv_credit
                ),
            );
        }
        self.conn_recv_credit -= len;
        self.on_stream_data(id, syn, fin, payload, now);
        // Connection credit bounds bytes in flight only: it comes back once the frame is
        // processed, read or not. Unread bytes are bounded per stream by stream credit.
        if len > 0 && self.is_closed().is_none() {
            self.return_conn_credit(len);
        }
    }

    fn on_stream_data(&mut self, id: StreamId, syn: bool, fin: bool, payload: Bytes, now: Instant) {
        let len = payload.len() as u64;
        if syn {
            if self.is_local(id) {
                return self.protocol_error(
                    ErrorCode::StreamId,
                    format!("peer opened stream {id} with this side's parity"),
                );
            }
            let index = index_of(id);
            if index < self.peer_next {
                return self
                    .protocol_error(ErrorCode::StreamId, format!("peer reopened stream {id}"));
            }
            if index >= self.peer_limit {
                return self.protocol_error(
                    ErrorCode::StreamLimit,
                    format!(
                        "peer opened stream {id} beyond its limit of {} streams",
                        self.peer_limit
                    ),
                );
            }
            // Skipped indices were opened and abandoned before their SYN left the peer.
            self.peer_done += index - self.peer_next;
            self.peer_next = index + 1;
            self.stats.streams_opened_remote += 1;
            let refuse =
                self.state != State::Open || self.peer_live >= self.cfg.max_incoming_streams;
            if refuse {
                self.stats.streams_refused += 1;
                self.peer_done += 1;
                self.push_control(Control::Refuse(id));
                self.maybe_grant_streams();
                return;
            }
            self.peer_live += 1;
            // The peer knows the stream: our frames on it need no SYN.
            self.streams.insert(id, Stream::new(SYN_SENT, now));
            self.events.push_back(Event::Opened(id));
            self.maybe_grant_streams();
        } else {
            match self.classify(id) {
                Err(msg) => return self.protocol_error(ErrorCode::StreamId, msg),
                Ok(false) => return,
                Ok(true) => {}
            }
        }
        let st = self.streams.get_mut(&id).expect("known stream");
        if st.has(FIN_RECEIVED) {
            return self.protocol_error(
                ErrorCode::Protocol,
                format!("data on stream {id} after its FIN"),
            );
        }
        if len > u64::from(st.recv_credit) {
            let credit = st.recv_credit;
            return self.protocol_error(
                ErrorCode::FlowControl,
                format!("{len} bytes on stream {id} exceed its credit {credit}"),
            );
        }
        st.recv_credit -= len as u32;
        if fin {
            st.flags |= FIN_RECEIVED;
        }
        if st.has(DETACHED) {
            if len > 0 {
                self.consumed(id, len as usize);
            }
            if fin {
                self.maybe_free(id);
            }
            return;
        }
        if len > 0 {
            // A large payload arriving at a stream with nothing buffered is kept as a slice of
            // the driver's read block (no copy: the common case of a reader that keeps up). Small
            // payloads, and any payload queuing behind unread data (a slow or absent reader, whose
            // data accumulates), are copied, so that they do not pin read blocks many times their
            // size. Only the front chunk of a receive queue can be such a slice, so the read
            // blocks pinned by unread data are at most one per stream with buffered data.
            let payload = if payload.len() < COPY_BELOW || st.buffered() > 0 {
                Bytes::copy_from_slice(&payload)
            } else {
                payload
            };
            let q = st.recv.get_or_insert_with(Default::default);
            q.len += payload.len();
            q.chunks.push_back(payload);
            self.recv_buffered += len;
        }
        if (len > 0 || fin) && !st.has(READABLE_SIGNALLED) {
            st.flags |= READABLE_SIGNALLED;
            self.events.push_back(Event::Readable(id));
        }
    }

    fn on_window_update(&mut self, id: StreamId, increment: u32) {
        if id == 0 {
            self.conn_send_credit += u64::from(increment);
            if self.conn_send_credit > (1 << 40) {
                self.protocol_error(
                    ErrorCode::FlowControl,
                    "connection credit grew beyond 2^40 bytes".into(),
                );
            }
            return;
        }
        match self.classify(id) {
            Err(msg) => return self.protocol_error(ErrorCode::StreamId, msg),
            Ok(false) => return,
            Ok(true) => {}
        }
        let st = self.streams.get_mut(&id).expect("known stream");
        let Some(c) = st.send_credit.checked_add(increment) else {
            return self.protocol_error(
                ErrorCode::FlowControl,
                format!("credit of stream {id} overflowed"),
            );
        };
        st.send_credit = c;
        if st.has(WANT_WRITABLE) {
            st.flags &= !WANT_WRITABLE;
            self.events.push_back(Event::Writable(id));
        }
    }

    fn on_reset(&mut self, id: StreamId, code: u32) {
        match self.classify(id) {
            Err(msg) => self.protocol_error(ErrorCode::StreamId, msg),
            Ok(false) => {}
            Ok(true) => {
                let detached = self.streams.get(&id).is_some_and(|s| s.has(DETACHED));
                self.remove_stream(id);
                // Nobody is left to tell about a detached stream.
                if !detached {
                    self.events.push_back(Event::Reset { stream: id, code });
                }
            }
        }
    }

    fn on_goaway(&mut self, last_stream: StreamId, code: ErrorCode, message: Bytes) {
        if code != ErrorCode::NoError {
            self.close_message = message;
            self.fail(code, Bytes::new(), true);
            return;
        }
        if last_stream != 0 {
            // It names a stream of ours the peer saw: one of our parity whose SYN left.
            if !self.is_local(last_stream) {
                return self.protocol_error(
                    ErrorCode::StreamId,
                    format!("GOAWAY names stream {last_stream}, which the peer opened itself"),
                );
            }
            if index_of(last_stream) >= self.local_syn_next {
                return self.protocol_error(
                    ErrorCode::StreamId,
                    format!("GOAWAY names stream {last_stream}, which this side never opened"),
                );
            }
        }
        if self.goaway_received.is_some() {
            return;
        }
        self.goaway_received = Some(last_stream);
        // Our streams above `last_stream` were never seen by the peer's application: refuse them
        // here so that the caller may retry elsewhere. Only live streams are visited (ids sorted,
        // so that events come in a deterministic order).
        let mut unseen: Vec<StreamId> = self
            .streams
            .keys()
            .copied()
            .filter(|&id| self.is_local(id) && id > last_stream)
            .collect();
        unseen.sort_unstable();
        for id in unseen {
            let detached = self.streams.get(&id).is_some_and(|st| st.has(DETACHED));
            self.remove_stream(id);
            if !detached {
                self.events.push_back(Event::Reset {
                    stream: id,
                    code: reset_code::REFUSED,
                });
            }
        }
        self.events.push_back(Event::GoAway { code, last_stream });
        if self.state == State::Open {
            self.state = State::Draining;
        }
        self.check_drained();
    }

    // ----------------------------------------------------------------------------------------
    // Bookkeeping

    /// Queues a control frame. Frames the peer caused count against `max_control_queue`; past
    /// it the session closes with EXCESSIVE_LOAD. The others are always queued.
    fn push_control(&mut self, c: Control) {
        if self.input_ended {
            // The pipe is gone: nothing more is sent.
            return;
        }
        if c.peer_caused() {
            if self.control_counted >= self.cfg.max_control_queue {
                self.fail(
                    ErrorCode::ExcessiveLoad,
                    Bytes::from_static(b"too many control frames queued unread"),
                    false,
                );
                return;
            }
            self.control_counted += 1;
        }
        self.control.push_back(c);
    }

    fn pop_control(&mut self) -> Option<Control> {
        let c = self.control.pop_front()?;
        if c.peer_caused() {
            self.control_counted -= 1;
        }
        Some(c)
    }

    /// The application consumed (or discarded) `n` bytes of stream `id`: return stream credit
    /// when worthwhile. (Connection credit went back when the bytes were processed.)
    fn consumed(&mut self, id: StreamId, n: usize) {
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        st.recv_unacked = st.recv_unacked.saturating_add(n as u32);
        if st.has(FIN_RECEIVED) {
            return;
        }
        if st.recv_unacked >= st.recv_window / 2 && !st.has(UPDATE_QUEUED) {
            st.flags |= UPDATE_QUEUED;
            self.push_control(Control::StreamWindow(id));
        }
    }

    fn return_conn_credit(&mut self, n: u64) {
        self.conn_recv_unacked += n;
        if self.conn_recv_unacked >= u64::from(self.cfg.connection_window) / 4
            && !self.conn_update_queued
        {
            self.conn_update_queued = true;
            self.push_control(Control::ConnWindow);
        }
    }

    /// Grants the peer more streams when its remaining credit is down to half of
    /// `max_incoming_streams`: the target is the streams it finished plus `max_incoming_streams`,
    /// so that it can always have that many open at once. Evaluated whenever a peer stream is
    /// accepted, refused or ends.
    fn maybe_grant_streams(&mut self) {
        let target = self
            .peer_done
            .saturating_add(self.cfg.max_incoming_streams)
            .min((1 << 31) - 1);
        let remaining = self.peer_limit.saturating_sub(self.peer_next);
        if target > self.peer_limit
            && remaining <= self.cfg.max_incoming_streams / 2
            && !self.max_streams_queued
            && !self.goaway_sent
        {
            self.max_streams_queued = true;
            self.push_control(Control::MaxStreams);
        }
    }

    fn maybe_free(&mut self, id: StreamId) {
        if self.streams.get(&id).is_some_and(Stream::is_done) {
            self.remove_stream(id);
        }
    }

    /// Drops a stream's state and everything it held.
    fn remove_stream(&mut self, id: StreamId) {
        let Some(st) = self.streams.remove(&id) else {
            return;
        };
        self.queued_send_bytes -= st.queued();
        self.recv_buffered -= st.buffered() as u64;
        self.recv_growth -= u64::from(st.recv_window - INITIAL_STREAM_WINDOW);
        if !st.has(LOCAL) {
            self.peer_live -= 1;
            self.peer_done += 1;
            self.maybe_grant_streams();
        }
        self.wake_send_waiters();
        self.check_drained();
    }

    /// Queues a stream (flagged `SEND_WAITING` by the caller) to be woken when the send buffer
    /// has room. Entries of streams removed meanwhile are dropped when the queue has grown to
    /// twice the live streams, so the queue stays bounded at amortised O(1) cost.
    fn add_send_waiter(&mut self, id: StreamId) {
        if self.send_waiters.len() >= 2 * self.streams.len() + 16 {
            let streams = &self.streams;
            self.send_waiters
                .retain(|id| streams.get(id).is_some_and(|st| st.has(SEND_WAITING)));
        }
        self.send_waiters.push_back(id);
    }

    fn wake_send_waiters(&mut self) {
        while self.queued_send_bytes < self.cfg.max_send_buffer / 2 {
            let Some(id) = self.send_waiters.pop_front() else {
                break;
            };
            if let Some(st) = self.streams.get_mut(&id) {
                st.flags &= !SEND_WAITING;
                if st.has(WANT_WRITABLE) {
                    st.flags &= !WANT_WRITABLE;
                    self.events.push_back(Event::Writable(id));
                }
            }
        }
    }

    fn check_drained(&mut self) {
        if self.state == State::Draining && self.streams.is_empty() {
            let remote = self.goaway_received.is_some() || self.input_ended;
            self.finish_close(ErrorCode::NoError, remote);
        }
    }

    fn send_goaway(&mut self, code: ErrorCode, message: Bytes) {
        if self.goaway_sent {
            return;
        }
        self.goaway_sent = true;
        let last = if self.peer_next == 0 {
            0
        } else {
            // The highest id the peer opened that we saw.
            (self.peer_next - 1) * 2 + if self.role == Role::Client { 2 } else { 1 }
        };
        // Bypass the queue limit: the GOAWAY must go out.
        self.control.push_back(Control::GoAway(last, code, message));
    }

    fn fail(&mut self, code: ErrorCode, message: Bytes, remote: bool) {
        if !message.is_empty() {
            self.close_message = message.clone();
        }
        // Everything queued is moot now, except the preface: without it the peer could not
        // read the GOAWAY that explains the close.
        self.control.clear();
        self.control_counted = 0;
        self.ping_queued = false;
        if !self.preface_sent {
            self.control.push_back(Control::Preface);
        }
        if !remote && !matches!(code, ErrorCode::KeepaliveTimeout | ErrorCode::Transport) {
            self.goaway_sent = false;
            self.send_goaway(code, message);
        }
        self.finish_close(code, remote);
    }

    fn finish_close(&mut self, code: ErrorCode, remote: bool) {
        self.state = State::Closed(code);
        self.streams.clear();
        self.bare.clear();
        self.ready.clear();
        self.send_waiters.clear();
        self.queued_send_bytes = 0;
        self.recv_buffered = 0;
        self.recv_growth = 0;
        self.partial = BytesMut::new();
        self.events.push_back(Event::Closed { code, remote });
    }

    // ----------------------------------------------------------------------------------------
    // Output

    /// Whether [`Session::poll_transmit`] would yield anything now.
    pub fn wants_transmit(&self) -> bool {
        if self.input_ended {
            return false;
        }
        !self.control.is_empty()
            || !self.bare.is_empty()
            || (!self.ready.is_empty() && self.conn_send_credit > 0)
    }

    /// Appends up to about `max_bytes` of output to `out` as chunks to write in order
    /// (`write_vectored` friendly; payloads are not copied). Returns the bytes appended.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<Bytes>, max_bytes: usize) -> usize {
        if self.input_ended {
            return 0;
        }
        let mut total = 0;
        while total < max_bytes {
            if !self.bare.is_empty()
                && self.state == State::Draining
                && matches!(
                    self.control.front(),
                    Some(Control::GoAway(_, ErrorCode::NoError, _))
                )
            {
                // A drain's GOAWAY must not overtake the SYNs of streams opened before it (the
                // bare queue holds every stream whose SYN has not left): a peer that knows of
                // no stream would close at once, failing them.
                while total < max_bytes {
                    let Some(id) = self.bare.pop_front() else {
                        break;
                    };
                    total += self.emit_stream(id, true, out);
                }
                continue;
            }
            let Some(c) = self.pop_control() else {
                break;
            };
            total += self.emit_control(c, now, out);
        }
        if let State::Closed(_) = self.state {
            return total;
        }
        while total < max_bytes {
            let Some(id) = self.bare.pop_front() else {
                break;
            };
            total += self.emit_stream(id, true, out);
        }
        while total < max_bytes && self.conn_send_credit > 0 {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            total += self.emit_stream(id, false, out);
        }
        self.wake_send_waiters();
        total
    }

    fn take_scratch(&mut self) -> Bytes {
        self.scratch.split().freeze()
    }

    fn reserve_scratch(&mut self, n: usize) {
        if self.scratch.capacity() - self.scratch.len() < n {
            self.scratch.reserve(SCRATCH_BLOCK.max(n));
        }
    }

    fn emit_control(&mut self, c: Control, now: Instant, out: &mut Vec<Bytes>) -> usize {
        self.reserve_scratch(HEADER_LEN + 8 + wire::MAX_GOAWAY_MESSAGE);
        let frame = match c {
            Control::Preface => {
                self.preface_sent = true;
                self.scratch.extend_from_slice(&wire::preface());
                let b = self.take_scratch();
                let n = b.len();
                out.push(b);
                return n;
            }
            Control::ConnWindow => {
                self.conn_update_queued = false;
                let inc = self.conn_recv_unacked.min(u64::from(u32::MAX)) as u32;
                if inc == 0 {
                    return 0;
                }
                self.conn_recv_unacked -= u64::from(inc);
                self.conn_recv_credit += u64::from(inc);
                Frame::WindowUpdate {
                    stream: 0,
                    increment: inc,
                }
            }
            Control::StreamWindow(id) => {
                let max_window = self.cfg.max_stream_window;
                let room = self.cfg.receive_budget.saturating_sub(self.recv_growth);
                let srtt = self.srtt;
                let Some(st) = self.streams.get_mut(&id) else {
                    return 0;
                };
                st.flags &= !UPDATE_QUEUED;
                if st.has(FIN_RECEIVED) || st.recv_unacked == 0 {
                    return 0;
                }
                let mut extra = 0;
                if let Some(rtt) = srtt {
                    if now - st.last_grant < rtt * 2 && st.recv_window < max_window {
                        // Double, within the ceiling and the session's receive budget.
                        let grown = st.recv_window.saturating_mul(2).min(max_window);
                        extra = (grown - st.recv_window).min(room.min(u64::from(u32::MAX)) as u32);
                        st.recv_window += extra;
                        self.recv_growth += u64::from(extra);
                    }
                }
                let inc = st.recv_unacked + extra;
                st.recv_unacked = 0;
                st.recv_credit += inc;
                st.last_grant = now;
                Frame::WindowUpdate {
                    stream: id,
                    increment: inc,
                }
            }
            Control::MaxStreams => {
                self.max_streams_queued = false;
                let target = self
                    .peer_done
                    .saturating_add(self.cfg.max_incoming_streams)
                    .min((1 << 31) - 1);
                if target <= self.peer_limit {
                    return 0;
                }
                self.peer_limit = target;
                Frame::MaxStreams { count: target }
            }
            Control::Refuse(stream) => Frame::Reset {
                stream,
                code: reset_code::REFUSED,
            },
            Control::Reset(stream, code) => Frame::Reset { stream, code },
            Control::Ping => {
                self.ping_queued = false;
                let Some((opaque, _)) = self.ping_outstanding else {
                    return 0;
                };
                Frame::Ping { ack: false, opaque }
            }
            Control::Pong => {
                let Some(opaque) = self.pong_value.take() else {
                    return 0;
                };
                Frame::Ping { ack: true, opaque }
            }
            Control::GoAway(last_stream, code, message) => Frame::GoAway {
                last_stream,
                code: code as u32,
                message,
            },
        };
        wire::encode(&frame, &mut self.scratch);
        let b = self.take_scratch();
        let n = b.len();
        out.push(b);
        self.stats.frames_sent += 1;
        self.stats.bytes_sent += n as u64;
        n
    }

    /// Emits one frame of stream `id`: up to a quantum of data, with SYN and FIN as due.
    fn emit_stream(&mut self, id: StreamId, from_bare: bool, out: &mut Vec<Bytes>) -> usize {
        let quantum = self.cfg.max_frame_size;
        let credit = self.conn_send_credit;
        let Some(st) = self.streams.get_mut(&id) else {
            return 0;
        };
        if from_bare {
            st.flags &= !IN_BARE;
        } else {
            st.flags &= !IN_READY;
        }
        let queued = st.queued();
        let n = queued.min(quantum).min(credit as usize);
        let syn = !st.has(SYN_SENT) && st.has(LOCAL);
        let fin = st.has(FIN_QUEUED) && !st.has(FIN_SENT) && n == queued;
        if n == 0 && !syn && !fin {
            if queued > 0 && !st.has(IN_READY) {
                st.flags |= IN_READY;
                self.ready.push_back(id);
            }
            return 0;
        }
        st.flags |= SYN_SENT;
        if syn {
            self.local_syn_next = self.local_syn_next.max(index_of(id) + 1);
        }
        if fin {
            st.flags |= FIN_SENT;
        }
        let fl = if syn { flags::SYN } else { 0 } | if fin { flags::FIN } else { 0 };
        let before = out.len();
        out.push(Bytes::new()); // header placeholder
        let mut left = n;
        if n > 0 {
            let q = st.send.as_mut().expect("queued data");
            while left > 0 {
                let front = q.chunks.front_mut().expect("queued chunk");
                if front.len() <= left {
                    left -= front.len();
                    out.push(q.chunks.pop_front().expect("chunk").freeze());
                } else {
                    out.push(front.split_to(left).freeze());
                    left = 0;
                }
            }
            q.len -= n;
            if q.len == 0 {
                st.send = None;
            }
            st.send_credit -= n as u32;
        }
        let more = st.queued() > 0;
        if more && !st.has(IN_READY) {
            st.flags |= IN_READY;
            self.ready.push_back(id);
        }
        let done = st.is_done();
        self.conn_send_credit -= n as u64;
        self.queued_send_bytes -= n;
        self.reserve_scratch(HEADER_LEN);
        wire::put_header(&mut self.scratch, n, frame_type::DATA, fl, id);
        out[before] = self.take_scratch();
        self.stats.frames_sent += 1;
        self.stats.bytes_sent += (HEADER_LEN + n) as u64;
        if done {
            self.remove_stream(id);
        }
        HEADER_LEN + n
    }
}

#[cfg(test)]
mod stream_table_tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        /// Open the next id of one side, skipping `skip` indices (the peer may skip, up to its
        /// stream credit).
        Open { odd: bool, skip: u32 },
        /// Remove the live stream at this position of the sorted live ids.
        Remove(usize),
        /// Remove the newest `n` live streams (a burst ending), keeping old ones.
        RemoveNewest(u16),
        /// Remove the oldest `n` live streams (long-lived ones ending).
        RemoveOldest(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (
                any::<bool>(),
                prop_oneof![16 => Just(0u32), 2 => 0u32..256, 1 => 0u32..(1 << 22)]
            )
                .prop_map(|(odd, skip)| Op::Open { odd, skip }),
            3 => any::<usize>().prop_map(Op::Remove),
            1 => (0u16..3000).prop_map(Op::RemoveNewest),
            1 => (0u16..3000).prop_map(Op::RemoveOldest),
        ]
    }

    /// Memory bounds of one side: the window spans at most four entries per live one (plus
    /// slack), its capacity follows its length, and the far map's capacity follows its length.
    fn check_bounds(side: &SideIndex) {
        let live = side.window.iter().filter(|&&s| s != VACANT).count();
        assert_eq!(live, side.live_in_window);
        assert!(
            side.window.len() <= 4 * side.live_in_window + WINDOW_SLACK + 1,
            "window {} for {} live",
            side.window.len(),
            side.live_in_window
        );
        assert!(
            side.window.capacity() <= 4 * side.window.len() + WINDOW_SLACK,
            "window capacity {} for length {}",
            side.window.capacity(),
            side.window.len()
        );
        assert!(
            side.far.capacity() <= (4 * side.far.len() + 3).max(FAR_MIN_CAPACITY),
            "far capacity {} for {} entries",
            side.far.capacity(),
            side.far.len()
        );
    }

    fn state(tag: u32) -> Stream {
        let mut st = Stream::new(0, Instant::ZERO);
        st.recv_unacked = tag;
        st
    }

    fn check(table: &StreamTable, model: &BTreeMap<StreamId, u32>, probe_to: StreamId) {
        assert_eq!(table.len(), model.len());
        // Every id near a live one or near the ends (ids are sparse after large skips).
        let mut probes: Vec<StreamId> = (0..=probe_to.min(20_000)).collect();
        probes.extend(probe_to.saturating_sub(20_000)..=probe_to);
        for &id in model.keys() {
            probes.extend(id.saturating_sub(6)..=id.saturating_add(6));
        }
        for id in probes {
            let got = table.get(&id).map(|s| s.recv_unacked);
            assert_eq!(got, model.get(&id).copied(), "stream {id}");
        }
        let mut keys: Vec<_> = table.keys().copied().collect();
        keys.sort_unstable();
        assert_eq!(keys, model.keys().copied().collect::<Vec<_>>());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The table behaves like a map from id to state, whatever mix of long-lived streams,
        /// bursts and skipped ids it sees (these drive entries into the far map and back out).
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 1..4000)) {
            let mut table = StreamTable::default();
            let mut model = BTreeMap::new();
            let (mut next_odd, mut next_even) = (1u32, 2u32);
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Open { odd, skip } => {
                        let next = if odd { &mut next_odd } else { &mut next_even };
                        let id = *next + 2 * skip;
                        *next = id + 2;
                        table.insert(id, state(n as u32));
                        model.insert(id, n as u32);
                    }
                    Op::Remove(k) => {
                        if model.is_empty() {
                            continue;
                        }
                        let id = *model.keys().nth(k % model.len()).unwrap();
                        let got = table.remove(&id).map(|s| s.recv_unacked);
                        prop_assert_eq!(got, model.remove(&id));
                        prop_assert!(table.remove(&id).is_none());
                    }
                    Op::RemoveNewest(count) => {
                        let newest: Vec<_> = model.keys().rev().take(count as usize).copied().collect();
                        for id in newest {
                            prop_assert!(table.remove(&id).is_some());
                            model.remove(&id);
                        }
                    }
                    Op::RemoveOldest(count) => {
                        let oldest: Vec<_> = model.keys().take(count as usize).copied().collect();
                        for id in oldest {
                            prop_assert!(table.remove(&id).is_some());
                            model.remove(&id);
                        }
                    }
                }
                check_bounds(&table.odd);
                check_bounds(&table.even);
            }
            check(&table, &model, next_odd.max(next_even) + 4);
            let ids: Vec<_> = model.keys().copied().collect();
            for id in ids {
                prop_assert!(table.remove(&id).is_some());
            }
            prop_assert!(table.is_empty());
            prop_assert!(table.get(&0).is_none());
            check_bounds(&table.odd);
            check_bounds(&table.even);
        }
    }

    /// A peer may skip up to its stream credit (up to 2^30 ids) in one SYN: that must not
    /// allocate for the skipped ids.
    #[test]
    fn a_large_skip_does_not_allocate_the_skipped_window() {
        let mut table = StreamTable::default();
        table.insert(1, state(1));
        let far = 2 * (1u32 << 22) + 1; // 4 M indices on
        table.insert(far, state(2));
        assert_eq!(table.get(&1).map(|s| s.recv_unacked), Some(1));
        assert_eq!(table.get(&far).map(|s| s.recv_unacked), Some(2));
        assert!(table.get(&(far - 2)).is_none() && table.get(&3).is_none());
        assert!(
            table.odd.window.capacity() <= 64,
            "window capacity {}",
            table.odd.window.capacity()
        );
        check_bounds(&table.odd);
        // And the next ids continue in the new window.
        table.insert(far + 2, state(3));
        assert_eq!(table.get(&(far + 2)).map(|s| s.recv_unacked), Some(3));
        assert!(table.remove(&1).is_some());
        check_bounds(&table.odd);
        assert_eq!(table.len(), 2);
    }

    /// After a burst ends, the index gives back the memory it took.
    #[test]
    fn capacity_follows_the_live_count_after_a_burst() {
        let mut table = StreamTable::default();
        for i in 0..300_000u32 {
            table.insert(2 * i + 1, state(i));
        }
        for i in 1..300_000u32 {
            assert!(table.remove(&(2 * i + 1)).is_some());
        }
        check_bounds(&table.odd);
        assert!(table.odd.window.capacity() <= 64);
        // Long-lived streams pushed to the far map by newer ones, then ended.
        for i in 300_000..400_000u32 {
            table.insert(2 * i + 1, state(i));
        }
        for i in 400_000..1_000_000u32 {
            table.insert(2 * i + 1, state(i));
            assert!(table.remove(&(2 * i + 1)).is_some());
        }
        assert!(table.odd.far.len() >= 100_000);
        for i in 300_000..400_000u32 {
            assert!(table.remove(&(2 * i + 1)).is_some());
        }
        check_bounds(&table.odd);
        assert!(table.odd.far.capacity() <= FAR_MIN_CAPACITY);
        assert_eq!(table.get(&1).map(|s| s.recv_unacked), Some(0));
    }

    #[test]
    fn a_long_lived_stream_does_not_pin_a_growing_window() {
        let mut table = StreamTable::default();
        table.insert(1, state(1));
        for id in (3..2_000_003).step_by(2) {
            table.insert(id, state(id));
            assert!(table.remove(&id).is_some());
        }
        assert_eq!(table.get(&1).map(|s| s.recv_unacked), Some(1));
        assert!(
            table.odd.window.len() <= 1024 + 4,
            "window {}",
            table.odd.window.len()
        );
        assert_eq!(table.len(), 1);
    }
}

#[cfg(test)]
mod copy_tests {
    use super::*;

    /// Whether `b` points into `block`.
    fn inside(b: &Bytes, block: &Bytes) -> bool {
        let start = block.as_ptr() as usize;
        let p = b.as_ptr() as usize;
        p >= start && p < start + block.len()
    }

    fn data(stream: StreamId, syn: bool, len: usize) -> Frame {
        Frame::Data {
            stream,
            syn,
            fin: false,
            payload: Bytes::from(vec![7u8; len]),
        }
    }

    /// Only a large payload arriving at a stream with nothing buffered keeps a slice of the read
    /// block; payloads that queue behind unread data are copied, so that a slow or absent
    /// reader pins at most one read block.
    #[test]
    fn payloads_behind_unread_data_are_copied_out_of_the_read_block() {
        let now = Instant::ZERO;
        let mut s = Session::new(Role::Server, Config::default(), now);
        let mut input = BytesMut::new();
        input.extend_from_slice(&wire::preface());
        wire::encode(&data(1, true, COPY_BELOW), &mut input);
        wire::encode(&data(1, false, COPY_BELOW), &mut input);
        wire::encode(&data(1, false, 3 * COPY_BELOW), &mut input);
        wire::encode(&data(3, true, COPY_BELOW - 1), &mut input);
        wire::encode(&data(3, false, COPY_BELOW), &mut input);
        let block = input.freeze();
        s.handle_input(block.clone(), now);
        assert_eq!(s.is_closed(), None);
        let chunks = |s: &Session, id: StreamId| -> Vec<bool> {
            let q = s.streams.get(&id).unwrap().recv.as_ref().unwrap();
            q.chunks.iter().map(|c| inside(c, &block)).collect()
        };
        assert_eq!(chunks(&s, 1), vec![true, false, false]);
        assert_eq!(chunks(&s, 3), vec![false, false]);
        // Once the reader caught up, a large payload is zero-copy again.
        let mut buf = vec![0u8; 8 * COPY_BELOW];
        while s.read(1, &mut buf).is_ok() {}
        let mut more = BytesMut::new();
        wire::encode(&data(1, false, COPY_BELOW), &mut more);
        wire::encode(&data(1, false, COPY_BELOW), &mut more);
        let more = more.freeze();
        s.handle_input(more.clone(), now);
        let q = s.streams.get(&1).unwrap().recv.as_ref().unwrap();
        let kept: Vec<bool> = q.chunks.iter().map(|c| inside(c, &more)).collect();
        assert_eq!(kept, vec![true, false]);
    }
}
