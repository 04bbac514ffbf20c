//! Moving bytes between a local byte stream (a TCP socket, a TUN connection) and a QUIC stream.
//!
//! Both directions run in one task, and neither copies in user space: local → QUIC hands owned
//! chunks to `write_chunk` (a TUN connection's queued chunks as they are, a socket's reads split
//! off one growing buffer), and QUIC → local takes quinn's received chunks with `read_chunks` and
//! writes them gathered (`writev`: up to [`GATHER`] chunks per call, instead of one syscall per
//! ~1.4 KB packet payload). A FIN maps to a stream finish and back to `shutdown(SHUT_WR)`; any
//! reset or error resets both sides (`docs/protocol.md` §4.4).

use std::future::Future;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};
use svcnet_core::wire::stream::stream_error;
use svcnet_tun::TunReadHalf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
    if let Some((tcp_read, tcp_write)) = pump_streams(
        BufferedRead::new(tcp_read),
        tcp_write,
        send,
        recv,
        counters,
        direction,
    )
    .await
    {
        if let Ok(tcp) = tcp_read.into_inner().reunite(tcp_write) {
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
    R: LocalRead,
    W: AsyncWrite + Unpin,
{
    // "up" carries bytes read from the local side; which counter that is depends on the side.
    let (up_counter, down_counter) = match direction {
        Direction::Served => (&counters.bytes_to_client, &counters.bytes_to_service),
        Direction::Proxied => (&counters.bytes_to_service, &counters.bytes_to_client),
    };
    let reset = {
        let up = async {
            loop {
                match local_read.read_chunk().await {
                    Ok(None) => {
                        let _ = send.finish();
                        return HalfEnd::Finished;
                    }
                    Ok(Some(chunk)) => {
                        up_counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        if send.write_chunk(chunk).await.is_err() {
                            return HalfEnd::Reset;
                        }
                    }
                    Err(_) => return HalfEnd::Reset,
                }
            }
        };
        let down = async {
            let mut chunks = vec![Bytes::new(); GATHER];
            loop {
                match recv.read_chunks(&mut chunks).await {
                    Ok(Some(n)) => {
                        let bytes: usize = chunks[..n].iter().map(Bytes::len).sum();
                        down_counter.fetch_add(bytes as u64, Ordering::Relaxed);
                        if write_all_chunks(&mut local_write, &mut chunks[..n])
                            .await
                            .is_err()
                        {
                            return HalfEnd::Reset;
                        }
                        // An emptied chunk still holds quinn's whole receive buffer; a quiet
                        // stream must not keep them alive.
                        chunks[..n].fill(Bytes::new());
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
    if let Some((tcp_read, tcp_write)) =
        pump_client_streams(BufferedRead::new(tcp_read), tcp_write, stream).await
    {
        if let Ok(tcp) = tcp_read.into_inner().reunite(tcp_write) {
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Pumps an opened service stream to any local byte stream; returns its halves if the
/// connection was reset (for the caller to reset the local side).
pub async fn pump_client_streams<R, W>(read: R, write: W, stream: ServiceStream) -> Option<(R, W)>
where
    R: LocalRead,
    W: AsyncWrite + Unpin,
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

/// Received chunks written per gathered write.
const GATHER: usize = 64;

/// The reading half of a pump's local side: hands over what it read as owned chunks, so they go
/// to QUIC without a copy.
pub trait LocalRead: Send {
    /// The next chunk read (never empty), or `None` at the end of the stream.
    fn read_chunk(&mut self) -> impl Future<Output = io::Result<Option<Bytes>>> + Send;
}

/// Any tokio reader as a [`LocalRead`]: each read's bytes are split off one growing buffer.
pub struct BufferedRead<R> {
    inner: R,
    buf: BytesMut,
}

impl<R> BufferedRead<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> BufferedRead<R> {
        BufferedRead {
            inner,
            buf: BytesMut::new(),
        }
    }

    /// The reader back (bytes read but not yet taken are gone).
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead + Unpin + Send> LocalRead for BufferedRead<R> {
    async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if self.buf.capacity() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        match self.inner.read_buf(&mut self.buf).await? {
            0 => Ok(None),
            _ => Ok(Some(self.buf.split().freeze())),
        }
    }
}

impl LocalRead for TunReadHalf {
    async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_read_chunk(cx, usize::MAX)).await
    }
}

/// Writes every byte of `chunks`: gathered, [`GATHER`] chunks per call at most, where the
/// writer supports it; otherwise copied together and written at once.
async fn write_all_chunks<W: AsyncWrite + Unpin>(
    writer: &mut W,
    chunks: &mut [Bytes],
) -> io::Result<()> {
    if !writer.is_write_vectored() {
        let mut gathered = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
        for chunk in chunks.iter() {
            gathered.extend_from_slice(chunk);
        }
        return writer.write_all(&gathered).await;
    }
    let mut first = 0;
    loop {
        while chunks.get(first).is_some_and(Bytes::is_empty) {
            first += 1;
        }
        if first == chunks.len() {
            return Ok(());
        }
        let mut slices = [IoSlice::new(&[]); GATHER];
        let mut count = 0;
        for (slot, chunk) in slices.iter_mut().zip(&chunks[first..]) {
            *slot = IoSlice::new(chunk);
            count += 1;
        }
        let mut written = writer.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let chunk = &mut chunks[first];
            let n = chunk.len().min(written);
            chunk.advance(n);
            written -= n;
            if chunk.is_empty() {
                first += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use proptest::prelude::*;

    use super::*;

    /// A writer that takes at most the next of `limits` bytes per call (cycling), across as
    /// many of the given buffers as that covers when it gathers.
    struct ChoppyWriter {
        vectored: bool,
        limits: Vec<usize>,
        calls: usize,
        written: Vec<u8>,
    }

    impl ChoppyWriter {
        fn take(&mut self, bufs: &[&[u8]]) -> usize {
            let mut limit = self.limits[self.calls % self.limits.len()];
            self.calls += 1;
            let before = self.written.len();
            for buf in bufs {
                let n = buf.len().min(limit);
                self.written.extend_from_slice(&buf[..n]);
                limit -= n;
                if limit == 0 {
                    break;
                }
            }
            self.written.len() - before
        }
    }

    impl AsyncWrite for ChoppyWriter {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(self.get_mut().take(&[buf])))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            assert!(
                this.vectored,
                "vectored write on a writer that does not gather"
            );
            let bufs: Vec<&[u8]> = bufs.iter().map(|b| &**b).collect();
            Poll::Ready(Ok(this.take(&bufs)))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    proptest! {
        /// Received chunks (empty ones too) written through writes that stop anywhere arrive
        /// whole and in order.
        #[test]
        fn chunks_are_written_whole_and_in_order(
            sizes in prop::collection::vec(0usize..3000, 0..150),
            limits in prop::collection::vec(1usize..200_000, 1..8),
            vectored in any::<bool>(),
        ) {
            let mut offset = 0u32;
            let mut chunks: Vec<Bytes> = sizes
                .iter()
                .map(|&n| {
                    let chunk: Vec<u8> = (0..n as u32).map(|i| ((offset + i) % 253) as u8).collect();
                    offset += n as u32;
                    Bytes::from(chunk)
                })
                .collect();
            let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            let mut writer = ChoppyWriter { vectored, limits: limits.clone(), calls: 0, written: Vec::new() };
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(write_all_chunks(&mut writer, &mut chunks)).unwrap();
            prop_assert!(writer.written == expected, "{} of {} bytes, or out of order", writer.written.len(), expected.len());
        }
    }

    /// Packet-sized chunks go out [`GATHER`] per call to a gathering writer, all in one call to
    /// one that does not gather.
    #[test]
    fn chunks_are_gathered_into_few_writes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for (vectored, calls) in [(true, 100usize.div_ceil(GATHER)), (false, 1)] {
            let mut chunks = vec![Bytes::from(vec![7u8; 1400]); 100];
            let mut writer = ChoppyWriter {
                vectored,
                limits: vec![usize::MAX],
                calls: 0,
                written: Vec::new(),
            };
            rt.block_on(write_all_chunks(&mut writer, &mut chunks))
                .unwrap();
            assert_eq!(writer.written.len(), 140_000);
            assert_eq!(writer.calls, calls, "vectored: {vectored}");
        }
    }
}
