//! Edge cases of the async adapter found in review: lifecycle (dropped driver, close from a
//! stream operation, dead links with a blocked pipe), several acceptors, buffering pipes,
//! streams the peer opens and resets before anyone accepts them, and graceful closes that race
//! with data. Each test failed before its fix; `within` bounds every wait so that a regression
//! fails instead of hanging.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::FutureExt;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::task::SpawnExt;
use svcnet_core::mux::adapter::Connection;
use svcnet_core::mux::testing::PipeEnd;
use svcnet_core::mux::{Config, Role};

mod common;
use common::{clock, pool, spawn_pair, within};

/// The in-memory pipe with a 64 KiB buffer each way.
fn duplex() -> (PipeEnd, PipeEnd) {
    svcnet_core::mux::testing::duplex(64 * 1024)
}

/// A buffering writer (like BufWriter / a TLS stream): writes go to a buffer, flush pushes
/// the buffer into the inner pipe and may be Pending when the inner pipe is full.
struct BufPipe {
    inner: PipeEnd,
    buf: Vec<u8>,
}
impl futures::io::AsyncRead for BufPipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}
impl futures::io::AsyncWrite for BufPipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let room = (1 << 20) - self.buf.len();
        if room == 0 {
            match self.as_mut().poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other.map(|r| r.map(|_| 0)),
            }
        }
        let room = (1 << 20) - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while !this.buf.is_empty() {
            match Pin::new(&mut this.inner).poll_write(cx, &this.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(n)) => {
                    this.buf.drain(..n);
                }
            }
        }
        Poll::Ready(Ok(()))
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_close(cx),
            o => o,
        }
    }
}

#[test]
fn a_dropped_driver_fails_streams_instead_of_hanging() {
    let (a, _b) = duplex();
    let (conn, driver) = Connection::new(a, Role::Client, Config::default(), clock());
    futures::executor::block_on(async {
        let mut s = conn.open().await.unwrap();
        drop(driver);
        let mut buf = [0u8; 4];
        let r = within(1.0, s.read(&mut buf)).await;
        let err = r
            .expect("read hangs after the driver was dropped")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
        let r = within(1.0, conn.open()).await.expect("open hangs");
        assert!(r.is_err(), "open succeeds without a driver");
        assert!(conn.accept().await.is_none());
    });
}

#[test]
fn every_waiting_acceptor_is_woken() {
    let p = pool();
    let (a, b) = duplex();
    let (client, server, _cd, _sd) = spawn_pair(&p, a, Config::default(), b, Config::default());
    let s1 = server.clone();
    let s2 = server.clone();
    let h1 = p
        .spawn_with_handle(async move { s1.accept().await.map(|s| s.id()) })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let h2 = p
        .spawn_with_handle(async move { s2.accept().await.map(|s| s.id()) })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    futures::executor::block_on(async {
        let mut x = client.open().await.unwrap();
        x.write_all(b"1").await.unwrap();
        let mut y = client.open().await.unwrap();
        y.write_all(b"2").await.unwrap();
        let r = within(2.0, futures::future::join(h1, h2)).await;
        assert!(
            r.is_some(),
            "two streams arrived but one of two accept() tasks never woke"
        );
        drop((x, y));
    });
}

#[test]
fn a_buffering_pipe_is_flushed_until_done() {
    let p = pool();
    let (a, b) = duplex();
    let pipe = BufPipe {
        inner: a,
        buf: Vec::new(),
    };
    let (client, server, _cd, _sd) = spawn_pair(&p, pipe, Config::default(), b, Config::default());
    futures::executor::block_on(async {
        let mut s = client.open().await.unwrap();
        let data = vec![7u8; 200_000];
        s.write_all(&data).await.unwrap();
        s.close().await.unwrap();
        let r = within(3.0, async {
            let mut peer = server.accept().await.unwrap();
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got.len()
        })
        .await;
        assert_eq!(
            r,
            Some(200_000),
            "bytes stuck in the pipe's write buffer: flush never retried"
        );
    });
}

fn slow_keepalive() -> Config {
    Config {
        keepalive_interval: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(60),
        ..Config::default()
    }
}

#[test]
fn a_close_caused_by_a_stream_operation_ends_the_drivers() {
    let p = pool();
    let (a, b) = duplex();
    let (client, server, cd, sd) = spawn_pair(&p, a, slow_keepalive(), b, slow_keepalive());
    futures::executor::block_on(async {
        let mut s = client.open().await.unwrap();
        s.write_all(b"x").await.unwrap();
        s.close().await.unwrap();
        let mut peer = server.accept().await.unwrap();
        client.go_away();
        let srv2 = server.clone();
        let acc = p
            .spawn_with_handle(async move { srv2.accept().await.is_none() })
            .unwrap();
        peer.write_all(b"y").await.unwrap();
        peer.close().await.unwrap();
        futures_timer::Delay::new(Duration::from_millis(200)).await;
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"x");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"y");
        let r = within(3.0, async { (cd.await, sd.await, acc.await) }).await;
        assert!(
            r.is_some(),
            "both sessions are closed but neither driver (nor the accept task) was woken"
        );
    });
}

#[test]
fn a_graceful_peer_close_keeps_a_received_response() {
    let p = pool();
    let (a, b) = duplex();
    let (client, server, _cd, _sd) = spawn_pair(&p, a, Config::default(), b, Config::default());
    p.spawn(async move {
        let mut s = server.accept().await.unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap();
        s.write_all(b"response").await.unwrap();
        s.close().await.unwrap();
        drop(s);
        drop(server); // "Connection: close"
    })
    .unwrap();
    futures::executor::block_on(async {
        let mut s = client.open().await.unwrap();
        s.write_all(b"request").await.unwrap();
        s.close().await.unwrap();
        futures_timer::Delay::new(Duration::from_millis(300)).await;
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got).await;
        assert!(r.is_ok(), "response fully received before the peer's graceful close was discarded: {r:?}, closed={:?}", client.closed());
        assert_eq!(got, b"response");
    });
}

#[test]
fn a_dead_link_ends_the_driver_even_with_a_blocked_pipe() {
    let p = pool();
    let (a, _b) = duplex(); // nobody on the other side reads or writes
    let cfg = Config {
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (client, cd) = Connection::new(a, Role::Client, cfg, clock());
    let cd = p.spawn_with_handle(cd).unwrap();
    futures::executor::block_on(async {
        let mut s = client.open().await.unwrap();
        let _ = within(0.2, s.write_all(&vec![1u8; 250_000])).await;
        futures_timer::Delay::new(Duration::from_millis(600)).await;
        let r = within(2.0, cd).await;
        assert!(
            r.is_some(),
            "session timed out (dead link) but the driver never completes: stuck writing its stage"
        );
    });
}

#[test]
fn streams_reset_before_accept_do_not_accumulate() {
    let p = pool();
    let (a, b) = duplex();
    let (client, server, _cd, _sd) = spawn_pair(&p, a, Config::default(), b, Config::default());
    futures::executor::block_on(async {
        for _ in 0..200 {
            let mut batch = Vec::new();
            for _ in 0..50 {
                let mut s = client.open().await.unwrap();
                s.write_all(b"x").await.unwrap();
                batch.push(s);
            }
            while client.stats().queued_send_bytes > 0 {
                futures_timer::Delay::new(Duration::from_micros(200)).await;
            }
            for s in batch {
                s.reset(7);
            }
        }
        futures_timer::Delay::new(Duration::from_millis(200)).await;
        let mut queued = 0;
        while let Some(Some(s)) = server.accept().now_or_never() {
            queued += 1;
            drop(s);
        }
        assert!(
            queued <= 1024,
            "{queued} unaccepted reset streams kept in `incoming`/`resets`"
        );
    });
}

#[test]
fn a_stream_opened_before_goaway_is_served() {
    let p = pool();
    let (a, b) = duplex();
    let (client, server, _cd, _sd) = spawn_pair(&p, a, Config::default(), b, Config::default());
    p.spawn(async move {
        while let Some(mut s) = server.accept().await {
            let mut req = Vec::new();
            s.read_to_end(&mut req).await.unwrap();
            s.write_all(b"response").await.unwrap();
            s.close().await.unwrap();
        }
    })
    .unwrap();
    futures::executor::block_on(async {
        let mut s = client.open().await.unwrap();
        s.write_all(b"request").await.unwrap();
        s.close().await.unwrap();
        drop(client); // done opening; keep the stream
        let mut got = Vec::new();
        let r = within(3.0, s.read_to_end(&mut got)).await;
        assert!(
            matches!(r, Some(Ok(_))),
            "request opened before the GOAWAY was lost: {r:?}"
        );
        assert_eq!(got, b"response");
    });
}
