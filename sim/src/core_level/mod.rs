//! Core level: several svcnet cores wired by simulated links, on a simulated clock.
//!
//! Each node is a [`PeerBook`] (who to dial, when, with backoff) plus one mux [`Session`] per
//! connection. Connections run over two [`link::SegLink`]s (one per direction) that turn the
//! seeded packet faults into what a real transport gives the mux: an ordered, intact, sometimes
//! slow or silent pipe. Applications on the nodes open streams to each other: the opener writes
//! a seeded payload and finishes, the accepting "service" writes its own seeded reply and
//! finishes — or dies mid-stream (reset) when the mix says so.
//!
//! Time never ticks: after settling everything due at `now`, the clock jumps to the earliest of
//! the next packet arrival, retransmission timeout, session `poll_timeout`, peer-book
//! `poll_timeout` or scheduled action.
//!
//! Phases: chaos (workload plus partitions, one-way partitions and crashes per the mix), then
//! heal (every cut repaired, crashed nodes restarted), then liveness: every node pair must be
//! connected again, a fresh batch of streams must complete without error, and at the end nothing
//! may hang or leak.
//!
//! Invariants, checked as streams end and at the end of the run:
//! - integrity: when an end has read its stream to the end, what it read equals (blake3 and
//!   length) what the other end wrote; otherwise both ends saw an error;
//! - liveness: after healing, peers reconnect and new streams complete; every stream end is done
//!   (complete or failed) by the deadline;
//! - no leaks: once all streams ended, live sessions hold no stream state and no buffered bytes.

pub mod link;
pub mod netstack;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use svcnet_core::addressing::NodeName;
use svcnet_core::identity::{NodeId, NodeKey};
use svcnet_core::mux::{self, Event, Role, Session, StreamError, StreamId};
use svcnet_core::peering::{PeerBook, PeeringConfig, PeeringEvent};
use svcnet_core::rng::SplitMix64;
use svcnet_core::time::Instant;
use svcnet_core::wire::stream::stream_error;

use crate::mix::{Mix, Profile};
use crate::trace::Trace;
use crate::{Defect, Outcome, RunOpts};
use link::SegLink;

/// What a core-level scenario varies.
#[derive(Clone, Copy, Debug)]
pub struct CoreSpec {
    pub name: &'static str,
    pub nodes: usize,
    /// Length of the chaos phase.
    pub chaos: Duration,
    pub profile: Profile,
}

const KEEPALIVE: Duration = Duration::from_millis(1000);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(5000);
const DIAL_TIMEOUT: Duration = Duration::from_millis(1000);
/// After healing: by then every pair must be connected again (a retransmission pending at the
/// heal may stall a session up to 2.6 s more and kill it, its peer notices within
/// [`KEEPALIVE_TIMEOUT`], redials back off at most 2 s, a dial takes a round trip).
const RECONNECT_WITHIN: Duration = Duration::from_secs(15);
/// After healing: by then every stream must have ended.
const LIVENESS_DEADLINE: Duration = Duration::from_secs(60);
const WRITE_CHUNK: usize = 16 * 1024;

fn session_config() -> mux::Config {
    mux::Config {
        keepalive_interval: KEEPALIVE,
        keepalive_timeout: KEEPALIVE_TIMEOUT,
        ..mux::Config::default()
    }
}

struct Node {
    id: NodeId,
    name: NodeName,
    book: PeerBook,
    alive: bool,
    incarnation: u32,
}

struct Side {
    /// `None` once the node crashed (its state is gone, the peer is not told).
    session: Option<Session>,
    /// The session ended and the book was told.
    closed: bool,
}

struct Conn {
    nodes: [usize; 2],
    incarnations: [u32; 2],
    sides: [Side; 2],
    /// `links[0]` carries side 0's bytes to side 1.
    links: [SegLink; 2],
}

/// One end of an application stream.
struct End {
    conn: u64,
    side: usize,
    sid: StreamId,
    /// Bytes this end writes in total.
    total: u64,
    sent: u64,
    gen: SplitMix64,
    pending: Bytes,
    sent_hash: blake3::Hasher,
    recv_hash: blake3::Hasher,
    recv_len: u64,
    finished: bool,
    fin_recv: bool,
    error: Option<String>,
    /// The service end dies (resets) after writing this many bytes.
    die_at: Option<u64>,
    /// Self-test: silently skip one chunk at this offset.
    drop_at: Option<u64>,
}

impl End {
    fn new(conn: u64, side: usize, sid: StreamId, seed: u64, total: u64) -> End {
        End {
            conn,
            side,
            sid,
            total,
            sent: 0,
            gen: SplitMix64::new(seed),
            pending: Bytes::new(),
            sent_hash: blake3::Hasher::new(),
            recv_hash: blake3::Hasher::new(),
            recv_len: 0,
            finished: false,
            fin_recv: false,
            error: None,
            die_at: None,
            drop_at: None,
        }
    }

    fn done(&self) -> bool {
        self.error.is_some() || (self.finished && self.fin_recv)
    }
}

struct Rec {
    /// Opener end, then the acceptor's once the stream arrived.
    ends: [Option<usize>; 2],
    /// Opened after healing: must complete without error.
    liveness: bool,
    acceptor_total: u64,
    acceptor_seed: u64,
    die_at: Option<u64>,
    checked: bool,
}

#[derive(Debug)]
enum Action {
    Open {
        liveness: bool,
    },
    DialDone {
        from: usize,
        to: usize,
        inc: [u32; 2],
        ok: bool,
    },
    Cut {
        from: usize,
        to: usize,
        both: bool,
    },
    Heal {
        from: usize,
        to: usize,
        both: bool,
    },
    Crash(usize),
    Restart(usize),
    HealAll,
    CheckPeering,
}

struct World {
    now: Instant,
    mix: Mix,
    rng: SplitMix64,
    trace: Trace,
    nodes: Vec<Node>,
    /// `cut[a][b]`: packets from a to b are lost.
    cut: Vec<Vec<bool>>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    ends: Vec<End>,
    recs: Vec<Rec>,
    /// (conn, side, stream id) -> index into `ends`.
    end_index: BTreeMap<(u64, usize, StreamId), usize>,
    /// (conn, opener side, stream id) -> index into `recs`, for the acceptor to find its record.
    rec_index: BTreeMap<(u64, usize, StreamId), usize>,
    actions: BTreeMap<(Instant, u64), Action>,
    action_seq: u64,
    violations: Vec<String>,
    counters: BTreeMap<&'static str, u64>,
    defect: Option<Defect>,
    healed: bool,
    out: Vec<Bytes>,
    /// Self-test: flip the byte at this offset of all bytes delivered to sessions (counted
    /// over every link), past the handshakes, where most bytes are stream payload.
    defect_at: Option<u64>,
    delivered: u64,
}

fn node_key(seed: u64, i: usize) -> NodeKey {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&seed.to_le_bytes());
    b[8] = i as u8;
    NodeKey::from_seed(*blake3::hash(&b).as_bytes())
}

fn new_book(nodes: &[(NodeId, NodeName)], me: usize, seed: u64, now: Instant) -> PeerBook {
    let mut book = PeerBook::new(
        nodes[me].0,
        nodes[me].1.clone(),
        PeeringConfig {
            seed,
            ..PeeringConfig::default()
        },
    );
    for (j, (id, name)) in nodes.iter().enumerate() {
        if j != me {
            book.add_peer(*id, Some(name.clone()), true, now);
        }
    }
    book
}

impl World {
    fn bump(&mut self, key: &'static str) {
        *self.counters.entry(key).or_default() += 1;
    }

    fn rec(&mut self, event: &str, values: &[u64]) {
        self.trace.record(self.now.as_micros(), event, values);
    }

    fn schedule(&mut self, at: Instant, a: Action) {
        self.action_seq += 1;
        self.actions.insert((at, self.action_seq), a);
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.below(1_000_000) as f64) < p * 1_000_000.0
    }

    fn idents(&self) -> Vec<(NodeId, NodeName)> {
        self.nodes.iter().map(|n| (n.id, n.name.clone())).collect()
    }

    // ---------------------------------------------------------------------------------------
    // Peering
    // ---------------------------------------------------------------------------------------

    fn poll_books(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            self.nodes[i].book.handle_timeout(self.now);
            while let Some(PeeringEvent::Dial { peer, attempt }) = self.nodes[i].book.poll_event() {
                let Some(j) = self.nodes.iter().position(|n| n.id == peer) else {
                    continue;
                };
                self.rec("dial", &[i as u64, j as u64, u64::from(attempt)]);
                self.bump("dials");
                let ok = self.nodes[j].alive && !self.cut[i][j] && !self.cut[j][i];
                let rtt = Duration::from_millis(2 * self.mix.latency_ms + self.mix.jitter_ms);
                let at = self.now + if ok { rtt } else { DIAL_TIMEOUT };
                let inc = [self.nodes[i].incarnation, self.nodes[j].incarnation];
                self.schedule(
                    at,
                    Action::DialDone {
                        from: i,
                        to: j,
                        inc,
                        ok,
                    },
                );
            }
        }
    }

    fn dial_done(&mut self, from: usize, to: usize, inc: [u32; 2], ok: bool) {
        if self.nodes[from].incarnation != inc[0] || !self.nodes[from].alive {
            return; // the dialer crashed meanwhile: its dial died with it
        }
        let ok = ok
            && self.nodes[to].alive
            && self.nodes[to].incarnation == inc[1]
            && !self.cut[from][to]
            && !self.cut[to][from];
        let peer = self.nodes[to].id;
        if !ok {
            self.rec("dial-failed", &[from as u64, to as u64]);
            self.bump("dial_failures");
            self.nodes[from]
                .book
                .handle_dial_failed(peer, "unreachable", self.now);
            return;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let seed = self.rng.next_u64();
        let links = [
            SegLink::new(seed, &self.mix),
            SegLink::new(seed ^ 1, &self.mix),
        ];
        let conn = Conn {
            nodes: [from, to],
            incarnations: [self.nodes[from].incarnation, self.nodes[to].incarnation],
            sides: [
                Side {
                    session: Some(Session::new(Role::Client, session_config(), self.now)),
                    closed: false,
                },
                Side {
                    session: Some(Session::new(Role::Server, session_config(), self.now)),
                    closed: false,
                },
            ],
            links,
        };
        self.conns.insert(id, conn);
        let from_id = self.nodes[from].id;
        self.nodes[from].book.handle_connected(peer, id, self.now);
        self.nodes[to].book.handle_connected(from_id, id, self.now);
        self.rec("connected", &[id, from as u64, to as u64]);
        self.bump("connections");
    }

    // ---------------------------------------------------------------------------------------
    // Faults
    // ---------------------------------------------------------------------------------------

    fn crash(&mut self, n: usize) {
        if !self.nodes[n].alive {
            return;
        }
        self.rec("crash", &[n as u64]);
        self.bump("crashes");
        self.nodes[n].alive = false;
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            for s in 0..2 {
                let conn = self.conns.get_mut(&id).expect("conn");
                if conn.nodes[s] == n && conn.sides[s].session.is_some() {
                    conn.sides[s].session = None;
                    conn.sides[s].closed = true;
                    self.fail_side(id, s, "node crashed");
                }
            }
        }
    }

    fn restart(&mut self, n: usize) {
        if self.nodes[n].alive {
            return;
        }
        self.rec("restart", &[n as u64]);
        self.nodes[n].alive = true;
        self.nodes[n].incarnation += 1;
        let seed = self.rng.next_u64();
        let idents = self.idents();
        self.nodes[n].book = new_book(&idents, n, seed, self.now);
    }

    /// Marks every unfinished stream end on one side of a connection as failed.
    fn fail_side(&mut self, conn: u64, side: usize, why: &str) {
        let idx: Vec<usize> = self
            .end_index
            .range((conn, side, 0)..=(conn, side, StreamId::MAX))
            .map(|(_, i)| *i)
            .collect();
        for i in idx {
            let e = &mut self.ends[i];
            if !e.done() {
                e.error = Some(why.to_string());
            }
        }
    }

    fn schedule_chaos(&mut self, chaos: Duration) {
        let n = self.nodes.len();
        let start = Duration::from_millis(500);
        let mut t = start;
        if !(self.mix.partitions || self.mix.oneway || self.mix.crashes) {
            return;
        }
        loop {
            t += Duration::from_millis(300 + self.rng.below(2500));
            if t >= chaos {
                break;
            }
            let at = Instant::ZERO + t;
            // Some outages are shorter than the keep-alive timeout (sessions survive them),
            // some longer (sessions die, peers redial).
            let dur = Duration::from_millis(200 + self.rng.below(6000));
            let kinds = [
                (self.mix.partitions, 0u8),
                (self.mix.oneway, 1),
                (self.mix.crashes, 2),
            ];
            let enabled: Vec<u8> = kinds.iter().filter(|k| k.0).map(|k| k.1).collect();
            let kind = enabled[self.rng.below(enabled.len() as u64) as usize];
            let a = self.rng.below(n as u64) as usize;
            let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
            match kind {
                0 => {
                    self.schedule(
                        at,
                        Action::Cut {
                            from: a,
                            to: b,
                            both: true,
                        },
                    );
                    self.schedule(
                        at + dur,
                        Action::Heal {
                            from: a,
                            to: b,
                            both: true,
                        },
                    );
                }
                1 => {
                    self.schedule(
                        at,
                        Action::Cut {
                            from: a,
                            to: b,
                            both: false,
                        },
                    );
                    self.schedule(
                        at + dur,
                        Action::Heal {
                            from: a,
                            to: b,
                            both: false,
                        },
                    );
                }
                _ => {
                    self.schedule(at, Action::Crash(a));
                    self.schedule(at + dur, Action::Restart(a));
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Streams
    // ---------------------------------------------------------------------------------------

    fn open_stream(&mut self, liveness: bool) {
        let n = self.nodes.len();
        let a = self.rng.below(n as u64) as usize;
        let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
        // Sizes: mostly small, some large enough to span many windows.
        let size = |rng: &mut SplitMix64| match rng.below(4) {
            0 => rng.below(64),
            1 | 2 => rng.below(16 * 1024),
            _ => rng.below(256 * 1024),
        };
        let opener_total = size(&mut self.rng);
        let acceptor_total = size(&mut self.rng);
        let opener_seed = self.rng.next_u64();
        let acceptor_seed = self.rng.next_u64();
        let die = !liveness && self.chance(self.mix.resets);
        let die_at = die.then(|| self.rng.below(acceptor_total + 1));
        if !self.nodes[a].alive {
            self.bump("open_skipped");
            return;
        }
        let peer = self.nodes[b].id;
        let Some(conn_id) = self.nodes[a].book.connection_for(&peer) else {
            self.rec("open-no-conn", &[a as u64, b as u64]);
            self.bump("open_no_connection");
            if liveness {
                self.violations.push(format!(
                    "liveness: node {a} has no connection to node {b} after healing"
                ));
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            self.violations.push(format!(
                "book of node {a} names a connection {conn_id} that does not exist"
            ));
            return;
        };
        let side = if conn.nodes[0] == a { 0 } else { 1 };
        let Some(session) = conn.sides[side].session.as_mut() else {
            self.violations.push(format!(
                "book of node {a} uses connection {conn_id} whose session is gone"
            ));
            return;
        };
        let sid = match session.open(self.now) {
            Ok(s) => s,
            Err(e) => {
                self.rec("open-failed", &[a as u64, b as u64]);
                self.bump("open_failed");
                if liveness {
                    self.violations
                        .push(format!("liveness: open from node {a} to {b} failed: {e}"));
                }
                return;
            }
        };
        let mut end = End::new(conn_id, side, sid, opener_seed, opener_total);
        if self.defect == Some(Defect::DropOneWrite) && self.recs.is_empty() && opener_total > 0 {
            end.drop_at = Some(0);
        }
        let e = self.ends.len();
        self.ends.push(end);
        self.end_index.insert((conn_id, side, sid), e);
        let r = self.recs.len();
        self.recs.push(Rec {
            ends: [Some(e), None],
            liveness,
            acceptor_total,
            acceptor_seed,
            die_at,
            checked: false,
        });
        self.rec_index.insert((conn_id, side, sid), r);
        self.rec(
            "open",
            &[r as u64, a as u64, b as u64, opener_total, acceptor_total],
        );
        self.bump("streams");
    }

    /// Moves application bytes on one stream end: write what is due, read what arrived.
    fn app_io(session: &mut Session, e: &mut End, trace: &mut Trace, now: Instant) -> bool {
        if e.done() {
            return false;
        }
        let mut progress = false;
        // Writes.
        while !e.finished && e.error.is_none() {
            if let Some(die) = e.die_at {
                if e.sent >= die {
                    let _ = session.reset(e.sid, stream_error::CONNECTION_RESET);
                    e.error = Some("service died mid-stream".into());
                    trace.record(now.as_micros(), "service-died", &[u64::from(e.sid), e.sent]);
                    return true;
                }
            }
            if e.pending.is_empty() {
                if e.sent >= e.total {
                    match session.finish(e.sid) {
                        Ok(()) | Err(StreamError::Finished) => e.finished = true,
                        Err(StreamError::Blocked) => {}
                        Err(err) => e.error = Some(format!("finish: {err}")),
                    }
                    progress = true;
                    break;
                }
                let n = ((e.total - e.sent) as usize).min(WRITE_CHUNK);
                let n = match e.die_at {
                    Some(d) => n.min((d - e.sent) as usize).max(1),
                    None => n,
                };
                let mut buf = vec![0u8; n];
                for chunk in buf.chunks_mut(8) {
                    let v = e.gen.next_u64().to_le_bytes();
                    chunk.copy_from_slice(&v[..chunk.len()]);
                }
                e.pending = Bytes::from(buf);
            }
            if e.drop_at == Some(e.sent) {
                // Self-test defect: the chunk is counted as sent but never written.
                e.drop_at = None;
                e.sent_hash.update(&e.pending);
                e.sent += e.pending.len() as u64;
                e.pending = Bytes::new();
                continue;
            }
            match session.write(e.sid, &e.pending) {
                Ok(n) => {
                    e.sent_hash.update(&e.pending[..n]);
                    e.sent += n as u64;
                    let _ = e.pending.split_to(n);
                    progress = true;
                    if n == 0 {
                        break;
                    }
                }
                Err(StreamError::Blocked) => break,
                Err(err) => {
                    e.error = Some(format!("write: {err}"));
                    progress = true;
                }
            }
        }
        // Reads.
        let mut buf = [0u8; 16 * 1024];
        while !e.fin_recv && e.error.is_none() {
            match session.read(e.sid, &mut buf) {
                Ok(0) => {
                    e.fin_recv = true;
                    progress = true;
                }
                Ok(n) => {
                    e.recv_hash.update(&buf[..n]);
                    e.recv_len += n as u64;
                    progress = true;
                }
                Err(StreamError::Blocked) => break,
                Err(err) => {
                    e.error = Some(format!("read: {err}"));
                    progress = true;
                }
            }
        }
        progress
    }

    // ---------------------------------------------------------------------------------------
    // The network
    // ---------------------------------------------------------------------------------------

    /// Runs one connection at `now` until nothing moves. Returns whether anything did.
    fn settle_conn(&mut self, id: u64) -> bool {
        let mut any = false;
        loop {
            let mut progress = false;
            let Some(conn) = self.conns.get_mut(&id) else {
                return any;
            };
            let cut = [
                self.cut[conn.nodes[0]][conn.nodes[1]],
                self.cut[conn.nodes[1]][conn.nodes[0]],
            ];
            for s in 0..2 {
                if let Some(session) = conn.sides[s].session.as_mut() {
                    self.out.clear();
                    let room = conn.links[s].room();
                    if room > 0 && session.poll_transmit(self.now, &mut self.out, room) > 0 {
                        conn.links[s].push(&self.out);
                        progress = true;
                    }
                }
                progress |= conn.links[s].pump(self.now, cut[s]);
                progress |= conn.links[s].deliver(self.now, cut[1 - s]);
                let r = 1 - s;
                while let Some(mut b) = conn.links[s].take_ready() {
                    if let Some(at) = self.defect_at {
                        let len = b.len() as u64;
                        if at >= self.delivered && at < self.delivered + len {
                            let mut m = bytes::BytesMut::from(&b[..]);
                            m[(at - self.delivered) as usize] ^= 0x5a;
                            b = m.freeze();
                            self.defect_at = None;
                        }
                    }
                    self.delivered += b.len() as u64;
                    if let Some(session) = conn.sides[r].session.as_mut() {
                        self.trace.record(
                            self.now.as_micros(),
                            "seg",
                            &[id, s as u64, b.len() as u64],
                        );
                        session.handle_input(b, self.now);
                        progress = true;
                    }
                }
            }
            // Events.
            let mut events = Vec::new();
            for s in 0..2 {
                if let Some(session) = conn.sides[s].session.as_mut() {
                    while let Some(ev) = session.poll_event() {
                        events.push((s, ev));
                    }
                }
            }
            for (s, ev) in events {
                progress = true;
                self.handle_event(id, s, ev);
            }
            // Applications.
            let Some(conn) = self.conns.get_mut(&id) else {
                return true;
            };
            for s in 0..2 {
                let Some(session) = conn.sides[s].session.as_mut() else {
                    continue;
                };
                let idx: Vec<usize> = self
                    .end_index
                    .range((id, s, 0)..=(id, s, StreamId::MAX))
                    .map(|(_, i)| *i)
                    .collect();
                for i in idx {
                    let was_done = self.ends[i].done();
                    progress |= Self::app_io(session, &mut self.ends[i], &mut self.trace, self.now);
                    if !was_done && self.ends[i].done() {
                        let e = &self.ends[i];
                        self.trace.record(
                            self.now.as_micros(),
                            if e.error.is_some() {
                                "end-failed"
                            } else {
                                "end-done"
                            },
                            &[id, s as u64, u64::from(e.sid), e.sent, e.recv_len],
                        );
                    }
                }
            }
            if !progress {
                return any;
            }
            any = true;
        }
    }

    fn handle_event(&mut self, id: u64, s: usize, ev: Event) {
        match ev {
            Event::Opened(sid) => {
                let opener = 1 - s;
                let Some(&r) = self.rec_index.get(&(id, opener, sid)) else {
                    self.violations.push(format!(
                        "conn {id}: stream {sid} arrived that nobody opened"
                    ));
                    return;
                };
                let rec = &self.recs[r];
                let mut end = End::new(id, s, sid, rec.acceptor_seed, rec.acceptor_total);
                end.die_at = rec.die_at;
                let e = self.ends.len();
                self.ends.push(end);
                self.end_index.insert((id, s, sid), e);
                self.recs[r].ends[1] = Some(e);
                self.rec("accepted", &[r as u64]);
            }
            Event::Reset { stream, code } => {
                if let Some(&e) = self.end_index.get(&(id, s, stream)) {
                    let end = &mut self.ends[e];
                    if !end.done() {
                        end.error = Some(format!("stream reset with code {code}"));
                    }
                }
                self.rec("reset", &[id, s as u64, u64::from(stream), u64::from(code)]);
            }
            Event::Closed { code, remote } => {
                self.rec(
                    "session-closed",
                    &[id, s as u64, code as u64, u64::from(remote)],
                );
                self.bump("sessions_closed");
                let conn = self.conns.get_mut(&id).expect("conn");
                if !conn.sides[s].closed {
                    conn.sides[s].closed = true;
                    let me = conn.nodes[s];
                    let peer = self.nodes[conn.nodes[1 - s]].id;
                    if self.nodes[me].incarnation == conn.incarnations[s] {
                        self.nodes[me].book.handle_closed(peer, id, self.now);
                    }
                }
                self.fail_side(id, s, &format!("session closed: {code}"));
            }
            Event::Readable(_)
            | Event::Writable(_)
            | Event::OpenAvailable
            | Event::GoAway { .. } => {}
        }
    }

    fn settle(&mut self) {
        loop {
            let mut any = false;
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for id in ids {
                any |= self.settle_conn(id);
            }
            self.poll_books();
            self.check_streams();
            // Connections whose both sides are gone are forgotten.
            self.conns
                .retain(|_, c| !(c.sides[0].closed && c.sides[1].closed));
            if !any {
                return;
            }
        }
    }

    fn next_time(&self) -> Option<Instant> {
        let mut next = self.actions.keys().next().map(|(t, _)| *t);
        let mut take = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        for c in self.conns.values() {
            for s in 0..2 {
                take(c.links[s].next_time());
                if let Some(sess) = &c.sides[s].session {
                    take(sess.poll_timeout());
                }
            }
        }
        for n in &self.nodes {
            if n.alive {
                take(n.book.poll_timeout());
            }
        }
        next
    }

    fn run_timers(&mut self) {
        for c in self.conns.values_mut() {
            for s in 0..2 {
                if let Some(sess) = c.sides[s].session.as_mut() {
                    if sess.poll_timeout().is_some_and(|t| t <= self.now) {
                        sess.handle_timeout(self.now);
                    }
                }
            }
        }
        while let Some(entry) = self.actions.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let action = entry.remove();
            self.apply(action);
        }
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Open { liveness } => self.open_stream(liveness),
            Action::DialDone { from, to, inc, ok } => self.dial_done(from, to, inc, ok),
            Action::Cut { from, to, both } => {
                self.rec("cut", &[from as u64, to as u64, u64::from(both)]);
                self.bump(if both {
                    "partitions"
                } else {
                    "oneway_partitions"
                });
                self.cut[from][to] = true;
                if both {
                    self.cut[to][from] = true;
                }
            }
            Action::Heal { from, to, both } => {
                self.rec("heal", &[from as u64, to as u64, u64::from(both)]);
                self.cut[from][to] = false;
                if both {
                    self.cut[to][from] = false;
                }
            }
            Action::Crash(n) => {
                if !self.healed {
                    self.crash(n)
                }
            }
            Action::Restart(n) => self.restart(n),
            Action::HealAll => {
                self.rec("heal-all", &[]);
                self.healed = true;
                // Packet faults end too: the liveness phase runs on clean (but still slow,
                // jittery, rate-limited) links, so a session dying now is a bug, not bad luck.
                self.mix.loss = 0.0;
                self.mix.dup = 0.0;
                self.mix.corrupt = 0.0;
                for c in self.conns.values_mut() {
                    for l in c.links.iter_mut() {
                        l.heal_packet_faults();
                    }
                }
                for row in self.cut.iter_mut() {
                    row.iter_mut().for_each(|c| *c = false);
                }
                for n in 0..self.nodes.len() {
                    self.restart(n);
                }
                // Pending heals and restarts of the chaos phase are moot; cuts too.
                self.actions
                    .retain(|_, a| !matches!(a, Action::Cut { .. } | Action::Crash(_)));
            }
            Action::CheckPeering => self.check_peering(),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Invariants
    // ---------------------------------------------------------------------------------------

    /// Checks every stream whose two ends are done (once each).
    fn check_streams(&mut self) {
        for r in 0..self.recs.len() {
            if self.recs[r].checked {
                continue;
            }
            let [Some(a), b] = self.recs[r].ends else {
                continue;
            };
            let ea = &self.ends[a];
            match b {
                None => {
                    // Never arrived: fine only if the opener failed.
                    if ea.error.is_some() {
                        self.recs[r].checked = true;
                        *self.counters.entry("streams_failed").or_default() += 1;
                        if self.recs[r].liveness {
                            self.violations.push(format!(
                                "liveness: stream {r} opened after healing failed: {:?}",
                                ea.error
                            ));
                        }
                    } else if ea.done() {
                        self.violations.push(format!(
                            "stream {r}: the opener completed but the acceptor never saw the stream"
                        ));
                        self.recs[r].checked = true;
                    }
                }
                Some(b) => {
                    let eb = &self.ends[b];
                    if !(ea.done() && eb.done()) {
                        continue;
                    }
                    self.recs[r].checked = true;
                    let v = check_pair(r, ea, eb);
                    let failed = ea.error.is_some() || eb.error.is_some();
                    *self
                        .counters
                        .entry(if failed {
                            "streams_failed"
                        } else {
                            "streams_ok"
                        })
                        .or_default() += 1;
                    if self.recs[r].liveness && failed {
                        self.violations.push(format!(
                            "liveness: stream {r} opened after healing failed: {:?} / {:?}",
                            ea.error, eb.error
                        ));
                    }
                    self.violations.extend(v);
                }
            }
        }
    }

    fn check_peering(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let peer = self.nodes[j].id;
                match self.nodes[i].book.connection_for(&peer) {
                    None => self.violations.push(format!(
                        "liveness: {:?} after healing, node {i} has no connection to node {j}",
                        RECONNECT_WITHIN
                    )),
                    Some(c) => {
                        let alive = self.conns.get(&c).is_some_and(|c| {
                            c.sides.iter().all(|s| s.session.is_some() && !s.closed)
                        });
                        if !alive {
                            self.violations.push(format!(
                                "liveness: node {i}'s connection {c} to node {j} is dead on one side"
                            ));
                        }
                    }
                }
            }
        }
        self.rec("peering-checked", &[]);
    }

    fn check_end(&mut self) {
        for (r, rec) in self.recs.iter().enumerate() {
            for e in rec.ends.iter().flatten() {
                let e = &self.ends[*e];
                if !e.done() {
                    self.violations.push(format!(
                        "hang: stream {r} end on conn {} side {} not done at the deadline (sent {}/{}, received {}, fin {})",
                        e.conn, e.side, e.sent, e.total, e.recv_len, e.fin_recv
                    ));
                }
            }
        }
        for (id, c) in &self.conns {
            for (s, side) in c.sides.iter().enumerate() {
                let Some(sess) = &side.session else { continue };
                if side.closed {
                    continue;
                }
                let st = sess.stats();
                if sess.stream_count() != 0
                    || st.buffered_recv_bytes != 0
                    || st.queued_send_bytes != 0
                {
                    self.violations.push(format!(
                        "leak: conn {id} side {s} holds {} streams, {} buffered and {} queued bytes after every stream ended",
                        sess.stream_count(), st.buffered_recv_bytes, st.queued_send_bytes
                    ));
                }
            }
        }
    }
}

/// The integrity invariant for one stream whose ends are both done.
fn check_pair(r: usize, a: &End, b: &End) -> Vec<String> {
    let mut v = Vec::new();
    match (&a.error, &b.error) {
        (None, None) => {
            for (x, y, dir) in [(a, b, "opener->acceptor"), (b, a, "acceptor->opener")] {
                if x.sent != y.recv_len || x.sent_hash.finalize() != y.recv_hash.finalize() {
                    v.push(format!(
                        "integrity: stream {r} {dir}: wrote {} bytes ({}), read {} bytes ({})",
                        x.sent,
                        &x.sent_hash.finalize().to_hex()[..16],
                        y.recv_len,
                        &y.recv_hash.finalize().to_hex()[..16]
                    ));
                }
            }
        }
        (Some(_), Some(_)) => {}
        (Some(e), None) | (None, Some(e)) => {
            // One end failed, the other completed. The completed end read the failed end's FIN,
            // so the failed end must have written its whole payload and the completed end must
            // have read exactly that: the failure hit only the other direction (data the
            // completed end sent, which no sender can know was read). Anything less means a
            // stream completed with missing or wrong data.
            let (ok_end, bad_end) = if a.error.is_none() { (a, b) } else { (b, a) };
            let full = bad_end.sent == bad_end.total
                && ok_end.recv_len == bad_end.total
                && bad_end.sent_hash.finalize() == ok_end.recv_hash.finalize();
            if !full {
                v.push(format!(
                    "integrity: stream {r}: one end completed (read {} bytes) while the other failed ({e}) after writing {} of {} bytes",
                    ok_end.recv_len, bad_end.sent, bad_end.total
                ));
            }
        }
    }
    v
}

/// Runs one core-level scenario.
pub fn run(spec: &CoreSpec, seed: u64, opts: &RunOpts) -> Outcome {
    let mix = Mix::derive(seed, &spec.profile);
    let mut rng = SplitMix64::new(seed);
    let idents: Vec<(NodeId, NodeName)> = (0..spec.nodes)
        .map(|i| {
            (
                node_key(seed, i).node_id(),
                NodeName::parse(&format!("n{i}")).expect("node name"),
            )
        })
        .collect();
    let nodes = (0..spec.nodes)
        .map(|i| Node {
            id: idents[i].0,
            name: idents[i].1.clone(),
            book: new_book(&idents, i, rng.next_u64(), Instant::ZERO),
            alive: true,
            incarnation: 0,
        })
        .collect();
    let mut w = World {
        now: Instant::ZERO,
        mix: mix.clone(),
        rng,
        trace: Trace::new(opts.keep_log),
        nodes,
        cut: vec![vec![false; spec.nodes]; spec.nodes],
        conns: BTreeMap::new(),
        next_conn: 0,
        ends: Vec::new(),
        recs: Vec::new(),
        end_index: BTreeMap::new(),
        rec_index: BTreeMap::new(),
        actions: BTreeMap::new(),
        action_seq: 0,
        violations: Vec::new(),
        counters: BTreeMap::new(),
        defect: opts.defect,
        healed: false,
        out: Vec::new(),
        // Drawn from its own generator so that the run is otherwise the same as without it.
        defect_at: (opts.defect == Some(Defect::CorruptOneByte))
            .then(|| 50_000 + SplitMix64::new(seed ^ 0xdefec7).below(200_000)),
        delivered: 0,
    };
    // Workload: the mix's streams spread over the chaos phase (after a short warm-up).
    let warmup = Duration::from_millis(300);
    for _ in 0..mix.streams {
        let at = Instant::ZERO
            + warmup
            + Duration::from_micros(w.rng.below(spec.chaos.as_micros() as u64));
        w.schedule(at, Action::Open { liveness: false });
    }
    w.schedule_chaos(spec.chaos);
    let heal = Instant::ZERO + spec.chaos + Duration::from_millis(500);
    w.schedule(heal, Action::HealAll);
    w.schedule(heal + RECONNECT_WITHIN, Action::CheckPeering);
    // Liveness batch: a few streams between random pairs once everything is healed.
    for k in 0..(spec.nodes as u64 * 2) {
        w.schedule(
            heal + RECONNECT_WITHIN + Duration::from_millis(10 * k),
            Action::Open { liveness: true },
        );
    }
    let deadline = heal + LIVENESS_DEADLINE;
    loop {
        w.settle();
        let all_done = w.now > heal + RECONNECT_WITHIN
            && w.actions.is_empty()
            && w.recs.iter().all(|r| r.checked);
        if all_done {
            break;
        }
        match w.next_time() {
            Some(t) if t <= deadline => {
                w.now = w.now.max(t);
                w.run_timers();
            }
            _ => {
                w.now = deadline;
                break;
            }
        }
    }
    w.check_streams();
    w.check_end();
    for c in w.conns.values() {
        for l in &c.links {
            *w.counters.entry("segments").or_default() += l.stats.segments;
            *w.counters.entry("lost").or_default() += l.stats.lost;
            *w.counters.entry("duplicated").or_default() += l.stats.duplicated;
            *w.counters.entry("corrupted").or_default() += l.stats.corrupted;
            *w.counters.entry("retransmits").or_default() += l.stats.retransmits;
        }
    }
    Outcome {
        scenario: spec.name,
        seed,
        mix: mix.to_string(),
        trace_hash: w.trace.hash_hex(),
        events: w.trace.events(),
        sim_millis: w.now.as_micros() / 1000,
        violations: w.violations,
        counters: w.counters,
        log: w.trace.take_log(),
    }
}
