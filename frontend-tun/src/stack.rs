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

use crate::device::TunDevice;

/// Bytes a connection may hold read from the netstack but not yet taken by its consumer.
const RX_LIMIT: usize = 256 * 1024;
/// Bytes a connection may hold written by its consumer but not yet taken by the netstack.
const TX_LIMIT: usize = 256 * 1024;
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
        TunTcpStream {
            conn: self.conn,
            shared,
            commands: self.commands.clone(),
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

/// An accepted connection from a TUN client, as a tokio byte stream. Dropping it closes the
/// sending side gracefully (FIN after buffered data); [`TunTcpStream::reset`] aborts instead.
pub struct TunTcpStream {
    conn: ConnId,
    shared: Shared,
    commands: mpsc::UnboundedSender<Command>,
}

impl TunTcpStream {
    fn kick(&self, state: &mut ConnState) {
        if !state.kicked && !state.gone {
            state.kicked = true;
            let _ = self.commands.send(Command::Kick(self.conn));
        }
    }

    /// A handle that can reset this connection from elsewhere (e.g. the other half of a pump).
    pub fn reset_handle(&self) -> ResetHandle {
        ResetHandle {
            conn: self.conn,
            shared: self.shared.clone(),
            commands: self.commands.clone(),
        }
    }
}

/// Resets a [`TunTcpStream`]'s connection: the client gets a RST.
#[derive(Clone)]
pub struct ResetHandle {
    conn: ConnId,
    shared: Shared,
    commands: mpsc::UnboundedSender<Command>,
}

impl ResetHandle {
    /// Aborts the connection.
    pub fn reset(&self) {
        let mut state = self.shared.lock().expect("conn lock");
        if state.gone || state.reset_requested {
            return;
        }
        state.reset_requested = true;
        state.kicked = true;
        let _ = self.commands.send(Command::Kick(self.conn));
    }
}

impl AsyncRead for TunTcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut state = this.shared.lock().expect("conn lock");
        if state.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if state.rx.is_empty() {
            if state.rx_eof || state.gone {
                return Poll::Ready(Ok(()));
            }
            state.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        while buf.remaining() > 0 {
            let Some(front) = state.rx.front_mut() else {
                break;
            };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                state.rx.pop_front();
            }
            state.rx_bytes -= n;
        }
        if state.rx_blocked && state.rx_bytes < RX_LIMIT / 2 {
            state.rx_blocked = false;
            this.kick(&mut state);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunTcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut state = this.shared.lock().expect("conn lock");
        if state.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if state.gone || state.tx_shutdown {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = TX_LIMIT.saturating_sub(state.tx.len());
        if room == 0 {
            state.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        state.tx.extend_from_slice(&data[..n]);
        this.kick(&mut state);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut state = this.shared.lock().expect("conn lock");
        if !state.tx_shutdown {
            state.tx_shutdown = true;
            this.kick(&mut state);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunTcpStream {
    fn drop(&mut self) {
        let mut state = self.shared.lock().expect("conn lock");
        if !state.tx_shutdown {
            state.tx_shutdown = true;
            self.kick(&mut state);
        }
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
            scratch: vec![0u8; 64 * 1024],
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
    scratch: Vec<u8>,
}

impl Driver {
    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    async fn run(mut self, mut command_rx: mpsc::UnboundedReceiver<Command>) {
        let mut packet = vec![0u8; usize::from(self.device.mtu()).max(1500) + 64];
        loop {
            let sleep = match self.netstack.poll_timeout() {
                Some(at) => at.saturating_duration_since(self.now()),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                received = self.device.recv(&mut packet) => match received {
                    Ok(n) => {
                        let now = self.now();
                        self.netstack.handle_packet(&packet[..n], now);
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
            let want = (RX_LIMIT - state.rx_bytes).min(self.scratch.len());
            match self.netstack.read(conn, &mut self.scratch[..want]) {
                Ok(0) => {
                    state.rx_eof = true;
                    woke_reader = true;
                }
                Ok(n) => {
                    state
                        .rx
                        .push_back(Bytes::copy_from_slice(&self.scratch[..n]));
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
