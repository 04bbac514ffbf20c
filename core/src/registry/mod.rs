//! The replicated service registry: roles with semver versions, instances on many nodes, leases
//! and health, load balancing with failover, role addresses. Design and wire formats:
//! `docs/registry.md`.
//!
//! Each node is the authority for its own instances: it signs an [`announce::Announcement`]
//! (origin, incarnation, version, lease, instances) and spreads it by SWIM gossip
//! ([`membership`], the `foca` crate) and by anti-entropy with its directly connected peers
//! (digests, then deltas, [`message`]). Every node keeps a full [`replica::Replica`] and answers
//! lookups and balancing decisions locally. Heartbeats renew the lease; a clean shutdown
//! withdraws at once; a crashed node's instances expire when the lease runs out, and sooner
//! drop out of lookups when SWIM declares the node down. Forged, replayed and oversized
//! announcements are refused and counted.
//!
//! [`Registry`] is a sans-IO state machine in the house style (`handle_*(…, now)`,
//! `poll_transmit`, `poll_event`, `poll_timeout`, `handle_timeout`); it never reads a clock and
//! draws randomness only from [`RegistryConfig::seed`].
//!
//! Driving it (the frontend's side):
//! - carry every `(peer, bytes)` of [`Registry::poll_transmit`] to that peer as one control
//!   frame of the registry type, and hand every such frame received to
//!   [`Registry::handle_message`] with the authenticated sender; packets for peers without a
//!   connection may be dropped (SWIM and anti-entropy tolerate loss);
//! - report connections with [`Registry::peer_connected`] / [`Registry::peer_disconnected`];
//! - declare local services with [`Registry::set_local_instances`], run the health checks that
//!   [`RegistryEvent::HealthCheckDue`] asks for and report them with
//!   [`Registry::handle_health_result`];
//! - per client connection to a role address: [`Registry::pick`], then
//!   [`Registry::connection_started`]; on a refused or failed dial [`Registry::report_failure`]
//!   and `pick` again with the failed instances in `exclude`; [`Registry::connection_ended`]
//!   when the connection closes;
//! - on clean shutdown [`Registry::withdraw`], then flush `poll_transmit` before closing.
//!
//! Submodules, one concern each: [`announce`] (signed format), [`message`] (peer messages),
//! [`replica`] (full replica, leases, lookups), [`membership`] (foca), [`balance`] (strategies,
//! failover), [`range_label`] (DNS version labels ⇄ semver ranges).

pub mod announce;
pub mod balance;
pub mod membership;
pub mod message;
pub mod range_label;
pub mod replica;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::OwnedNotification;

use crate::addressing::{NetworkPrefix, RoleName, ServiceName, VersionLabel};
use crate::identity::{NodeId, NodeKey};
use crate::time::Instant;

/// The SWIM crate, re-exported so that the frontend can build a [`RegistryConfig::swim`]
/// without depending on it separately.
pub use foca;

pub use announce::{AnnounceError, Announcement, InstanceSpec, Stamp};
pub use balance::Strategy;
pub use membership::RejectCounts;
pub use range_label::RoleTarget;

pub use replica::{Instance, InstanceKey};

use announce::DecodeLimits;
use balance::Balancer;
use membership::{lock, Checked, GossipShared, Membership, SwimId};
use replica::{Offer, Replica};

/// Registry settings. Every limit is enforced and has a test.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// How long other nodes keep this node's instances without hearing from it (carried in each
    /// announcement). Default 30 s.
    pub lease: Duration,
    /// How often this node re-announces (renewing its lease). Must be well under `lease`;
    /// default 10 s (three heartbeats per lease, so two may be lost).
    pub heartbeat_interval: Duration,
    /// How often each local instance is health-checked. Default 5 s.
    pub health_check_interval: Duration,
    /// Consecutive failed checks before an instance is announced unhealthy (one success makes
    /// it healthy again). Default 2.
    pub unhealthy_after: u32,
    /// How often an anti-entropy digest goes to one connected peer (in turn). Default 5 s.
    pub anti_entropy_interval: Duration,
    /// Largest encoded announcement accepted or produced, signature included. Default 16 KiB
    /// (at most `u16::MAX`, the length field of a delta entry).
    pub max_announcement_bytes: usize,
    /// Most instances in one announcement. Default 256.
    pub max_instances_per_origin: usize,
    /// Most origins (nodes) held in the replica, expired ones included. Default 4096.
    pub max_origins: usize,
    /// Largest registry message produced or accepted. Default 60 KiB, under the control
    /// stream's 64 KiB frame limit.
    pub max_message_bytes: usize,
    /// How long an instance whose dial failed is avoided by picks. Default 10 s.
    pub suspect_for: Duration,
    /// How long an expired origin's stamp is remembered (so old copies cannot resurrect it).
    /// Default 10 min.
    pub tombstone_for: Duration,
    /// Default balancing strategy of [`Registry::pick`]. Default power of two choices.
    pub strategy: Strategy,
    /// Accept announcements from any origin with a valid signature (`true`), or only from
    /// authorized node ids ([`Registry::authorize`]; default).
    pub open_membership: bool,
    /// Seed of every random choice (SWIM member selection, power-of-two draws).
    pub seed: u64,
    /// Which nodes SWIM probes and tracks. Default [`SwimScope::Connected`].
    pub swim_scope: SwimScope,
    /// SWIM settings (foca's own type; see the foca docs). The default is tuned for a LAN or a
    /// small WAN: 1 s probes, 3 s to declare a suspect down, periodic gossip and announces so
    /// that partitions heal, packets up to 64 000 bytes (the control stream is reliable, so
    /// the UDP-sized default of 1400 does not apply; each announcement must fit).
    pub swim: foca::Config,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon moves the registry into its tasks.
    #[test]
    fn the_registry_is_send() {
        fn send<T: Send>() {}
        send::<Registry>();
    }

    #[test]
    fn the_default_config_is_valid_and_bad_ones_are_named() {
        assert_eq!(RegistryConfig::default().validate(), Ok(()));
        let bad = |c: RegistryConfig| c.validate().unwrap_err();
        assert!(bad(RegistryConfig {
            heartbeat_interval: Duration::from_secs(20),
            ..RegistryConfig::default()
        })
        .contains("heartbeat_interval"));
        assert!(bad(RegistryConfig {
            max_announcement_bytes: 70_000,
            ..RegistryConfig::default()
        })
        .contains("max_announcement_bytes"));
        assert!(bad(RegistryConfig {
            max_message_bytes: 1000,
            ..RegistryConfig::default()
        })
        .contains("max_message_bytes"));
        let mut swim = default_swim_config();
        swim.max_packet_size = NonZeroUsize::new(1400).unwrap();
        assert!(bad(RegistryConfig {
            swim,
            ..RegistryConfig::default()
        })
        .contains("max_packet_size"));
    }
}

impl Default for RegistryConfig {
    fn default() -> RegistryConfig {
        RegistryConfig {
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            health_check_interval: Duration::from_secs(5),
            unhealthy_after: 2,
            anti_entropy_interval: Duration::from_secs(5),
            max_announcement_bytes: 16 * 1024,
            max_instances_per_origin: 256,
            max_origins: 4096,
            max_message_bytes: 60 * 1024,
            suspect_for: Duration::from_secs(10),
            tombstone_for: Duration::from_secs(600),
            strategy: Strategy::PowerOfTwo,
            open_membership: false,
            seed: 0,
            swim_scope: SwimScope::Connected,
            swim: default_swim_config(),
        }
    }
}

impl RegistryConfig {
    /// Checks the settings against each other; the frontend reports the message with the
    /// config key it came from. [`Registry::new`] does not call it (the core never refuses to
    /// start), but a config that fails it will misbehave: leases lapsing between heartbeats,
    /// announcements too large to be carried.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease.is_zero()
            || self.lease > Duration::from_millis(u64::from(announce::MAX_LEASE_MS))
        {
            return Err(format!(
                "lease must be between 1 ms and {} ms",
                announce::MAX_LEASE_MS
            ));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval * 2 > self.lease {
            return Err("heartbeat_interval must be non-zero and at most half the lease".into());
        }
        if self.health_check_interval.is_zero() || self.anti_entropy_interval.is_zero() {
            return Err("health_check_interval and anti_entropy_interval must be non-zero".into());
        }
        if self.max_announcement_bytes < announce::MIN_ANNOUNCEMENT_LEN
            || self.max_announcement_bytes > u16::MAX as usize
        {
            return Err(format!(
                "max_announcement_bytes must be between {} and {}",
                announce::MIN_ANNOUNCEMENT_LEN,
                u16::MAX
            ));
        }
        if self.max_instances_per_origin > u16::MAX as usize || self.max_origins == 0 {
            return Err(
                "max_instances_per_origin must fit 16 bits and max_origins be positive".into(),
            );
        }
        let delta = message::DELTA_HEADER_LEN + message::DELTA_ENTRY_OVERHEAD;
        if self.max_message_bytes < self.max_announcement_bytes + delta {
            return Err(
                "max_message_bytes must hold one announcement of max_announcement_bytes".into(),
            );
        }
        // foca refuses broadcasts larger than its packet; leave room for its header.
        if self.swim.max_packet_size.get() < self.max_announcement_bytes + 256 {
            return Err("swim.max_packet_size must exceed max_announcement_bytes by 256".into());
        }
        if self.swim.probe_rtt >= self.swim.probe_period {
            return Err("swim.probe_rtt must be shorter than swim.probe_period".into());
        }
        Ok(())
    }
}

/// The default SWIM settings (see [`RegistryConfig::swim`]).
pub fn default_swim_config() -> foca::Config {
    let mut c = foca::Config::simple();
    c.probe_period = Duration::from_secs(1);
    c.probe_rtt = Duration::from_millis(400);
    c.suspect_to_down_after = Duration::from_secs(3);
    c.max_transmissions = NonZeroU8::new(8).unwrap_or(NonZeroU8::MIN);
    // A member declared down may come back under the same identity after this (it renews its
    // generation sooner anyway).
    c.remove_down_after = Duration::from_secs(60);
    c.max_packet_size = NonZeroUsize::new(64_000).unwrap_or(NonZeroUsize::MIN);
    c.notify_down_members = true;
    let every = |secs: u64, n: usize| foca::PeriodicParams {
        frequency: Duration::from_secs(secs),
        num_members: NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
    };
    c.periodic_gossip = Some(every(1, 2));
    c.periodic_announce = Some(every(30, 1));
    c.periodic_announce_to_down_members = Some(every(5, 2));
    c
}

/// Which nodes SWIM probes and tracks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SwimScope {
    /// Only directly connected peers: membership updates about other nodes are dropped on
    /// receipt. SWIM then detects failures of neighbours and its gossip carries announcements
    /// hop by hop over the links; nodes further away are covered by leases and failover. Right
    /// when the frontend cannot deliver to nodes it has no connection to: there, SWIM would
    /// probe unreachable members, declare them down and churn (measured: about ten false
    /// "down" per node per minute in a sparse 30-node topology).
    #[default]
    Connected,
    /// Every member: the frontend delivers packets to any node (full mesh, or routing through
    /// relays), so SWIM detects the failure of any node within seconds.
    Everyone,
}

/// One service instance this node offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalInstance {
    /// The service (as in `[services.<name>]`).
    pub service: ServiceName,
    /// Its role (`role = "couchdb@3.2.2"` gives role `couchdb`…).
    pub role: RoleName,
    /// …and version `3.2.2` (exact).
    pub version: semver::Version,
    /// Natural port, if any (informational).
    pub port: Option<u16>,
    /// Optional HTTP path for the health check (else a TCP connect), echoed in
    /// [`RegistryEvent::HealthCheckDue`].
    pub http_path: Option<String>,
}

/// What the registry tells the frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryEvent {
    /// Check the health of local service `service` (TCP connect to its target, or an HTTP GET of
    /// `http_path` expecting 2xx), then call [`Registry::handle_health_result`].
    HealthCheckDue {
        /// The local service.
        service: ServiceName,
        /// HTTP path to request, if configured.
        http_path: Option<String>,
    },
    /// An instance appeared in the replica (for logs).
    InstanceAdded(InstanceKey),
    /// An instance disappeared (for logs).
    InstanceRemoved {
        /// Which.
        key: InstanceKey,
        /// Why.
        reason: RemovalReason,
    },
    /// SWIM sees `0` alive.
    MemberUp(NodeId),
    /// SWIM declared `0` down: picks avoid its instances until it is back or they expire.
    MemberDown(NodeId),
}

/// Why an instance left the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalReason {
    /// Its origin announced a list without it (withdrawal or configuration change).
    Withdrawn,
    /// Its lease ran out.
    Expired,
}

/// Why a message was dropped (the frontend logs it; the connection may stay open).
#[derive(Debug)]
pub enum RegistryError {
    /// The sender is not authorized.
    Unauthorized(NodeId),
    /// Longer than [`RegistryConfig::max_message_bytes`].
    Oversized(usize),
    /// Did not decode.
    Malformed(AnnounceError),
    /// A SWIM packet was refused.
    Swim(membership::SwimError),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::Unauthorized(id) => write!(f, "registry message from unauthorized {id}"),
            RegistryError::Oversized(n) => write!(f, "registry message of {n} bytes is too long"),
            RegistryError::Malformed(e) => write!(f, "malformed registry message: {e}"),
            RegistryError::Swim(e) => write!(f, "SWIM packet refused: {e:?}"),
        }
    }
}

impl std::error::Error for RegistryError {}

/// Why [`Registry::set_local_instances`] refused a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalError {
    /// More than [`RegistryConfig::max_instances_per_origin`].
    TooManyInstances(usize),
    /// The same service twice.
    DuplicateService(ServiceName),
    /// The signed announcement would exceed [`RegistryConfig::max_announcement_bytes`].
    TooLarge(usize),
    /// A version's text is longer than [`announce::MAX_SEMVER_LEN`].
    VersionTooLong(ServiceName),
}

impl fmt::Display for LocalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalError::TooManyInstances(n) => write!(f, "{n} registry instances exceed the limit"),
            LocalError::DuplicateService(s) => write!(f, "service {s} declared twice"),
            LocalError::TooLarge(n) => write!(f, "the announcement would take {n} bytes"),
            LocalError::VersionTooLong(s) => write!(f, "the version of {s} is too long"),
        }
    }
}

impl std::error::Error for LocalError {}

/// Counters for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Announcements refused, by reason.
    pub rejected: RejectCounts,
    /// Messages dropped: unauthorized sender.
    pub unauthorized_messages: u64,
    /// Messages dropped: too long or malformed.
    pub malformed_messages: u64,
    /// SWIM packets refused by foca or the sender check.
    pub swim_errors: u64,
    /// Announcements accepted from others.
    pub accepted: u64,
    /// New origins refused because the replica was full.
    pub replica_full: u64,
}

/// What storing an announcement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stored {
    /// Not stored (stale, or the replica is full).
    No,
    /// Same instances, newer stamp: a heartbeat.
    Renewal,
    /// New origin or different instances.
    Change,
}

#[derive(Clone, Debug)]
struct LocalState {
    spec: LocalInstance,
    healthy: bool,
    failures: u32,
    next_check: Instant,
}

/// The registry of one node. See the [module documentation](self).
pub struct Registry {
    key: NodeKey,
    own: NodeId,
    incarnation: u64,
    version: u64,
    config: RegistryConfig,
    replica: Replica,
    balancer: Balancer,
    membership: Membership,
    shared: Arc<Mutex<GossipShared>>,
    local: BTreeMap<ServiceName, LocalState>,
    connected: BTreeSet<NodeId>,
    /// Nodes whose messages are accepted.
    senders: BTreeSet<NodeId>,
    transmits: VecDeque<(NodeId, Vec<u8>)>,
    events: VecDeque<RegistryEvent>,
    next_heartbeat: Option<Instant>,
    next_anti_entropy: Instant,
    anti_entropy_cursor: usize,
    withdrawn: bool,
    stats: RegistryStats,
    /// Role addresses of every (role, label) some held instance answers to, for the prefix
    /// they were computed in; dropped whenever the replica's instances change.
    role_index: Option<(NetworkPrefix, BTreeMap<Ipv6Addr, RoleTarget>)>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("own", &self.own)
            .field("incarnation", &self.incarnation)
            .field("version", &self.version)
            .field("origins", &self.replica.len())
            .finish()
    }
}

impl Registry {
    /// A registry for the node with `key`. `incarnation` must exceed the previous run's (the
    /// start time in milliseconds since the Unix epoch is a good choice): announcements are
    /// ordered by (incarnation, version) and a restarted node must win over its own old ones.
    pub fn new(key: NodeKey, incarnation: u64, config: RegistryConfig, now: Instant) -> Registry {
        let own = key.node_id();
        let shared = Arc::new(Mutex::new(GossipShared {
            own,
            limits: DecodeLimits {
                max_bytes: config.max_announcement_bytes.min(u16::MAX as usize),
                max_instances: config.max_instances_per_origin,
            },
            authorized: (!config.open_membership).then(BTreeSet::new),
            seen: BTreeMap::new(),
            inbox: VecDeque::new(),
            rejected: RejectCounts::default(),
        }));
        let membership = Membership::new(
            SwimId {
                node: own,
                generation: incarnation,
            },
            config.swim.clone(),
            config.seed,
            shared.clone(),
        );
        Registry {
            key,
            own,
            incarnation,
            version: 0,
            replica: Replica::new(config.max_origins, config.tombstone_for),
            balancer: Balancer::new(config.seed ^ 0x5eed_ba1a_0ce5_0000, config.suspect_for),
            membership,
            shared,
            local: BTreeMap::new(),
            connected: BTreeSet::new(),
            senders: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_heartbeat: None,
            next_anti_entropy: now + config.anti_entropy_interval,
            anti_entropy_cursor: 0,
            withdrawn: false,
            stats: RegistryStats::default(),
            role_index: None,
            config,
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.own
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    // -----------------------------------------------------------------------------------------
    // Authorization and peers
    // -----------------------------------------------------------------------------------------

    /// Allows `id` to send registry messages and to announce instances. (With
    /// [`RegistryConfig::open_membership`] any validly signed origin may announce, relayed by an
    /// authorized sender.)
    pub fn authorize(&mut self, id: NodeId) {
        if let Some(set) = lock(&self.shared).authorized.as_mut() {
            set.insert(id);
        }
        self.senders.insert(id);
    }

    /// Revokes `id`: its messages are dropped and its new announcements refused (those held
    /// expire with their lease).
    pub fn deauthorize(&mut self, id: &NodeId) {
        if let Some(set) = lock(&self.shared).authorized.as_mut() {
            set.remove(id);
        }
        self.senders.remove(id);
    }

    /// Whether SWIM currently considers `id` down.
    pub fn is_down(&self, id: &NodeId) -> bool {
        self.replica.is_down(id)
    }

    /// Whether `id` may send registry messages.
    pub fn is_authorized(&self, id: &NodeId) -> bool {
        self.senders.contains(id)
    }

    /// A connection to `peer` is up: join its SWIM cluster and start anti-entropy with it.
    /// Unauthorized peers are ignored.
    pub fn peer_connected(&mut self, peer: NodeId, now: Instant) {
        if !self.is_authorized(&peer) || peer == self.own {
            return;
        }
        self.connected.insert(peer);
        self.membership.announce_to(peer, now);
        self.send_digest(peer);
        // Our own announcement at once, so a new neighbour need not wait for the round trip.
        if let Some((bytes, remaining)) = self.replica.signed(&self.own, now) {
            let entry = (millis(remaining), bytes.to_vec());
            self.transmits
                .push_back((peer, message::encode_delta(&[(entry.0, &entry.1)])));
        }
        self.pump(now);
    }

    /// The last connection to `peer` is gone.
    pub fn peer_disconnected(&mut self, peer: &NodeId, now: Instant) {
        self.connected.remove(peer);
        self.pump(now);
    }

    /// Directly connected peers, in order.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        self.connected.iter().copied().collect()
    }

    /// Nodes SWIM currently considers alive (or suspect), this node excluded.
    pub fn members(&self) -> Vec<NodeId> {
        self.membership.members()
    }

    // -----------------------------------------------------------------------------------------
    // Local instances, health, shutdown
    // -----------------------------------------------------------------------------------------

    /// Declares this node's instances (the complete list; replaces the previous one) and
    /// announces them. Health verdicts of services that stay are kept; new ones start healthy
    /// and get a health check at once.
    pub fn set_local_instances(
        &mut self,
        instances: Vec<LocalInstance>,
        now: Instant,
    ) -> Result<(), LocalError> {
        if instances.len() > self.config.max_instances_per_origin {
            return Err(LocalError::TooManyInstances(instances.len()));
        }
        let mut next: BTreeMap<ServiceName, LocalState> = BTreeMap::new();
        for spec in instances {
            if spec.version.to_string().len() > announce::MAX_SEMVER_LEN {
                return Err(LocalError::VersionTooLong(spec.service));
            }
            if next.contains_key(&spec.service) {
                return Err(LocalError::DuplicateService(spec.service));
            }
            let state = match self.local.get(&spec.service) {
                Some(old) => LocalState {
                    spec: spec.clone(),
                    ..old.clone()
                },
                None => LocalState {
                    spec: spec.clone(),
                    healthy: true,
                    failures: 0,
                    next_check: now,
                },
            };
            next.insert(spec.service.clone(), state);
        }
        let size = self
            .announcement_for(&next, self.version + 1)
            .sign(&self.key)
            .len();
        if size > self.config.max_announcement_bytes.min(u16::MAX as usize) {
            return Err(LocalError::TooLarge(size));
        }
        self.local = next;
        self.withdrawn = false;
        self.publish(true, now);
        self.handle_timeout(now);
        Ok(())
    }

    /// The result of a health check of local service `service`.
    pub fn handle_health_result(&mut self, service: &ServiceName, healthy: bool, now: Instant) {
        let threshold = self.config.unhealthy_after.max(1);
        let Some(state) = self.local.get_mut(service) else {
            return;
        };
        let before = state.healthy;
        if healthy {
            state.failures = 0;
            state.healthy = true;
        } else {
            state.failures = state.failures.saturating_add(1);
            if state.failures >= threshold {
                state.healthy = false;
            }
        }
        if state.healthy != before && !self.withdrawn {
            self.publish(true, now);
        }
    }

    /// Clean shutdown: announces an empty instance list (other nodes drop this node's instances
    /// at once) and leaves the SWIM cluster. Flush [`Registry::poll_transmit`] afterwards.
    pub fn withdraw(&mut self, now: Instant) {
        self.local.clear();
        self.withdrawn = true;
        self.publish(true, now);
        self.next_heartbeat = None;
        self.membership.leave(now);
        self.pump(now);
    }

    fn announcement_for(
        &self,
        local: &BTreeMap<ServiceName, LocalState>,
        version: u64,
    ) -> Announcement {
        Announcement {
            origin: self.own,
            stamp: Stamp {
                incarnation: self.incarnation,
                version,
            },
            lease_ms: millis(self.config.lease).clamp(1, announce::MAX_LEASE_MS),
            instances: local
                .values()
                .map(|s| InstanceSpec {
                    service: s.spec.service.clone(),
                    role: s.spec.role.clone(),
                    version: s.spec.version.clone(),
                    healthy: s.healthy,
                    port: s.spec.port,
                })
                .collect(),
        }
    }

    /// Signs and spreads a new version of our announcement. `push`: also send it straight to
    /// every connected peer (changes; heartbeats rely on gossip and anti-entropy).
    fn publish(&mut self, push: bool, now: Instant) {
        self.version += 1;
        let announcement = self.announcement_for(&self.local, self.version);
        let bytes = announcement.sign(&self.key);
        let stamp = announcement.stamp;
        let lease = Duration::from_millis(u64::from(announcement.lease_ms));
        let offer = self.replica.offer(announcement, bytes.clone(), lease, now);
        self.report_offer(offer);
        lock(&self.shared).seen.insert(self.own.to_bytes(), stamp);
        self.membership.add_broadcast(&bytes);
        if push {
            let remaining = millis(lease);
            for peer in self.connected.clone() {
                self.transmits
                    .push_back((peer, message::encode_delta(&[(remaining, &bytes)])));
            }
        }
        if !self.withdrawn {
            self.next_heartbeat = Some(now + self.config.heartbeat_interval);
        }
        self.pump(now);
    }

    // -----------------------------------------------------------------------------------------
    // Messages and time
    // -----------------------------------------------------------------------------------------

    /// A registry message from `from` (authenticated by the transport). Refused messages change
    /// nothing but counters; the error is for logs.
    pub fn handle_message(
        &mut self,
        from: NodeId,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), RegistryError> {
        if !self.is_authorized(&from) {
            self.stats.unauthorized_messages += 1;
            return Err(RegistryError::Unauthorized(from));
        }
        if bytes.len() > self.config.max_message_bytes {
            self.stats.malformed_messages += 1;
            return Err(RegistryError::Oversized(bytes.len()));
        }
        let decoded = match message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed_messages += 1;
                return Err(RegistryError::Malformed(e));
            }
        };
        let result = match decoded {
            message::Message::Swim(packet) => {
                let connected = &self.connected;
                let scope = self.config.swim_scope;
                let keep = |id: &NodeId| scope == SwimScope::Everyone || connected.contains(id);
                let result = self.membership.handle_data(from, packet, now, &keep);
                result.map_err(|e| {
                    self.stats.swim_errors += 1;
                    RegistryError::Swim(e)
                })
            }
            message::Message::Digest {
                from: lo,
                to: hi,
                entries,
            } => {
                self.answer_digest(from, &lo, &hi, &entries, now);
                Ok(())
            }
            message::Message::Delta(entries) => {
                for (remaining_ms, announcement) in entries {
                    self.accept(
                        from,
                        announcement,
                        Duration::from_millis(u64::from(remaining_ms)),
                        now,
                    );
                }
                Ok(())
            }
            message::Message::Request(origins) => {
                self.send_delta(from, &origins, now);
                Ok(())
            }
            message::Message::Unknown(_) => Ok(()),
        };
        self.pump(now);
        result
    }

    /// Verifies and stores one announcement received by anti-entropy.
    fn accept(&mut self, from: NodeId, bytes: &[u8], remaining: Duration, now: Instant) {
        let checked = lock(&self.shared).check(bytes);
        if let Checked::Fresh(a) = checked {
            let stored = self.store(a, bytes.to_vec(), remaining, now);
            if stored != Stored::No {
                // Keep gossiping it: a node that got it first by anti-entropy would otherwise
                // see foca's copy as a duplicate and stop its dissemination there.
                self.membership.add_broadcast(bytes);
            }
            if stored == Stored::Change {
                self.push_change(bytes, remaining, Some(from));
            }
        }
    }

    /// Pushes a changed announcement (not a mere heartbeat) straight to every connected peer
    /// but `except`: changes cross a sparse topology in one latency per hop instead of one
    /// anti-entropy round per hop. Duplicates cost the receiver a map lookup, no signature check.
    fn push_change(&mut self, bytes: &[u8], remaining: Duration, except: Option<NodeId>) {
        for peer in self.connected.clone() {
            if Some(peer) != except {
                self.transmits
                    .push_back((peer, message::encode_delta(&[(millis(remaining), bytes)])));
            }
        }
    }

    /// Stores a verified announcement.
    fn store(
        &mut self,
        a: Announcement,
        bytes: Vec<u8>,
        remaining: Duration,
        now: Instant,
    ) -> Stored {
        let stamp = a.stamp;
        let origin = a.origin;
        let offer = self.replica.offer(a, bytes, remaining, now);
        match offer {
            Offer::Accepted { .. } => {
                self.stats.accepted += 1;
                lock(&self.shared).seen.insert(origin.to_bytes(), stamp);
            }
            Offer::Full => self.stats.replica_full += 1,
            Offer::Stale => {}
        }
        let stored = match offer {
            Offer::Accepted { changed: true, .. } => Stored::Change,
            Offer::Accepted { .. } => Stored::Renewal,
            _ => Stored::No,
        };
        self.report_offer(offer);
        stored
    }

    fn report_offer(&mut self, offer: Offer) {
        if let Offer::Accepted { changed: true, .. } = offer {
            self.role_index = None;
        }
        if let Offer::Accepted { added, removed, .. } = offer {
            for key in removed {
                self.balancer.forget(&key);
                self.events.push_back(RegistryEvent::InstanceRemoved {
                    key,
                    reason: RemovalReason::Withdrawn,
                });
            }
            self.events
                .extend(added.into_iter().map(RegistryEvent::InstanceAdded));
        }
    }

    /// Moves foca's output and accepted broadcasts where they belong.
    fn pump(&mut self, now: Instant) {
        loop {
            let inbox: Vec<(Announcement, Vec<u8>)> = lock(&self.shared).inbox.drain(..).collect();
            let mut progressed = !inbox.is_empty();
            for (a, bytes) in inbox {
                let lease = Duration::from_millis(u64::from(a.lease_ms));
                if self.store(a, bytes.clone(), lease, now) == Stored::Change {
                    self.push_change(&bytes, lease, None);
                }
            }
            while let Some((to, packet)) = self.membership.poll_send() {
                progressed = true;
                if self.is_authorized(&to) {
                    self.transmits
                        .push_back((to, message::encode_swim(&packet)));
                }
            }
            while let Some(n) = self.membership.poll_notification() {
                progressed = true;
                match n {
                    OwnedNotification::MemberUp(id) => {
                        self.replica.set_down(&id.node, false);
                        self.events.push_back(RegistryEvent::MemberUp(id.node));
                    }
                    OwnedNotification::MemberDown(id) if id.node != self.own => {
                        self.replica.set_down(&id.node, true);
                        self.events.push_back(RegistryEvent::MemberDown(id.node));
                    }
                    _ => {}
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn send_digest(&mut self, peer: NodeId) {
        let per_message = (self
            .config
            .max_message_bytes
            .saturating_sub(message::DIGEST_HEADER_LEN)
            / message::DIGEST_ENTRY_LEN)
            .clamp(1, u16::MAX as usize);
        let all = self.replica.digest(&[0; 32], &[0xff; 32]);
        let mut from = [0u8; 32];
        let chunks: Vec<&[(NodeId, Stamp)]> = if all.is_empty() {
            vec![&[]]
        } else {
            all.chunks(per_message).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let to = match (i == last, chunk.last()) {
                (false, Some((origin, _))) => origin.to_bytes(),
                _ => [0xff; 32],
            };
            self.transmits
                .push_back((peer, message::encode_digest(&from, &to, chunk)));
            from = increment(to);
        }
    }

    fn answer_digest(
        &mut self,
        peer: NodeId,
        lo: &[u8; 32],
        hi: &[u8; 32],
        theirs: &[([u8; 32], Stamp)],
        now: Instant,
    ) {
        let theirs_map: BTreeMap<[u8; 32], Stamp> = theirs.iter().copied().collect();
        let newer_here: Vec<[u8; 32]> = self
            .replica
            .digest(lo, hi)
            .into_iter()
            .filter(|(o, s)| theirs_map.get(o.as_bytes()).is_none_or(|t| t < s))
            .map(|(o, _)| o.to_bytes())
            .collect();
        self.send_delta(peer, &newer_here, now);
        let own = self.own.to_bytes();
        let shared = lock(&self.shared);
        let allowed = |o: &[u8; 32]| shared.authorized.as_ref().is_none_or(|set| set.contains(o));
        let wanted: Vec<[u8; 32]> = theirs_map
            .iter()
            .filter(|(o, t)| {
                **o != own && allowed(o) && self.replica.stamp(*o).is_none_or(|s| s < **t)
            })
            .map(|(o, _)| *o)
            .collect();
        drop(shared);
        let per_message = (self.config.max_message_bytes.saturating_sub(3) / 32).max(1);
        for chunk in wanted.chunks(per_message) {
            self.transmits
                .push_back((peer, message::encode_request(chunk)));
        }
    }

    /// Sends the live announcements of `origins` to `peer`, in as many messages as the size
    /// limit needs.
    fn send_delta(&mut self, peer: NodeId, origins: &[[u8; 32]], now: Instant) {
        let limit = self.config.max_message_bytes;
        let mut batch: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut size = message::DELTA_HEADER_LEN;
        for origin in origins {
            let Some((bytes, remaining)) = self
                .replica
                .signed(origin, now)
                .map(|(b, r)| (b.to_vec(), r))
            else {
                continue;
            };
            let entry = message::DELTA_ENTRY_OVERHEAD + bytes.len();
            if !batch.is_empty() && (size + entry > limit || batch.len() == u16::MAX as usize) {
                self.flush_delta(peer, &mut batch);
                size = message::DELTA_HEADER_LEN;
            }
            size += entry;
            batch.push((millis(remaining), bytes));
        }
        if !batch.is_empty() {
            self.flush_delta(peer, &mut batch);
        }
    }

    fn flush_delta(&mut self, peer: NodeId, batch: &mut Vec<(u32, Vec<u8>)>) {
        let refs: Vec<(u32, &[u8])> = batch.iter().map(|(r, b)| (*r, b.as_slice())).collect();
        self.transmits
            .push_back((peer, message::encode_delta(&refs)));
        batch.clear();
    }

    /// Runs everything due at `now`: SWIM timers, heartbeats, anti-entropy, health checks,
    /// lease expiry, end of suspicions.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.membership.handle_timeout(now);
        if self.next_heartbeat.is_some_and(|at| at <= now) {
            self.publish(false, now);
        }
        if self.next_anti_entropy <= now {
            self.next_anti_entropy = now + self.config.anti_entropy_interval;
            if !self.connected.is_empty() {
                let peers: Vec<NodeId> = self.connected.iter().copied().collect();
                let peer = peers[self.anti_entropy_cursor % peers.len()];
                self.anti_entropy_cursor = self.anti_entropy_cursor.wrapping_add(1);
                self.send_digest(peer);
            }
        }
        for state in self.local.values_mut() {
            if state.next_check <= now {
                state.next_check = now + self.config.health_check_interval;
                self.events.push_back(RegistryEvent::HealthCheckDue {
                    service: state.spec.service.clone(),
                    http_path: state.spec.http_path.clone(),
                });
            }
        }
        let expiry = self.replica.handle_timeout(now);
        if !expiry.expired.is_empty() {
            self.role_index = None;
        }
        for (_, keys) in expiry.expired {
            for key in keys {
                self.balancer.forget(&key);
                self.events.push_back(RegistryEvent::InstanceRemoved {
                    key,
                    reason: RemovalReason::Expired,
                });
            }
        }
        if !expiry.forgotten.is_empty() {
            // The replica no longer remembers these origins; neither does the freshness check.
            let mut shared = lock(&self.shared);
            for origin in &expiry.forgotten {
                shared.seen.remove(origin.as_bytes());
            }
        }
        self.balancer.handle_timeout(now);
        self.pump(now);
    }

    /// When [`Registry::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.membership.poll_timeout(),
            self.next_heartbeat,
            Some(self.next_anti_entropy),
            self.local.values().map(|s| s.next_check).min(),
            self.replica.poll_timeout(),
            self.balancer.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next message to carry to a peer (one control frame each).
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RegistryEvent> {
        self.events.pop_front()
    }

    // -----------------------------------------------------------------------------------------
    // Lookups and balancing
    // -----------------------------------------------------------------------------------------

    /// Healthy, unexpired instances of `role` whose version matches `req`, ordered by (origin,
    /// service). Answered from the local replica.
    pub fn lookup(&self, role: &RoleName, req: &semver::VersionReq) -> Vec<Instance> {
        self.replica.lookup(role, req)
    }

    /// Every instance held, whatever its health (status displays, `/list`).
    pub fn instances(&self) -> Vec<Instance> {
        self.replica.all_instances()
    }

    /// The instance `key` if the replica holds it (whatever its health): an `/instance/` proxy
    /// must dial only instances some node announced — the seed's proxy dialed any key.
    pub fn instance(&self, key: &InstanceKey) -> Option<Instance> {
        self.replica.instance(key)
    }

    /// This node's own instances with their current health verdicts (for status).
    pub fn local_instances(&self) -> Vec<(LocalInstance, bool)> {
        self.local
            .values()
            .map(|s| (s.spec.clone(), s.healthy))
            .collect()
    }

    /// The address of role name `role` with `label` in the network `prefix`, if some instance
    /// held (healthy or not: an address should not come and go with health) answers to it;
    /// `None` means NXDOMAIN.
    pub fn resolve_role(
        &mut self,
        prefix: &NetworkPrefix,
        role: &RoleName,
        label: Option<VersionLabel>,
    ) -> Option<Ipv6Addr> {
        let address = prefix.role_address(role, label);
        self.role_at(prefix, address).map(|_| address)
    }

    /// What a role address (the destination of a client's SYN) stands for, if it is the address
    /// of a (role, label) that some held instance answers to. Balance the connection with
    /// `pick(&target.role, &target.req(), …)`.
    pub fn role_at(&mut self, prefix: &NetworkPrefix, address: Ipv6Addr) -> Option<RoleTarget> {
        if self.role_index.as_ref().is_none_or(|(p, _)| p != prefix) {
            let mut index = BTreeMap::new();
            for instance in self.replica.all_instances() {
                for label in range_label::labels_for(&instance.version) {
                    index
                        .entry(prefix.role_address(&instance.role, label))
                        .or_insert_with(|| RoleTarget {
                            role: instance.role.clone(),
                            label,
                        });
                }
            }
            self.role_index = Some((*prefix, index));
        }
        self.role_index
            .as_ref()
            .and_then(|(_, index)| index.get(&address).cloned())
    }

    /// Every role address currently answered to, with its meaning (for status and DNS zone
    /// listings).
    pub fn role_addresses(&mut self, prefix: &NetworkPrefix) -> Vec<(Ipv6Addr, RoleTarget)> {
        // Fills the index.
        let _ = self.role_at(prefix, Ipv6Addr::UNSPECIFIED);
        self.role_index
            .as_ref()
            .map(|(_, index)| index.iter().map(|(a, t)| (*a, t.clone())).collect())
            .unwrap_or_default()
    }

    /// Chooses an instance for a new connection with the configured strategy: see
    /// [`Registry::pick_with`].
    pub fn pick(
        &mut self,
        role: &RoleName,
        req: &semver::VersionReq,
        client: Option<IpAddr>,
        exclude: &[InstanceKey],
        now: Instant,
    ) -> Option<Instance> {
        self.pick_with(self.config.strategy, role, req, client, exclude, now)
    }

    /// Chooses an instance of `role` in `req` for a new connection from `client`, skipping
    /// `exclude` (the instances already tried for this connection) and, unless nothing else is
    /// left, instances that failed recently and instances on nodes SWIM declared down. `None`
    /// when no healthy instance remains.
    pub fn pick_with(
        &mut self,
        strategy: Strategy,
        role: &RoleName,
        req: &semver::VersionReq,
        client: Option<IpAddr>,
        exclude: &[InstanceKey],
        now: Instant,
    ) -> Option<Instance> {
        let candidates = self.replica.lookup(role, req);
        let pool = format!("{role}@{req}");
        let replica = &self.replica;
        let down = |i: &Instance| replica.is_down(&i.origin);
        self.balancer
            .pick(strategy, &pool, &candidates, client, exclude, &down, now)
    }

    /// A connection to `key` started (counts for least-outstanding and power of two).
    pub fn connection_started(&mut self, key: &InstanceKey) {
        self.balancer.connection_started(key);
    }

    /// A connection to `key` ended.
    pub fn connection_ended(&mut self, key: &InstanceKey) {
        self.balancer.connection_ended(key);
    }

    /// Open connections to `key` through this node.
    pub fn outstanding(&self, key: &InstanceKey) -> u32 {
        self.balancer.outstanding(key)
    }

    /// A dial to `key` was refused or unreachable: picks avoid it for
    /// [`RegistryConfig::suspect_for`]. Then pick again with it excluded.
    pub fn report_failure(&mut self, key: &InstanceKey, now: Instant) {
        self.balancer.report_failure(key, now);
    }

    // -----------------------------------------------------------------------------------------
    // Introspection
    // -----------------------------------------------------------------------------------------

    /// Counters.
    pub fn stats(&self) -> RegistryStats {
        RegistryStats {
            rejected: lock(&self.shared).rejected,
            ..self.stats
        }
    }

    /// This node's current announcement stamp (`None` before the first announcement).
    pub fn own_stamp(&self) -> Option<Stamp> {
        (self.version > 0).then_some(Stamp {
            incarnation: self.incarnation,
            version: self.version,
        })
    }

    /// The stamp held for `origin`, if any (live or expired).
    pub fn stamp_of(&self, origin: &NodeId) -> Option<Stamp> {
        self.replica.stamp(origin)
    }

    /// Origins with live announcements, in order.
    pub fn origins(&self) -> Vec<NodeId> {
        self.replica.origins()
    }

    /// How much of `origin`'s lease is left (for status displays); `None` if it has no live
    /// announcement. This node's own entry never expires locally.
    pub fn lease_remaining(&self, origin: &NodeId, now: Instant) -> Option<Duration> {
        self.replica.signed(origin, now).map(|(_, left)| left)
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// `bytes + 1` as a 256-bit big-endian number, saturating at all ones.
fn increment(mut bytes: [u8; 32]) -> [u8; 32] {
    for b in bytes.iter_mut().rev() {
        if *b == 0xff {
            *b = 0;
        } else {
            *b += 1;
            return bytes;
        }
    }
    [0xff; 32]
}
