//! A simulated svcnet node: the daemon's protocol on the daemon's building blocks.
//!
//! The daemon (`frontend-cli/src/node.rs`) binds to OS sockets and tokio's clock; this node runs
//! the same protocol inside turmoil with the same pieces: quinn with svcnet's real TLS configs
//! (raw public keys pinned to node ids, `svcnet::tls`), the [`PeerBook`] deciding when to dial
//! and how to back off, the control stream with the `wire::control` hello, service streams
//! opened with a `wire::stream` header and answered with a dial reply before any payload, and a
//! pump that maps FIN to finish and errors to stream resets. What differs is only the seam:
//! turmoil UDP under quinn ([`super::udp::SimUdp`]), turmoil TCP to the services, the
//! simulated clock, and seeded keys where quinn would draw OS randomness.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use quinn::{RecvStream, SendStream, VarInt};
use svcnet::node::framing::{read_control_frame, read_header, read_reply};
use svcnet::tls;
use svcnet_core::addressing::{NodeName, ServiceName};
use svcnet_core::identity::{NodeId, NodeKey};
use svcnet_core::peering::{PeerBook, PeeringConfig, PeeringEvent};
use svcnet_core::rng::SplitMix64;
use svcnet_core::time::Instant;
use svcnet_core::wire::control::ControlMessage;
use svcnet_core::wire::stream::{
    stream_error, DialReply, DialStatus, Protocol, ServiceRequest, StreamHeader, TargetRef,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::udp::SimUdp;
use super::Shared;

/// The QUIC port every node listens on.
pub const QUIC_PORT: u16 = 7700;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a pump waits for a service's TCP window to open (see `pump`).
const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Current simulated time on the core's clock.
pub fn now() -> Instant {
    let d = turmoil::sim_elapsed().unwrap_or_default();
    Instant::from_micros(d.as_micros() as u64)
}

/// What a node is configured with.
#[derive(Clone)]
pub struct NodeConfig {
    pub index: usize,
    pub key_seed: [u8; 32],
    pub name: NodeName,
    /// Every other node: id, name, address.
    pub peers: Vec<(NodeId, NodeName, SocketAddr)>,
    /// Service name -> TCP target (a service host).
    pub services: BTreeMap<ServiceName, String>,
    /// Seeds quinn's randomness and the book's jitter; differs per incarnation.
    pub seed: u64,
}

struct Inner {
    cfg: NodeConfig,
    key: NodeKey,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    book: Mutex<PeerBook>,
    conns: Mutex<BTreeMap<u64, (NodeId, quinn::Connection)>>,
    next_conn: AtomicU64,
    changes: Notify,
    shared: Arc<Mutex<Shared>>,
}

/// A running node (cheap to clone).
#[derive(Clone)]
pub struct SimNode {
    inner: Arc<Inner>,
}

/// A quinn connection-id generator drawing from a seeded generator instead of the OS.
struct SeededCids {
    rng: SplitMix64,
}

impl quinn::ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        quinn::ConnectionId::new(&b)
    }
    fn cid_len(&self) -> usize {
        8
    }
    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(VarInt::from_u32(5_000).into()));
    // NewReno: deterministic and independent of BBR's randomised probing.
    t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default()));
    t
}

fn log(shared: &Arc<Mutex<Shared>>, event: &str, values: &[u64]) {
    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
    s.trace.record(now().as_micros(), event, values);
    // Coverage: how often the interesting transitions happened.
    let key = match event {
        "dial" => "dials",
        "dial-failed" => "dial_failures",
        "connected" => "connections",
        "conn-closed" => "connections_closed",
        "service-dial-failed" => "service_refusals",
        "pump-end" if values.first() == Some(&1) => "pumps_reset",
        _ => return,
    };
    *s.counters.entry(key).or_default() += 1;
}

impl SimNode {
    /// Binds the endpoint and starts the accept and peering loops.
    pub async fn start(cfg: NodeConfig, shared: Arc<Mutex<Shared>>) -> std::io::Result<SimNode> {
        let key = NodeKey::from_seed(cfg.key_seed);
        let allowed: Arc<std::collections::BTreeSet<NodeId>> =
            Arc::new(cfg.peers.iter().map(|p| p.0).collect());
        let server_tls = tls::server_config(&key, allowed).map_err(std::io::Error::other)?;
        let client_tls = tls::client_config(&key).map_err(std::io::Error::other)?;
        let transport = Arc::new(transport());
        let mut server_config = quinn::ServerConfig::new(
            Arc::new(
                quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
                    .map_err(std::io::Error::other)?,
            ),
            Arc::new(
                ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &cfg.key_seed).extract(b"token"),
            ),
        );
        server_config.transport_config(transport.clone());
        let mut client_config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
                .map_err(std::io::Error::other)?,
        ));
        client_config.transport_config(transport);
        // The reset key is derived from the node key as in the daemon, so a restarted node's
        // stateless resets are valid for its previous run's connections.
        let secret = blake3::derive_key("svcnet quic stateless reset key v1", &key.to_seed_bytes());
        let mut ep_config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &secret,
        )));
        let mut quinn_seed = [0u8; 32];
        quinn_seed[..8].copy_from_slice(&cfg.seed.to_le_bytes());
        ep_config.rng_seed(Some(quinn_seed));
        let cid_seed = cfg.seed ^ 0xc1d;
        let cid_counter = Arc::new(AtomicU64::new(0));
        ep_config.cid_generator(move || {
            let n = cid_counter.fetch_add(1, Ordering::Relaxed);
            Box::new(SeededCids {
                rng: SplitMix64::new(cid_seed.wrapping_add(n.wrapping_mul(0x9e37_79b9))),
            })
        });
        let socket = turmoil::net::UdpSocket::bind(("0.0.0.0", QUIC_PORT)).await?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            ep_config,
            Some(server_config),
            Arc::new(SimUdp::new(socket)?),
            Arc::new(quinn::TokioRuntime),
        )?;
        let mut book = PeerBook::new(
            key.node_id(),
            cfg.name.clone(),
            PeeringConfig {
                seed: cfg.seed,
                ..PeeringConfig::default()
            },
        );
        for (id, name, _) in &cfg.peers {
            book.add_peer(*id, Some(name.clone()), true, now());
        }
        let node = SimNode {
            inner: Arc::new(Inner {
                cfg,
                key,
                endpoint: endpoint.clone(),
                client_config,
                book: Mutex::new(book),
                conns: Mutex::new(BTreeMap::new()),
                next_conn: AtomicU64::new(0),
                changes: Notify::new(),
                shared,
            }),
        };
        tokio::spawn(node.clone().accept_loop());
        tokio::spawn(node.clone().peering_loop());
        Ok(node)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, PeerBook> {
        self.inner.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, event: &str, values: &[u64]) {
        log(&self.inner.shared, event, values);
    }

    fn index(&self) -> u64 {
        self.inner.cfg.index as u64
    }

    fn peer_index(&self, id: &NodeId) -> u64 {
        self.inner
            .cfg
            .peers
            .iter()
            .position(|p| p.0 == *id)
            .map_or(u64::MAX, |i| i as u64)
    }

    /// Whether the book has a connection to every peer.
    pub fn connected_to_all(&self) -> bool {
        let book = self.book();
        self.inner
            .cfg
            .peers
            .iter()
            .all(|p| book.connection_for(&p.0).is_some())
    }

    async fn peering_loop(self) {
        loop {
            let (events, next) = {
                let now = now();
                let mut book = self.book();
                book.handle_timeout(now);
                let events: Vec<PeeringEvent> = std::iter::from_fn(|| book.poll_event()).collect();
                (events, book.poll_timeout())
            };
            for PeeringEvent::Dial { peer, attempt } in events {
                self.log(
                    "dial",
                    &[self.index(), self.peer_index(&peer), u64::from(attempt)],
                );
                tokio::spawn(self.clone().dial(peer));
            }
            let sleep = next.map_or(Duration::from_secs(3600), |t| {
                t.saturating_duration_since(now())
            });
            let notified = self.inner.changes.notified();
            tokio::pin!(notified);
            let sleep = tokio::time::sleep(sleep);
            tokio::pin!(sleep);
            futures_util::future::select(notified, sleep).await;
        }
    }

    async fn dial(self, peer: NodeId) {
        let Some(addr) = self
            .inner
            .cfg
            .peers
            .iter()
            .find(|p| p.0 == peer)
            .map(|p| p.2)
        else {
            return;
        };
        let result = match self.inner.endpoint.connect_with(
            self.inner.client_config.clone(),
            addr,
            &tls::server_name_for(&peer),
        ) {
            Ok(connecting) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("handshake timed out".to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(connection) => self.register(peer, connection, true).await,
            Err(e) => {
                self.log("dial-failed", &[self.index(), self.peer_index(&peer)]);
                self.book().handle_dial_failed(peer, &e, now());
                self.inner.changes.notify_one();
            }
        }
    }

    async fn accept_loop(self) {
        while let Some(incoming) = self.inner.endpoint.accept().await {
            let node = self.clone();
            tokio::spawn(async move {
                let Ok(Ok(connection)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await
                else {
                    node.log("handshake-refused", &[node.index()]);
                    return;
                };
                let Some(peer) = tls::peer_node_id(&connection) else {
                    connection.close(VarInt::from_u32(1), b"no node id");
                    return;
                };
                if !node.book().is_authorized(&peer) {
                    connection.close(VarInt::from_u32(1), b"not authorized");
                    return;
                }
                node.register(peer, connection, false).await;
            });
        }
    }

    async fn register(&self, peer: NodeId, connection: quinn::Connection, dialed: bool) {
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        self.inner
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (peer, connection.clone()));
        self.book().handle_connected(peer, id, now());
        self.inner.changes.notify_one();
        self.log(
            "connected",
            &[self.index(), self.peer_index(&peer), u64::from(dialed)],
        );
        if dialed {
            let node = self.clone();
            let conn = connection.clone();
            tokio::spawn(async move {
                let _ = node.run_control_opener(peer, conn).await;
            });
        }
        let node = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((send, recv)) = connection.accept_bi().await else {
                    break;
                };
                let node = node.clone();
                tokio::spawn(async move { node.serve_stream(peer, send, recv).await });
            }
            let _ = connection.closed().await;
            node.inner
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            node.book().handle_closed(peer, id, now());
            node.inner.changes.notify_one();
            node.log("conn-closed", &[node.index(), node.peer_index(&peer)]);
        });
    }

    fn hello(&self) -> ControlMessage {
        ControlMessage::Hello {
            name: self.inner.cfg.name.clone(),
            services: self.inner.cfg.services.keys().cloned().collect(),
        }
    }

    async fn run_control_opener(
        &self,
        peer: NodeId,
        conn: quinn::Connection,
    ) -> Result<(), String> {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&StreamHeader::Control.encode())
            .await
            .map_err(|e| e.to_string())?;
        send.write_all(&self.hello().encode())
            .await
            .map_err(|e| e.to_string())?;
        self.read_control(peer, recv).await
    }

    async fn read_control(&self, peer: NodeId, mut recv: RecvStream) -> Result<(), String> {
        loop {
            let Some((kind, body)) = read_control_frame(&mut recv).await? else {
                return Ok(());
            };
            match ControlMessage::decode_body(kind, &body).map_err(|e| e.to_string())? {
                ControlMessage::Hello { name, services } => {
                    self.log(
                        "hello",
                        &[self.index(), self.peer_index(&peer), services.len() as u64],
                    );
                    self.book().handle_announcement(peer, Some(name), services);
                }
                ControlMessage::Services(services) => {
                    self.book().handle_announcement(peer, None, services);
                }
                // The simulated node runs no registry (yet): its frames are ignored.
                ControlMessage::Goodbye(_)
                | ControlMessage::Registry(_)
                | ControlMessage::Unknown { .. } => {}
            }
        }
    }

    async fn serve_stream(&self, peer: NodeId, mut send: SendStream, mut recv: RecvStream) {
        let header = match tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut recv)).await {
            Ok(Ok(h)) => h,
            Ok(Err(_)) => {
                let _ = send.reset(VarInt::from_u32(stream_error::PROTOCOL));
                let _ = recv.stop(VarInt::from_u32(stream_error::PROTOCOL));
                return;
            }
            Err(_) => {
                let _ = send.reset(VarInt::from_u32(stream_error::HEADER_TIMEOUT));
                let _ = recv.stop(VarInt::from_u32(stream_error::HEADER_TIMEOUT));
                return;
            }
        };
        match header {
            StreamHeader::Control => {
                if send.write_all(&self.hello().encode()).await.is_ok() {
                    let _ = self.read_control(peer, recv).await;
                }
            }
            StreamHeader::Service(request) => self.serve_service(request, send, recv).await,
        }
    }

    async fn serve_service(&self, request: ServiceRequest, mut send: SendStream, recv: RecvStream) {
        let target = match &request.target {
            TargetRef::Service(name) => self.inner.cfg.services.get(name).cloned(),
            TargetRef::Role { .. } => None,
        };
        let Some(target) = target else {
            let _ = send
                .write_all(&DialReply::new(DialStatus::NoSuchService, "no such service").encode())
                .await;
            let _ = send.finish();
            return;
        };
        let tcp = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            turmoil::net::TcpStream::connect(target.as_str()),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                let status = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    DialStatus::Refused
                } else {
                    DialStatus::Unreachable
                };
                self.log("service-dial-failed", &[self.index()]);
                let _ = send
                    .write_all(&DialReply::new(status, &e.to_string()).encode())
                    .await;
                let _ = send.finish();
                return;
            }
            Err(_) => {
                self.log("service-dial-failed", &[self.index()]);
                let _ = send
                    .write_all(&DialReply::new(DialStatus::TimedOut, "connect timed out").encode())
                    .await;
                let _ = send.finish();
                return;
            }
        };
        if send
            .write_all(&DialReply::new(DialStatus::Connected, "").encode())
            .await
            .is_err()
        {
            return;
        }
        let corrupt = {
            let mut s = self.inner.shared.lock().unwrap_or_else(|e| e.into_inner());
            s.pumps[self.inner.cfg.index] += 1;
            // Self-test: the first pump to carry enough bytes flips one of them.
            std::mem::take(&mut s.corrupt_pending)
        };
        pump(tcp, send, recv, corrupt, self.inner.shared.clone()).await;
        self.inner
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pumps[self.inner.cfg.index] -= 1;
    }

    /// Opens a service stream to `node` (waiting up to the connect timeout for a connection)
    /// and returns it once the serving node answered `Connected`.
    pub async fn open(
        &self,
        node: NodeId,
        service: ServiceName,
    ) -> Result<(SendStream, RecvStream), String> {
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let conn = loop {
            let id = self.book().connection_for(&node);
            if let Some(id) = id {
                if let Some((_, c)) = self
                    .inner
                    .conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id)
                {
                    break c.clone();
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err("no connection to the node".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let header = StreamHeader::Service(ServiceRequest {
            protocol: Protocol::Tcp,
            target: TargetRef::Service(service),
            port: 80,
            client: None,
        });
        send.write_all(&header.encode())
            .await
            .map_err(|e| e.to_string())?;
        let reply = read_reply(&mut recv).await?;
        if reply.status != DialStatus::Connected {
            return Err(format!("refused: {}", reply.status));
        }
        Ok((send, recv))
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.inner.key.node_id()
    }
}

/// Moves bytes both ways between a TCP connection and a QUIC stream: FIN maps to finish and
/// back, an error on either side resets the other (as the daemon's pump does).
async fn pump(
    tcp: turmoil::net::TcpStream,
    mut send: SendStream,
    mut recv: RecvStream,
    mut corrupt: bool,
    shared: Arc<Mutex<Shared>>,
) {
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let reset = {
        let up = async {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                buf.clear();
                buf.reserve(64 * 1024);
                match tcp_read.read_buf(&mut buf).await {
                    Ok(0) => {
                        let _ = send.finish();
                        log(&shared, "pump-up-eof", &[]);
                        return Ok::<(), ()>(());
                    }
                    Ok(_) => {
                        if send.write_all(&buf).await.is_err() {
                            return Err(());
                        }
                    }
                    Err(_) => return Err(()),
                }
            }
        };
        let down = async {
            loop {
                match recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(chunk)) => {
                        let mut bytes = chunk.bytes;
                        if corrupt && bytes.len() > 100 {
                            corrupt = false;
                            let mut m = BytesMut::from(&bytes[..]);
                            let i = bytes.len() / 2;
                            m[i] ^= 0x5a;
                            bytes = m.freeze();
                        }
                        // turmoil TCP has flow control but never wakes a writer blocked on a
                        // full window when the peer's socket is gone (a kernel would answer
                        // with RST, or give up after TCP_USER_TIMEOUT): bound the write.
                        match tokio::time::timeout(TCP_WRITE_TIMEOUT, tcp_write.write_all(&bytes))
                            .await
                        {
                            Ok(Ok(())) => {}
                            _ => {
                                log(&shared, "pump-write-failed", &[]);
                                return Err::<(), ()>(());
                            }
                        }
                    }
                    Ok(None) => {
                        let _ = tcp_write.shutdown().await;
                        log(&shared, "pump-down-fin", &[]);
                        return Ok(());
                    }
                    Err(_) => return Err(()),
                }
            }
        };
        tokio::pin!(up, down);
        // Deterministic: `select` polls its first future first, no random branch choice.
        let reset = match futures_util::future::select(&mut up, &mut down).await {
            futures_util::future::Either::Left((Ok(()), rest)) => rest.await.is_err(),
            futures_util::future::Either::Right((Ok(()), rest)) => rest.await.is_err(),
            _ => true,
        };
        reset
    };
    log(&shared, "pump-end", &[u64::from(reset)]);
    if reset {
        let _ = send.reset(VarInt::from_u32(stream_error::CONNECTION_RESET));
        let _ = recv.stop(VarInt::from_u32(stream_error::CONNECTION_RESET));
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(10), send.stopped()).await;
    }
}
