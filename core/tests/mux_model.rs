//! Model-based property tests of the multiplexer session.
//!
//! Random operation sequences run on a client and a server joined by the paired harness (links
//! that re-chunk the byte stream at seeded random points, optional latency, simulated clock). A
//! per-stream model records, for each side, what its writes had accepted, what it read, whether it
//! finished, reset or detached, and which events it saw. Checked throughout:
//!
//! - every byte a side reads on a stream is the next byte of what the peer's writes accepted on
//!   that stream (in order, no duplicates, no loss), and end of stream comes only after all of it,
//!   once the peer finished;
//! - half-close: a finished side may still read, its peer may still write; writes after finish
//!   fail with `Finished`;
//! - reset: the resetting side's later operations give `UnknownStream`; the peer gets
//!   `Event::Reset` with the same code unless it had already closed, reset or detached the
//!   stream; refusals (small `max_incoming_streams`) reach the opener as `Reset { REFUSED }`;
//! - detach: no events and no data for the stream afterwards, while the peer still receives all
//!   bytes written before it and the end of stream;
//! - flow control: no session ever closes (a sender beyond its credit would be a FLOW_CONTROL
//!   error), buffered receive bytes never exceed the sum of the receive windows of the streams
//!   held (so at most `streams × INITIAL_STREAM_WINDOW + receive_budget`) nor what the peer
//!   wrote and was not read yet, window growth beyond the initial window summed over the streams
//!   never exceeds `receive_budget`, queued send bytes never exceed `max_send_buffer`;
//! - after a final phase that finishes every open stream from both sides, runs the pipe until
//!   idle and reads everything: no stream state, queued or buffered byte is left on either side,
//!   and the sessions are still open.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use svcnet_core::mux::testing::{Pair, Side, SplitMix64};
use svcnet_core::mux::{
    reset_code, Config, Event, OpenError, StreamError, StreamId, INITIAL_CONNECTION_WINDOW,
    INITIAL_MAX_STREAMS, INITIAL_STREAM_WINDOW,
};
use svcnet_core::wire::mux::MAX_DATA_PAYLOAD;

const SIDES: [Side; 2] = [Side::Client, Side::Server];

fn ix(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

/// The client opens odd ids, the server even ones.
fn opener(id: StreamId) -> Side {
    if id % 2 == 1 {
        Side::Client
    } else {
        Side::Server
    }
}

// ---- data pattern --------------------------------------------------------------------------

/// A prime length, so that the pattern lines up with no frame or chunk size.
const PATTERN_LEN: usize = 65_521;

fn pattern_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rng = SplitMix64::new(0x6d75_785f_6d6f_6465);
        (0..PATTERN_LEN).map(|_| rng.next_u64() as u8).collect()
    })
}

/// Puts bytes `pos .. pos + len` of what `writer` sends on stream `id` into `out`.
fn fill(out: &mut Vec<u8>, id: StreamId, writer: Side, pos: u64, len: usize) {
    out.clear();
    let table = pattern_table();
    let salt = (id as usize % PATTERN_LEN) * 7919 + ix(writer) * 30_011;
    let mut at = ((pos % PATTERN_LEN as u64) as usize + salt) % PATTERN_LEN;
    while out.len() < len {
        let k = (len - out.len()).min(PATTERN_LEN - at);
        out.extend_from_slice(&table[at..at + k]);
        at = 0;
    }
}

// ---- operations and cases ------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Open(Side),
    /// `pick` selects a stream counting back from the most recently opened one (modulo).
    Write {
        side: Side,
        pick: usize,
        len: usize,
    },
    Read {
        side: Side,
        pick: usize,
        max: usize,
    },
    Finish {
        side: Side,
        pick: usize,
    },
    Reset {
        side: Side,
        pick: usize,
        code: u32,
    },
    Detach {
        side: Side,
        pick: usize,
    },
    Step,
    RunUntilIdle,
    Advance(Duration),
}

#[derive(Debug, Clone)]
struct Case {
    client: Config,
    server: Config,
    seed: u64,
    latency: Duration,
    ops: Vec<Op>,
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![
            4 => Just(16 * 1024),
            1 => 8usize..=64,
            2 => 256usize..=4096,
            1 => Just(MAX_DATA_PAYLOAD),
        ],
        prop_oneof![2 => Just(1024u32), 1 => 1u32..=3],
        prop_oneof![
            2 => Just(Config::default().max_send_buffer),
            1 => 1usize..=2048,
            1 => 2048usize..=300_000,
        ],
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            2 => Just(Config::default().receive_budget),
            1 => Just(0u64),
            1 => 1u64..=2 * u64::from(INITIAL_STREAM_WINDOW),
        ],
    )
        .prop_map(
            |(
                max_frame_size,
                max_incoming_streams,
                max_send_buffer,
                min_conn,
                min_stream,
                receive_budget,
            )| {
                let d = Config::default();
                Config {
                    max_frame_size,
                    max_incoming_streams,
                    max_send_buffer,
                    receive_budget,
                    connection_window: if min_conn {
                        INITIAL_CONNECTION_WINDOW
                    } else {
                        d.connection_window
                    },
                    max_stream_window: if min_stream {
                        INITIAL_STREAM_WINDOW
                    } else {
                        d.max_stream_window
                    },
                    ..d
                }
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let side = || prop_oneof![Just(Side::Client), Just(Side::Server)];
    // Mostly one of the last few streams, sometimes any.
    let pick = || prop_oneof![3 => 0usize..4, 1 => 0usize..64];
    let write_len = prop_oneof![
        4 => 0usize..=256,
        3 => 257usize..=8192,
        1 => 8193usize..=70_000,
        // More than a stream window: exercises stream credit.
        1 => 200_000usize..=300_000,
    ];
    // Whole-window reads let a fast reader grow its windows (with latency and an RTT sample).
    let read_max = prop_oneof![
        1usize..=16,
        17usize..=4096,
        Just(65_536usize),
        Just(1usize << 20)
    ];
    let code = prop_oneof![Just(reset_code::CANCEL), 3u32..1000];
    let advance = prop_oneof![
        8 => (0u64..=20_000).prop_map(Duration::from_micros),
        // Past the keep-alive interval: PINGs and window auto-tuning join in.
        1 => Just(Duration::from_secs(11)),
    ];
    prop_oneof![
        3 => side().prop_map(Op::Open),
        6 => (side(), pick(), write_len).prop_map(|(side, pick, len)| Op::Write { side, pick, len }),
        5 => (side(), pick(), read_max).prop_map(|(side, pick, max)| Op::Read { side, pick, max }),
        2 => (side(), pick()).prop_map(|(side, pick)| Op::Finish { side, pick }),
        1 => (side(), pick(), code).prop_map(|(side, pick, code)| Op::Reset { side, pick, code }),
        1 => (side(), pick()).prop_map(|(side, pick)| Op::Detach { side, pick }),
        2 => Just(Op::Step),
        2 => Just(Op::RunUntilIdle),
        1 => advance.prop_map(Op::Advance),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        config(),
        config(),
        any::<u64>(),
        prop_oneof![Just(0u64), 1u64..=5_000].prop_map(Duration::from_micros),
        prop::collection::vec(op(), 1..80),
    )
        .prop_map(|(client, server, seed, latency, ops)| Case {
            client,
            server,
            seed,
            latency,
            ops,
        })
}

// ---- the model -----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Opened by the peer and no `Opened` event seen (yet, or ever: refused, or abandoned by the
    /// peer before its SYN left).
    Unknown,
    Open,
    /// This side reset it with this code.
    LocalReset(u32),
    /// `Event::Reset` arrived with this code.
    PeerReset(u32),
}

/// One side's view of one stream.
#[derive(Debug, Clone)]
struct End {
    status: Status,
    /// `finish` succeeded or `detach` was called.
    finished: bool,
    detached: bool,
    /// `read` returned end of stream.
    read_eof: bool,
    /// An operation returned `UnknownStream` where that was allowed: the state is gone.
    known_gone: bool,
    /// Bytes this side's writes accepted.
    written: u64,
    /// Bytes this side read (of the peer's direction).
    read: u64,
}

#[derive(PartialEq, Eq, Debug)]
enum Known {
    Yes,
    No,
    Maybe,
}

impl End {
    fn new(status: Status) -> End {
        End {
            status,
            finished: false,
            detached: false,
            read_eof: false,
            known_gone: false,
            written: 0,
            read: 0,
        }
    }

    /// Whether the session must (Yes), must not (No) or may (Maybe) still hold the stream.
    fn known(&self) -> Known {
        match self.status {
            Status::Open if self.known_gone => Known::No,
            // Freed once both FINs passed (or silently on a peer RESET if detached).
            Status::Open if self.detached || (self.finished && self.read_eof) => Known::Maybe,
            Status::Open => Known::Yes,
            _ => Known::No,
        }
    }

    /// Holds unread data that may be buffered in the session.
    fn may_buffer(&self) -> bool {
        self.status == Status::Open && !self.detached && !self.known_gone
    }
}

/// How often the interesting paths were taken (see the coverage test).
#[derive(Debug, Default, Clone)]
struct Coverage {
    bytes_read: u64,
    eofs: u64,
    blocked_writes: u64,
    local_resets: u64,
    peer_resets: u64,
    refused: u64,
    detached: u64,
    unknown_results: u64,
    open_limit: u64,
    /// Invariant checks that found a window grown beyond the initial one ...
    grown_windows: u64,
    /// ... and that found the growth limited by a receive budget below the default.
    budget_limited: u64,
}

impl Coverage {
    fn add(&mut self, o: &Coverage) {
        self.bytes_read += o.bytes_read;
        self.eofs += o.eofs;
        self.blocked_writes += o.blocked_writes;
        self.local_resets += o.local_resets;
        self.peer_resets += o.peer_resets;
        self.refused += o.refused;
        self.detached += o.detached;
        self.unknown_results += o.unknown_results;
        self.open_limit += o.open_limit;
        self.grown_windows += o.grown_windows;
        self.budget_limited += o.budget_limited;
    }
}

struct Model {
    cfg: [Config; 2],
    streams: HashMap<StreamId, [End; 2]>,
    /// Stream ids in the order they were opened.
    order: Vec<StreamId>,
    /// Successful opens per side.
    opens: [u32; 2],
    /// Highest id of an `Opened` event per side.
    last_opened: [StreamId; 2],
    cov: Coverage,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    expect: Vec<u8>,
}

impl Model {
    fn new(client: &Config, server: &Config) -> Model {
        Model {
            cfg: [client.clone(), server.clone()],
            streams: HashMap::new(),
            order: Vec::new(),
            opens: [0; 2],
            last_opened: [0; 2],
            cov: Coverage::default(),
            wbuf: Vec::new(),
            rbuf: Vec::new(),
            expect: Vec::new(),
        }
    }

    fn end(&self, id: StreamId, side: Side) -> &End {
        &self.streams[&id][ix(side)]
    }

    fn end_mut(&mut self, id: StreamId, side: Side) -> &mut End {
        &mut self.streams.get_mut(&id).expect("stream in model")[ix(side)]
    }

    fn pick(&self, pick: usize) -> Option<StreamId> {
        let n = self.order.len();
        (n > 0).then(|| self.order[n - 1 - pick % n])
    }

    /// An operation returned `UnknownStream`.
    fn unknown_result(&mut self, id: StreamId, side: Side, what: &str) {
        self.cov.unknown_results += 1;
        let e = self.end_mut(id, side);
        match e.known() {
            Known::Yes => panic!("{what} on stream {id} at {side:?}: UnknownStream, but {e:?}"),
            Known::Maybe => e.known_gone = true,
            Known::No => {}
        }
    }

    /// An operation returned something other than `UnknownStream`.
    fn known_result(&self, id: StreamId, side: Side, what: &str, result: &dyn std::fmt::Debug) {
        let e = self.end(id, side);
        assert_ne!(
            e.known(),
            Known::No,
            "{what} on stream {id} at {side:?} returned {result:?} but the stream should be gone: {e:?}"
        );
    }

    // ---- operations

    fn open(&mut self, p: &mut Pair, side: Side) {
        let now = p.now;
        match p.session(side).open(now) {
            Ok(id) => {
                assert_eq!(
                    opener(id),
                    side,
                    "{side:?} opened stream {id} of the wrong parity"
                );
                assert!(!self.streams.contains_key(&id), "stream id {id} reused");
                let mut ends = [End::new(Status::Unknown), End::new(Status::Unknown)];
                ends[ix(side)].status = Status::Open;
                self.streams.insert(id, ends);
                self.order.push(id);
                self.opens[ix(side)] += 1;
            }
            Err(OpenError::Limit) => {
                // The stream credit only grows from the initial one.
                assert!(
                    self.opens[ix(side)] >= INITIAL_MAX_STREAMS,
                    "{side:?} hit the stream limit after {} opens",
                    self.opens[ix(side)]
                );
                self.cov.open_limit += 1;
            }
            Err(e) => panic!("open at {side:?}: {e:?}"),
        }
    }

    fn write(&mut self, p: &mut Pair, side: Side, id: StreamId, len: usize) {
        // Tiny frames make big writes slow; cap them.
        let len = len.min(self.cfg[ix(side)].max_frame_size * 512);
        let e = self.end(id, side).clone();
        fill(&mut self.wbuf, id, side, e.written, len);
        let r = p.session(side).write(id, &self.wbuf);
        if r == Err(StreamError::UnknownStream) {
            return self.unknown_result(id, side, "write");
        }
        self.known_result(id, side, "write", &r);
        if e.finished {
            assert_eq!(
                r,
                Err(StreamError::Finished),
                "write on finished stream {id} at {side:?}"
            );
            return;
        }
        match r {
            Ok(n) => {
                assert!(n <= len && (n > 0 || len == 0), "write of {len} took {n}");
                self.end_mut(id, side).written += n as u64;
            }
            Err(StreamError::Blocked) => {
                assert!(len > 0, "empty write blocked");
                self.cov.blocked_writes += 1;
            }
            Err(e) => panic!("write of {len} on stream {id} at {side:?}: {e:?}"),
        }
    }

    /// One `read` call; returns whether it made progress (data or a first end of stream).
    fn read(&mut self, p: &mut Pair, side: Side, id: StreamId, max: usize) -> bool {
        let max = max.max(1);
        let e = self.end(id, side).clone();
        let peer = self.end(id, side.other()).clone();
        self.rbuf.resize(max, 0);
        let r = p.session(side).read(id, &mut self.rbuf[..max]);
        if r == Err(StreamError::UnknownStream) {
            self.unknown_result(id, side, "read");
            return false;
        }
        self.known_result(id, side, "read", &r);
        match r {
            Ok(0) => {
                if e.detached || e.read_eof {
                    return false;
                }
                assert!(
                    peer.finished,
                    "end of stream {id} at {side:?}, but the peer never finished: {peer:?}"
                );
                assert_eq!(
                    e.read, peer.written,
                    "end of stream {id} at {side:?} after {} bytes, but the peer's writes accepted {}",
                    e.read, peer.written
                );
                self.end_mut(id, side).read_eof = true;
                self.cov.eofs += 1;
                true
            }
            Ok(n) => {
                assert!(!e.detached, "detached stream {id} at {side:?} yielded data");
                assert!(
                    !e.read_eof,
                    "stream {id} at {side:?} yielded data after its end"
                );
                assert!(
                    e.read + n as u64 <= peer.written,
                    "stream {id} at {side:?}: read up to byte {} but the peer wrote {}",
                    e.read + n as u64,
                    peer.written
                );
                fill(&mut self.expect, id, side.other(), e.read, n);
                if self.rbuf[..n] != self.expect[..] {
                    let at = (0..n)
                        .find(|&i| self.rbuf[i] != self.expect[i])
                        .unwrap_or(0);
                    panic!(
                        "stream {id} at {side:?}: byte {} differs from what the peer wrote \
                         (read {n} bytes from offset {})",
                        e.read + at as u64,
                        e.read
                    );
                }
                self.end_mut(id, side).read += n as u64;
                self.cov.bytes_read += n as u64;
                true
            }
            Err(StreamError::Blocked) => {
                assert!(
                    e.detached || !e.read_eof,
                    "read on stream {id} at {side:?} blocked after its end"
                );
                false
            }
            Err(err) => panic!("read on stream {id} at {side:?}: {err:?}"),
        }
    }

    fn finish(&mut self, p: &mut Pair, side: Side, id: StreamId) {
        let e = self.end(id, side).clone();
        let r = p.session(side).finish(id);
        if r == Err(StreamError::UnknownStream) {
            return self.unknown_result(id, side, "finish");
        }
        self.known_result(id, side, "finish", &r);
        if e.finished {
            assert_eq!(
                r,
                Err(StreamError::Finished),
                "finish twice on {id} at {side:?}"
            );
        } else {
            assert_eq!(r, Ok(()), "finish on {id} at {side:?}");
            self.end_mut(id, side).finished = true;
        }
    }

    fn reset(&mut self, p: &mut Pair, side: Side, id: StreamId, code: u32) {
        let r = p.session(side).reset(id, code);
        if r == Err(StreamError::UnknownStream) {
            return self.unknown_result(id, side, "reset");
        }
        self.known_result(id, side, "reset", &r);
        assert_eq!(r, Ok(()), "reset of {id} at {side:?}");
        self.end_mut(id, side).status = Status::LocalReset(code);
        self.cov.local_resets += 1;
    }

    fn detach(&mut self, p: &mut Pair, side: Side, id: StreamId) {
        p.session(side).detach(id);
        let e = self.end_mut(id, side);
        if e.status == Status::Open && !e.detached {
            e.detached = true;
            e.finished = true;
            self.cov.detached += 1;
        }
    }

    fn apply(&mut self, p: &mut Pair, op: &Op) {
        match *op {
            Op::Open(side) => self.open(p, side),
            Op::Write { side, pick, len } => {
                if let Some(id) = self.pick(pick) {
                    self.write(p, side, id, len);
                }
            }
            Op::Read { side, pick, max } => {
                if let Some(id) = self.pick(pick) {
                    self.read(p, side, id, max);
                }
            }
            Op::Finish { side, pick } => {
                if let Some(id) = self.pick(pick) {
                    self.finish(p, side, id);
                }
            }
            Op::Reset { side, pick, code } => {
                if let Some(id) = self.pick(pick) {
                    self.reset(p, side, id, code);
                }
            }
            Op::Detach { side, pick } => {
                if let Some(id) = self.pick(pick) {
                    self.detach(p, side, id);
                }
            }
            Op::Step => {
                p.step();
            }
            Op::RunUntilIdle => p.run_until_idle(),
            Op::Advance(by) => p.advance(by),
        }
        self.drain_events(p);
        self.check_invariants(p);
    }

    // ---- events and invariants

    fn drain_events(&mut self, p: &mut Pair) {
        for side in SIDES {
            for e in std::mem::take(p.events(side)) {
                self.on_event(side, e);
            }
        }
    }

    fn on_event(&mut self, side: Side, event: Event) {
        match event {
            Event::Opened(id) => {
                assert_eq!(
                    opener(id),
                    side.other(),
                    "{side:?}: Opened({id}) of its own parity"
                );
                assert!(
                    id > self.last_opened[ix(side)],
                    "{side:?}: Opened({id}) after Opened({})",
                    self.last_opened[ix(side)]
                );
                self.last_opened[ix(side)] = id;
                let Some(ends) = self.streams.get_mut(&id) else {
                    panic!("{side:?}: Opened({id}) but the peer never opened it");
                };
                let e = &mut ends[ix(side)];
                assert_eq!(e.status, Status::Unknown, "{side:?}: Opened({id}) twice");
                e.status = Status::Open;
            }
            Event::Readable(id) => {
                let e = self.end(id, side);
                assert!(
                    e.status == Status::Open && !e.detached && !e.known_gone,
                    "{side:?}: Readable({id}) for {e:?}"
                );
            }
            Event::Writable(_) | Event::OpenAvailable => {}
            Event::Reset { stream: id, code } => {
                let e = self.end(id, side);
                assert!(
                    e.status == Status::Open && !e.detached && !e.known_gone,
                    "{side:?}: Reset {{ {id}, {code} }} for {e:?}"
                );
                let peer = self.end(id, side.other());
                if code == reset_code::REFUSED {
                    assert_eq!(
                        opener(id),
                        side,
                        "{side:?}: refusal of a stream it accepted"
                    );
                    assert_eq!(
                        peer.status,
                        Status::Unknown,
                        "{side:?}: stream {id} refused after the peer accepted it"
                    );
                    let limit = self.cfg[ix(side.other())].max_incoming_streams;
                    assert!(
                        self.opens[ix(side)] > limit,
                        "{side:?}: stream {id} refused with only {} opened (limit {limit})",
                        self.opens[ix(side)]
                    );
                    self.cov.refused += 1;
                } else {
                    assert_eq!(
                        peer.status,
                        Status::LocalReset(code),
                        "{side:?}: Reset {{ {id}, {code} }} but the peer did not reset with it"
                    );
                    self.cov.peer_resets += 1;
                }
                self.end_mut(id, side).status = Status::PeerReset(code);
            }
            e @ (Event::GoAway { .. } | Event::Closed { .. }) => {
                panic!("{side:?}: unexpected {e:?}")
            }
        }
    }

    fn check_invariants(&mut self, p: &mut Pair) {
        // Nothing in flight and nothing (a RESET, a WINDOW_UPDATE) waiting to be sent.
        let idle = p.to_server.is_empty()
            && p.to_client.is_empty()
            && !p.client.wants_transmit()
            && !p.server.wants_transmit();
        for side in SIDES {
            let cfg = &self.cfg[ix(side)];
            let peer_queued = p.session(side.other()).stats().queued_send_bytes;
            let s = p.session(side);
            assert_eq!(
                s.is_closed(),
                None,
                "{side:?} closed: {}",
                s.close_message()
            );
            let st = s.stats();
            let unread: u64 = self
                .streams
                .values()
                .filter(|ends| ends[ix(side)].may_buffer())
                .map(|ends| ends[ix(side.other())].written - ends[ix(side)].read)
                .sum();
            // Each stream buffers at most its receive window; windows grow only within the
            // receive budget.
            let (mut windows, mut growth) = (0u64, 0u64);
            for &id in &self.order {
                if let Some(w) = s.stream_recv_window(id) {
                    assert!(w >= INITIAL_STREAM_WINDOW && w <= cfg.max_stream_window);
                    windows += u64::from(w);
                    growth += u64::from(w - INITIAL_STREAM_WINDOW);
                }
            }
            if growth > 0 {
                self.cov.grown_windows += 1;
                if cfg.receive_budget < Config::default().receive_budget
                    && growth + u64::from(INITIAL_STREAM_WINDOW) > cfg.receive_budget
                {
                    self.cov.budget_limited += 1;
                }
            }
            assert!(
                growth <= cfg.receive_budget,
                "{side:?} grew its windows by {growth} bytes, beyond its receive budget {}",
                cfg.receive_budget
            );
            assert!(
                st.buffered_recv_bytes <= windows,
                "{side:?} buffers {} bytes, beyond the sum of its stream windows {windows}",
                st.buffered_recv_bytes
            );
            let bound = st.streams as u64 * u64::from(INITIAL_STREAM_WINDOW) + cfg.receive_budget;
            assert!(
                st.buffered_recv_bytes <= bound,
                "{side:?} buffers {} bytes, beyond {} streams × the initial window + the \
                 receive budget = {bound}",
                st.buffered_recv_bytes,
                st.streams
            );
            if idle && peer_queued == 0 {
                // Everything the peer accepted has arrived: the accounting must be exact (too
                // little would be leaked credit, too much credit granted twice).
                assert_eq!(
                    st.buffered_recv_bytes, unread,
                    "{side:?} accounts {} bytes as buffered, but {unread} arrived and were not read",
                    st.buffered_recv_bytes
                );
            } else {
                assert!(
                    st.buffered_recv_bytes <= unread,
                    "{side:?} buffers {} bytes but only {unread} were written to it and not read",
                    st.buffered_recv_bytes
                );
            }
            let writable: u64 = self
                .streams
                .values()
                .filter(|ends| ends[ix(side)].status == Status::Open)
                .map(|ends| ends[ix(side)].written)
                .sum();
            assert!(
                st.queued_send_bytes <= cfg.max_send_buffer
                    && st.queued_send_bytes as u64 <= writable,
                "{side:?} queues {} bytes (send buffer {}, written on live streams {writable})",
                st.queued_send_bytes,
                cfg.max_send_buffer
            );
        }
    }

    // ---- the final phase

    /// Finishes every open stream from both sides, runs the pipe and reads everything, then
    /// checks that nothing is left.
    fn close_all(&mut self, p: &mut Pair) {
        p.run_until_idle();
        self.drain_events(p);
        self.check_invariants(p);
        // Every RESET sent has landed: a peer still holding the stream must have been told.
        for &id in &self.order {
            for side in SIDES {
                let e = self.end(id, side);
                let peer = self.end(id, side.other());
                if let Status::LocalReset(code) = peer.status {
                    if e.status == Status::Open && !e.detached {
                        assert!(
                            e.finished && e.read_eof,
                            "{side:?} was not told of the reset of stream {id} with {code}: {e:?}"
                        );
                    }
                }
            }
        }
        let ids = self.order.clone();
        for &id in &ids {
            for side in SIDES {
                let e = self.end(id, side);
                if e.status == Status::Open && !e.finished {
                    self.finish(p, side, id);
                }
            }
        }
        let mut rounds = 0;
        loop {
            p.run_until_idle();
            self.drain_events(p);
            self.check_invariants(p);
            let mut progress = false;
            for &id in &ids {
                for side in SIDES {
                    loop {
                        let e = self.end(id, side);
                        if !e.may_buffer() || e.read_eof {
                            break;
                        }
                        if !self.read(p, side, id, 65_536) {
                            break;
                        }
                        progress = true;
                    }
                }
            }
            if !progress {
                break;
            }
            rounds += 1;
            assert!(rounds < 10_000, "the final phase does not converge");
        }
        p.run_until_idle();
        self.drain_events(p);
        self.check_invariants(p);

        for &id in &ids {
            for side in SIDES {
                let e = self.end(id, side);
                let peer = self.end(id, side.other());
                match e.status {
                    Status::Open if !e.detached => assert!(
                        e.read_eof,
                        "stream {id} at {side:?} never ended: {e:?}, peer {peer:?}"
                    ),
                    Status::Unknown => assert!(
                        matches!(
                            peer.status,
                            Status::LocalReset(_) | Status::PeerReset(reset_code::REFUSED)
                        ) || peer.detached,
                        "{side:?} never saw stream {id}, which the peer did not reset: {peer:?}"
                    ),
                    _ => {}
                }
                // Nothing of the stream is left: every operation says so.
                let s = p.session(side);
                let unknown = Some(StreamError::UnknownStream);
                assert_eq!(
                    s.write(id, b"x").err(),
                    unknown,
                    "write on {id} at {side:?}"
                );
                assert_eq!(
                    s.read(id, &mut [0; 8]).err(),
                    unknown,
                    "read on {id} at {side:?}"
                );
                assert_eq!(s.finish(id).err(), unknown, "finish on {id} at {side:?}");
                assert_eq!(s.reset(id, 9).err(), unknown, "reset on {id} at {side:?}");
            }
        }
        for side in SIDES {
            let s = p.session(side);
            assert_eq!(s.is_closed(), None, "{side:?} closed");
            assert_eq!(s.stream_count(), 0, "{side:?} keeps stream state");
            let st = s.stats();
            assert_eq!(st.queued_send_bytes, 0, "{side:?} keeps queued bytes");
            assert_eq!(st.buffered_recv_bytes, 0, "{side:?} keeps received bytes");
        }
    }
}

fn run_case(case: &Case) -> Coverage {
    let mut p = Pair::with(
        case.client.clone(),
        case.server.clone(),
        case.seed,
        case.latency,
    );
    let mut m = Model::new(&case.client, &case.server);
    for op in &case.ops {
        m.apply(&mut p, op);
    }
    m.close_all(&mut p);
    m.cov
}

/// 256 cases unless `PROPTEST_CASES` says otherwise (for longer soak runs).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_keep_every_stream_consistent(case in case()) {
        run_case(&case);
    }
}

/// Guards the generator: a fixed sample of cases must reach the paths the properties are about.
#[test]
fn generated_cases_reach_the_interesting_paths() {
    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let mut total = Coverage::default();
    for _ in 0..64 {
        let case = strategy
            .new_tree(&mut runner)
            .expect("generate a case")
            .current();
        total.add(&run_case(&case));
    }
    eprintln!("coverage of 64 generated cases: {total:?}");
    assert!(total.bytes_read > 1_000_000, "{total:?}");
    assert!(total.eofs > 50, "{total:?}");
    assert!(total.blocked_writes > 0, "{total:?}");
    assert!(total.local_resets > 0, "{total:?}");
    assert!(total.peer_resets > 0, "{total:?}");
    assert!(total.refused > 0, "{total:?}");
    assert!(total.detached > 0, "{total:?}");
    assert!(total.unknown_results > 0, "{total:?}");
}
