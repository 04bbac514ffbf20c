//! Which peers to dial and when; which live connection carries new streams; who may connect.
//!
//! The transport (QUIC in the daemon, turmoil in the simulator) performs the dials and reports what
//! happened; this book decides. A peer with addresses and no live connection is dialed at once,
//! and after a failure again with exponential backoff and seeded jitter, capped low enough that a
//! restarted peer is back within seconds. Both sides may dial at the same moment: every live
//! connection is kept and may carry inbound streams, and new outbound streams use the newest one,
//! so there is no tie-break race that could close the connection both sides just chose.
//!
//! Shape: `handle_*(…, now)` inputs, [`PeerBook::poll_event`] for dial orders,
//! [`PeerBook::poll_timeout`] for the next instant [`PeerBook::handle_timeout`] is due. Peers are
//! kept in a `BTreeMap`, so every output order is deterministic.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::addressing::{NodeLabel, NodeName, ServiceName};
use crate::identity::NodeId;
use crate::rng::SplitMix64;
use crate::time::Instant;

/// A transport connection, numbered by the frontend (unique for the life of the book).
pub type ConnId = u64;

/// Backoff settings.
#[derive(Clone, Debug)]
pub struct PeeringConfig {
    /// Delay before the second attempt after a failure.
    pub initial_backoff: Duration,
    /// Cap on the delay between attempts.
    pub max_backoff: Duration,
    /// A connection that ends sooner than this after coming up counts as a failed attempt.
    pub min_stable: Duration,
    /// Seed for the jitter.
    pub seed: u64,
}

impl Default for PeeringConfig {
    fn default() -> PeeringConfig {
        PeeringConfig {
            initial_backoff: Duration::from_millis(250),
            // Keeps a peer that restarts reachable again well within 5 s.
            max_backoff: Duration::from_secs(2),
            min_stable: Duration::from_secs(1),
            seed: 0,
        }
    }
}

/// What the book asks the frontend to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeeringEvent {
    /// Dial `peer` (at its configured addresses). Report the result with
    /// [`PeerBook::handle_connected`] or [`PeerBook::handle_dial_failed`].
    Dial {
        /// The peer to dial.
        peer: NodeId,
        /// 1 for the first attempt since the last connection, then 2, 3, …
        attempt: u32,
    },
}

/// A peer's connection state, for status displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// At least one live connection.
    Connected,
    /// A dial is in progress.
    Dialing,
    /// Waiting until the next attempt.
    Backoff,
    /// No addresses: waiting for the peer to dial in.
    Passive,
}

impl PeerState {
    /// Short stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Connected => "connected",
            PeerState::Dialing => "dialing",
            PeerState::Backoff => "backoff",
            PeerState::Passive => "waiting",
        }
    }
}

/// A snapshot of one peer, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub id: NodeId,
    /// Its name (from the config, else from its hello).
    pub name: Option<NodeName>,
    /// Connection state.
    pub state: PeerState,
    /// Number of live connections.
    pub connections: usize,
    /// When the current connection came up.
    pub connected_since: Option<Instant>,
    /// Failed attempts since the last connection.
    pub failed_attempts: u32,
    /// The last dial error, if the last attempt failed.
    pub last_error: Option<String>,
    /// Services the peer announced.
    pub services: Vec<ServiceName>,
}

#[derive(Debug)]
struct Peer {
    configured_name: Option<NodeName>,
    announced_name: Option<NodeName>,
    dialable: bool,
    /// Live connections and when each came up, oldest first (ids are allocated increasingly).
    connections: BTreeMap<ConnId, Instant>,
    connected_since: Option<Instant>,
    dialing: bool,
    next_attempt: Option<Instant>,
    failures: u32,
    last_error: Option<String>,
    services: Vec<ServiceName>,
}

/// The set of authorized peers and their connection state.
#[derive(Debug)]
pub struct PeerBook {
    own_id: NodeId,
    own_name: NodeName,
    config: PeeringConfig,
    rng: SplitMix64,
    peers: BTreeMap<NodeId, Peer>,
    events: VecDeque<PeeringEvent>,
}

/// Why a name did not resolve to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// No configured peer has that name (or id).
    UnknownNode(String),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::UnknownNode(label) => write!(
                f,
                "no peer named {label:?}: add it under [[peers]] in the config (with `name`), or use its node id"
            ),
        }
    }
}

impl std::error::Error for ResolveError {}

impl PeerBook {
    /// An empty book for the node `own_id` named `own_name`.
    pub fn new(own_id: NodeId, own_name: NodeName, config: PeeringConfig) -> PeerBook {
        let rng = SplitMix64::new(config.seed);
        PeerBook {
            own_id,
            own_name,
            config,
            rng,
            peers: BTreeMap::new(),
            events: VecDeque::new(),
        }
    }

    /// Authorizes `id`. With `dialable`, the book dials it now and whenever it has no connection.
    /// Adding a known peer updates its name and dialability.
    pub fn add_peer(&mut self, id: NodeId, name: Option<NodeName>, dialable: bool, now: Instant) {
        let peer = self.peers.entry(id).or_insert_with(|| Peer {
            configured_name: None,
            announced_name: None,
            dialable: false,
            connections: BTreeMap::new(),
            connected_since: None,
            dialing: false,
            next_attempt: None,
            failures: 0,
            last_error: None,
            services: Vec::new(),
        });
        peer.configured_name = name;
        peer.dialable = dialable;
        if dialable && peer.connections.is_empty() && !peer.dialing && peer.next_attempt.is_none() {
            peer.next_attempt = Some(now);
        }
        self.handle_timeout(now);
    }

    /// Whether `id` may connect, open streams or send control messages.
    pub fn is_authorized(&self, id: &NodeId) -> bool {
        self.peers.contains_key(id)
    }

    /// A connection to `peer` is up (dialed or accepted). Unknown peers are ignored: the frontend
    /// must have refused them already.
    pub fn handle_connected(&mut self, peer: NodeId, conn: ConnId, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.connections.is_empty() {
            p.connected_since = Some(now);
        }
        p.connections.insert(conn, now);
        p.dialing = false;
        p.next_attempt = None;
        p.failures = 0;
        p.last_error = None;
    }

    /// A dial to `peer` failed with `error`.
    pub fn handle_dial_failed(&mut self, peer: NodeId, error: &str, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.dialing = false;
        p.failures = p.failures.saturating_add(1);
        p.last_error = Some(error.to_string());
        if p.connections.is_empty() && p.dialable {
            let delay = backoff(&self.config, &mut self.rng, p.failures);
            p.next_attempt = Some(now + delay);
        }
    }

    /// A connection to `peer` ended. With no connection left the peer is redialed at once (the
    /// first attempt after a loss is immediate: the peer may merely have restarted) — unless the
    /// connection lived less than [`PeeringConfig::min_stable`]: a peer that completes the
    /// handshake and then drops us (it does not know our id, say) counts as a failed attempt,
    /// so the redials back off instead of spinning.
    pub fn handle_closed(&mut self, peer: NodeId, conn: ConnId, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(since) = p.connections.remove(&conn) else {
            return;
        };
        if p.connections.is_empty() {
            p.connected_since = None;
            p.services.clear();
            if p.dialable && !p.dialing {
                if now.saturating_duration_since(since) < self.config.min_stable {
                    p.failures = p.failures.saturating_add(1);
                    p.last_error = Some("the peer closed the connection right after the handshake (does it list this node in [[peers]]?)".into());
                    p.next_attempt = Some(now + backoff(&self.config, &mut self.rng, p.failures));
                } else {
                    p.next_attempt = Some(now);
                }
            }
        }
        self.handle_timeout(now);
    }

    /// The peer's hello or service update.
    pub fn handle_announcement(
        &mut self,
        peer: NodeId,
        name: Option<NodeName>,
        mut services: Vec<ServiceName>,
    ) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if name.is_some() {
            p.announced_name = name;
        }
        services.sort();
        services.dedup();
        p.services = services;
    }

    /// Issues due dial orders.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (id, p) in self.peers.iter_mut() {
            if let Some(at) = p.next_attempt {
                if at <= now && p.connections.is_empty() && !p.dialing && p.dialable {
                    p.dialing = true;
                    p.next_attempt = None;
                    self.events.push_back(PeeringEvent::Dial {
                        peer: *id,
                        attempt: p.failures + 1,
                    });
                }
            }
        }
    }

    /// The next dial order, if any.
    pub fn poll_event(&mut self) -> Option<PeeringEvent> {
        self.events.pop_front()
    }

    /// When [`PeerBook::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter(|p| p.connections.is_empty() && !p.dialing && p.dialable)
            .filter_map(|p| p.next_attempt)
            .min()
    }

    /// The connection new streams to `peer` should use: the newest live one.
    pub fn connection_for(&self, peer: &NodeId) -> Option<ConnId> {
        self.peers
            .get(peer)
            .and_then(|p| p.connections.keys().next_back().copied())
    }

    /// The node a DNS node label designates: this node, or a peer by id or name (a configured name
    /// wins over an announced one).
    pub fn resolve(&self, label: &NodeLabel) -> Result<NodeId, ResolveError> {
        match label {
            NodeLabel::Id(id) if *id == self.own_id || self.peers.contains_key(id) => Ok(*id),
            NodeLabel::Name(name) if *name == self.own_name => Ok(self.own_id),
            NodeLabel::Name(name) => self
                .peers
                .iter()
                .find(|(_, p)| p.configured_name.as_ref() == Some(name))
                .or_else(|| {
                    self.peers.iter().find(|(_, p)| {
                        p.configured_name.is_none() && p.announced_name.as_ref() == Some(name)
                    })
                })
                .map(|(id, _)| *id)
                .ok_or_else(|| ResolveError::UnknownNode(name.to_string())),
            NodeLabel::Id(id) => Err(ResolveError::UnknownNode(id.to_string())),
        }
    }

    /// The display name of a peer.
    pub fn name_of(&self, peer: &NodeId) -> Option<&NodeName> {
        if *peer == self.own_id {
            return Some(&self.own_name);
        }
        let p = self.peers.get(peer)?;
        p.configured_name.as_ref().or(p.announced_name.as_ref())
    }

    /// Status of every peer, ordered by id.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(id, p)| PeerStatus {
                id: *id,
                name: p.configured_name.clone().or(p.announced_name.clone()),
                state: if !p.connections.is_empty() {
                    PeerState::Connected
                } else if p.dialing {
                    PeerState::Dialing
                } else if p.dialable {
                    PeerState::Backoff
                } else {
                    PeerState::Passive
                },
                connections: p.connections.len(),
                connected_since: p.connected_since,
                failed_attempts: p.failures,
                last_error: p.last_error.clone(),
                services: p.services.clone(),
            })
            .collect()
    }
}

/// `initial × 2^(failures-1)`, capped, then scaled by a seeded factor in [0.8, 1.2) so that nodes
/// restarted together do not redial in lock-step.
fn backoff(config: &PeeringConfig, rng: &mut SplitMix64, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = config
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(config.max_backoff);
    let permille = 800 + rng.below(400) as u32;
    (base * permille / 1000).min(config.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    fn id(n: u8) -> NodeId {
        NodeKey::from_seed([n; 32]).node_id()
    }

    fn book() -> PeerBook {
        PeerBook::new(
            id(1),
            NodeName::parse("self").unwrap(),
            PeeringConfig::default(),
        )
    }

    fn drain(book: &mut PeerBook) -> Vec<PeeringEvent> {
        std::iter::from_fn(|| book.poll_event()).collect()
    }

    #[test]
    fn dials_at_once_then_backs_off_up_to_the_cap() {
        let mut b = book();
        let t0 = Instant::ZERO;
        b.add_peer(id(2), None, true, t0);
        assert_eq!(
            drain(&mut b),
            vec![PeeringEvent::Dial {
                peer: id(2),
                attempt: 1
            }]
        );
        // No second order while the dial is in flight.
        assert_eq!(b.poll_timeout(), None);
        let mut now = t0;
        let mut delays = Vec::new();
        for attempt in 2..12 {
            b.handle_dial_failed(id(2), "timed out", now);
            let next = b.poll_timeout().expect("a retry is scheduled");
            delays.push(next.saturating_duration_since(now));
            b.handle_timeout(next - Duration::from_micros(1));
            assert!(drain(&mut b).is_empty(), "not before the backoff");
            now = next;
            b.handle_timeout(now);
            assert_eq!(
                drain(&mut b),
                vec![PeeringEvent::Dial {
                    peer: id(2),
                    attempt
                }]
            );
        }
        assert!(delays[0] >= Duration::from_millis(200) && delays[0] < Duration::from_millis(300));
        assert!(delays[1] > delays[0]);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[9] >= Duration::from_millis(1600));
        assert_eq!(b.status()[0].failed_attempts, 10);
    }

    #[test]
    fn loss_of_the_last_connection_redials_immediately() {
        let mut b = book();
        let t0 = Instant::from_millis(5);
        b.add_peer(id(2), None, true, t0);
        drain(&mut b);
        b.handle_connected(id(2), 7, t0);
        b.handle_connected(id(2), 9, t0); // the peer dialed us at the same time
        assert_eq!(b.connection_for(&id(2)), Some(9));
        b.handle_closed(id(2), 9, t0);
        assert_eq!(b.connection_for(&id(2)), Some(7));
        assert!(drain(&mut b).is_empty(), "one connection is still up");
        let t1 = t0 + Duration::from_secs(1);
        b.handle_closed(id(2), 7, t1);
        assert_eq!(b.connection_for(&id(2)), None);
        assert_eq!(
            drain(&mut b),
            vec![PeeringEvent::Dial {
                peer: id(2),
                attempt: 1
            }]
        );
        // Closing an unknown connection changes nothing.
        b.handle_closed(id(2), 99, t1);
        assert!(drain(&mut b).is_empty());
    }

    #[test]
    fn a_connection_dropped_right_after_the_handshake_backs_off() {
        let mut b = book();
        let t0 = Instant::from_millis(100);
        b.add_peer(id(2), None, true, t0);
        let mut now = t0;
        let mut gaps = Vec::new();
        for conn in 1..6 {
            assert_eq!(drain(&mut b).len(), 1, "one dial order per round");
            b.handle_connected(id(2), conn, now);
            b.handle_closed(id(2), conn, now + Duration::from_millis(5));
            let next = b.poll_timeout().unwrap();
            gaps.push(next.saturating_duration_since(now));
            now = next;
            b.handle_timeout(now);
        }
        assert!(
            gaps.iter().all(|g| *g >= Duration::from_millis(200)),
            "{gaps:?}"
        );
        assert!(gaps[4] > gaps[0]);
        assert!(b.status()[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("[[peers]]"));
    }

    #[test]
    fn passive_peers_are_authorized_but_never_dialed() {
        let mut b = book();
        b.add_peer(id(3), None, false, Instant::ZERO);
        assert!(drain(&mut b).is_empty());
        assert_eq!(b.poll_timeout(), None);
        assert!(b.is_authorized(&id(3)));
        assert!(!b.is_authorized(&id(4)));
        b.handle_connected(id(4), 1, Instant::ZERO);
        assert_eq!(b.connection_for(&id(4)), None, "unknown peers are ignored");
        assert_eq!(b.status()[0].state, PeerState::Passive);
    }

    #[test]
    fn names_resolve_configured_first_then_announced() {
        let mut b = book();
        let alpha = NodeName::parse("alpha").unwrap();
        b.add_peer(id(2), Some(alpha.clone()), false, Instant::ZERO);
        b.add_peer(id(3), None, false, Instant::ZERO);
        b.handle_announcement(id(3), Some(alpha.clone()), vec![]);
        b.handle_announcement(
            id(3),
            Some(NodeName::parse("gamma").unwrap()),
            vec![
                ServiceName::parse("web").unwrap(),
                ServiceName::parse("db").unwrap(),
                ServiceName::parse("web").unwrap(),
            ],
        );
        assert_eq!(b.resolve(&NodeLabel::Name(alpha)), Ok(id(2)));
        assert_eq!(b.resolve(&NodeLabel::parse("gamma").unwrap()), Ok(id(3)));
        assert_eq!(b.resolve(&NodeLabel::parse("self").unwrap()), Ok(id(1)));
        assert_eq!(b.resolve(&NodeLabel::Id(id(3))), Ok(id(3)));
        assert!(b.resolve(&NodeLabel::Id(id(9))).is_err());
        let err = b.resolve(&NodeLabel::parse("delta").unwrap()).unwrap_err();
        assert!(err.to_string().contains("[[peers]]"));
        let status = b.status();
        assert_eq!(status[1].services.len(), 2, "sorted and deduplicated");
        assert_eq!(b.name_of(&id(3)).unwrap().as_str(), "gamma");
    }

    #[test]
    fn jitter_is_seeded() {
        let run = |seed| {
            let mut b = PeerBook::new(
                id(1),
                NodeName::parse("self").unwrap(),
                PeeringConfig {
                    seed,
                    ..PeeringConfig::default()
                },
            );
            b.add_peer(id(2), None, true, Instant::ZERO);
            b.handle_dial_failed(id(2), "x", Instant::ZERO);
            b.poll_timeout()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
