//! A paired in-memory harness: two [`Session`]s joined by simulated links, on a simulated clock.
//!
//! Each direction is a [`Link`] that re-chunks the byte stream at seeded random points (so frames
//! arrive split and coalesced in every way a real pipe may produce) and delivers each piece after
//! a fixed latency. Time only moves when the harness is told to: [`Pair::run_until_idle`] jumps to
//! the next delivery, [`Pair::advance`] runs timers up to a given instant. Nothing here reads a
//! clock or draws OS randomness, so every run of a seed is identical.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{Config, Event, Role, Session};
use crate::time::Instant;

pub use crate::rng::SplitMix64;

/// One direction of a simulated reliable, ordered pipe.
#[derive(Debug)]
pub struct Link {
    in_flight: VecDeque<(Instant, Bytes)>,
    rng: SplitMix64,
    /// Delay from send to delivery.
    pub latency: Duration,
    /// Largest piece delivered in one `handle_input` call.
    pub max_chunk: usize,
    /// A cut link silently loses everything (a dead path: no EOF, no error).
    pub cut: bool,
    /// Bytes carried so far.
    pub carried: u64,
}

impl Link {
    pub fn new(seed: u64, latency: Duration, max_chunk: usize) -> Link {
        Link {
            in_flight: VecDeque::new(),
            rng: SplitMix64::new(seed),
            latency,
            max_chunk: max_chunk.max(1),
            cut: false,
            carried: 0,
        }
    }

    /// Sends `data` at `now`, split at random points.
    pub fn send(&mut self, now: Instant, data: &[Bytes]) {
        if self.cut {
            return;
        }
        let mut all = BytesMut::new();
        for d in data {
            all.extend_from_slice(d);
        }
        self.carried += all.len() as u64;
        let mut all = all.freeze();
        let at = now + self.latency;
        while !all.is_empty() {
            // Mostly large pieces, sometimes tiny ones, so that headers split too.
            let limit = match self.rng.below(4) {
                0 => 1 + self.rng.below(16) as usize,
                _ => 1 + self.rng.below(self.max_chunk as u64) as usize,
            };
            let piece = all.split_to(limit.min(all.len()));
            self.in_flight.push_back((at, piece));
        }
    }

    /// The earliest pending delivery.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.front().map(|(t, _)| *t)
    }

    /// Takes the next piece due at or before `now`.
    pub fn take_due(&mut self, now: Instant) -> Option<Bytes> {
        match self.in_flight.front() {
            Some((t, _)) if *t <= now => self.in_flight.pop_front().map(|(_, b)| b),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}

/// Two sessions, a client and a server, joined by two links.
pub struct Pair {
    pub now: Instant,
    pub client: Session,
    pub server: Session,
    pub to_server: Link,
    pub to_client: Link,
    /// Events each side raised, in order, since the test last drained them.
    pub client_events: Vec<Event>,
    pub server_events: Vec<Event>,
    out: Vec<Bytes>,
}

/// Which side of a [`Pair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

impl Pair {
    /// A pair with default configs, no latency and seeded re-chunking.
    pub fn new(seed: u64) -> Pair {
        Pair::with(Config::default(), Config::default(), seed, Duration::ZERO)
    }

    pub fn with(client: Config, server: Config, seed: u64, latency: Duration) -> Pair {
        let now = Instant::ZERO;
        Pair {
            now,
            client: Session::new(Role::Client, client, now),
            server: Session::new(Role::Server, server, now),
            to_server: Link::new(seed, latency, 64 * 1024),
            to_client: Link::new(seed ^ 0x5555_aaaa_5555_aaaa, latency, 64 * 1024),
            client_events: Vec::new(),
            server_events: Vec::new(),
            out: Vec::new(),
        }
    }

    pub fn session(&mut self, side: Side) -> &mut Session {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    pub fn events(&mut self, side: Side) -> &mut Vec<Event> {
        match side {
            Side::Client => &mut self.client_events,
            Side::Server => &mut self.server_events,
        }
    }

    /// Moves output into the links and due input into the sessions at the current instant, until
    /// nothing more happens now. Returns whether anything moved.
    pub fn step(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut progress = false;
            self.out.clear();
            if self
                .client
                .poll_transmit(self.now, &mut self.out, usize::MAX)
                > 0
            {
                self.to_server.send(self.now, &self.out);
                progress = true;
            }
            self.out.clear();
            if self
                .server
                .poll_transmit(self.now, &mut self.out, usize::MAX)
                > 0
            {
                self.to_client.send(self.now, &self.out);
                progress = true;
            }
            while let Some(b) = self.to_server.take_due(self.now) {
                self.server.handle_input(b, self.now);
                progress = true;
            }
            while let Some(b) = self.to_client.take_due(self.now) {
                self.client.handle_input(b, self.now);
                progress = true;
            }
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(e);
                progress = true;
            }
            while let Some(e) = self.server.poll_event() {
                self.server_events.push(e);
                progress = true;
            }
            if !progress {
                return any;
            }
            any = true;
        }
    }

    /// Runs until no bytes are in flight, jumping the clock to each delivery (timers are not
    /// run: use [`Pair::advance`] for that).
    pub fn run_until_idle(&mut self) {
        loop {
            self.step();
            let next = match (
                self.to_server.next_delivery(),
                self.to_client.next_delivery(),
            ) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return,
            };
            self.now = self.now.max(next);
        }
    }

    /// Runs deliveries and timers in order until `until`, jumping from one to the next.
    pub fn advance_to(&mut self, until: Instant) {
        loop {
            self.step();
            let candidates = [
                self.to_server.next_delivery(),
                self.to_client.next_delivery(),
                self.client.poll_timeout(),
                self.server.poll_timeout(),
            ];
            let next = candidates.into_iter().flatten().min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.client.handle_timeout(self.now);
                    self.server.handle_timeout(self.now);
                }
                _ => {
                    self.now = self.now.max(until);
                    self.client.handle_timeout(self.now);
                    self.server.handle_timeout(self.now);
                    self.step();
                    return;
                }
            }
        }
    }

    /// [`Pair::advance_to`] `now + by`.
    pub fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        self.advance_to(until);
    }

    /// Cuts both directions: everything in flight and later is lost.
    pub fn cut(&mut self) {
        self.to_server.cut = true;
        self.to_client.cut = true;
        self.to_server.in_flight.clear();
        self.to_client.in_flight.clear();
    }
}

/// One end of an in-memory async byte pipe (see [`duplex`]).
pub struct PipeEnd {
    rx: std::sync::Arc<std::sync::Mutex<PipeHalf>>,
    tx: std::sync::Arc<std::sync::Mutex<PipeHalf>>,
    capacity: usize,
}

#[derive(Default)]
struct PipeHalf {
    buf: VecDeque<u8>,
    closed: bool,
    reader: Option<std::task::Waker>,
    writer: Option<std::task::Waker>,
}

/// An in-memory, executor-agnostic duplex byte pipe with `capacity` bytes of buffer in each
/// direction, for driving [`super::adapter`] without sockets. Closing one end's writing side
/// makes the other end read EOF; writing after it fails with `BrokenPipe`.
pub fn duplex(capacity: usize) -> (PipeEnd, PipeEnd) {
    let a = std::sync::Arc::new(std::sync::Mutex::new(PipeHalf::default()));
    let b = std::sync::Arc::new(std::sync::Mutex::new(PipeHalf::default()));
    let capacity = capacity.max(1);
    (
        PipeEnd {
            rx: a.clone(),
            tx: b.clone(),
            capacity,
        },
        PipeEnd {
            rx: b,
            tx: a,
            capacity,
        },
    )
}

fn lock_half(h: &std::sync::Mutex<PipeHalf>) -> std::sync::MutexGuard<'_, PipeHalf> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

impl futures_io::AsyncRead for PipeEnd {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut h = lock_half(&self.rx);
        if h.buf.is_empty() {
            if h.closed {
                return std::task::Poll::Ready(Ok(0));
            }
            h.reader = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        let n = out.len().min(h.buf.len());
        for (slot, byte) in out.iter_mut().zip(h.buf.drain(..n)) {
            *slot = byte;
        }
        if let Some(w) = h.writer.take() {
            w.wake();
        }
        std::task::Poll::Ready(Ok(n))
    }
}

impl futures_io::AsyncWrite for PipeEnd {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut h = lock_half(&self.tx);
        if h.closed {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let room = self.capacity.saturating_sub(h.buf.len());
        if room == 0 {
            h.writer = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        let n = room.min(data.len());
        h.buf.extend(&data[..n]);
        if let Some(w) = h.reader.take() {
            w.wake();
        }
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let mut h = lock_half(&self.tx);
        h.closed = true;
        if let Some(w) = h.reader.take() {
            w.wake();
        }
        std::task::Poll::Ready(Ok(()))
    }
}
