//! The runtime and UDP socket the node hands to quinn: tokio, plus larger send batches.
//!
//! quinn builds at most 10 datagrams per transmit (`MAX_TRANSMIT_SEGMENTS` in quinn 0.11, an
//! open question upstream in quinn-rs/quinn#2189) and sends at most 20 datagrams per poll of a
//! connection's driver before it yields. Each transmit becomes one `sendmsg` with UDP GSO, so bulk
//! data costs one syscall — and one pass of the kernel's UDP, IP and veth paths — per 10
//! datagrams. Measured in `bench-tun`, sending up to 44 datagrams per call instead moves a third
//! more through the same two cores (`docs/architecture.md` §7.4).
//!
//! This module gets there without changing quinn, through the two seams it offers:
//!
//! - [`BatchingRuntime::spawn`] wraps each driver task quinn spawns (one per connection, one per
//!   endpoint). While the wrapper polls its driver, a thread-local [`Batch`] is active; a driver
//!   that yields only to go on sending (it woke itself) is polled again at once, up to
//!   [`MAX_ROUNDS`] times, so several of its transmits meet in one batch.
//! - [`BatchingSocket::try_send`] appends GSO transmits to the active batch when they continue it
//!   (same destination, source and ECN, same segment size, every datagram so far full-sized, and
//!   the batch within the kernel's limits). Anything else flushes the batch first, so datagrams
//!   leave in the order quinn produced them.
//!
//! Invariant: a batch never outlives the poll that filled it. The wrapper sends it before it
//! returns; only a full socket (`WouldBlock`) keeps it, and then the wrapper is registered to be
//! woken when the socket is writable and sends it before anything else.
//!
//! The module also sets how large QUIC datagrams may get: path MTU discovery searches up to
//! [`MAX_UDP_PAYLOAD`] (jumbo frames), and quinn is told at most 7 datagrams per transmit so that
//! a transmit of jumbo datagrams still fits in one send (quinn-rs/quinn#2201).

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};
use tracing::debug;

/// Polls of a driver within one poll of its wrapper, while the driver wakes itself to go on.
const MAX_ROUNDS: usize = 4;
/// The most datagrams one send carries (the kernel's `UDP_MAX_SEGMENTS`).
const MAX_BATCH_SEGMENTS: usize = 64;
/// The most payload bytes one send carries: an IP packet's 65,535 bytes less the IPv6 and UDP
/// headers, rounded down.
const MAX_BATCH_BYTES: usize = 65_000;

/// The largest UDP payload path MTU discovery looks for, and accepted from peers: a 9,000-byte
/// jumbo frame less the IPv6 and UDP headers. quinn's default (1,452) stops at Ethernet's 1,500
/// even on links that carry more; discovery probes and keeps what the path actually delivers
/// (1,472 bytes over IPv4 on a 1,500-byte link), so the bound only lets faster links be used.
pub const MAX_UDP_PAYLOAD: u16 = 8952;

/// QUIC's path MTU discovery, searching up to [`MAX_UDP_PAYLOAD`].
pub fn mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(MAX_UDP_PAYLOAD);
    mtud
}

/// An endpoint config with `reset_key` that accepts datagrams up to [`MAX_UDP_PAYLOAD`].
pub fn endpoint_config(reset_key: Arc<dyn quinn::crypto::HmacKey>) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::new(reset_key);
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .expect("MAX_UDP_PAYLOAD is within QUIC's limits");
    config
}

/// Counters of what the batching sockets sent, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct SendStats {
    /// `sendmsg` calls made for transmits (batched or not).
    pub sends: AtomicU64,
    /// Datagrams those calls carried.
    pub datagrams: AtomicU64,
}

/// tokio, with quinn's driver tasks wrapped so that their transmits are sent in larger batches.
#[derive(Debug, Default, Clone)]
pub struct BatchingRuntime {
    stats: Arc<SendStats>,
}

impl BatchingRuntime {
    /// A runtime whose sockets count their sends in a fresh [`SendStats`].
    pub fn new() -> BatchingRuntime {
        BatchingRuntime::default()
    }

    /// What the sockets of this runtime sent so far.
    pub fn stats(&self) -> &Arc<SendStats> {
        &self.stats
    }
}

impl Runtime for BatchingRuntime {
    fn new_timer(&self, at: std::time::Instant) -> Pin<Box<dyn AsyncTimer>> {
        TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(Batched::new(future));
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let inner = TokioRuntime.wrap_udp_socket(socket)?;
        Ok(Arc::new(BatchingSocket {
            inner: Arc::new(Counted {
                inner,
                stats: self.stats.clone(),
            }),
        }))
    }

    fn now(&self) -> std::time::Instant {
        TokioRuntime.now()
    }
}

/// The socket that sends: tokio's, counting its sends.
#[derive(Debug)]
struct Counted {
    inner: Arc<dyn AsyncUdpSocket>,
    stats: Arc<SendStats>,
}

impl Counted {
    /// The most datagrams one send may carry here: the kernel's limit, 1 without GSO.
    fn max_batch_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(MAX_BATCH_SEGMENTS)
    }

    fn send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)?;
        let datagrams = match transmit.segment_size {
            Some(size) if size > 0 => transmit.contents.len().div_ceil(size),
            _ => 1,
        };
        self.stats.sends.fetch_add(1, Ordering::Relaxed);
        self.stats
            .datagrams
            .fetch_add(datagrams as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The socket handed to quinn: sends through the batch of the driver being polled, if any.
#[derive(Debug)]
pub struct BatchingSocket {
    inner: Arc<Counted>,
}

impl AsyncUdpSocket for BatchingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        ACTIVE.with(|active| {
            let mut active = active.borrow_mut();
            let Some(batch) = active.as_mut() else {
                return self.inner.send(transmit);
            };
            if batch.append(&self.inner, transmit) {
                return Ok(());
            }
            // Not a continuation: what is queued goes first.
            if let Err(e) = batch.send() {
                if batch.is_for(&self.inner) {
                    // This socket is full: quinn waits until it is writable, then retries.
                    return Err(e);
                }
                // Queued for a socket quinn has replaced (a rebind): quinn cannot wait for
                // that one. The datagrams are lost; QUIC resends their contents.
                debug!("batch for a replaced UDP socket dropped");
                batch.clear();
            }
            if batch.append(&self.inner, transmit) {
                Ok(())
            } else {
                self.inner.send(transmit)
            }
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        // quinn sizes a transmit by datagram count alone (quinn-rs/quinn#2201): ten datagrams
        // of up to MAX_UDP_PAYLOAD bytes exceed what one send may carry, and the kernel would
        // refuse the whole transmit. Seven always fit; the batches join them up again.
        self.inner
            .inner
            .max_transmit_segments()
            .min(MAX_BATCH_BYTES / usize::from(MAX_UDP_PAYLOAD))
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.inner.may_fragment()
    }
}

thread_local! {
    /// The batch of the driver being polled on this thread.
    static ACTIVE: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Consecutive datagrams of one connection, sent together with one segment size.
#[derive(Default)]
struct Batch {
    socket: Option<Arc<Counted>>,
    contents: Vec<u8>,
    destination: Option<SocketAddr>,
    src_ip: Option<IpAddr>,
    ecn: Option<EcnCodepoint>,
    segment_size: usize,
    segments: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.contents.is_empty()
    }

    fn is_for(&self, socket: &Arc<Counted>) -> bool {
        self.socket.as_ref().is_some_and(|s| Arc::ptr_eq(s, socket))
    }

    fn clear(&mut self) {
        self.contents.clear();
        self.segments = 0;
        self.socket = None;
        self.destination = None;
    }

    /// Takes `transmit` if it continues this batch (or the batch is empty) and fits.
    fn append(&mut self, socket: &Arc<Counted>, transmit: &Transmit<'_>) -> bool {
        // Only GSO transmits are batched: single datagrams are ACKs, probes (whose size may be
        // refused) and handshake packets, which should leave at once.
        let Some(size) = transmit.segment_size else {
            return false;
        };
        let max_segments = socket.max_batch_segments();
        if size == 0 || transmit.contents.is_empty() || max_segments <= 1 {
            return false;
        }
        let segments = transmit.contents.len().div_ceil(size);
        if self.is_empty() {
            if segments > max_segments || transmit.contents.len() > MAX_BATCH_BYTES {
                return false;
            }
            self.socket = Some(socket.clone());
            self.destination = Some(transmit.destination);
            self.src_ip = transmit.src_ip;
            self.ecn = transmit.ecn;
            self.segment_size = size;
        } else {
            let continues = self.is_for(socket)
                && self.destination == Some(transmit.destination)
                && self.src_ip == transmit.src_ip
                && self.ecn == transmit.ecn
                && self.segment_size == size
                // Every datagram so far is full-sized: only the last of a send may be short.
                && self.contents.len().is_multiple_of(size)
                && self.segments + segments <= max_segments
                && self.contents.len() + transmit.contents.len() <= MAX_BATCH_BYTES;
            if !continues {
                return false;
            }
        }
        self.contents.extend_from_slice(transmit.contents);
        self.segments += segments;
        true
    }

    /// Sends the batch. On `WouldBlock` it stays queued.
    fn send(&mut self) -> io::Result<()> {
        let (Some(socket), Some(destination)) = (&self.socket, self.destination) else {
            return Ok(());
        };
        if self.contents.is_empty() {
            return Ok(());
        }
        let transmit = Transmit {
            destination,
            ecn: self.ecn,
            contents: &self.contents,
            segment_size: (self.segments > 1).then_some(self.segment_size),
            src_ip: self.src_ip,
        };
        match socket.send(&transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
            Err(e) => {
                // Like quinn's own sends: the datagrams are lost, and QUIC's loss recovery
                // resends their contents.
                debug!(error = %e, segments = self.segments, "UDP send failed; batch dropped");
            }
            Ok(()) => {}
        }
        self.clear();
        Ok(())
    }
}

/// Installs a batch as this thread's active one, and puts back the previous on drop (also when
/// the poll panics, so a stale batch never lingers on the thread).
struct Installed<'a> {
    batch: &'a mut Batch,
    previous: Option<Batch>,
}

impl<'a> Installed<'a> {
    fn new(batch: &'a mut Batch) -> Installed<'a> {
        let mine = std::mem::take(batch);
        let previous = ACTIVE.with(|active| active.borrow_mut().replace(mine));
        Installed { batch, previous }
    }
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let mine = ACTIVE.with(|active| std::mem::replace(&mut *active.borrow_mut(), previous));
        *self.batch = mine.unwrap_or_default();
    }
}

/// Tells a wrapper whether its driver woke itself while being polled, and forwards wakes that
/// come while it is not being polled to the task.
#[derive(Default)]
struct WakeState {
    woken: AtomicBool,
    polling: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for WakeState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        // While the wrapper polls, it sees the flag itself (and wakes the task if it stops with
        // the flag set); outside a poll, the task must be woken now.
        if !self.polling.load(Ordering::SeqCst) {
            if let Some(waker) = self.task.lock().expect("waker lock").as_ref() {
                waker.wake_by_ref();
            }
        }
    }
}

/// A quinn driver task, polled with its batch active and the batch sent before each return.
struct Batched {
    driver: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    batch: Batch,
    state: Arc<WakeState>,
    waker: Waker,
    /// Writability of the socket of a batch left by a full socket.
    poller: Option<(Arc<Counted>, Poller)>,
}

type Poller = Pin<Box<dyn UdpPoller>>;

impl Batched {
    fn new(driver: Pin<Box<dyn Future<Output = ()> + Send>>) -> Batched {
        let state = Arc::new(WakeState::default());
        Batched {
            driver: Some(driver),
            batch: Batch::default(),
            waker: Waker::from(state.clone()),
            state,
            poller: None,
        }
    }

    /// Sends the queued batch; `Pending` (and a wake-up registered) while the socket is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.batch.send() {
                Ok(()) => return Poll::Ready(()),
                Err(_would_block) => {
                    let Some(socket) = self.batch.socket.clone() else {
                        return Poll::Ready(());
                    };
                    if !self
                        .poller
                        .as_ref()
                        .is_some_and(|(s, _)| Arc::ptr_eq(s, &socket))
                    {
                        let poller = socket.inner.clone().create_io_poller();
                        self.poller = Some((socket, poller));
                    }
                    let (_, poller) = self.poller.as_mut().expect("poller set above");
                    match poller.as_mut().poll_writable(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => {
                            debug!(error = %e, "UDP socket failed; batch dropped");
                            self.batch = Batch::default();
                            return Poll::Ready(());
                        }
                    }
                }
            }
        }
    }
}

impl Future for Batched {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        {
            let mut task = this.state.task.lock().expect("waker lock");
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        // A batch left by a full socket goes before anything new. If the socket is still full,
        // the driver still runs (to take in ACKs); its sends then see `WouldBlock` as usual.
        let _ = this.poll_send(cx);
        if let Some(driver) = this.driver.as_mut() {
            this.state.polling.store(true, Ordering::SeqCst);
            let mut driver_cx = Context::from_waker(&this.waker);
            let mut finished = false;
            for _ in 0..MAX_ROUNDS {
                this.state.woken.store(false, Ordering::SeqCst);
                let installed = Installed::new(&mut this.batch);
                let poll = driver.as_mut().poll(&mut driver_cx);
                drop(installed);
                if poll.is_ready() {
                    finished = true;
                    break;
                }
                if !this.state.woken.load(Ordering::SeqCst) {
                    break;
                }
            }
            this.state.polling.store(false, Ordering::SeqCst);
            if this.state.woken.swap(false, Ordering::SeqCst) {
                cx.waker().wake_by_ref();
            }
            if finished {
                this.driver = None;
            }
        }
        match this.poll_send(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) if this.driver.is_none() => Poll::Ready(()),
            Poll::Ready(()) => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::UdpSocket;
    use std::time::Duration;

    use proptest::prelude::*;
    use svcnet_core::identity::NodeKey;

    use super::*;

    /// One transmit as quinn would hand it over: `segments` datagrams of `segment_size` bytes,
    /// the last `last` bytes long; GSO (a segment size) or a single datagram.
    #[derive(Debug, Clone)]
    struct Planned {
        to: usize,
        segment_size: usize,
        segments: usize,
        last: usize,
        gso: bool,
    }

    fn planned() -> impl Strategy<Value = Planned> {
        (
            0usize..2,
            prop_oneof![Just(1200usize), Just(1452usize)],
            1usize..=10,
            any::<prop::sample::Index>(),
            any::<bool>(),
        )
            .prop_map(|(to, segment_size, segments, last, gso)| Planned {
                to,
                segment_size,
                segments,
                last: 1 + last.index(segment_size),
                gso: gso || segments > 1,
            })
    }

    /// The datagrams of a plan, each starting with its sequence number.
    fn datagrams(plan: &[Planned]) -> Vec<Vec<Vec<u8>>> {
        let mut seq = 0u32;
        plan.iter()
            .map(|t| {
                (0..t.segments)
                    .map(|i| {
                        let len = if i + 1 == t.segments {
                            t.last
                        } else {
                            t.segment_size
                        };
                        let mut d = vec![(seq % 251) as u8; len.max(4)];
                        d.truncate(len);
                        let tag = seq.to_be_bytes();
                        let n = tag.len().min(len);
                        d[..n].copy_from_slice(&tag[..n]);
                        seq += 1;
                        d
                    })
                    .collect()
            })
            .collect()
    }

    /// The sends the batching rule makes for a plan (the model: greedy runs of GSO transmits).
    fn expected_sends(plan: &[Planned], max_segments: usize) -> u64 {
        let mut sends = 0;
        // (destination, segment size, datagrams, bytes, all full-sized so far)
        let mut batch: Option<(usize, usize, usize, usize, bool)> = None;
        for t in plan {
            let bytes = (t.segments - 1) * t.segment_size + t.last;
            if !t.gso || max_segments <= 1 {
                sends += u64::from(batch.take().is_some()) + 1;
                continue;
            }
            if let Some((to, size, n, b, full)) = batch {
                if to == t.to
                    && size == t.segment_size
                    && full
                    && n + t.segments <= max_segments
                    && b + bytes <= MAX_BATCH_BYTES
                {
                    batch = Some((to, size, n + t.segments, b + bytes, t.last == size));
                    continue;
                }
                sends += 1;
            }
            batch = Some((
                t.to,
                t.segment_size,
                t.segments,
                bytes,
                t.last == t.segment_size,
            ));
        }
        sends + u64::from(batch.is_some())
    }

    fn receiver() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
        socket2::SockRef::from(&socket)
            .set_recv_buffer_size(8 << 20)
            .expect("receive buffer");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        socket
    }

    /// Sends the plan from one wrapped task, the way a quinn driver does (wait for writability,
    /// `try_send`, again on `WouldBlock`), all within one poll unless the socket fills up.
    /// Returns the most datagrams one send may carry on this machine.
    async fn send_plan(runtime: &BatchingRuntime, plan: &[Planned], to: [SocketAddr; 2]) -> usize {
        let socket = runtime
            .wrap_udp_socket(UdpSocket::bind("127.0.0.1:0").expect("bind sender"))
            .expect("wrap");
        // The batches' limit is the kernel's, not the smaller one quinn is told.
        let max_segments = TokioRuntime
            .wrap_udp_socket(UdpSocket::bind("127.0.0.1:0").expect("bind probe"))
            .expect("wrap probe")
            .max_transmit_segments()
            .min(MAX_BATCH_SEGMENTS);
        let datagrams = datagrams(plan);
        let transmits: Vec<(SocketAddr, Option<usize>, Vec<u8>)> = plan
            .iter()
            .zip(&datagrams)
            .map(|(t, ds)| (to[t.to], t.gso.then_some(t.segment_size), ds.concat()))
            .collect();
        let mut poller = socket.clone().create_io_poller();
        let mut next = 0;
        let task = std::future::poll_fn(move |cx| {
            while next < transmits.len() {
                if poller.as_mut().poll_writable(cx).is_pending() {
                    return Poll::Pending;
                }
                let (destination, segment_size, contents) = &transmits[next];
                let transmit = Transmit {
                    destination: *destination,
                    ecn: None,
                    contents,
                    segment_size: *segment_size,
                    src_ip: None,
                };
                match socket.try_send(&transmit) {
                    Ok(()) => next += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("send failed: {e}"),
                }
            }
            Poll::Ready(())
        });
        Batched::new(Box::pin(task)).await;
        max_segments
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the mix of transmits, every datagram reaches its destination intact and in
        /// order, and consecutive GSO transmits to one destination share sends exactly as the
        /// rule says.
        #[test]
        fn datagrams_arrive_as_sent_and_runs_share_sends(plan in prop::collection::vec(planned(), 1..24)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let receivers = [receiver(), receiver()];
            let to = [receivers[0].local_addr().unwrap(), receivers[1].local_addr().unwrap()];
            let runtime = BatchingRuntime::new();
            let max_segments = rt.block_on(send_plan(&runtime, &plan, to));
            let datagrams = datagrams(&plan);
            let mut buf = vec![0u8; 65536];
            for (i, receiver) in receivers.iter().enumerate() {
                let expected: Vec<&Vec<u8>> = plan
                    .iter()
                    .zip(&datagrams)
                    .filter(|(t, _)| t.to == i)
                    .flat_map(|(_, ds)| ds)
                    .collect();
                for want in expected {
                    let n = receiver.recv(&mut buf).expect("a datagram within 5 s");
                    prop_assert_eq!(&buf[..n], &want[..]);
                }
            }
            let stats = runtime.stats();
            prop_assert_eq!(stats.sends.load(Ordering::Relaxed), expected_sends(&plan, max_segments));
            prop_assert_eq!(
                stats.datagrams.load(Ordering::Relaxed),
                plan.iter().map(|t| t.segments as u64).sum::<u64>()
            );
        }
    }

    /// A loopback UDP socket with the daemon's 4 MiB buffers (`node::quic_socket_options`).
    fn quic_socket() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = socket2::SockRef::from(&socket);
        sock.set_recv_buffer_size(4 << 20).unwrap();
        sock.set_send_buffer_size(4 << 20).unwrap();
        socket
    }

    /// What a QUIC transfer over loopback between two endpoints on this runtime showed.
    struct Transfer {
        /// The sender's sends and the datagrams they carried.
        sends: u64,
        datagrams: u64,
        /// The sender's path MTU before and after the data.
        mtu_before: u16,
        mtu_after: u16,
    }

    /// Sends 16 MiB on one stream over loopback, after path MTU discovery up to `mtu_bound` has
    /// finished (it probes while the connection has nothing else to send, as here before the
    /// data), and checks every byte arrived.
    async fn transfer(mtu_bound: u16) -> Transfer {
        let (server_key, client_key) = (NodeKey::from_seed([1; 32]), NodeKey::from_seed([2; 32]));
        let allowed = Arc::new(BTreeSet::from([client_key.node_id()]));
        let mut transport = quinn::TransportConfig::default();
        transport
            .stream_receive_window(quinn::VarInt::from_u32(8 << 20))
            .receive_window(quinn::VarInt::from_u32(32 << 20))
            .send_window(32 << 20);
        let mut mtud = mtu_discovery();
        mtud.upper_bound(mtu_bound);
        transport.mtu_discovery_config(Some(mtud));
        let transport = Arc::new(transport);
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(
            crate::tls::server_config(&server_key, allowed).unwrap(),
        )
        .unwrap();
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport.clone());
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(
            crate::tls::client_config(&client_key).unwrap(),
        )
        .unwrap();
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);

        let client_runtime = BatchingRuntime::new();
        let reset_key = || -> Arc<dyn quinn::crypto::HmacKey> {
            Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[9; 32]))
        };
        let server = quinn::Endpoint::new(
            endpoint_config(reset_key()),
            Some(server_config),
            quic_socket(),
            Arc::new(BatchingRuntime::new()),
        )
        .unwrap();
        let client = quinn::Endpoint::new(
            endpoint_config(reset_key()),
            None,
            quic_socket(),
            Arc::new(client_runtime.clone()),
        )
        .unwrap();
        let server_addr = server.local_addr().unwrap();

        let data: Arc<Vec<u8>> = Arc::new(
            (0..16u32 << 20)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
        );
        let receiving = tokio::spawn(async move {
            let connection = server.accept().await.unwrap().await.unwrap();
            let mut recv = connection.accept_uni().await.unwrap();
            let got = recv.read_to_end(64 << 20).await.unwrap();
            connection.close(0u32.into(), b"done");
            server.wait_idle().await;
            got
        });
        let connection = client
            .connect_with(
                client_config,
                server_addr,
                &crate::tls::server_name_for(&server_key.node_id()),
            )
            .unwrap()
            .await
            .unwrap();
        let discovered = tokio::time::timeout(Duration::from_secs(10), async {
            while connection.stats().path.current_mtu < mtu_bound {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let mtu_before = connection.stats().path.current_mtu;
        assert!(
            discovered.is_ok(),
            "path MTU {mtu_before} after 10 s over loopback"
        );
        let mut send = connection.open_uni().await.unwrap();
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
        let got = tokio::time::timeout(Duration::from_secs(60), receiving)
            .await
            .expect("transfer within 60 s")
            .unwrap();
        assert!(
            got == *data,
            "received {} of {} bytes, or different bytes",
            got.len(),
            data.len()
        );
        let stats = client_runtime.stats();
        Transfer {
            sends: stats.sends.load(Ordering::Relaxed),
            datagrams: stats.datagrams.load(Ordering::Relaxed),
            mtu_before,
            mtu_after: connection.stats().path.current_mtu,
        }
    }

    /// At Ethernet-sized datagrams, the sender's bulk data leaves in sends of more datagrams
    /// than quinn puts in one transmit (10).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic_bulk_transfer_is_sent_in_large_batches() {
        let t = transfer(1452).await;
        assert_eq!((t.mtu_before, t.mtu_after), (1452, 1452));
        assert!(t.datagrams > 10_000, "{} datagrams for 16 MiB", t.datagrams);
        assert!(
            t.datagrams > 10 * t.sends,
            "{} datagrams in {} sends: no larger batches than quinn's own",
            t.datagrams,
            t.sends
        );
    }

    /// Where the path carries them (loopback), discovery reaches jumbo datagrams, and bulk data
    /// keeps them: no send is refused for exceeding what one send may carry (quinn would take
    /// the refused datagrams for a black hole and fall back to 1,200 bytes).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic_bulk_transfer_keeps_jumbo_datagrams() {
        let t = transfer(MAX_UDP_PAYLOAD).await;
        assert_eq!(
            (t.mtu_before, t.mtu_after),
            (MAX_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
        );
        assert!(
            t.datagrams < 16 * 1024 * 1024 / 8000 + 100,
            "{} datagrams for 16 MiB",
            t.datagrams
        );
    }
}
