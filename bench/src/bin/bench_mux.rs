//! The multiplexer benchmark: svcnet's mux against raw TCP and rust-yamux over real loopback TCP
//! under tokio, plus stream-open scaling and idle memory.
//!
//! Usage: `bench-mux [--quick]`. Figures are printed as `key=value`; ratios are medians of
//! per-round ratios, each round measuring the baseline and the contenders back to back.

use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant as StdInstant};

use futures::io::{AsyncReadExt, AsyncWriteExt};
use svcnet_bench::{median, report, CountingAlloc, TokioClock, VectoredTcp};
use svcnet_core::mux::adapter::{Connection, Stream, WriteMode};
use svcnet_core::mux::{Config, Role, Session};
use svcnet_core::time::Instant;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::compat::TokioAsyncReadCompatExt;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy)]
struct Scale {
    rounds: usize,
    one_stream_bytes: usize,
    many_streams: usize,
    many_stream_bytes: usize,
    open_batch: usize,
    /// Measured batches at each size (the figure is their median).
    open_rounds: usize,
    big_open: usize,
    idle_streams: usize,
}

impl Scale {
    fn full() -> Scale {
        Scale {
            rounds: 5,
            one_stream_bytes: 1 << 30,
            many_streams: 100,
            many_stream_bytes: 32 << 20,
            open_batch: 50_000,
            open_rounds: 9,
            big_open: 1_000_000,
            idle_streams: 1_000_000,
        }
    }
    fn quick() -> Scale {
        Scale {
            rounds: 1,
            one_stream_bytes: 32 << 20,
            many_streams: 100,
            many_stream_bytes: 256 << 10,
            open_batch: 5_000,
            open_rounds: 3,
            big_open: 50_000,
            idle_streams: 50_000,
        }
    }
}

/// The session config under test: defaults, except the stream limit the scenario needs and an
/// optional frame size override for experiments (`MUX_MAX_FRAME=65536`).
fn mux_config(max_streams: u32) -> Config {
    let defaults = Config::default();
    Config {
        max_incoming_streams: max_streams,
        max_frame_size: std::env::var("MUX_MAX_FRAME")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(defaults.max_frame_size),
        ..defaults
    }
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let a = a.expect("connect");
    let (b, _) = b.expect("accept");
    a.set_nodelay(true).expect("nodelay");
    b.set_nodelay(true).expect("nodelay");
    (a, b)
}

/// A connected pair of sessions, the client's driver on the client runtime and the server's on
/// the server runtime (see [`Sides`]). Plain sockets forward vectored writes, so the drivers
/// need no staging copy.
async fn mux_pair(max_streams: u32) -> (Connection, Connection) {
    let (a, b) = sided_tcp_pair().await;
    let s = sides();
    let clock = Arc::new(TokioClock::new());
    let (client, client_driver) = Connection::with_write_mode(
        VectoredTcp(a),
        Role::Client,
        mux_config(max_streams),
        clock.clone(),
        WriteMode::Vectored,
    );
    let (server, server_driver) = Connection::with_write_mode(
        VectoredTcp(b),
        Role::Server,
        mux_config(max_streams),
        clock,
        WriteMode::Vectored,
    );
    s.client.spawn(client_driver);
    s.server.spawn(server_driver);
    (client, server)
}

/// Reads a futures-io stream to its end, returning the byte count.
async fn sink_futures<R: futures::io::AsyncRead + Unpin>(mut r: R) -> usize {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            return total;
        }
        total += n;
    }
}

async fn send_futures<W: futures::io::AsyncWrite + Unpin>(mut w: W, bytes: usize) {
    let buf = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK);
        w.write_all(&buf[..n]).await.expect("write");
        left -= n;
    }
    w.close().await.expect("close");
}

/// Gbit/s for `bytes` in `d`.
fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e9
}

// ---- two sides -------------------------------------------------------------------------------

/// The sending and the receiving end of every throughput test run on their own single-worker
/// tokio runtimes, as two processes would on this 2-core machine: raw TCP, svcnet and yamux
/// alike. Sharing one runtime lets its scheduler serialise the two ends (a task woken by another
/// runs next on the same worker, from the LIFO slot, while the other worker idles), which
/// measures the scheduler more than the multiplexer.
struct Sides {
    client: tokio::runtime::Runtime,
    server: tokio::runtime::Runtime,
}

fn sides() -> &'static Sides {
    static SIDES: std::sync::OnceLock<Sides> = std::sync::OnceLock::new();
    SIDES.get_or_init(|| {
        let side = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(name)
                .enable_all()
                .build()
                .expect("tokio runtime")
        };
        Sides {
            client: side("client"),
            server: side("server"),
        }
    })
}

/// A connected loopback pair, the first end registered with the client runtime and the second
/// with the server runtime.
async fn sided_tcp_pair() -> (TcpStream, TcpStream) {
    let (a, b) = tcp_pair().await;
    let (a, b) = (
        a.into_std().expect("into_std"),
        b.into_std().expect("into_std"),
    );
    let s = sides();
    let a = {
        let _in = s.client.enter();
        TcpStream::from_std(a).expect("register")
    };
    let b = {
        let _in = s.server.enter();
        TcpStream::from_std(b).expect("register")
    };
    (a, b)
}

// ---- raw TCP -----------------------------------------------------------------------------------

async fn raw_tcp(streams: usize, bytes_each: usize) -> f64 {
    let mut pairs = Vec::new();
    for _ in 0..streams {
        pairs.push(sided_tcp_pair().await);
    }
    let s = sides();
    let start = StdInstant::now();
    let mut tasks = Vec::new();
    for (mut a, mut b) in pairs {
        tasks.push(s.client.spawn(async move {
            let buf = vec![0x5au8; CHUNK];
            let mut left = bytes_each;
            while left > 0 {
                let n = left.min(CHUNK);
                a.write_all(&buf[..n]).await.expect("write");
                left -= n;
            }
            a.shutdown().await.expect("shutdown");
        }));
        tasks.push(s.server.spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0;
            loop {
                let n = b.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                total += n;
            }
            assert_eq!(total, bytes_each);
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    gbps(streams * bytes_each, start.elapsed())
}

// ---- svcnet mux --------------------------------------------------------------------------------

async fn mux_throughput(streams: usize, bytes_each: usize) -> f64 {
    let (client, server) = mux_pair(1024).await;
    let s = sides();
    let receiver = s.server.spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..streams {
            let st = server.accept().await.expect("accept");
            tasks.push(tokio::spawn(sink_futures(st)));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("sink");
        }
        total
    });
    let start = StdInstant::now();
    let sender = s.client.spawn(async move {
        let mut senders = Vec::new();
        for _ in 0..streams {
            let st = client.open().await.expect("open");
            senders.push(tokio::spawn(send_futures(st, bytes_each)));
        }
        for t in senders {
            t.await.expect("sender");
        }
        client
    });
    let client = sender.await.expect("senders");
    let total = receiver.await.expect("receiver");
    let elapsed = start.elapsed();
    assert_eq!(total, streams * bytes_each);
    client.close(svcnet_core::mux::ErrorCode::NoError, "done");
    gbps(total, elapsed)
}

// ---- rust-yamux --------------------------------------------------------------------------------

type YamuxOpen = tokio::sync::oneshot::Sender<yamux::Stream>;

/// Drives a yamux client connection; open requests arrive on `rx`.
async fn yamux_client_driver(
    mut conn: yamux::Connection<tokio_util::compat::Compat<TcpStream>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<YamuxOpen>,
) {
    let mut pending: Option<YamuxOpen> = None;
    poll_fn(|cx| loop {
        if pending.is_none() {
            if let Poll::Ready(Some(tx)) = rx.poll_recv(cx) {
                pending = Some(tx);
            }
        }
        if let Some(tx) = pending.take() {
            match conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(s)) => {
                    let _ = tx.send(s);
                    continue;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => pending = Some(tx),
            }
        }
        match conn.poll_next_inbound(cx) {
            Poll::Ready(Some(Ok(_))) => continue,
            Poll::Ready(_) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

async fn yamux_throughput(streams: usize, bytes_each: usize) -> f64 {
    let (a, b) = sided_tcp_pair().await;
    let sides = sides();
    let client = yamux::Connection::new(a.compat(), yamux::Config::default(), yamux::Mode::Client);
    let mut server =
        yamux::Connection::new(b.compat(), yamux::Config::default(), yamux::Mode::Server);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    sides.client.spawn(yamux_client_driver(client, rx));
    let total = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    {
        let total = total.clone();
        let done = done.clone();
        sides.server.spawn(async move {
            let finished = Arc::new(AtomicUsize::new(0));
            poll_fn(|cx| loop {
                match server.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(s))) => {
                        let total = total.clone();
                        let done = done.clone();
                        let finished = finished.clone();
                        tokio::spawn(async move {
                            let n = sink_futures(s).await;
                            total.fetch_add(n, Ordering::SeqCst);
                            if finished.fetch_add(1, Ordering::SeqCst) + 1 == streams {
                                done.notify_one();
                            }
                        });
                    }
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            })
            .await
        });
    }
    let start = StdInstant::now();
    sides
        .client
        .spawn(async move {
            let mut senders = Vec::new();
            for _ in 0..streams {
                let (otx, orx) = tokio::sync::oneshot::channel();
                tx.send(otx).expect("yamux driver alive");
                let s = orx.await.expect("yamux open");
                senders.push(tokio::spawn(send_futures(s, bytes_each)));
            }
            for s in senders {
                s.await.expect("sender");
            }
        })
        .await
        .expect("senders");
    done.notified().await;
    let elapsed = start.elapsed();
    assert_eq!(total.load(Ordering::SeqCst), streams * bytes_each);
    gbps(streams * bytes_each, elapsed)
}

// ---- stream opening at scale -------------------------------------------------------------------

struct Accepted {
    held: Mutex<Vec<Stream>>,
    count: AtomicUsize,
    notify: tokio::sync::Notify,
}

async fn wait_accepted(acc: &Accepted, target: usize) {
    loop {
        let notified = acc.notify.notified();
        if acc.count.load(Ordering::SeqCst) >= target {
            return;
        }
        notified.await;
    }
}

/// Opens `batch` streams on top of those already open and returns opens per second, counted
/// until the server has accepted every one. The batch stays open; returns its handles.
async fn open_batch(client: &Connection, acc: &Accepted, batch: usize) -> (f64, Vec<Stream>) {
    let target = acc.count.load(Ordering::SeqCst) + batch;
    let start = StdInstant::now();
    let mut held = Vec::with_capacity(batch);
    for _ in 0..batch {
        held.push(client.open().await.expect("open"));
    }
    wait_accepted(acc, target).await;
    (batch as f64 / start.elapsed().as_secs_f64(), held)
}

/// Closes the last `n` streams on both sides and waits until their state is gone.
async fn close_batch(client: &Connection, server: &Connection, acc: &Accepted, mine: Vec<Stream>) {
    let n = mine.len();
    drop(mine);
    {
        let mut held = acc.held.lock().unwrap();
        let keep = held.len() - n;
        held.truncate(keep);
    }
    acc.count.fetch_sub(n, Ordering::SeqCst);
    let expect = acc.count.load(Ordering::SeqCst);
    for _ in 0..10_000 {
        if client.stats().streams == expect && server.stats().streams == expect {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("closed streams did not go away");
}

/// Open rates measured in alternating rounds at a small and a large population.
#[derive(Default)]
struct PairedRates {
    small: Vec<f64>,
    large: Vec<f64>,
}

impl PairedRates {
    fn push(&mut self, small: f64, large: f64) {
        self.small.push(small);
        self.large.push(large);
    }

    /// The median rates at each size and the median of the per-round ratios large ÷ small.
    fn medians(&self) -> (f64, f64, f64) {
        let ratios: Vec<f64> = self
            .large
            .iter()
            .zip(&self.small)
            .map(|(l, s)| l / s)
            .collect();
        (median(&self.small), median(&self.large), median(&ratios))
    }
}

/// One connection for the open-rate test: the server side accepts and holds every stream.
struct OpenRig {
    client: Connection,
    server: Connection,
    acc: Arc<Accepted>,
    /// Keeps the base population open on the client side for as long as the rig lives.
    _held: Vec<Stream>,
}

/// A connection with `base` streams open (opened in steps of 100 k).
async fn open_rig(base: usize, max_streams: u32) -> OpenRig {
    let (client, server) = mux_pair(max_streams).await;
    let acc = Arc::new(Accepted {
        held: Mutex::new(Vec::new()),
        count: AtomicUsize::new(0),
        notify: tokio::sync::Notify::new(),
    });
    {
        let acc = acc.clone();
        let server = server.clone();
        sides().server.spawn(async move {
            while let Some(s) = server.accept().await {
                acc.held.lock().unwrap().push(s);
                acc.count.fetch_add(1, Ordering::SeqCst);
                acc.notify.notify_waiters();
            }
        });
    }
    let mut held = Vec::new();
    let mut open_now = 0;
    while open_now < base {
        let step = (base - open_now).min(100_000);
        let (_, b) = open_batch(&client, &acc, step).await;
        held.extend(b);
        open_now += step;
    }
    OpenRig {
        client,
        server,
        acc,
        _held: held,
    }
}

impl OpenRig {
    /// Opens a measured batch on top of the base population, then closes it again.
    async fn round(&self, batch: usize) -> f64 {
        let (rate, streams) = open_batch(&self.client, &self.acc, batch).await;
        close_batch(&self.client, &self.server, &self.acc, streams).await;
        rate
    }
}

/// The open-rate figures, with the opening side running on the client runtime and the
/// accepting side on the server runtime.
async fn open_scaling(scale: Scale) -> (f64, f64, f64, usize) {
    sides()
        .client
        .spawn(open_scaling_on_client(scale))
        .await
        .expect("open scaling")
}

/// Two connections, one with 1 k streams open and one with `big_open`; measured batches
/// alternate between them, so that both sizes see the same machine (rates on these shared
/// machines drift by half from one second to the next). Returns the median rates, the median of
/// the per-round ratios, and the streams open at the large size.
async fn open_scaling_on_client(scale: Scale) -> (f64, f64, f64, usize) {
    let small_rig = open_rig(1_000, (1_000 + 2 * scale.open_batch) as u32).await;
    let large_rig = open_rig(
        scale.big_open,
        (scale.big_open + 2 * scale.open_batch) as u32,
    )
    .await;
    let mut rates = PairedRates::default();
    for _ in 0..scale.open_rounds {
        let s = small_rig.round(scale.open_batch).await;
        rates.push(s, large_rig.round(scale.open_batch).await);
    }
    let concurrent = large_rig.server.stats().streams;
    // Data still flows with all of them open.
    let mut s = large_rig.client.open().await.expect("open at scale");
    s.write_all(b"ping").await.expect("write");
    s.close().await.expect("close");
    wait_accepted(&large_rig.acc, scale.big_open + 1).await;
    let mut last = large_rig.acc.held.lock().unwrap().pop().expect("accepted");
    let mut got = Vec::new();
    last.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"ping");
    for rig in [small_rig, large_rig] {
        rig.client
            .close(svcnet_core::mux::ErrorCode::NoError, "done");
    }
    let (small, large, ratio) = rates.medians();
    (small, large, ratio, concurrent)
}

// ---- idle memory (sans-IO, exact) --------------------------------------------------------------

/// Moves every pending byte between two sessions joined back to back, draining events, until
/// neither has anything to send.
fn shuttle(client: &mut Session, server: &mut Session, out: &mut Vec<bytes::Bytes>) {
    let now = Instant::ZERO;
    loop {
        out.clear();
        let mut moved = client.poll_transmit(now, out, usize::MAX) > 0;
        for b in out.drain(..) {
            server.handle_input(b, now);
        }
        moved |= server.poll_transmit(now, out, usize::MAX) > 0;
        for b in out.drain(..) {
            client.handle_input(b, now);
        }
        while client.poll_event().is_some() {}
        while server.poll_event().is_some() {}
        if !moved {
            break;
        }
    }
}

/// A client and a server session joined back to back, with `open` idle streams between them.
fn session_pair(open: usize, max_streams: usize) -> (Session, Session, Vec<bytes::Bytes>) {
    let now = Instant::ZERO;
    let cfg = mux_config(max_streams as u32);
    let mut client = Session::new(Role::Client, cfg.clone(), now);
    let mut server = Session::new(Role::Server, cfg, now);
    let mut out = Vec::new();
    shuttle(&mut client, &mut server, &mut out);
    let mut opened = 0;
    while opened < open {
        for _ in 0..1000.min(open - opened) {
            client.open(now).expect("open");
            opened += 1;
        }
        shuttle(&mut client, &mut server, &mut out);
    }
    (client, server, out)
}

/// Heap bytes per idle open stream per endpoint: both ends of a session, opened in batches as
/// an application would, with all frames delivered.
fn idle_stream_bytes(streams: usize) -> f64 {
    let before = CountingAlloc::live_bytes();
    let (client, server, out) = session_pair(streams, streams + 1);
    let after = CountingAlloc::live_bytes();
    assert_eq!(server.stream_count(), streams);
    drop((client, server, out));
    (after - before) as f64 / streams as f64 / 2.0
}

/// Sessions joined back to back with a base population of open streams, for open rates.
struct SessionRig {
    client: Session,
    server: Session,
    out: Vec<bytes::Bytes>,
    open: usize,
}

impl SessionRig {
    fn new(open: usize, batch: usize) -> SessionRig {
        let (client, server, out) = session_pair(open, open + batch + 1);
        SessionRig {
            client,
            server,
            out,
            open,
        }
    }

    /// Opens `batch` streams (open, SYN delivered, accepted by the peer) and returns opens per
    /// second; then resets them, so the next round sees the same population (no table growth).
    fn round(&mut self, batch: usize) -> f64 {
        let now = Instant::ZERO;
        let start = StdInstant::now();
        let mut ids = Vec::with_capacity(batch);
        while ids.len() < batch {
            for _ in 0..1000.min(batch - ids.len()) {
                ids.push(self.client.open(now).expect("open"));
            }
            shuttle(&mut self.client, &mut self.server, &mut self.out);
        }
        let rate = batch as f64 / start.elapsed().as_secs_f64();
        assert_eq!(self.server.stream_count(), self.open + batch);
        for id in ids {
            self.client
                .reset(id, svcnet_core::mux::reset_code::CANCEL)
                .expect("reset");
        }
        shuttle(&mut self.client, &mut self.server, &mut self.out);
        assert_eq!(self.server.stream_count(), self.open);
        rate
    }
}

/// Stream opens per second in the sans-IO session alone, with 1 k and with `big_open` streams
/// already open: isolates the session's data structures. Batches alternate between the two
/// sizes (as in the adapter test); returns the median rates and the median per-round ratio.
fn session_open_rates(big_open: usize, batch: usize, rounds: usize) -> (f64, f64, f64) {
    let mut small_rig = SessionRig::new(1_000, batch);
    let mut large_rig = SessionRig::new(big_open, batch);
    let mut rates = PairedRates::default();
    for _ in 0..rounds {
        let s = small_rig.round(batch);
        rates.push(s, large_rig.round(batch));
    }
    rates.medians()
}

fn report_session_open_rates(big_open: usize, batch: usize, rounds: usize) {
    let (small, large, ratio) = session_open_rates(big_open, batch, rounds);
    report("mux_session_open_rate_at_1k", format!("{small:.0}"));
    report("mux_session_open_rate_at_1m", format!("{large:.0}"));
    report(
        "mux_session_open_rate_ratio_1m_vs_1k",
        format!("{ratio:.3}"),
    );
}

fn main() {
    const FLAGS: [&str; 7] = [
        "--quick",
        "--profile-one-stream",
        "--profile-raw-one-stream",
        "--profile-many-streams",
        "--profile-open",
        "--help",
        "-h",
    ];
    if let Some(bad) = std::env::args()
        .skip(1)
        .find(|a| !FLAGS.contains(&a.as_str()))
    {
        eprintln!("bench-mux: unknown argument `{bad}`; run `bench-mux --help` for the options");
        std::process::exit(2);
    }
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "usage: bench-mux [--quick | --profile-one-stream | --profile-raw-one-stream |\n\
             \x20                 --profile-many-streams | --profile-open]\n\n\
             Compares svcnet's multiplexer with raw TCP and rust-yamux over loopback TCP and prints\n\
             key=value figures. --quick runs a small smoke-sized version; the --profile-* modes run\n\
             one long scenario alone, for perf: a 4 GiB single-stream transfer through the mux or\n\
             over raw TCP, 100 streams of 40 MiB, or the sans-IO open rate at 1 k and 1 M open\n\
             streams."
        );
        return;
    }
    let scale = if quick { Scale::quick() } else { Scale::full() };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    report("mode", if quick { "quick" } else { "full" });
    // For profiling: one long single-stream transfer and nothing else.
    report("mux_max_frame_size", mux_config(1).max_frame_size);
    if std::env::args().any(|a| a == "--profile-one-stream") {
        let g = rt.block_on(mux_throughput(1, 4 << 30));
        report("mux_one_stream_gbps", format!("{g:.2}"));
        return;
    }
    if std::env::args().any(|a| a == "--profile-raw-one-stream") {
        let g = rt.block_on(raw_tcp(1, 4 << 30));
        report("raw_tcp_one_stream_gbps", format!("{g:.2}"));
        return;
    }
    if std::env::args().any(|a| a == "--profile-open") {
        report_session_open_rates(1_000_000, 50_000, 5);
        return;
    }
    if std::env::args().any(|a| a == "--profile-many-streams") {
        let g = rt.block_on(mux_throughput(100, 40 << 20));
        report("mux_100_streams_gbps", format!("{g:.2}"));
        return;
    }

    let idle = idle_stream_bytes(scale.idle_streams);
    report("mux_idle_stream_bytes", format!("{idle:.1}"));
    report("mux_idle_streams_measured", scale.idle_streams);
    report_session_open_rates(scale.big_open, scale.open_batch, scale.open_rounds);

    rt.block_on(async {
        let (mut r_mux, mut r_yamux, mut r_many) = (Vec::new(), Vec::new(), Vec::new());
        let (mut g_raw, mut g_mux, mut g_yamux, mut g_many, mut g_raw_many) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..scale.rounds {
            let raw = raw_tcp(1, scale.one_stream_bytes).await;
            let mux = mux_throughput(1, scale.one_stream_bytes).await;
            let yam = yamux_throughput(1, scale.one_stream_bytes).await;
            let many = mux_throughput(scale.many_streams, scale.many_stream_bytes).await;
            let raw_many = raw_tcp(scale.many_streams, scale.many_stream_bytes).await;
            r_mux.push(mux / raw);
            r_yamux.push(yam / raw);
            r_many.push(many / raw);
            g_raw.push(raw);
            g_mux.push(mux);
            g_yamux.push(yam);
            g_many.push(many);
            g_raw_many.push(raw_many);
        }
        report("raw_tcp_one_stream_gbps", format!("{:.2}", median(&g_raw)));
        report("mux_one_stream_gbps", format!("{:.2}", median(&g_mux)));
        report("yamux_one_stream_gbps", format!("{:.2}", median(&g_yamux)));
        report("mux_100_streams_gbps", format!("{:.2}", median(&g_many)));
        report(
            "raw_tcp_100_connections_gbps",
            format!("{:.2}", median(&g_raw_many)),
        );
        report("mux_one_stream_ratio", format!("{:.3}", median(&r_mux)));
        report("yamux_one_stream_ratio", format!("{:.3}", median(&r_yamux)));
        report("mux_100_streams_ratio", format!("{:.3}", median(&r_many)));

        let (rate_1k, rate_1m, ratio, concurrent) = open_scaling(scale).await;
        report("mux_open_rate_at_1k", format!("{rate_1k:.0}"));
        report("mux_open_rate_at_1m", format!("{rate_1m:.0}"));
        report("mux_open_rate_ratio_1m_vs_1k", format!("{ratio:.3}"));
        report("mux_max_concurrent_streams", concurrent);
    });
}
