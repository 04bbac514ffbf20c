//! The async adapter runs a session over real byte pipes under two different executors: tokio
//! (over loopback TCP) and `futures::executor` (over an in-memory duplex pipe with its own
//! wakers). Nothing here depends on tokio inside the adapter; the tests prove it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::task::SpawnExt;
use svcnet_core::mux::adapter::{Clock, Connection, Stream};
use svcnet_core::mux::{Config, Role};
use svcnet_core::time::Instant;

// ---- clocks ---------------------------------------------------------------------------------

struct TokioClock(std::time::Instant);

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::from_micros(self.0.elapsed().as_micros() as u64)
    }
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let at = self.0 + Duration::from_micros(deadline.as_micros());
        Box::pin(tokio::time::sleep_until(at.into()))
    }
}

mod common;
use common::{pool, spawn_pair};

fn duplex() -> (
    svcnet_core::mux::testing::PipeEnd,
    svcnet_core::mux::testing::PipeEnd,
) {
    svcnet_core::mux::testing::duplex(64 * 1024)
}

// ---- shared scenario --------------------------------------------------------------------------

fn pattern(len: usize, salt: u32) -> Vec<u8> {
    let mut x = salt.wrapping_mul(0x9e37_79b9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Server side: echo every accepted stream back, upper half-closing after the client's FIN.
async fn echo_server(conn: Connection) -> usize {
    let mut served = 0;
    let mut tasks = Vec::new();
    while let Some(stream) = conn.accept().await {
        served += 1;
        tasks.push(echo(stream));
        if served == STREAMS {
            break;
        }
    }
    futures::future::join_all(tasks).await;
    served
}

async fn echo(mut stream: Stream) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = stream.read(&mut buf).await.expect("server read");
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await.expect("server write");
    }
    stream.close().await.expect("server close");
}

const STREAMS: usize = 16;
const BYTES_PER_STREAM: usize = 300_000;

/// Client side: STREAMS concurrent streams, each writes its pattern, half-closes, and reads the
/// echo to EOF while writing (so windows and backpressure are exercised both ways).
async fn client_run(conn: Connection) {
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let conn = conn.clone();
        tasks.push(async move {
            let stream = conn.open().await.expect("open");
            let data = pattern(BYTES_PER_STREAM, i as u32);
            let (mut rd, mut wr) = stream.split();
            let sender = async {
                for chunk in data.chunks(7_777) {
                    wr.write_all(chunk).await.expect("client write");
                }
                wr.close().await.expect("client close");
            };
            let receiver = async {
                let mut got = Vec::new();
                rd.read_to_end(&mut got).await.expect("client read");
                got
            };
            let ((), got) = futures::join!(sender, receiver);
            assert_eq!(got.len(), data.len(), "stream {i} length");
            assert!(got == data, "stream {i} bytes differ");
        });
    }
    futures::future::join_all(tasks).await;
}

#[test]
fn echo_over_loopback_tcp_under_tokio() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio_util::compat::TokioAsyncReadCompatExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = std::time::Instant::now();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (conn, driver) = Connection::new(
                tcp.compat(),
                Role::Server,
                Config::default(),
                Arc::new(TokioClock(base)),
            );
            let d = tokio::spawn(driver);
            let served = echo_server(conn.clone()).await;
            (served, conn, d)
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (conn, driver) = Connection::new(
            tcp.compat(),
            Role::Client,
            Config::default(),
            Arc::new(TokioClock(base)),
        );
        let client_driver = tokio::spawn(driver);
        client_run(conn.clone()).await;
        let (served, server_conn, server_driver) = server.await.unwrap();
        assert_eq!(served, STREAMS);
        // Graceful end: GOAWAY from the client, both drivers finish cleanly.
        conn.go_away();
        let r = tokio::time::timeout(Duration::from_secs(10), client_driver)
            .await
            .expect("client driver ends after GOAWAY");
        r.unwrap().expect("graceful close");
        let r = tokio::time::timeout(Duration::from_secs(10), server_driver)
            .await
            .expect("server driver ends after GOAWAY");
        r.unwrap().expect("graceful close");
        assert_eq!(server_conn.stats().streams_opened_remote, STREAMS as u64);
        assert_eq!(server_conn.stats().streams, 0);
    });
}

#[test]
fn echo_over_in_memory_pipe_under_futures_executor() {
    let pool = pool();
    let (a, b) = duplex();
    let (client, server, cd, sd) = spawn_pair(&pool, a, Config::default(), b, Config::default());
    let srv = pool.spawn_with_handle(echo_server(server.clone())).unwrap();
    futures::executor::block_on(async {
        client_run(client.clone()).await;
        assert_eq!(srv.await, STREAMS);
        // Closing with an error code ends both sides; the peer learns the code.
        client.close(svcnet_core::mux::ErrorCode::Protocol, "test is over");
        let client_result = cd.await;
        assert!(client_result.is_err());
        let server_result = sd.await;
        let err = server_result.expect_err("server sees the error close");
        assert!(err.to_string().contains("PROTOCOL_ERROR"), "{err}");
        assert!(server.closed().is_some());
        assert!(server.accept().await.is_none(), "no streams after close");
    });
}

#[test]
fn reset_and_refusal_surface_as_io_errors() {
    let pool = pool();
    let (a, b) = duplex();
    let server_cfg = Config {
        max_incoming_streams: 1,
        ..Config::default()
    };
    let (client, server, _cd, _sd) = spawn_pair(&pool, a, Config::default(), b, server_cfg);
    futures::executor::block_on(async {
        let mut first = client.open().await.unwrap();
        first.write_all(b"hello").await.unwrap();
        let mut accepted = server.accept().await.unwrap();
        let mut buf = [0u8; 5];
        accepted.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        // A second concurrent stream is over the server's limit: refused, session lives.
        let mut second = client.open().await.unwrap();
        second.write_all(b"x").await.unwrap();
        let err = second.read(&mut buf).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        // The server resets the first stream with an application code.
        accepted.reset(0x1234);
        let err = first.read(&mut buf).await.expect_err("reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(err.to_string().contains(&0x1234.to_string()), "{err}");
        // The session still works.
        let mut third = client.open().await.unwrap();
        third.write_all(b"again").await.unwrap();
        third.close().await.unwrap();
        let mut s = server.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"again");
        assert!(client.closed().is_none());
    });
}

#[test]
fn dropping_every_handle_drains_gracefully() {
    let pool = pool();
    let (a, b) = duplex();
    let (client, server, cd, sd) = spawn_pair(&pool, a, Config::default(), b, Config::default());
    futures::executor::block_on(async {
        let mut s = client.open().await.unwrap();
        s.write_all(b"request").await.unwrap();
        let mut peer = server.accept().await.unwrap();
        // The client application is done with the connection but not with its stream.
        drop(client);
        let mut buf = [0u8; 7];
        peer.read_exact(&mut buf).await.unwrap();
        peer.write_all(b"response").await.unwrap();
        peer.close().await.unwrap();
        s.close().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response");
        drop((s, peer, server));
        cd.await.expect("client driver ends cleanly");
        sd.await.expect("server driver ends cleanly");
    });
}

/// A pipe whose vectored write really takes several buffers, but stops at an arbitrary byte
/// (cycling through lengths that end inside headers, inside payloads and on boundaries), and
/// which counts how it was called.
struct ChoppyVectored {
    inner: svcnet_core::mux::testing::PipeEnd,
    limits: std::iter::Cycle<std::vec::IntoIter<usize>>,
    vectored_calls: Arc<std::sync::atomic::AtomicUsize>,
    multi_buffer_calls: Arc<std::sync::atomic::AtomicUsize>,
    plain_calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl ChoppyVectored {
    fn new(inner: svcnet_core::mux::testing::PipeEnd) -> ChoppyVectored {
        ChoppyVectored {
            inner,
            limits: vec![1, 9, 10, 4, 16_393, 7, 70_000, 3, 100_000, 18]
                .into_iter()
                .cycle(),
            vectored_calls: Default::default(),
            multi_buffer_calls: Default::default(),
            plain_calls: Default::default(),
        }
    }
}

impl futures::io::AsyncRead for ChoppyVectored {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl futures::io::AsyncWrite for ChoppyVectored {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.plain_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::sync::atomic::Ordering::Relaxed;
        self.vectored_calls.fetch_add(1, Relaxed);
        if bufs.iter().filter(|b| !b.is_empty()).count() > 1 {
            self.multi_buffer_calls.fetch_add(1, Relaxed);
        }
        let limit = self.limits.next().expect("cycle");
        let mut joined = Vec::new();
        for b in bufs {
            let take = b.len().min(limit - joined.len());
            joined.extend_from_slice(&b[..take]);
            if joined.len() == limit {
                break;
            }
        }
        // The inner pipe may take fewer still: a prefix of the concatenation either way.
        Pin::new(&mut self.inner).poll_write(cx, &joined)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[test]
fn vectored_writes_that_stop_anywhere_deliver_every_byte() {
    use std::sync::atomic::Ordering::Relaxed;
    use svcnet_core::mux::adapter::WriteMode;
    let pool = pool();
    let (a, b) = duplex();
    let (a, b) = (ChoppyVectored::new(a), ChoppyVectored::new(b));
    let counters = [
        (
            a.vectored_calls.clone(),
            a.multi_buffer_calls.clone(),
            a.plain_calls.clone(),
        ),
        (
            b.vectored_calls.clone(),
            b.multi_buffer_calls.clone(),
            b.plain_calls.clone(),
        ),
    ];
    let clock = common::clock();
    let (client, cd) = Connection::with_write_mode(
        a,
        Role::Client,
        Config::default(),
        clock.clone(),
        WriteMode::Vectored,
    );
    let (server, sd) = Connection::with_write_mode(
        b,
        Role::Server,
        Config::default(),
        clock,
        WriteMode::Vectored,
    );
    let cd = pool.spawn_with_handle(cd).unwrap();
    let sd = pool.spawn_with_handle(sd).unwrap();
    let srv = pool.spawn_with_handle(echo_server(server.clone())).unwrap();
    futures::executor::block_on(async {
        common::within(60.0, async {
            client_run(client.clone()).await;
            assert_eq!(srv.await, STREAMS);
        })
        .await
        .expect("echo finishes");
        client.go_away();
        common::within(10.0, cd)
            .await
            .expect("client driver ends")
            .expect("graceful");
        common::within(10.0, sd)
            .await
            .expect("server driver ends")
            .expect("graceful");
    });
    for (vectored, multi, plain) in counters {
        assert_eq!(
            plain.load(Relaxed),
            0,
            "vectored mode never falls back to poll_write"
        );
        assert!(
            vectored.load(Relaxed) > 100,
            "output went through vectored writes"
        );
        assert!(
            multi.load(Relaxed) > 0,
            "headers and payloads shared a call"
        );
    }
}
