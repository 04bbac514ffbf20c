//! Drives the core's netstack against a TUN device and hands out connections as async streams.
//!
//! One task owns the [`Netstack`] (it is a plain state machine) and the device: it feeds packets
//! in, writes the netstack's packets out, runs its timers, and answers commands from connection
//! handles. Connection requests (held SYNs) come out of [`TunStack::incoming`] as
//! [`PendingConnection`]s; the owner decides — typically after the remote dial — to
//! [`PendingConnection::accept`] (the client's SYN is answered now) or
//! [`PendingConnection::refuse`].
//!
//! Backpressure: each connection has a small receive queue; the task reads from the netstack only
//! while the queue has room, so a slow consumer leaves data in smoltcp, whose window then closes
//! toward the client. Writes wait in a bounded send buffer until smoltcp takes them.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use svcnet_core::netstack::{self, ConnId, Event, Netstack, RefuseReason};
use svcnet_core::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::device::{self, TunDevice};

/// Bytes a connection may hold read from the netstack but not yet taken by its consumer.
const RX_LIMIT: usize = 256 * 1024;
/// Bytes a connection may hold written by its consumer but not yet taken by the netstack.
const TX_LIMIT: usize = 256 * 1024;
/// The most bytes moved from the netstack into one receive-queue chunk.
const READ_CHUNK: usize = 64 * 1024;
/// Connection requests waiting for the owner; more are refused at once.
const PENDING_LIMIT: usize = 1024;

#[derive(Default)]
struct ConnState {
    rx: VecDeque<Bytes>,
    rx_bytes: usize,
    /// The client finished sending and everything before was queued.
    rx_eof: bool,
    tx: BytesMut,
    /// The consumer shut down its sending side; FIN after `tx` drains.
    tx_shutdown: bool,
    fin_sent: bool,
    /// The consumer asked for an abortive close.
    reset_requested: bool,
    /// The connection was reset (by the client, a timeout, or the consumer).
    reset: bool,
    /// The connection is gone from the netstack.
    gone: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// A kick is queued for the driver; avoids flooding the command channel.
    kicked: bool,
    /// The driver stopped reading because `rx` was full.
    rx_blocked: bool,
}

type Shared = Arc<Mutex<ConnState>>;

enum Command {
    Accept(ConnId, Shared),
    Refuse(ConnId, RefuseReason),
    Kick(ConnId),
    AddAddress(IpAddr),
    RemoveAddress(IpAddr),
}

/// A connection request: a client's SYN, held until answered.
pub struct PendingConnection {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The address the client connects to.
    pub address: IpAddr,
    /// The port the client connects to.
    pub port: u16,
    conn: ConnId,
    commands: mpsc::UnboundedSender<Command>,
    answered: bool,
}

impl PendingConnection {
    /// Answers the SYN: the connection is established with the client and usable as a stream.
    pub fn accept(mut self) -> TunTcpStream {
        self.answered = true;
        let shared: Shared = Arc::new(Mutex::new(ConnState::default()));
        let _ = self
            .commands
            .send(Command::Accept(self.conn, shared.clone()));
        let link = Link {
            conn: self.conn,
            shared,
            commands: self.commands.clone(),
        };
        TunTcpStream {
            read: TunReadHalf { link: link.clone() },
            write: TunWriteHalf { link },
        }
    }

    /// Turns the SYN down (`Refused`: the client's connect fails with ECONNREFUSED).
    pub fn refuse(mut self, reason: RefuseReason) {
        self.answered = true;
        let _ = self.commands.send(Command::Refuse(self.conn, reason));
    }
}

impl Drop for PendingConnection {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self
                .commands
                .send(Command::Refuse(self.conn, RefuseReason::Refused));
        }
    }
}

/// A connection's shared state and the way to wake the driver about it.
#[derive(Clone)]
struct Link {
    conn: ConnId,
    shared: Shared,
    commands: mpsc::UnboundedSender<Command>,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.shared.lock().expect("conn lock")
    }

    fn kick(&self, state: &mut ConnState) {
        if !state.kicked && !state.gone {
            state.kicked = true;
            let _ = self.commands.send(Command::Kick(self.conn));
        }
    }
}

/// An accepted connection from a TUN client, as a tokio byte stream. Dropping it closes the
/// sending side gracefully (FIN after buffered data); [`TunTcpStream::reset_handle`] aborts
/// instead. [`TunTcpStream::into_split`] gives owned halves.
pub struct TunTcpStream {
    read: TunReadHalf,
    write: TunWriteHalf,
}

impl TunTcpStream {
    /// A handle that can reset this connection from elsewhere (e.g. the other half of a pump).
    pub fn reset_handle(&self) -> ResetHandle {
        ResetHandle {
            link: self.read.link.clone(),
        }
    }

    /// The receiving and sending halves, usable from different places at once (no lock beyond
    /// the connection's own state). Dropping the sending half closes gracefully.
    pub fn into_split(self) -> (TunReadHalf, TunWriteHalf) {
        (self.read, self.write)
    }
}

/// The receiving half of a [`TunTcpStream`].
pub struct TunReadHalf {
    link: Link,
}

/// The sending half of a [`TunTcpStream`]; dropping it sends a FIN after the buffered data.
pub struct TunWriteHalf {
    link: Link,
}

/// Resets a [`TunTcpStream`]'s connection: the client gets a RST.
#[derive(Clone)]
pub struct ResetHandle {
    link: Link,
}

impl ResetHandle {
    /// Aborts the connection.
    pub fn reset(&self) {
        let mut state = self.link.lock();
        if state.gone || state.reset_requested {
            return;
        }
        state.reset_requested = true;
        state.kicked = true;
        let _ = self.link.commands.send(Command::Kick(self.link.conn));
    }
}

impl TunReadHalf {
    /// Takes the next chunk the client sent, of at most `max` bytes, without copying it;
    /// `None` once the client finished sending.
    pub fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        self.poll_take(cx, |rx| {
            let front = rx.front_mut().expect("queue not empty");
            let chunk = if front.len() > max {
                front.split_to(max)
            } else {
                rx.pop_front().expect("queue not empty")
            };
            let n = chunk.len();
            (chunk, n)
        })
    }

    /// Waits until the receive queue has bytes (or the stream ended), then lets `take` remove
    /// some (it returns what it made of them and how many bytes it removed). `None` at the end
    /// of the stream.
    fn poll_take<T>(
        &mut self,
        cx: &mut Context<'_>,
        take: impl FnOnce(&mut VecDeque<Bytes>) -> (T, usize),
    ) -> Poll<io::Result<Option<T>>> {
        let mut state = self.link.lock();
        if state.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if state.rx.is_empty() {
            if state.rx_eof || state.gone {
                return Poll::Ready(Ok(None));
            }
            state.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let (taken, n) = take(&mut state.rx);
        state.rx_bytes -= n;
        if state.rx_blocked && state.rx_bytes < RX_LIMIT / 2 {
            state.rx_blocked = false;
            self.link.kick(&mut state);
        }
        Poll::Ready(Ok(Some(taken)))
    }
}

impl AsyncRead for TunReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let taken = this.poll_take(cx, |rx| {
            // As many queued chunks as fit.
            let mut n = 0;
            while buf.remaining() > 0 {
                let Some(front) = rx.front_mut() else { break };
                let k = front.len().min(buf.remaining());
                buf.put_slice(&front[..k]);
                front.advance(k);
                n += k;
                if front.is_empty() {
                    rx.pop_front();
                }
            }
            ((), n)
        });
        taken.map_ok(|_| ())
    }
}

impl TunWriteHalf {
    /// Queues as much of `data` as the send buffer has room for.
    fn poll_put<B: std::ops::Deref<Target = [u8]>>(
        &mut self,
        cx: &mut Context<'_>,
        data: &[B],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.link.lock();
        if state.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if state.gone || state.tx_shutdown {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let total: usize = data.iter().map(|d| d.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let room = TX_LIMIT.saturating_sub(state.tx.len());
        if room == 0 {
            state.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut taken = 0;
        for piece in data {
            let n = piece.len().min(room - taken);
            state.tx.extend_from_slice(&piece[..n]);
            taken += n;
            if taken == room {
                break;
            }
        }
        self.link.kick(&mut state);
        Poll::Ready(Ok(taken))
    }
}

impl AsyncWrite for TunWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_put(cx, &[data])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_put(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut state = this.link.lock();
        if !state.tx_shutdown {
            state.tx_shutdown = true;
            this.link.kick(&mut state);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunWriteHalf {
    fn drop(&mut self) {
        let mut state = self.link.lock();
        if !state.tx_shutdown {
            state.tx_shutdown = true;
            self.link.kick(&mut state);
        }
    }
}

impl AsyncRead for TunTcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunTcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_shutdown(cx)
    }
}

/// Commands for a running stack (served addresses).
#[derive(Clone)]
pub struct TunStack {
    commands: mpsc::UnboundedSender<Command>,
    stats: Arc<Mutex<netstack::Stats>>,
}

impl TunStack {
    /// Starts the driver task for `device` with `config`. Returns the handle and the stream of
    /// connection requests. Must run inside a tokio runtime.
    pub fn spawn(
        device: TunDevice,
        config: netstack::Config,
    ) -> (TunStack, mpsc::Receiver<PendingConnection>) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (pending_tx, pending_rx) = mpsc::channel(PENDING_LIMIT);
        let stats = Arc::new(Mutex::new(netstack::Stats::default()));
        let driver = Driver {
            netstack: Netstack::new(config),
            stats: stats.clone(),
            stats_published: std::time::Instant::now(),
            device,
            conns: BTreeMap::new(),
            epoch: std::time::Instant::now(),
            commands: commands.clone(),
            pending: pending_tx,
        };
        tokio::spawn(driver.run(command_rx));
        (TunStack { commands, stats }, pending_rx)
    }

    /// The netstack's counters, as of at most [`STATS_PERIOD`] ago.
    pub fn stats(&self) -> netstack::Stats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Serve `address`: SYNs to it become connection requests.
    pub fn add_address(&self, address: IpAddr) {
        let _ = self.commands.send(Command::AddAddress(address));
    }

    /// Stop serving `address` (held SYNs to it are dropped; open connections continue).
    pub fn remove_address(&self, address: IpAddr) {
        let _ = self.commands.send(Command::RemoveAddress(address));
    }
}

/// How often the driver publishes the netstack's counters.
pub const STATS_PERIOD: Duration = Duration::from_millis(250);

struct Driver {
    netstack: Netstack,
    stats: Arc<Mutex<netstack::Stats>>,
    stats_published: std::time::Instant,
    device: TunDevice,
    conns: BTreeMap<ConnId, Shared>,
    epoch: std::time::Instant,
    commands: mpsc::UnboundedSender<Command>,
    pending: mpsc::Sender<PendingConnection>,
}

impl Driver {
    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    async fn run(mut self, mut command_rx: mpsc::UnboundedReceiver<Command>) {
        let mut packet =
            vec![0u8; usize::from(self.device.mtu()).max(1500) + 64 + device::VNET_HDR_LEN];
        loop {
            let sleep = match self.netstack.poll_timeout() {
                Some(at) => at.saturating_duration_since(self.now()),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                received = self.device.recv(&mut packet) => match received {
                    Ok((range, checksum)) => {
                        let now = self.now();
                        self.netstack.handle_packet_with(&packet[range], checksum, now);
                    }
                    Err(e) => {
                        warn!(error = %e, "TUN read failed; stopping the netstack");
                        return;
                    }
                },
                command = command_rx.recv() => {
                    let Some(command) = command else { return };
                    self.handle_command(command);
                    // Take whatever else is queued in the same turn.
                    while let Ok(command) = command_rx.try_recv() {
                        self.handle_command(command);
                    }
                }
                _ = tokio::time::sleep(sleep) => {
                    let now = self.now();
                    self.netstack.handle_timeout(now);
                }
            }
            self.handle_events();
            if self.stats_published.elapsed() >= STATS_PERIOD {
                self.stats_published = std::time::Instant::now();
                *self.stats.lock().expect("stats lock") = self.netstack.stats();
            }
            // Output last: reads and writes above may have produced ACKs, window updates, data.
            let now = self.now();
            while let Some(out) = self.netstack.poll_transmit(now) {
                if let Err(e) = self.device.send(&out).await {
                    debug!(error = %e, "TUN write failed; packet dropped");
                }
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Accept(conn, shared) => match self.netstack.accept(conn, now) {
                Ok(()) => {
                    self.conns.insert(conn, shared);
                }
                Err(e) => {
                    debug!(%conn, error = %e, "accept failed");
                    let mut state = shared.lock().expect("conn lock");
                    state.reset = true;
                    state.gone = true;
                    wake_all(&mut state);
                }
            },
            Command::Refuse(conn, reason) => {
                let _ = self.netstack.refuse(conn, reason);
            }
            Command::Kick(conn) => self.service(conn),
            Command::AddAddress(address) => {
                self.netstack.add_address(address);
            }
            Command::RemoveAddress(address) => {
                self.netstack.remove_address(address);
            }
        }
    }

    fn handle_events(&mut self) {
        while let Some(event) = self.netstack.poll_event() {
            match event {
                Event::ConnectRequested {
                    conn,
                    client,
                    address,
                    port,
                } => {
                    let pending = PendingConnection {
                        client,
                        address,
                        port,
                        conn,
                        commands: self.commands.clone(),
                        answered: false,
                    };
                    if let Err(e) = self.pending.try_send(pending) {
                        // Over the backlog of unanswered requests: refuse at once. (Dropping the
                        // request queues a refusal.)
                        debug!(%conn, "connection request backlog full");
                        drop(e);
                    }
                }
                Event::ConnectAbandoned { conn, reason } => {
                    debug!(%conn, ?reason, "held SYN abandoned");
                }
                Event::Established { conn }
                | Event::Readable { conn }
                | Event::Writable { conn } => self.service(conn),
                Event::Closed { conn } => {
                    if let Some(shared) = self.conns.remove(&conn) {
                        let mut state = shared.lock().expect("conn lock");
                        state.gone = true;
                        state.rx_eof = true;
                        wake_all(&mut state);
                    }
                }
                Event::Reset { conn, cause } => {
                    debug!(%conn, ?cause, "connection reset");
                    if let Some(shared) = self.conns.remove(&conn) {
                        let mut state = shared.lock().expect("conn lock");
                        state.gone = true;
                        state.reset = true;
                        wake_all(&mut state);
                    }
                }
            }
        }
    }

    /// Moves data between a connection's queues and the netstack, both ways.
    fn service(&mut self, conn: ConnId) {
        let Some(shared) = self.conns.get(&conn).cloned() else {
            return;
        };
        let mut state = shared.lock().expect("conn lock");
        state.kicked = false;
        if state.reset_requested {
            let now = self.now();
            let _ = self.netstack.reset(conn, now);
            state.reset = true;
            state.gone = true;
            wake_all(&mut state);
            drop(state);
            self.conns.remove(&conn);
            return;
        }
        // Netstack → consumer, while there is room.
        let mut woke_reader = false;
        while !state.rx_eof && state.rx_bytes < RX_LIMIT {
            let want = (RX_LIMIT - state.rx_bytes).min(READ_CHUNK);
            // Read straight into the chunk the consumer will own: no copy through a scratch
            // buffer.
            let mut chunk = Vec::new();
            match self.netstack.read_append(conn, &mut chunk, want) {
                Ok(0) => {
                    state.rx_eof = true;
                    woke_reader = true;
                }
                Ok(n) => {
                    state.rx.push_back(Bytes::from(chunk));
                    state.rx_bytes += n;
                    woke_reader = true;
                }
                Err(_) => break,
            }
        }
        if state.rx_bytes >= RX_LIMIT {
            state.rx_blocked = true;
        }
        if woke_reader {
            if let Some(w) = state.read_waker.take() {
                w.wake();
            }
        }
        // Consumer → netstack, as much as it takes.
        let mut woke_writer = false;
        while !state.tx.is_empty() {
            match self.netstack.write(conn, &state.tx) {
                Ok(n) if n > 0 => {
                    state.tx.advance(n);
                    woke_writer = true;
                }
                _ => break,
            }
        }
        if state.tx.is_empty() && state.tx_shutdown && !state.fin_sent {
            state.fin_sent = true;
            let _ = self.netstack.shutdown(conn);
        }
        if woke_writer {
            if let Some(w) = state.write_waker.take() {
                w.wake();
            }
        }
    }
}

fn wake_all(state: &mut ConnState) {
    if let Some(w) = state.read_waker.take() {
        w.wake();
    }
    if let Some(w) = state.write_waker.take() {
        w.wake();
    }
}
