//! quinn's socket seam over turmoil UDP: `AsyncUdpSocket` backed by `turmoil::net::UdpSocket`.
//!
//! quinn drives its endpoint through [`quinn::AsyncUdpSocket`]; the daemon uses the OS socket,
//! the simulator this adapter, and everything above it (quinn, rustls, svcnet's protocol) is
//! the same code. Sends never block (turmoil queues the datagram or drops it per the link's
//! faults), so the write poller is always ready; receives try the socket and otherwise wait on
//! a stored `readable()` future.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A turmoil UDP socket that quinn can use.
pub struct SimUdp {
    socket: Arc<turmoil::net::UdpSocket>,
    local: SocketAddr,
    readable: Mutex<Option<Readable>>,
}

impl SimUdp {
    pub fn new(socket: turmoil::net::UdpSocket) -> io::Result<SimUdp> {
        let local = socket.local_addr()?;
        Ok(SimUdp {
            socket: Arc::new(socket),
            local,
            readable: Mutex::new(None),
        })
    }
}

impl fmt::Debug for SimUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimUdp({})", self.local)
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        match self
            .socket
            .try_send_to(transmit.contents, transmit.destination)
        {
            Ok(_) => Ok(()),
            // A full queue is a lost datagram, as on a real path; QUIC recovers.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.socket.try_recv_from(&mut bufs[0]) {
                Ok((n, from)) => {
                    meta[0] = RecvMeta {
                        addr: from,
                        len: n,
                        stride: n,
                        dst_ip: Some(self.local.ip()),
                        ..RecvMeta::default()
                    };
                    return Poll::Ready(Ok(1));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            let mut slot = self.readable.lock().unwrap_or_else(|e| e.into_inner());
            let fut = slot.get_or_insert_with(|| {
                let s = self.socket.clone();
                Box::pin(async move { s.readable().await })
            });
            match fut.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => {
                    *slot = None;
                    r?;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
