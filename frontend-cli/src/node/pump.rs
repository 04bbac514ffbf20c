//! Moving bytes between a local byte stream (a TCP socket, a TUN connection) and a QUIC stream.
//!
//! Both directions run in one task. TCP → QUIC uses `write_chunk` with `Bytes` split from one
//! growing buffer (no copy into quinn); QUIC → TCP gathers every received chunk into one buffer
//! per write (one copy, but one syscall per batch instead of one per packet). A FIN
//! maps to a stream finish and back to `shutdown(SHUT_WR)`; any reset or error resets both sides
//! (`docs/protocol.md` §4.4).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};
use svcnet_core::wire::stream::stream_error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ServiceStream;
use crate::metrics::{Direction, ServiceCounters};

/// How one direction of a pump ended.
enum HalfEnd {
    /// Orderly end of data (FIN).
    Finished,
    /// The source was reset or the sink refused data: reset everything.
    Reset,
}

/// Moves bytes both ways between a TCP connection and a QUIC stream until both directions end.
/// FIN maps to finish and back; a reset on either side resets the other (TCP RST via SO_LINGER 0).
pub async fn pump(
    tcp: TcpStream,
    send: SendStream,
    recv: RecvStream,
    counters: &ServiceCounters,
    direction: Direction,
) {
    let _ = tcp.set_nodelay(true);
    let (tcp_read, tcp_write) = tcp.into_split();
    if let Some((tcp_read, tcp_write)) =
        pump_streams(tcp_read, tcp_write, send, recv, counters, direction).await
    {
        if let Ok(tcp) = tcp_read.reunite(tcp_write) {
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
        }
    }
}

/// The pump over any local byte stream halves. Returns the halves if the connection was reset, so
/// the caller can reset its local side in its own way (a TCP RST, a netstack reset).
pub async fn pump_streams<R, W>(
    mut local_read: R,
    mut local_write: W,
    mut send: SendStream,
    mut recv: RecvStream,
    counters: &ServiceCounters,
    direction: Direction,
) -> Option<(R, W)>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    // "up" carries bytes read from the local side; which counter that is depends on the side.
    let (up_counter, down_counter) = match direction {
        Direction::Served => (&counters.bytes_to_client, &counters.bytes_to_service),
        Direction::Proxied => (&counters.bytes_to_service, &counters.bytes_to_client),
    };
    let reset = {
        let up = async {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                if buf.capacity() < 16 * 1024 {
                    buf.reserve(64 * 1024);
                }
                match local_read.read_buf(&mut buf).await {
                    Ok(0) => {
                        let _ = send.finish();
                        return HalfEnd::Finished;
                    }
                    Ok(n) => {
                        up_counter.fetch_add(n as u64, Ordering::Relaxed);
                        let chunk: Bytes = buf.split().freeze();
                        if send.write_chunk(chunk).await.is_err() {
                            return HalfEnd::Reset;
                        }
                    }
                    Err(_) => return HalfEnd::Reset,
                }
            }
        };
        let down = async {
            // quinn hands data over in packet-sized chunks; writing each to the socket would cost
            // a syscall per ~1.2 KB. `read` gathers every chunk already received into one buffer,
            // so one write carries up to 256 KiB.
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match recv.read(&mut buf).await {
                    Ok(Some(n)) => {
                        down_counter.fetch_add(n as u64, Ordering::Relaxed);
                        if local_write.write_all(&buf[..n]).await.is_err() {
                            return HalfEnd::Reset;
                        }
                    }
                    Ok(None) => {
                        let _ = local_write.shutdown().await;
                        return HalfEnd::Finished;
                    }
                    Err(_) => return HalfEnd::Reset,
                }
            }
        };
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                end = &mut up, if !up_done => match end {
                    HalfEnd::Finished => up_done = true,
                    HalfEnd::Reset => break true,
                },
                end = &mut down, if !down_done => match end {
                    HalfEnd::Finished => down_done = true,
                    HalfEnd::Reset => break true,
                },
            }
            if up_done && down_done {
                break false;
            }
        }
    };
    if reset {
        counters.errors_total.fetch_add(1, Ordering::Relaxed);
        let _ = send.reset(VarInt::from_u32(stream_error::CONNECTION_RESET));
        let _ = recv.stop(VarInt::from_u32(stream_error::CONNECTION_RESET));
        Some((local_read, local_write))
    } else {
        // Hold the connection slot until the peer has read everything (bounded: a peer that
        // never reads is cut off by the idle timeout of its connection anyway).
        let _ = tokio::time::timeout(Duration::from_secs(30), send.stopped()).await;
        None
    }
}

/// Pumps an opened service stream to a local client connection.
pub async fn pump_client(tcp: TcpStream, stream: ServiceStream) {
    let _ = tcp.set_nodelay(true);
    let (tcp_read, tcp_write) = tcp.into_split();
    if let Some((tcp_read, tcp_write)) = pump_client_streams(tcp_read, tcp_write, stream).await {
        if let Ok(tcp) = tcp_read.reunite(tcp_write) {
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Pumps an opened service stream to any local byte stream; returns its halves if the
/// connection was reset (for the caller to reset the local side).
pub async fn pump_client_streams<R, W>(read: R, write: W, stream: ServiceStream) -> Option<(R, W)>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let ServiceStream {
        send,
        recv,
        counters,
        permit,
    } = stream;
    let _active = counters.open();
    let result = pump_streams(read, write, send, recv, &counters, Direction::Proxied).await;
    drop(permit);
    result
}
