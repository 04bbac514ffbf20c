//! The per-connection control stream: hello and service announcements, registry messages.
//!
//! The dialing side opens it (`docs/protocol.md` §5). Each side gets one writer task that sends
//! its hello and then whatever is queued for the connection (registry messages), and reads the
//! peer's messages until the stream ends. While a peer has a control stream the registry counts
//! it as connected, so its messages always have a way out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use quinn::{RecvStream, SendStream};
use svcnet_core::identity::NodeId;
use svcnet_core::peering::ConnId;
use svcnet_core::wire::control::ControlMessage;
use svcnet_core::wire::stream::StreamHeader;
use tokio::sync::mpsc;
use tracing::debug;

use super::Node;

impl Node {
    pub(super) fn hello(&self) -> ControlMessage {
        ControlMessage::Hello {
            name: self.inner.config.name.clone(),
            services: self.inner.config.services.keys().cloned().collect(),
        }
    }

    /// Opens the control stream on a connection this node dialed, then runs it.
    pub(super) async fn run_control_opener(
        &self,
        peer: NodeId,
        conn_id: ConnId,
        conn: quinn::Connection,
    ) -> Result<(), String> {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&StreamHeader::Control.encode())
            .await
            .map_err(|e| e.to_string())?;
        self.run_control(peer, conn_id, send, recv).await
    }

    /// Runs an established control stream: the writer task, registration for registry
    /// messages, and the reader until the stream ends.
    pub(super) async fn run_control(
        &self,
        peer: NodeId,
        conn_id: ConnId,
        mut send: SendStream,
        recv: RecvStream,
    ) -> Result<(), String> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending = Arc::new(AtomicUsize::new(0));
        let hello = self.hello().encode();
        let writer_pending = pending.clone();
        let writer = tokio::spawn(async move {
            if send.write_all(&hello).await.is_err() {
                return;
            }
            while let Some(frame) = rx.recv().await {
                let written = send.write_all(&frame).await;
                writer_pending.fetch_sub(1, Ordering::AcqRel);
                if written.is_err() {
                    return;
                }
            }
            let _ = send.finish();
        });
        let first = {
            let mut senders = self.inner.control_senders.lock().expect("control lock");
            let first = !senders.values().any(|c| c.peer == peer);
            senders.insert(conn_id, ControlChannel { peer, tx, pending });
            first
        };
        if first {
            let now = self.now();
            self.with_registry(|r| r.peer_connected(peer, now));
        }
        let result = self.read_control(peer, recv).await;
        let last = {
            let mut senders = self.inner.control_senders.lock().expect("control lock");
            senders.remove(&conn_id);
            !senders.values().any(|c| c.peer == peer)
        };
        if last {
            let now = self.now();
            self.with_registry(|r| r.peer_disconnected(&peer, now));
        }
        writer.abort();
        result
    }

    /// Queues a control frame for `peer` on its newest connection with a control stream.
    /// Returns false if the peer has none (the message is dropped, as the registry allows).
    pub(super) fn send_control(&self, peer: &NodeId, frame: Vec<u8>) -> bool {
        let senders = self.inner.control_senders.lock().expect("control lock");
        let Some(channel) = senders.values().rev().find(|c| c.peer == *peer) else {
            return false;
        };
        channel.pending.fetch_add(1, Ordering::AcqRel);
        if channel.tx.send(frame).is_err() {
            channel.pending.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Whether every control writer has handed what was queued to QUIC (for a clean shutdown).
    pub(super) fn control_queues_empty(&self) -> bool {
        self.inner
            .control_senders
            .lock()
            .expect("control lock")
            .values()
            .all(|c| c.tx.is_closed() || c.pending.load(Ordering::Acquire) == 0)
    }

    async fn read_control(&self, peer: NodeId, mut recv: RecvStream) -> Result<(), String> {
        loop {
            let Some((kind, body)) = super::framing::read_control_frame(&mut recv).await? else {
                return Ok(());
            };
            match ControlMessage::decode_body(kind, &body) {
                Ok(ControlMessage::Hello { name, services }) => {
                    debug!(peer = %peer.short(), %name, services = services.len(), "hello");
                    self.book().handle_announcement(peer, Some(name), services);
                    self.inner.changes.send_modify(|v| *v += 1);
                }
                Ok(ControlMessage::Services(services)) => {
                    self.book().handle_announcement(peer, None, services);
                    self.inner.changes.send_modify(|v| *v += 1);
                }
                Ok(ControlMessage::Registry(message)) => {
                    let now = self.now();
                    if let Err(e) = self.with_registry(|r| r.handle_message(peer, &message, now)) {
                        self.inner
                            .metrics
                            .protocol_errors
                            .fetch_add(1, Ordering::Relaxed);
                        debug!(peer = %peer.short(), error = %e, "registry message rejected");
                    }
                }
                Ok(ControlMessage::Goodbye(reason)) => {
                    debug!(peer = %peer.short(), ?reason, "goodbye");
                }
                Ok(ControlMessage::Unknown { kind }) => {
                    debug!(peer = %peer.short(), kind, "skipped unknown control message");
                }
                Err(e) => {
                    self.inner
                        .metrics
                        .protocol_errors
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(e.to_string());
                }
            }
        }
    }
}

/// One connection's control stream, as seen by senders.
pub(super) struct ControlChannel {
    peer: NodeId,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Frames queued and not yet written.
    pending: Arc<AtomicUsize>,
}
