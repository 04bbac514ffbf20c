//! The running node: QUIC endpoints, peer connections, service streams.
//!
//! This is the frontend half of a node: it owns sockets and tasks and moves bytes. Decisions come
//! from the core: [`PeerBook`] says whom to dial and when, which connection carries new streams
//! and who is authorized; `wire::stream` and `wire::control` define every byte on a stream;
//! `service::ServiceEntry` decides which address a dialed port reaches.
//!
//! Per peer connection: the dialing side opens one control stream (hello, service updates,
//! goodbye); every proxied TCP connection is its own bidirectional stream that starts with a
//! service header. The serving side dials the target and answers with a dial reply *before* any
//! payload, so the client learns `refused` faithfully; then bytes flow, FIN maps to a stream
//! finish and a TCP reset to a stream reset (and back).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{RecvStream, SendStream, VarInt};
use svcnet_core::addressing::{NodeLabel, NodeName, ServiceName};
use svcnet_core::identity::NodeId;
use svcnet_core::peering::{ConnId, PeerBook, PeerStatus, PeeringConfig, PeeringEvent};
use svcnet_core::service::TargetHost;
use svcnet_core::time::Instant;
use svcnet_core::wire::stream::{
    stream_error, DialReply, DialStatus, Protocol, ServiceRequest, StreamHeader, TargetRef,
};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::config::{Config, PeerAddr};
use crate::metrics::{Direction, Metrics, ServiceCounters};
use crate::sockopt;
use crate::tls;

mod control;
pub mod framing;
mod pump;
mod registry;

use framing::{read_header, read_reply};
pub use pump::{pump, pump_client, pump_client_streams, pump_streams};
pub use registry::{RoleConnection, RoleStream, RoleTarget};

/// QUIC application close codes (docs/protocol.md §4.4).
pub mod close_code {
    /// Clean shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// A control-stream protocol error.
    pub const PROTOCOL: u32 = 1;
    /// The node is at `[limits] max_peers`.
    pub const OVER_LIMIT: u32 = 2;
}

/// How a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Accept connections on the configured listen addresses and dial peers.
    Daemon,
    /// Only dial out (for `svcnet proxy` and embedding): binds an ephemeral port.
    ClientOnly,
}

/// Why a connection to a remote service could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The name does not designate a known node.
    Resolve(String),
    /// No connection to the node came up in time.
    Unreachable(String),
    /// The serving node answered with a failure.
    Refused(DialReply),
    /// The QUIC stream failed.
    Stream(String),
    /// This node is at its connection limit.
    OverLimit,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Resolve(why) => write!(f, "{why}"),
            OpenError::Unreachable(why) => write!(f, "node unreachable: {why}"),
            OpenError::Refused(reply) if reply.message.is_empty() => {
                write!(f, "remote node answered {}", reply.status)
            }
            OpenError::Refused(reply) => {
                write!(
                    f,
                    "remote node answered {}: {}",
                    reply.status, reply.message
                )
            }
            OpenError::Stream(why) => write!(f, "stream failed: {why}"),
            OpenError::OverLimit => write!(
                f,
                "local connection limit reached ([limits] max_connections)"
            ),
        }
    }
}

/// An open stream to a remote service, after a successful dial reply.
pub struct ServiceStream {
    /// Toward the service.
    pub send: SendStream,
    /// From the service.
    pub recv: RecvStream,
    /// Live counters for the connection.
    pub counters: Arc<ServiceCounters>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

struct Inner {
    config: Arc<Config>,
    own_id: NodeId,
    endpoints: Vec<quinn::Endpoint>,
    client_config: quinn::ClientConfig,
    book: Mutex<PeerBook>,
    conns: Mutex<BTreeMap<ConnId, (NodeId, quinn::Connection)>>,
    next_conn: AtomicU64,
    epoch: std::time::Instant,
    metrics: Arc<Metrics>,
    /// Bumped on every change of the connection set, so waiters can re-check.
    changes: watch::Sender<u64>,
    connection_slots: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
    metrics_addr: std::sync::OnceLock<SocketAddr>,
    registry: Mutex<svcnet_core::registry::Registry>,
    registry_wake: tokio::sync::Notify,
    control_senders: Mutex<BTreeMap<ConnId, control::ControlChannel>>,
    tun: std::sync::OnceLock<svcnet_tun::TunStack>,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// A connected peer's live figures (from its newest connection).
#[derive(Clone, Copy, Debug)]
pub struct PeerLink {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// The peer's address as this node sees it.
    pub path: SocketAddr,
    /// The largest UDP payload the connection sends (path MTU discovery's current result).
    pub path_mtu: u16,
}

fn transport_config(config: &Config) -> quinn::TransportConfig {
    let limits = &config.limits;
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(limits.max_streams_per_peer));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.keep_alive_interval(Some(limits.keep_alive));
    t.max_idle_timeout(limits.idle_timeout.try_into().ok());
    // Windows sized for a fast LAN or loopback: one stream may use 8 MiB in flight, a connection
    // 32 MiB. quinn allocates receive buffers as data arrives, not up front.
    t.stream_receive_window(VarInt::from_u32(8 << 20));
    t.receive_window(VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    t.mtu_discovery_config(Some(crate::quic_io::mtu_discovery()));
    t
}

/// The QUIC socket's options: the configured ones, with 4 MiB socket buffers unless configured
/// (the kernel caps them at net.core.{r,w}mem_max) — the default 208 KiB drops bursts at
/// gigabit rates.
fn quic_socket_options(config: &Config) -> crate::sockopt::SocketOptions {
    let mut opts = config.transport.socket.clone();
    opts.recv_buffer.get_or_insert(4 << 20);
    opts.send_buffer.get_or_insert(4 << 20);
    opts
}

/// A service dial's options: the configured ones, with keep-alive (30 s idle, 10 s × 3 probes)
/// and a 60 s TCP_USER_TIMEOUT unless configured, so a target host that vanishes without a RST
/// frees its stream and connection slot within about a minute instead of the kernel's ~15.
fn service_dial_options(
    configured: &crate::sockopt::SocketOptions,
) -> crate::sockopt::SocketOptions {
    let mut options = configured.clone();
    options.keepalive.get_or_insert(crate::sockopt::Keepalive {
        idle: Duration::from_secs(30),
        interval: Duration::from_secs(10),
        count: 3,
    });
    options.user_timeout.get_or_insert(Duration::from_secs(60));
    options
}

fn reset_key(config: &Config) -> Arc<ring::hmac::Key> {
    // Derived from the node key so that a restarted node can still send valid stateless resets
    // for connections its previous run held: peers then notice the restart at once instead of
    // waiting for their idle timeout.
    let secret = blake3::derive_key(
        "svcnet quic stateless reset key v1",
        &config.key.to_seed_bytes(),
    );
    Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret))
}

impl Node {
    /// Binds the endpoints and starts the node's tasks. Errors say what to fix.
    pub async fn start(config: Arc<Config>, mode: Mode) -> Result<Node, String> {
        let own_id = config.key.node_id();
        let allowed: Arc<BTreeSet<NodeId>> = Arc::new(config.peers.iter().map(|p| p.id).collect());
        let transport = Arc::new(transport_config(&config));
        let server_tls = tls::server_config(&config.key, allowed.clone())
            .map_err(|e| format!("building the TLS server config: {e}"))?;
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| format!("building the QUIC server config: {e}"))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport.clone());
        let client_tls = tls::client_config(&config.key)
            .map_err(|e| format!("building the TLS client config: {e}"))?;
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
            .map_err(|e| format!("building the QUIC client config: {e}"))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);

        let binds: Vec<SocketAddr> = match mode {
            Mode::Daemon => config.listen.clone(),
            Mode::ClientOnly => Vec::new(),
        };
        let mut endpoints = Vec::new();
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(crate::quic_io::BatchingRuntime::new());
        for addr in &binds {
            let socket = sockopt::bind_udp(*addr, &quic_socket_options(&config)).map_err(|e| {
                format!("cannot listen on {addr} (config key `listen`): {e}; is another svcnet daemon running, or the port taken?")
            })?;
            let endpoint = quinn::Endpoint::new(
                crate::quic_io::endpoint_config(reset_key(&config)),
                Some(server_config.clone()),
                socket,
                runtime.clone(),
            )
            .map_err(|e| format!("starting QUIC on {addr}: {e}"))?;
            info!(addr = %endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening (QUIC)");
            endpoints.push(endpoint);
        }
        // Dialing needs an endpoint of each address family a peer uses; listening endpoints serve
        // when they match, otherwise an ephemeral client-only one is bound.
        for family_v6 in [false, true] {
            let needed = config.peers.iter().flat_map(|p| &p.addrs).any(|a| match a {
                PeerAddr::Ip(ip) => ip.is_ipv6() == family_v6,
                PeerAddr::Dns { .. } => !family_v6,
            });
            let have = endpoints.iter().any(|e| {
                e.local_addr()
                    .map(|a| a.is_ipv6() == family_v6)
                    .unwrap_or(false)
            });
            if (needed || (mode == Mode::ClientOnly && !family_v6)) && !have {
                let addr: SocketAddr = if family_v6 {
                    "[::]:0".parse().expect("literal")
                } else {
                    "0.0.0.0:0".parse().expect("literal")
                };
                let socket = sockopt::bind_udp(addr, &quic_socket_options(&config))
                    .map_err(|e| format!("binding a QUIC client socket on {addr}: {e}"))?;
                let endpoint = quinn::Endpoint::new(
                    crate::quic_io::endpoint_config(reset_key(&config)),
                    None,
                    socket,
                    runtime.clone(),
                )
                .map_err(|e| format!("starting QUIC on {addr}: {e}"))?;
                endpoints.push(endpoint);
            }
        }

        let epoch = std::time::Instant::now();
        let mut book = PeerBook::new(
            own_id,
            config.name.clone(),
            PeeringConfig {
                seed: u64::from_le_bytes(own_id.as_bytes()[..8].try_into().expect("8 bytes")),
                ..PeeringConfig::default()
            },
        );
        for peer in &config.peers {
            book.add_peer(
                peer.id,
                peer.name.clone(),
                !peer.addrs.is_empty(),
                Instant::ZERO,
            );
        }
        // The incarnation must grow across restarts (docs/registry.md §1): the start time does.
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1)
            .max(1);
        let seed = u64::from_le_bytes(own_id.as_bytes()[16..24].try_into().expect("8 bytes"));
        let mut reg = svcnet_core::registry::Registry::new(
            config.key.clone(),
            incarnation,
            config.registry.core_config(seed ^ incarnation),
            Instant::ZERO,
        );
        for peer in &config.peers {
            reg.authorize(peer.id);
        }
        let instances = registry::local_instances(&config);
        if !instances.is_empty() {
            reg.set_local_instances(instances, Instant::ZERO)
                .map_err(|e| format!("[services] roles cannot be announced: {e}"))?;
        }
        let node = Node {
            inner: Arc::new(Inner {
                own_id,
                endpoints,
                client_config,
                book: Mutex::new(book),
                conns: Mutex::new(BTreeMap::new()),
                next_conn: AtomicU64::new(1),
                epoch,
                metrics: Arc::new(Metrics::default()),
                changes: watch::channel(0).0,
                connection_slots: Arc::new(Semaphore::new(config.limits.max_connections)),
                shutdown: watch::channel(false).0,
                metrics_addr: std::sync::OnceLock::new(),
                registry: Mutex::new(reg),
                registry_wake: tokio::sync::Notify::new(),
                control_senders: Mutex::new(BTreeMap::new()),
                tun: std::sync::OnceLock::new(),
                config,
            }),
        };
        for endpoint in node.inner.endpoints.iter().filter(|_| mode == Mode::Daemon) {
            if endpoint.local_addr().is_ok() && !binds.is_empty() {
                tokio::spawn(node.clone().accept_loop(endpoint.clone()));
            }
        }
        tokio::spawn(node.clone().peering_loop());
        tokio::spawn(node.clone().registry_loop());
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.own_id
    }

    /// The node's config.
    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    /// The node's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// A receiver that changes whenever connections or announced services change.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Records the TUN stack (TUN mode), for status and metrics.
    pub fn set_tun(&self, stack: svcnet_tun::TunStack) {
        let _ = self.inner.tun.set(stack);
    }

    /// The TUN netstack's counters, in TUN mode.
    pub fn tun_stats(&self) -> Option<svcnet_core::netstack::Stats> {
        self.inner.tun.get().map(|t| t.stats())
    }

    /// Records where the Prometheus endpoint listens (shown by `status`).
    pub fn set_metrics_addr(&self, addr: SocketAddr) {
        let _ = self.inner.metrics_addr.set(addr);
    }

    /// Where the Prometheus endpoint listens, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.inner.metrics_addr.get().copied()
    }

    /// Local addresses of the QUIC endpoints.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner
            .endpoints
            .iter()
            .filter_map(|e| e.local_addr().ok())
            .collect()
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.inner.epoch.elapsed().as_micros() as u64)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, PeerBook> {
        self.inner.book.lock().expect("peer book lock")
    }

    /// Peer status, with the newest connection's live figures while the peer is connected.
    pub fn peer_status(&self) -> Vec<(PeerStatus, Option<PeerLink>)> {
        let statuses = self.book().status();
        let conns = self.inner.conns.lock().expect("conns lock");
        statuses
            .into_iter()
            .map(|s| {
                let link =
                    conns
                        .iter()
                        .rev()
                        .find(|(_, (peer, _))| *peer == s.id)
                        .map(|(_, (_, c))| PeerLink {
                            rtt: c.rtt(),
                            path: c.remote_address(),
                            path_mtu: c.stats().path.current_mtu,
                        });
                (s, link)
            })
            .collect()
    }

    /// Runs `f` with the peer book (for lookups that need names and announcements).
    pub fn with_book<R>(&self, f: impl FnOnce(&PeerBook) -> R) -> R {
        f(&self.book())
    }

    /// The node a label designates (this node or a peer).
    pub fn resolve_node(&self, label: &NodeLabel) -> Result<NodeId, String> {
        self.book().resolve(label).map_err(|e| e.to_string())
    }

    /// The address a svcnet DNS name stands for, if the name exists: this node and its
    /// services, peers, and the services peers announced. A peer that is not connected has not
    /// told us its services; its service names are answered anyway (the address is derived from
    /// the name), so a client can start connecting while the connection comes up.
    pub fn lookup_name(&self, name: &svcnet_core::addressing::Name) -> Option<std::net::Ipv6Addr> {
        use svcnet_core::addressing::{Name, NetworkPrefix};
        let prefix = NetworkPrefix::derive(&self.inner.config.network);
        let book = self.book();
        match name {
            Name::Node { node } => book.resolve(node).ok().map(|id| prefix.node_address(&id)),
            Name::Service { service, node } => {
                let id = book.resolve(node).ok()?;
                let exists = if id == self.inner.own_id {
                    self.inner.config.services.contains_key(service)
                } else {
                    let status = book.status().into_iter().find(|s| s.id == id)?;
                    status.connections == 0 || status.services.contains(service)
                };
                exists.then(|| prefix.service_address(&id, service))
            }
            Name::Role {
                role,
                version_label,
            } => {
                drop(book);
                self.lookup_role(role, *version_label)
            }
        }
    }

    /// Every service address this node can reach now, with its node and service: its own
    /// services and the services connected peers announced.
    pub fn service_addresses(&self) -> BTreeMap<std::net::Ipv6Addr, (NodeId, ServiceName)> {
        let prefix = svcnet_core::addressing::NetworkPrefix::derive(&self.inner.config.network);
        let mut table = BTreeMap::new();
        for service in self.inner.config.services.keys() {
            table.insert(
                prefix.service_address(&self.inner.own_id, service),
                (self.inner.own_id, service.clone()),
            );
        }
        for status in self.book().status() {
            for service in status.services {
                table.insert(
                    prefix.service_address(&status.id, &service),
                    (status.id, service),
                );
            }
        }
        table
    }

    /// Display name of a node.
    pub fn node_name(&self, id: &NodeId) -> Option<NodeName> {
        self.book().name_of(id).cloned()
    }

    /// Closes every connection with a goodbye and stops accepting.
    pub async fn shutdown(&self) {
        self.withdraw_registry().await;
        let _ = self.inner.shutdown.send(true);
        let conns: Vec<quinn::Connection> = self
            .inner
            .conns
            .lock()
            .expect("conns lock")
            .values()
            .map(|(_, c)| c.clone())
            .collect();
        for conn in &conns {
            conn.close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
        }
        for endpoint in &self.inner.endpoints {
            endpoint.close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
        }
        for endpoint in &self.inner.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }

    // ---------------------------------------------------------------------------------------
    // Connections
    // ---------------------------------------------------------------------------------------

    async fn peering_loop(self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        let mut changes = self.inner.changes.subscribe();
        loop {
            let (events, next) = {
                let now = self.now();
                let mut book = self.book();
                book.handle_timeout(now);
                let events: Vec<PeeringEvent> = std::iter::from_fn(|| book.poll_event()).collect();
                (events, book.poll_timeout())
            };
            for PeeringEvent::Dial { peer, attempt } in events {
                tokio::spawn(self.clone().dial(peer, attempt));
            }
            let sleep = match next {
                Some(at) => at.saturating_duration_since(self.now()),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = changes.changed() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn dial(self, peer: NodeId, attempt: u32) {
        let addrs: Vec<PeerAddr> = self
            .inner
            .config
            .peers
            .iter()
            .find(|p| p.id == peer)
            .map(|p| p.addrs.clone())
            .unwrap_or_default();
        let mut last_error = String::from("no addresses");
        for addr in addrs {
            let resolved: Vec<SocketAddr> = match &addr {
                PeerAddr::Ip(sa) => vec![*sa],
                PeerAddr::Dns { host, port } => {
                    match tokio::net::lookup_host((host.as_str(), *port)).await {
                        Ok(it) => it.collect(),
                        Err(e) => {
                            last_error = format!("resolving {host}: {e}");
                            continue;
                        }
                    }
                }
            };
            for sa in resolved {
                match self.connect_to(peer, sa).await {
                    Ok(()) => return,
                    Err(e) => {
                        debug!(peer = %peer.short(), addr = %sa, attempt, error = %e, "dial failed");
                        last_error = format!("{sa}: {e}");
                    }
                }
            }
        }
        if attempt == 1 || attempt.is_multiple_of(10) {
            warn!(peer = %peer.short(), attempt, error = %last_error, "cannot reach peer; retrying with backoff");
        }
        let now = self.now();
        self.book().handle_dial_failed(peer, &last_error, now);
        self.inner.changes.send_modify(|v| *v += 1);
    }

    async fn connect_to(&self, peer: NodeId, addr: SocketAddr) -> Result<(), String> {
        let endpoint = self
            .inner
            .endpoints
            .iter()
            .find(|e| {
                e.local_addr()
                    .map(|a| a.is_ipv6() == addr.is_ipv6())
                    .unwrap_or(false)
            })
            .ok_or_else(|| format!("no local endpoint for {addr}'s address family"))?;
        let connecting = endpoint
            .connect_with(
                self.inner.client_config.clone(),
                addr,
                &tls::server_name_for(&peer),
            )
            .map_err(|e| e.to_string())?;
        let connection =
            tokio::time::timeout(self.inner.config.limits.handshake_timeout, connecting)
                .await
                .map_err(|_| "handshake timed out".to_string())?
                .map_err(|e| e.to_string())?;
        self.register(peer, connection, true).await;
        Ok(())
    }

    async fn accept_loop(self, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let node = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let timeout = node.inner.config.limits.handshake_timeout;
                let connection = match tokio::time::timeout(timeout, incoming).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        node.inner
                            .metrics
                            .handshakes_refused
                            .fetch_add(1, Ordering::Relaxed);
                        info!(%remote, error = %e, "incoming connection refused");
                        return;
                    }
                    Err(_) => {
                        node.inner
                            .metrics
                            .handshakes_refused
                            .fetch_add(1, Ordering::Relaxed);
                        info!(%remote, "incoming handshake timed out");
                        return;
                    }
                };
                let Some(peer) = tls::peer_node_id(&connection) else {
                    connection.close(VarInt::from_u32(close_code::PROTOCOL), b"no node id");
                    return;
                };
                if !node.book().is_authorized(&peer) {
                    // The TLS verifier already refuses unknown ids; this is a second line.
                    connection.close(VarInt::from_u32(close_code::PROTOCOL), b"not authorized");
                    return;
                }
                if !node.peer_slot_available(&peer) {
                    warn!(peer = %peer.short(), "refused a peer connection: [limits] max_peers reached");
                    connection.close(VarInt::from_u32(close_code::OVER_LIMIT), b"max_peers");
                    return;
                }
                node.register(peer, connection, false).await;
            });
        }
    }

    /// Whether one more connection from `peer` fits `[limits] max_peers` (a peer that is already
    /// connected always fits: a second connection of the same peer takes no new slot).
    fn peer_slot_available(&self, peer: &NodeId) -> bool {
        let conns = self.inner.conns.lock().expect("conns lock");
        let mut peers: Vec<&NodeId> = conns.values().map(|(p, _)| p).collect();
        peers.sort();
        peers.dedup();
        peers.contains(&peer) || peers.len() < self.inner.config.limits.max_peers
    }

    async fn register(&self, peer: NodeId, connection: quinn::Connection, dialed: bool) {
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let now = self.now();
        self.inner
            .conns
            .lock()
            .expect("conns lock")
            .insert(id, (peer, connection.clone()));
        self.book().handle_connected(peer, id, now);
        self.inner.changes.send_modify(|v| *v += 1);
        info!(
            peer = %self.node_name(&peer).map(|n| n.to_string()).unwrap_or_else(|| peer.short()),
            remote = %connection.remote_address(),
            direction = if dialed { "out" } else { "in" },
            "peer connected"
        );
        if dialed {
            let node = self.clone();
            let conn = connection.clone();
            tokio::spawn(async move {
                if let Err(e) = node.run_control_opener(peer, id, conn.clone()).await {
                    debug!(peer = %peer.short(), error = %e, "control stream ended");
                }
            });
        }
        let node = self.clone();
        tokio::spawn(async move {
            node.serve_connection(peer, id, connection.clone()).await;
            let reason = connection.closed().await;
            node.inner.conns.lock().expect("conns lock").remove(&id);
            let now = node.now();
            node.book().handle_closed(peer, id, now);
            node.inner.changes.send_modify(|v| *v += 1);
            info!(peer = %peer.short(), %reason, "peer connection closed");
        });
    }

    async fn serve_connection(&self, peer: NodeId, conn_id: ConnId, conn: quinn::Connection) {
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let accepted = tokio::select! {
                s = conn.accept_bi() => s,
                _ = shutdown.changed() => return,
            };
            let (send, recv) = match accepted {
                Ok(s) => s,
                Err(_) => return,
            };
            let node = self.clone();
            tokio::spawn(async move {
                node.serve_stream(peer, conn_id, send, recv).await;
            });
        }
    }

    async fn serve_stream(
        &self,
        peer: NodeId,
        conn_id: ConnId,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        let timeout = self.inner.config.limits.header_timeout;
        let header = match tokio::time::timeout(timeout, read_header(&mut recv)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                self.inner
                    .metrics
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                warn!(peer = %peer.short(), error = %e, "bad stream header; resetting the stream");
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
                if let Err(e) = self.run_control(peer, conn_id, send, recv).await {
                    debug!(peer = %peer.short(), error = %e, "control stream ended");
                }
            }
            StreamHeader::Service(request) => self.serve_service(peer, request, send, recv).await,
        }
    }

    /// Dials the local target of `request`; the error is the reply to send.
    async fn dial_local(&self, request: &ServiceRequest) -> Result<(TcpStream, String), DialReply> {
        let TargetRef::Service(name) = &request.target else {
            return Err(DialReply::new(
                DialStatus::NoSuchService,
                "roles are not served by this node yet",
            ));
        };
        let Some(service) = self.inner.config.services.get(name) else {
            return Err(DialReply::new(
                DialStatus::NoSuchService,
                &format!("no service `{name}` on this node"),
            ));
        };
        let (host, port) = service
            .entry
            .resolve_dial(request.port)
            .map_err(|e| DialReply::new(DialStatus::PortNotAllowed, &e.to_string()))?;
        let addrs: Vec<SocketAddr> = match host {
            TargetHost::Ip(ip) => vec![SocketAddr::new(ip, port)],
            TargetHost::Dns(host) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| {
                    DialReply::new(DialStatus::Unreachable, &format!("resolving {host}: {e}"))
                })?
                .collect(),
        };
        let mut last = DialReply::new(DialStatus::Unreachable, "target name has no addresses");
        let options = service_dial_options(&service.socket);
        for addr in addrs {
            match sockopt::dial_tcp(addr, &options, self.inner.config.limits.connect_timeout).await
            {
                Ok(stream) => return Ok((stream, name.to_string())),
                Err(e) => {
                    let status = match e.kind() {
                        io::ErrorKind::ConnectionRefused => DialStatus::Refused,
                        io::ErrorKind::TimedOut => DialStatus::TimedOut,
                        _ => DialStatus::Unreachable,
                    };
                    last = DialReply::new(status, &format!("connect to {addr}: {e}"));
                }
            }
        }
        Err(last)
    }

    async fn serve_service(
        &self,
        peer: NodeId,
        request: ServiceRequest,
        mut send: SendStream,
        recv: RecvStream,
    ) {
        let service_label = request.target.to_string();
        let counters = self
            .inner
            .metrics
            .service(Direction::Served, &service_label);
        let Ok(permit) = self.inner.connection_slots.clone().try_acquire_owned() else {
            counters.errors_total.fetch_add(1, Ordering::Relaxed);
            let reply = DialReply::new(
                DialStatus::OverLimit,
                "serving node is at [limits] max_connections",
            );
            let _ = send.write_all(&reply.encode()).await;
            let _ = send.finish();
            return;
        };
        match self.dial_local(&request).await {
            Ok((tcp, _)) => {
                if send
                    .write_all(&DialReply::new(DialStatus::Connected, "").encode())
                    .await
                    .is_err()
                {
                    return;
                }
                debug!(peer = %peer.short(), service = %service_label, port = request.port, client = ?request.client, "serving connection");
                let _active = counters.open();
                pump(tcp, send, recv, &counters, Direction::Served).await;
                drop(permit);
            }
            Err(reply) => {
                counters.errors_total.fetch_add(1, Ordering::Relaxed);
                debug!(peer = %peer.short(), service = %service_label, status = %reply.status, message = %reply.message, "dial refused");
                let _ = send.write_all(&reply.encode()).await;
                let _ = send.finish();
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Opening streams to remote services
    // ---------------------------------------------------------------------------------------

    async fn connection_to(&self, node: NodeId) -> Result<quinn::Connection, OpenError> {
        let mut changes = self.inner.changes.subscribe();
        let deadline = tokio::time::Instant::now() + self.inner.config.limits.connect_timeout;
        loop {
            let conn_id = self.book().connection_for(&node);
            if let Some(id) = conn_id {
                if let Some((_, c)) = self.inner.conns.lock().expect("conns lock").get(&id) {
                    return Ok(c.clone());
                }
            }
            if !self.book().is_authorized(&node) {
                return Err(OpenError::Resolve(format!(
                    "node {} is not in [[peers]]",
                    node.short()
                )));
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let why = self
                        .book()
                        .status()
                        .into_iter()
                        .find(|s| s.id == node)
                        .and_then(|s| s.last_error)
                        .unwrap_or_else(|| "no connection yet (is the peer's daemon running and does it list this node in [[peers]]?)".into());
                    return Err(OpenError::Unreachable(why));
                }
            }
        }
    }

    /// Opens a connection to `target` on `node` for a client at `client`, waiting for the dial
    /// reply. On success the returned stream carries the payload.
    pub async fn open(
        &self,
        node: NodeId,
        target: TargetRef,
        port: u16,
        client: Option<SocketAddr>,
    ) -> Result<ServiceStream, OpenError> {
        let label = format!(
            "{}.{}",
            target,
            self.node_name(&node)
                .map(|n| n.to_string())
                .unwrap_or_else(|| node.short())
        );
        let counters = self.inner.metrics.service(Direction::Proxied, &label);
        let result = self.open_inner(node, target, port, client, &counters).await;
        if result.is_err() {
            counters.errors_total.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn open_inner(
        &self,
        node: NodeId,
        target: TargetRef,
        port: u16,
        client: Option<SocketAddr>,
        counters: &Arc<ServiceCounters>,
    ) -> Result<ServiceStream, OpenError> {
        let permit = self
            .inner
            .connection_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| OpenError::OverLimit)?;
        let conn = self.connection_to(node).await?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| OpenError::Stream(e.to_string()))?;
        let header = StreamHeader::Service(ServiceRequest {
            protocol: Protocol::Tcp,
            target,
            port,
            client,
        });
        send.write_all(&header.encode())
            .await
            .map_err(|e| OpenError::Stream(e.to_string()))?;
        let reply = read_reply(&mut recv).await.map_err(OpenError::Stream)?;
        if reply.status != DialStatus::Connected {
            return Err(OpenError::Refused(reply));
        }
        Ok(ServiceStream {
            send,
            recv,
            counters: counters.clone(),
            permit,
        })
    }

    /// For a service on this very node: dials it directly (no QUIC).
    pub async fn open_local(
        &self,
        service: ServiceName,
        port: u16,
    ) -> Result<TcpStream, OpenError> {
        let request = ServiceRequest {
            protocol: Protocol::Tcp,
            target: TargetRef::Service(service),
            port,
            client: None,
        };
        self.dial_local(&request)
            .await
            .map(|(s, _)| s)
            .map_err(OpenError::Refused)
    }
}

/// A peer book built from the config alone (no network): for resolving names without a daemon.
pub fn offline_book(config: &Config) -> PeerBook {
    let mut book = PeerBook::new(
        config.key.node_id(),
        config.name.clone(),
        PeeringConfig::default(),
    );
    for peer in &config.peers {
        // Not dialable: nothing will act on dial orders here.
        book.add_peer(peer.id, peer.name.clone(), false, Instant::ZERO);
    }
    book
}

/// The node's Prometheus exposition.
pub fn render_metrics(node: &Node) -> String {
    let peers: Vec<(String, bool, Option<u64>)> = node
        .peer_status()
        .into_iter()
        .map(|(s, link)| {
            (
                s.name
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| s.id.short()),
                s.connections > 0,
                link.map(|l| l.rtt.as_micros() as u64),
            )
        })
        .collect();
    let mut text = node.metrics().render(&peers);
    use std::fmt::Write as _;
    if let Some(st) = node.tun_stats() {
        for (name, help, kind, value) in [
            (
                "svcnet_netstack_connections",
                "TCP connections terminated in the netstack now.",
                "gauge",
                st.connections as u64,
            ),
            (
                "svcnet_netstack_held_syns",
                "Client SYNs held while the remote dial runs.",
                "gauge",
                st.held as u64,
            ),
            (
                "svcnet_netstack_dropped_unserved_total",
                "Packets to addresses this node does not serve.",
                "counter",
                st.dropped_unserved,
            ),
            (
                "svcnet_netstack_dropped_invalid_total",
                "Packets that failed validation.",
                "counter",
                st.dropped_invalid,
            ),
            (
                "svcnet_netstack_dropped_syn_rate_total",
                "SYNs over the per-client rate.",
                "counter",
                st.dropped_syn_rate,
            ),
        ] {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
    let (instances, healthy, accepted, rejected) = node.with_registry(|r| {
        let all = r.instances();
        let healthy = all.iter().filter(|i| i.healthy).count();
        let stats = r.stats();
        (
            all.len(),
            healthy,
            stats.accepted,
            stats.unauthorized_messages + stats.malformed_messages,
        )
    });
    for (name, help, kind, value) in [
        (
            "svcnet_registry_instances",
            "Role instances in this node's replica.",
            "gauge",
            instances as u64,
        ),
        (
            "svcnet_registry_healthy_instances",
            "Of those, healthy.",
            "gauge",
            healthy as u64,
        ),
        (
            "svcnet_registry_announcements_accepted_total",
            "Announcements accepted from others.",
            "counter",
            accepted,
        ),
        (
            "svcnet_registry_messages_dropped_total",
            "Registry messages dropped (unauthorized or malformed).",
            "counter",
            rejected,
        ),
    ] {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    text
}
