//! A runtime-agnostic async driver: runs a [`Session`] over any `futures-io` byte pipe and hands
//! out streams that implement `AsyncRead` and `AsyncWrite` themselves.
//!
//! Nothing here depends on an executor. The pipe is any `AsyncRead + AsyncWrite` (a tokio
//! `TcpStream` through `tokio_util::compat`, an async-std socket, a WebSocket adapter…), and the
//! clock comes from a [`Clock`] the embedder supplies, so this module still reads no clock of its
//! own: under turmoil or a simulated executor the session sees simulated time.
//!
//! Shape: [`Connection::new`] returns a cheap, cloneable [`Connection`] handle (open, accept,
//! go away, close, stats) and a [`Driver`] future that the embedder spawns or polls. The driver is
//! the only task that touches the pipe; stream handles touch only the session, under one mutex,
//! and wake the driver when they leave something to transmit. An idle stream costs nothing here
//! beyond the session's own state: wakers are stored only while a task waits.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};
use rustc_hash::FxHashMap;

use super::{Config, ErrorCode, Event, OpenError, Role, Session, Stats, StreamError, StreamId};
use crate::time::Instant;

/// Bytes read from the pipe in one call.
const READ_CHUNK: usize = 256 * 1024;
/// Retired read blocks kept for reuse.
const MAX_SPARE_BLOCKS: usize = 4;
/// Bytes taken from the session per transmit round.
const WRITE_BATCH: usize = 512 * 1024;
/// Tasks remembered as waiting to open or accept before the list is flushed.
const MAX_WAITING_TASKS: usize = 1024;
/// How long a session closed with a code that must reach the peer (GOAWAY) may wait for a
/// blocked pipe before the driver gives up on delivering it.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(5);
/// Loop rounds before the driver yields to its executor.
const ROUNDS_BEFORE_YIELD: usize = 64;
/// Buffers passed to one vectored write (Linux accepts up to 1,024; 64 covers a full batch of
/// 16 KiB frames with their headers).
const MAX_IOV: usize = 64;

/// How the driver hands its output to the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// Copy each batch of frames into one contiguous buffer and write that. Works with every
    /// pipe: most (TLS, `tokio_util::compat`, WebSocket wrappers) keep the futures-io default
    /// of `poll_write_vectored`, which writes only the first buffer, and that would cost a call
    /// and a packet per 9-byte frame header.
    #[default]
    Staged,
    /// Pass the frames' headers and payloads to `poll_write_vectored` as they are, without the
    /// copy. Only for pipes whose vectored write really writes several buffers in one call,
    /// such as a socket wrapper that forwards it to `writev`.
    Vectored,
}

/// A timer future from the embedding runtime.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The clock and timer of the embedding runtime.
pub trait Clock: Send + Sync + 'static {
    /// The current instant on the session's clock.
    fn now(&self) -> Instant;
    /// A future that completes at (or soon after) `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Sleep;
}

#[derive(Default)]
struct Waiters {
    read: Option<Waker>,
    write: Option<Waker>,
}

struct Shared {
    session: Session,
    /// Wakers of stream tasks, only while they wait.
    waiters: FxHashMap<StreamId, Waiters>,
    /// Streams reset by the peer (or refused) whose handles are still alive: their code.
    resets: FxHashMap<StreamId, u32>,
    /// Streams the peer opened, in order, for `accept`; ids no longer in `unaccepted` (reset
    /// before anyone took them) are skipped and compacted away.
    incoming: std::collections::VecDeque<StreamId>,
    unaccepted: rustc_hash::FxHashSet<StreamId>,
    accept_wakers: Vec<Waker>,
    open_wakers: Vec<Waker>,
    driver_waker: Option<Waker>,
    /// Set once the driver has stopped; every later operation fails with this.
    finished: Option<ErrorCode>,
}

impl Shared {
    /// After an application operation: routes the session's events and wakes the driver if
    /// there is output to send or the session has ended (it must then finish).
    fn settle(&mut self, wake: &mut Vec<Waker>) {
        self.dispatch_events(wake);
        if self.session.wants_transmit() || self.session.is_closed().is_some() {
            wake.extend(self.driver_waker.take());
        }
    }

    /// Routes session events to the tasks that wait for them. Wakers are collected and woken
    /// after the lock is released.
    fn dispatch_events(&mut self, wake: &mut Vec<Waker>) {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::Opened(id) => {
                    self.incoming.push_back(id);
                    self.unaccepted.insert(id);
                    wake.append(&mut self.accept_wakers);
                }
                Event::Readable(id) => {
                    if let Some(w) = self.waiters.get_mut(&id) {
                        wake.extend(w.read.take());
                        self.drop_empty(id);
                    }
                }
                Event::Writable(id) => {
                    if let Some(w) = self.waiters.get_mut(&id) {
                        wake.extend(w.write.take());
                        self.drop_empty(id);
                    }
                }
                Event::Reset { stream, code } => {
                    if self.unaccepted.remove(&stream) {
                        // Nobody holds it: forget it (a peer opening and resetting streams
                        // faster than the application accepts must not grow our state).
                        if self.incoming.len() > 2 * self.unaccepted.len() + 64 {
                            let live = &self.unaccepted;
                            self.incoming.retain(|id| live.contains(id));
                        }
                        continue;
                    }
                    self.resets.insert(stream, code);
                    if let Some(w) = self.waiters.remove(&stream) {
                        wake.extend(w.read);
                        wake.extend(w.write);
                    }
                }
                Event::OpenAvailable => wake.append(&mut self.open_wakers),
                Event::GoAway { .. } => {
                    // Pending opens now fail with GoingAway.
                    wake.append(&mut self.open_wakers);
                }
                Event::Closed { .. } => self.wake_all(wake),
            }
        }
    }

    fn drop_empty(&mut self, id: StreamId) {
        if let Some(w) = self.waiters.get(&id) {
            if w.read.is_none() && w.write.is_none() {
                self.waiters.remove(&id);
            }
        }
    }

    fn wake_all(&mut self, wake: &mut Vec<Waker>) {
        for (_, w) in self.waiters.drain() {
            wake.extend(w.read);
            wake.extend(w.write);
        }
        wake.append(&mut self.accept_wakers);
        wake.append(&mut self.open_wakers);
    }

    /// Remembers `waker` in `list` once; a list grown past a bound (tasks that gave up waiting)
    /// is woken and emptied, and live waiters simply register again.
    fn register(list: &mut Vec<Waker>, waker: &Waker, wake: &mut Vec<Waker>) {
        if list.iter().any(|w| w.will_wake(waker)) {
            return;
        }
        if list.len() >= MAX_WAITING_TASKS {
            wake.append(list);
        }
        list.push(waker.clone());
    }

    fn closed_code(&self) -> Option<ErrorCode> {
        self.finished.or_else(|| self.session.is_closed())
    }
}

struct Inner {
    shared: Mutex<Shared>,
    clock: Arc<dyn Clock>,
}

/// The lock held for an application operation: on release it settles the session (routes
/// events, wakes the driver when needed) and wakes tasks only after the mutex is unlocked, so an
/// executor that polls inline on wake cannot deadlock on it.
struct Op<'a> {
    guard: Option<MutexGuard<'a, Shared>>,
}

impl std::ops::Deref for Op<'_> {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        self.guard.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for Op<'_> {
    fn deref_mut(&mut self) -> &mut Shared {
        self.guard.as_mut().expect("held until drop")
    }
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        let mut wake = Vec::new();
        if let Some(mut sh) = self.guard.take() {
            sh.settle(&mut wake);
        }
        wake.into_iter().for_each(Waker::wake);
    }
}

impl Inner {
    fn op(&self) -> Op<'_> {
        Op {
            guard: Some(self.lock()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic elsewhere while holding the lock leaves the session in a state we still trust
        // no less than the panicking code did; keep serving instead of cascading panics.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn closed_error(code: ErrorCode, message: &str) -> io::Error {
    let kind = match code {
        ErrorCode::NoError => io::ErrorKind::NotConnected,
        ErrorCode::KeepaliveTimeout => io::ErrorKind::TimedOut,
        _ => io::ErrorKind::ConnectionAborted,
    };
    if message.is_empty() {
        io::Error::new(kind, format!("mux session closed: {code}"))
    } else {
        io::Error::new(kind, format!("mux session closed: {code}: {message}"))
    }
}

fn reset_error(id: StreamId, code: u32) -> io::Error {
    let kind = if code == super::reset_code::REFUSED {
        io::ErrorKind::ConnectionRefused
    } else {
        io::ErrorKind::ConnectionReset
    };
    io::Error::new(kind, format!("stream {id} reset by peer with code {code}"))
}

/// A handle to a multiplexed connection. Clones share the same session; dropping the last clone
/// drains the session gracefully (see [`Connection::go_away`]) while open streams finish.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
    _handle: Arc<HandleGuard>,
}

/// Shared by all clones of a [`Connection`]; when the last one goes, nobody can open or accept
/// streams any more, so the session drains: GOAWAY, streams not yet accepted are refused (the
/// peer may retry them elsewhere), open streams finish, then the driver completes.
struct HandleGuard {
    inner: Arc<Inner>,
}

impl Drop for HandleGuard {
    fn drop(&mut self) {
        let mut sh = self.inner.op();
        while let Some(id) = sh.incoming.pop_front() {
            if sh.unaccepted.remove(&id) {
                let _ = sh.session.reset(id, super::reset_code::REFUSED);
            }
        }
        sh.session.go_away();
    }
}

/// The future that moves bytes between the session and the pipe and runs its timers. Spawn it
/// (or poll it alongside the streams); it completes when the session has ended and its last
/// bytes are written, with `Ok(())` for a graceful close and an error otherwise.
pub struct Driver<T> {
    inner: Arc<Inner>,
    pipe: T,
    read_buf: BytesMut,
    /// Earlier read blocks, taken back once every payload slice of them is gone.
    spare_blocks: Vec<BytesMut>,
    read_done: bool,
    mode: WriteMode,
    /// Chunks from `poll_transmit`. Staged: copied into `stage` at once. Vectored: written
    /// from here; `out_pos`/`out_off` say how far.
    out: Vec<Bytes>,
    out_pos: usize,
    out_off: usize,
    /// Staged output as one contiguous buffer, and how much of it is written.
    stage: BytesMut,
    stage_off: usize,
    sleep: Option<(Instant, Sleep)>,
    /// A flush of the pipe returned Pending and must be retried until it completes (buffering
    /// pipes such as TLS hold written bytes until flushed).
    flush_pending: bool,
    /// Once the session has closed: the instant after which undelivered output is abandoned.
    linger: Option<(Instant, Sleep)>,
    /// The pipe's read error, reported as the driver's result.
    pipe_error: Option<io::Error>,
    done: bool,
}

impl Connection {
    /// Starts a session of `role` over `pipe`. `cfg` must pass [`Config::validate`]. Output is
    /// staged ([`WriteMode::Staged`]), which suits every pipe.
    pub fn new<T>(
        pipe: T,
        role: Role,
        cfg: Config,
        clock: Arc<dyn Clock>,
    ) -> (Connection, Driver<T>)
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        Connection::with_write_mode(pipe, role, cfg, clock, WriteMode::Staged)
    }

    /// Like [`Connection::new`], choosing how output reaches the pipe; use
    /// [`WriteMode::Vectored`] only with a pipe whose vectored write writes several buffers.
    pub fn with_write_mode<T>(
        pipe: T,
        role: Role,
        cfg: Config,
        clock: Arc<dyn Clock>,
        mode: WriteMode,
    ) -> (Connection, Driver<T>)
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let now = clock.now();
        let inner = Arc::new(Inner {
            shared: Mutex::new(Shared {
                session: Session::new(role, cfg, now),
                waiters: FxHashMap::default(),
                resets: FxHashMap::default(),
                incoming: Default::default(),
                unaccepted: Default::default(),
                accept_wakers: Vec::new(),
                open_wakers: Vec::new(),
                driver_waker: None,
                finished: None,
            }),
            clock,
        });
        let driver = Driver {
            inner: inner.clone(),
            pipe,
            read_buf: BytesMut::new(),
            spare_blocks: Vec::new(),
            read_done: false,
            mode,
            out: Vec::new(),
            out_pos: 0,
            out_off: 0,
            stage: BytesMut::new(),
            stage_off: 0,
            sleep: None,
            flush_pending: false,
            linger: None,
            pipe_error: None,
            done: false,
        };
        let handle = Arc::new(HandleGuard {
            inner: inner.clone(),
        });
        (
            Connection {
                inner,
                _handle: handle,
            },
            driver,
        )
    }

    /// Opens a stream, waiting while the peer's stream limit is reached. Data written at once
    /// leaves together with the open (0-RTT).
    pub fn open(&self) -> impl Future<Output = io::Result<Stream>> + '_ {
        std::future::poll_fn(move |cx| self.poll_open(cx))
    }

    /// Poll form of [`Connection::open`].
    pub fn poll_open(&self, cx: &mut Context<'_>) -> Poll<io::Result<Stream>> {
        let now = self.inner.clock.now();
        let mut sh = self.inner.op();
        if let Some(code) = sh.finished {
            return Poll::Ready(Err(closed_error(code, "")));
        }
        match sh.session.open(now) {
            Ok(id) => Poll::Ready(Ok(Stream::new(id, self.inner.clone()))),
            Err(OpenError::Limit) => {
                let mut wake = Vec::new();
                Shared::register(&mut sh.open_wakers, cx.waker(), &mut wake);
                drop(sh);
                wake.into_iter().for_each(Waker::wake);
                Poll::Pending
            }
            Err(OpenError::GoingAway) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "mux session is going away; open a new one",
            ))),
            Err(OpenError::IdsExhausted) => Poll::Ready(Err(io::Error::other(
                "mux stream ids exhausted; open a new session",
            ))),
            Err(OpenError::Closed(code)) => {
                let msg = sh.session.close_message();
                Poll::Ready(Err(closed_error(code, &msg)))
            }
        }
    }

    /// The next stream the peer opened; `None` once the session has ended.
    pub fn accept(&self) -> impl Future<Output = Option<Stream>> + '_ {
        std::future::poll_fn(move |cx| self.poll_accept(cx))
    }

    /// Poll form of [`Connection::accept`].
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Option<Stream>> {
        let mut sh = self.inner.op();
        while let Some(id) = sh.incoming.pop_front() {
            if sh.unaccepted.remove(&id) {
                return Poll::Ready(Some(Stream::new(id, self.inner.clone())));
            }
        }
        if sh.closed_code().is_some() {
            return Poll::Ready(None);
        }
        let mut wake = Vec::new();
        Shared::register(&mut sh.accept_wakers, cx.waker(), &mut wake);
        drop(sh);
        wake.into_iter().for_each(Waker::wake);
        Poll::Pending
    }

    /// Starts a graceful drain (GOAWAY): no new streams, open ones finish, then the session ends.
    pub fn go_away(&self) {
        self.inner.op().session.go_away();
    }

    /// Ends the session at once, telling the peer `code` and `message`.
    pub fn close(&self, code: ErrorCode, message: &str) {
        self.inner.op().session.close(code, message);
    }

    /// The session's counters.
    pub fn stats(&self) -> Stats {
        self.inner.lock().session.stats()
    }

    /// The code the session ended with, once it has.
    pub fn closed(&self) -> Option<ErrorCode> {
        self.inner.lock().closed_code()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    /// Reads what the pipe has now and feeds it to the session. Returns whether anything moved.
    fn pump_input(&mut self, cx: &mut Context<'_>, wake: &mut Vec<Waker>) -> bool {
        if self.read_done {
            return false;
        }
        if self.read_buf.len() < READ_CHUNK / 4 {
            self.next_read_block();
        }
        match Pin::new(&mut self.pipe).poll_read(cx, &mut self.read_buf) {
            Poll::Pending => false,
            Poll::Ready(r @ (Ok(0) | Err(_))) => {
                if let Err(e) = r {
                    self.pipe_error = Some(e);
                }
                self.read_done = true;
                let now = self.inner.clock.now();
                let mut sh = self.inner.lock();
                sh.session.handle_eof(now);
                sh.dispatch_events(wake);
                true
            }
            Poll::Ready(Ok(n)) => {
                let data = self.read_buf.split_to(n).freeze();
                let now = self.inner.clock.now();
                let mut sh = self.inner.lock();
                sh.session.handle_input(data, now);
                sh.dispatch_events(wake);
                true
            }
        }
    }

    /// Makes `read_buf` a fresh zeroed block. Payloads handed to the session are slices of the
    /// block they were read into, so a block is reused only once all of them are gone; reusing
    /// keeps the allocator from mapping and faulting in fresh pages for every block.
    fn next_read_block(&mut self) {
        let mut old = std::mem::take(&mut self.read_buf);
        old.clear();
        if old.capacity() > 0 && self.spare_blocks.len() < MAX_SPARE_BLOCKS {
            self.spare_blocks.push(old);
        }
        for i in 0..self.spare_blocks.len() {
            if self.spare_blocks[i].try_reclaim(READ_CHUNK) {
                let mut block = self.spare_blocks.swap_remove(i);
                block.resize(READ_CHUNK, 0);
                self.read_buf = block;
                return;
            }
        }
        self.read_buf = BytesMut::zeroed(READ_CHUNK);
    }

    /// Whether output taken from the session is still waiting for the pipe.
    fn output_pending(&self) -> bool {
        self.stage_off < self.stage.len() || self.out_pos < self.out.len()
    }

    /// Writes pending output, refilling it from the session. Returns whether anything moved,
    /// or the pipe's write error.
    fn pump_output(&mut self, cx: &mut Context<'_>, wake: &mut Vec<Waker>) -> io::Result<bool> {
        let mut moved = false;
        loop {
            if !self.output_pending() {
                self.stage.clear();
                self.stage_off = 0;
                self.out.clear();
                self.out_pos = 0;
                self.out_off = 0;
                let now = self.inner.clock.now();
                let mut sh = self.inner.lock();
                let n = sh.session.poll_transmit(now, &mut self.out, WRITE_BATCH);
                // Emitting data returns send buffer room: writers may be waiting for it.
                sh.dispatch_events(wake);
                drop(sh);
                if n == 0 {
                    self.out.clear();
                    // Nothing to send: push what was written out of any pipe buffer, and keep
                    // trying until the pipe says it is done.
                    if moved || self.flush_pending {
                        match Pin::new(&mut self.pipe).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.flush_pending = false,
                            Poll::Ready(Err(e)) => return Err(e),
                            Poll::Pending => self.flush_pending = true,
                        }
                    }
                    return Ok(moved);
                }
                if self.mode == WriteMode::Staged {
                    self.stage.reserve(n);
                    for chunk in self.out.drain(..) {
                        self.stage.extend_from_slice(&chunk);
                    }
                }
            }
            let written = match self.mode {
                WriteMode::Staged => {
                    Pin::new(&mut self.pipe).poll_write(cx, &self.stage[self.stage_off..])
                }
                WriteMode::Vectored => {
                    let mut iov = [IoSlice::new(&[]); MAX_IOV];
                    let pending = &self.out[self.out_pos..];
                    let k = pending.len().min(MAX_IOV);
                    for (i, chunk) in pending[..k].iter().enumerate() {
                        let skip = if i == 0 { self.out_off } else { 0 };
                        iov[i] = IoSlice::new(&chunk[skip..]);
                    }
                    Pin::new(&mut self.pipe).poll_write_vectored(cx, &iov[..k])
                }
            };
            match written {
                Poll::Pending => return Ok(moved),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(0)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the pipe accepted no bytes",
                    ))
                }
                Poll::Ready(Ok(n)) => {
                    moved = true;
                    match self.mode {
                        WriteMode::Staged => self.stage_off += n,
                        WriteMode::Vectored => self.advance_out(n),
                    }
                }
            }
        }
    }

    /// Marks `n` bytes of `out` as written (empty chunks at the boundary are passed over).
    fn advance_out(&mut self, mut n: usize) {
        while self.out_pos < self.out.len() {
            let left = self.out[self.out_pos].len() - self.out_off;
            if n < left {
                self.out_off += n;
                return;
            }
            n -= left;
            self.out_pos += 1;
            self.out_off = 0;
        }
    }

    /// Runs due timers and arms the sleep for the next one. Returns whether a timer fired.
    fn pump_timers(&mut self, cx: &mut Context<'_>, wake: &mut Vec<Waker>) -> bool {
        let now = self.inner.clock.now();
        let mut sh = self.inner.lock();
        let Some(deadline) = sh.session.poll_timeout() else {
            self.sleep = None;
            return false;
        };
        if now >= deadline {
            sh.session.handle_timeout(now);
            sh.dispatch_events(wake);
            return true;
        }
        drop(sh);
        if self.sleep.as_ref().map(|(d, _)| *d) != Some(deadline) {
            self.sleep = Some((deadline, self.inner.clock.sleep_until(deadline)));
        }
        let (_, sleep) = self.sleep.as_mut().expect("armed");
        if sleep.as_mut().poll(cx).is_ready() {
            self.sleep = None;
            return true;
        }
        false
    }

    fn finish(&mut self, result: Result<(), ErrorCode>, wake: &mut Vec<Waker>) {
        let mut sh = self.inner.lock();
        let code = match result {
            Ok(()) => ErrorCode::NoError,
            Err(c) => c,
        };
        if sh.finished.is_none() {
            sh.finished = Some(code);
        }
        sh.wake_all(wake);
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    /// With the session closed: delivers its last bytes (the GOAWAY) within [`CLOSE_LINGER`],
    /// closes the pipe, and returns the driver's result once done.
    fn poll_closing(
        &mut self,
        code: ErrorCode,
        cx: &mut Context<'_>,
        wake: &mut Vec<Waker>,
    ) -> Option<io::Result<()>> {
        let now = self.inner.clock.now();
        // After a dead link or a broken pipe nothing can be delivered: do not wait on it.
        let hopeless = matches!(code, ErrorCode::KeepaliveTimeout | ErrorCode::Transport);
        if self.linger.is_none() {
            let deadline = now + CLOSE_LINGER;
            self.linger = Some((deadline, self.inner.clock.sleep_until(deadline)));
        }
        let (deadline, sleep) = self.linger.as_mut().expect("armed");
        let expired = now >= *deadline || sleep.as_mut().poll(cx).is_ready();
        let flushed = !self.output_pending()
            && !self.flush_pending
            && !self.inner.lock().session.wants_transmit();
        if !hopeless && !expired {
            if !flushed {
                return None;
            }
            if Pin::new(&mut self.pipe).poll_close(cx).is_pending() {
                return None;
            }
        }
        let msg = self.inner.lock().session.close_message();
        let result = if code == ErrorCode::NoError {
            Ok(())
        } else {
            Err(code)
        };
        self.finish(result, wake);
        Some(match (result, self.pipe_error.take()) {
            (Err(ErrorCode::Transport), Some(e)) => Err(e),
            (r, _) => r.map_err(|c| closed_error(c, &msg)),
        })
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for Driver<T> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Ok(()));
        }
        let mut wake = Vec::new();
        let mut rounds = 0;
        let result = loop {
            let mut moved = this.pump_input(cx, &mut wake);
            match this.pump_output(cx, &mut wake) {
                Ok(m) => moved |= m,
                Err(e) => {
                    let now = this.inner.clock.now();
                    let mut sh = this.inner.lock();
                    sh.session.handle_eof(now);
                    sh.dispatch_events(&mut wake);
                    drop(sh);
                    this.finish(Err(ErrorCode::Transport), &mut wake);
                    break Err(e);
                }
            }
            moved |= this.pump_timers(cx, &mut wake);
            // Wake tasks now, not at the end: they may run on other threads meanwhile.
            wake.drain(..).for_each(Waker::wake);

            let closed = this.inner.lock().session.is_closed();
            if let Some(code) = closed {
                match this.poll_closing(code, cx, &mut wake) {
                    Some(r) => break r,
                    // Waiting for the pipe or the linger timer, both of which wake us.
                    None if !moved => return Poll::Pending,
                    None => {}
                }
            } else if !moved {
                let mut sh = this.inner.lock();
                sh.driver_waker = Some(cx.waker().clone());
                // Output may have been queued, or the session closed, since we last looked.
                if (!sh.session.wants_transmit() || this.output_pending())
                    && sh.session.is_closed().is_none()
                {
                    return Poll::Pending;
                }
                sh.driver_waker = None;
            }
            rounds += 1;
            if rounds >= ROUNDS_BEFORE_YIELD {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        };
        this.done = true;
        wake.into_iter().for_each(Waker::wake);
        Poll::Ready(result)
    }
}

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped before the session ended (task aborted, runtime shut down): the pipe goes
        // with it, so every stream and every waiting task must learn that now.
        let now = self.inner.clock.now();
        let mut wake = Vec::new();
        let mut sh = self.inner.lock();
        sh.session.handle_eof(now);
        sh.dispatch_events(&mut wake);
        if sh.finished.is_none() {
            sh.finished = Some(sh.session.is_closed().unwrap_or(ErrorCode::Transport));
        }
        sh.wake_all(&mut wake);
        drop(sh);
        wake.into_iter().for_each(Waker::wake);
    }
}

/// One multiplexed byte stream. Dropping it finishes the sending side (queued bytes still
/// leave) and discards whatever arrives later; [`Stream::reset`] aborts instead.
pub struct Stream {
    id: StreamId,
    inner: Arc<Inner>,
    /// Set by [`Stream::reset`] so that drop does not detach a stream already gone.
    released: bool,
}

impl Stream {
    fn new(id: StreamId, inner: Arc<Inner>) -> Stream {
        Stream {
            id,
            inner,
            released: false,
        }
    }

    /// The stream id (odd: opened by the client side, even: by the server side).
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Aborts both directions, telling the peer `code`.
    pub fn reset(mut self, code: u32) {
        self.released = true;
        let mut sh = self.inner.op();
        if sh.resets.remove(&self.id).is_none() {
            let _ = sh.session.reset(self.id, code);
        }
        sh.waiters.remove(&self.id);
    }

    /// The I/O error for a failed operation; resets are reported before the session is asked.
    fn error(&self, sh: &Shared, e: StreamError) -> io::Error {
        match e {
            StreamError::SessionClosed(code) => closed_error(code, &sh.session.close_message()),
            StreamError::Finished => {
                io::Error::new(io::ErrorKind::BrokenPipe, "stream already finished")
            }
            StreamError::UnknownStream | StreamError::Blocked => match sh.finished {
                Some(code) => closed_error(code, ""),
                None => io::Error::new(io::ErrorKind::NotConnected, "stream is closed"),
            },
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut sh = self.inner.op();
        if let Some(code) = sh.resets.get(&self.id) {
            return Poll::Ready(Err(reset_error(self.id, *code)));
        }
        match sh.session.read(self.id, buf) {
            Ok(n) => {
                // Reading may return credit to the peer: the op's release wakes the driver.
                Poll::Ready(Ok(n))
            }
            Err(StreamError::Blocked) => {
                if let Some(code) = sh.finished {
                    return Poll::Ready(Err(closed_error(code, "")));
                }
                sh.waiters.entry(self.id).or_default().read = Some(cx.waker().clone());
                Poll::Pending
            }
            // Not reset (checked above): the local FIN was sent and the peer's FIN read, so the
            // stream is gone: EOF.
            Err(StreamError::UnknownStream) => Poll::Ready(Ok(0)),
            Err(e) => Poll::Ready(Err(self.error(&sh, e))),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut sh = self.inner.op();
        if let Some(code) = sh.resets.get(&self.id) {
            return Poll::Ready(Err(reset_error(self.id, *code)));
        }
        match sh.session.write(self.id, buf) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(StreamError::Blocked) => {
                if let Some(code) = sh.finished {
                    return Poll::Ready(Err(closed_error(code, "")));
                }
                sh.waiters.entry(self.id).or_default().write = Some(cx.waker().clone());
                Poll::Pending
            }
            Err(StreamError::UnknownStream) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream already finished",
            ))),
            Err(e) => Poll::Ready(Err(self.error(&sh, e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are in the session's queue; the driver sends them without further help.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sh = self.inner.op();
        if let Some(code) = sh.resets.get(&self.id) {
            return Poll::Ready(Err(reset_error(self.id, *code)));
        }
        match sh.session.finish(self.id) {
            // Finishing twice, or after the stream completed, is a no-op for close().
            Ok(()) | Err(StreamError::Finished) | Err(StreamError::UnknownStream) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(self.error(&sh, e))),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let mut sh = self.inner.op();
        sh.waiters.remove(&self.id);
        if sh.resets.remove(&self.id).is_none() {
            sh.session.detach(self.id);
        }
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).finish()
    }
}
