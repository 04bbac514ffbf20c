//! The full local replica of the registry: the newest verified announcement of every origin.
//!
//! Every node keeps every origin's announcement and answers lookups from it without asking
//! anyone (the hyperseaport seed replicated its data to readers but still sent every lookup to
//! the writer). An announcement replaces the origin's previous one whole when its [`Stamp`] is
//! newer; one that is not newer is a replay and is refused. Each entry carries a local expiry
//! (receipt time plus the lease, shortened by what the forwarder says was left of it): when it
//! passes without a newer announcement the origin's instances disappear, so a crashed node's
//! instances go away after one lease. The expired stamp stays behind as a *tombstone* for a
//! while so that an old copy still circulating cannot bring the instances back.
//!
//! Nothing here checks signatures: callers insert only what [`super::announce::Announcement::verify`]
//! accepted. Maps are `BTreeMap`s, so every listing is in a fixed order.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::addressing::{RoleName, ServiceName};
use crate::identity::NodeId;
use crate::time::Instant;

use super::announce::{Announcement, InstanceSpec, Stamp};

/// Names one instance in the whole network: the origin node and its service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceKey {
    /// The node running the instance.
    pub origin: NodeId,
    /// The service on that node.
    pub service: ServiceName,
}

/// One instance as the replica knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The node running it; connections go to service `service` on this node.
    pub origin: NodeId,
    /// The service on the origin.
    pub service: ServiceName,
    /// Its role.
    pub role: RoleName,
    /// Its exact version.
    pub version: semver::Version,
    /// The origin's health verdict.
    pub healthy: bool,
    /// Natural port, if any.
    pub port: Option<u16>,
}

impl Instance {
    /// Its key.
    pub fn key(&self) -> InstanceKey {
        InstanceKey {
            origin: self.origin,
            service: self.service.clone(),
        }
    }

    fn from_spec(origin: NodeId, spec: &InstanceSpec) -> Instance {
        Instance {
            origin,
            service: spec.service.clone(),
            role: spec.role.clone(),
            version: spec.version.clone(),
            healthy: spec.healthy,
            port: spec.port,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    announcement: Announcement,
    /// The signed bytes, re-served to peers during anti-entropy.
    bytes: Vec<u8>,
    expires_at: Instant,
    /// Membership (SWIM) currently considers the origin down: picks avoid its instances until
    /// it is alive again or the lease runs out. (A soft signal: SWIM can be wrong about nodes
    /// that are reachable only through others, and failover covers a wrong pick.)
    down: bool,
}

#[derive(Clone, Debug)]
enum Slot {
    Live(Entry),
    Tombstone { stamp: Stamp, until: Instant },
}

impl Slot {
    /// When the slot next needs attention: the lease's end, or the tombstone's.
    fn deadline(&self) -> Instant {
        match self {
            Slot::Live(e) => e.expires_at,
            Slot::Tombstone { until, .. } => *until,
        }
    }

    fn stamp(&self) -> Stamp {
        match self {
            Slot::Live(e) => e.announcement.stamp,
            Slot::Tombstone { stamp, .. } => *stamp,
        }
    }
}

/// What [`Replica::offer`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Stored; the instances that appeared and disappeared (by key) compared with before.
    Accepted {
        /// New instance keys.
        added: Vec<InstanceKey>,
        /// Instance keys gone.
        removed: Vec<InstanceKey>,
        /// Whether the instance list differs from the previous one in any field (or the origin
        /// is new): `false` for a heartbeat that only renews the lease.
        changed: bool,
    },
    /// Not newer than what is held (a replay or a duplicate).
    Stale,
    /// A new origin while the replica already holds `max_origins`.
    Full,
}

/// What [`Replica::handle_timeout`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    /// Origins whose lease ran out, with the instance keys that disappeared.
    pub expired: Vec<(NodeId, Vec<InstanceKey>)>,
    /// Origins whose tombstone was dropped: nothing is remembered about them any more.
    pub forgotten: Vec<NodeId>,
}

/// Digest line: an origin and the stamp held for it.
pub type DigestEntry = (NodeId, Stamp);

/// The replica.
#[derive(Clone, Debug)]
pub struct Replica {
    slots: BTreeMap<NodeId, Slot>,
    /// `(deadline, origin)` of every slot, so that the next deadline is found without a scan
    /// (`poll_timeout` runs after every event, and a replica may hold thousands of origins).
    deadlines: BTreeSet<(Instant, NodeId)>,
    /// Origins with at least one instance of each role, so that a lookup (one per proxied
    /// connection) visits only the announcements that can answer it.
    by_role: BTreeMap<RoleName, BTreeSet<NodeId>>,
    max_origins: usize,
    tombstone_for: Duration,
}

impl Replica {
    /// An empty replica holding at most `max_origins` origins (tombstones included), keeping
    /// tombstones for `tombstone_for`.
    pub fn new(max_origins: usize, tombstone_for: Duration) -> Replica {
        Replica {
            slots: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            by_role: BTreeMap::new(),
            max_origins,
            tombstone_for,
        }
    }

    /// Stores `announcement` (already verified; `bytes` is its signed encoding) if it is newer
    /// than what is held for its origin. Its lease is counted from `now`, capped by `remaining`
    /// (what the forwarder had left of it).
    pub fn offer(
        &mut self,
        announcement: Announcement,
        bytes: Vec<u8>,
        remaining: Duration,
        now: Instant,
    ) -> Offer {
        let origin = announcement.origin;
        let (before, changed) = match self.slots.get(&origin) {
            Some(slot) if slot.stamp() >= announcement.stamp => return Offer::Stale,
            Some(Slot::Live(e)) => (
                keys(origin, &e.announcement.instances),
                e.announcement.instances != announcement.instances,
            ),
            Some(Slot::Tombstone { .. }) => (Vec::new(), true),
            None if self.slots.len() >= self.max_origins => return Offer::Full,
            None => (Vec::new(), true),
        };
        let lease = Duration::from_millis(u64::from(announcement.lease_ms)).min(remaining);
        let after = keys(origin, &announcement.instances);
        let added = after
            .iter()
            .filter(|k| !before.contains(k))
            .cloned()
            .collect();
        let removed = before
            .iter()
            .filter(|k| !after.contains(k))
            .cloned()
            .collect();
        // A node that announces again is evidently alive: clear a stale "down" mark.
        let slot = Slot::Live(Entry {
            announcement,
            bytes,
            expires_at: now + lease,
            down: false,
        });
        let roles: Vec<RoleName> = match &slot {
            Slot::Live(e) => e
                .announcement
                .instances
                .iter()
                .map(|i| i.role.clone())
                .collect(),
            Slot::Tombstone { .. } => Vec::new(),
        };
        self.deadlines.insert((slot.deadline(), origin));
        if let Some(old) = self.slots.insert(origin, slot) {
            self.deadlines.remove(&(old.deadline(), origin));
            if let Slot::Live(e) = old {
                self.unindex(origin, &e.announcement.instances);
            }
        }
        // Index after unindexing the old announcement: roles it shares with the new one stay.
        for role in roles {
            self.by_role.entry(role).or_default().insert(origin);
        }
        Offer::Accepted {
            added,
            removed,
            changed,
        }
    }

    /// The stamp held for `origin` (live or tombstone); `origin` is a node id or its raw bytes.
    pub fn stamp<K>(&self, origin: &K) -> Option<Stamp>
    where
        K: Ord + ?Sized,
        NodeId: Borrow<K>,
    {
        self.slots.get(origin).map(Slot::stamp)
    }

    /// The live announcement of `origin`.
    pub fn announcement(&self, origin: &NodeId) -> Option<&Announcement> {
        match self.slots.get(origin) {
            Some(Slot::Live(e)) => Some(&e.announcement),
            _ => None,
        }
    }

    /// The signed bytes of `origin`'s live announcement and how much of its lease is left.
    pub fn signed<K>(&self, origin: &K, now: Instant) -> Option<(&[u8], Duration)>
    where
        K: Ord + ?Sized,
        NodeId: Borrow<K>,
    {
        match self.slots.get(origin) {
            Some(Slot::Live(e)) => Some((&e.bytes, e.expires_at.saturating_duration_since(now))),
            _ => None,
        }
    }

    /// Marks `origin` down (membership lost it) or alive again. Returns whether anything changed.
    pub fn set_down(&mut self, origin: &NodeId, down: bool) -> bool {
        match self.slots.get_mut(origin) {
            Some(Slot::Live(e)) if e.down != down => {
                e.down = down;
                true
            }
            _ => false,
        }
    }

    /// Whether membership currently considers `origin` down.
    pub fn is_down(&self, origin: &NodeId) -> bool {
        matches!(self.slots.get(origin), Some(Slot::Live(e)) if e.down)
    }

    /// Expires leases that ran out by `now` and forgets old tombstones.
    pub fn handle_timeout(&mut self, now: Instant) -> Expiry {
        let mut expired = Vec::new();
        let mut forgotten = Vec::new();
        while let Some(&(at, origin)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            match self.slots.remove(&origin) {
                Some(Slot::Live(e)) => {
                    self.unindex(origin, &e.announcement.instances);
                    expired.push((origin, keys(origin, &e.announcement.instances)));
                    let tomb = Slot::Tombstone {
                        stamp: e.announcement.stamp,
                        until: now + self.tombstone_for,
                    };
                    self.deadlines.insert((tomb.deadline(), origin));
                    self.slots.insert(origin, tomb);
                }
                // A tombstone past its time is forgotten.
                Some(Slot::Tombstone { .. }) => forgotten.push(origin),
                None => {}
            }
        }
        Expiry { expired, forgotten }
    }

    /// The next instant at which [`Replica::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Healthy instances of `role` whose version is in `req`, from origins whose lease has not
    /// run out, ordered by (origin, service). (Origins SWIM declared down are still listed:
    /// balancing avoids them, see [`Replica::is_down`].)
    pub fn lookup(&self, role: &RoleName, req: &semver::VersionReq) -> Vec<Instance> {
        let Some(origins) = self.by_role.get(role) else {
            return Vec::new();
        };
        let mut found: Vec<Instance> = origins
            .iter()
            .filter_map(|o| match self.slots.get(o) {
                Some(Slot::Live(e)) => Some(e),
                _ => None,
            })
            .flat_map(|e| {
                e.announcement
                    .instances
                    .iter()
                    .filter(|i| i.healthy && &i.role == role && req.matches(&i.version))
                    .map(|i| Instance::from_spec(e.announcement.origin, i))
            })
            .collect();
        // Announcements list instances in the origin's order; sort within each origin.
        found.sort_by(|a, b| (a.origin, &a.service).cmp(&(b.origin, &b.service)));
        found
    }

    /// Removes `origin`'s instances from the role index.
    fn unindex(&mut self, origin: NodeId, instances: &[InstanceSpec]) {
        for i in instances {
            if let Some(set) = self.by_role.get_mut(&i.role) {
                set.remove(&origin);
                if set.is_empty() {
                    self.by_role.remove(&i.role);
                }
            }
        }
    }

    /// Every instance held (healthy or not, down or not), ordered by (origin, service): for
    /// status displays and `/list`.
    pub fn all_instances(&self) -> Vec<Instance> {
        let mut all: Vec<Instance> = self
            .live()
            .flat_map(|e| {
                e.announcement
                    .instances
                    .iter()
                    .map(|i| Instance::from_spec(e.announcement.origin, i))
            })
            .collect();
        all.sort_by(|a, b| (a.origin, &a.service).cmp(&(b.origin, &b.service)));
        all
    }

    /// The instance `key`, if held (whatever its health).
    pub fn instance(&self, key: &InstanceKey) -> Option<Instance> {
        let a = self.announcement(&key.origin)?;
        a.instances
            .iter()
            .find(|i| i.service == key.service)
            .map(|i| Instance::from_spec(key.origin, i))
    }

    /// `(origin, stamp)` of every live entry whose origin's bytes are in `from..=to`, in order.
    /// (Bounds are raw bytes: `00…00` and `ff…ff` are not valid node ids.)
    pub fn digest(&self, from: &[u8; 32], to: &[u8; 32]) -> Vec<DigestEntry> {
        self.slots
            .iter()
            .filter(|(o, s)| {
                matches!(s, Slot::Live(_)) && o.as_bytes() >= from && o.as_bytes() <= to
            })
            .map(|(o, s)| (*o, s.stamp()))
            .collect()
    }

    /// Origins with a live entry, in order.
    pub fn origins(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Live(_)))
            .map(|(o, _)| *o)
            .collect()
    }

    /// Number of origins held (live and tombstones).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn live(&self) -> impl Iterator<Item = &Entry> {
        self.slots.values().filter_map(|s| match s {
            Slot::Live(e) => Some(e),
            Slot::Tombstone { .. } => None,
        })
    }
}

fn keys(origin: NodeId, instances: &[InstanceSpec]) -> Vec<InstanceKey> {
    instances
        .iter()
        .map(|i| InstanceKey {
            origin,
            service: i.service.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    fn spec(service: &str, role: &str, version: &str, healthy: bool) -> InstanceSpec {
        InstanceSpec {
            service: ServiceName::parse(service).unwrap(),
            role: RoleName::parse(role).unwrap(),
            version: semver::Version::parse(version).unwrap(),
            healthy,
            port: None,
        }
    }

    fn ann(key: &NodeKey, version: u64, instances: Vec<InstanceSpec>) -> Announcement {
        Announcement {
            origin: key.node_id(),
            stamp: Stamp {
                incarnation: 1,
                version,
            },
            lease_ms: 10_000,
            instances,
        }
    }

    /// The role index follows replacements (roles kept, added, dropped) and expiry; lookups
    /// are sorted by (origin, service) whatever the announcement's order.
    #[test]
    fn the_role_index_follows_every_change() {
        let (a, b) = (NodeKey::from_seed([1; 32]), NodeKey::from_seed([2; 32]));
        let mut r = Replica::new(8, Duration::from_secs(60));
        let t = Instant::from_millis(0);
        let any = semver::VersionReq::STAR;
        let db = RoleName::parse("db").unwrap();
        let web = RoleName::parse("web").unwrap();
        let long = Duration::from_secs(100);
        let list = vec![
            spec("z", "db", "1.0.0", true),
            spec("a", "db", "1.1.0", true),
        ];
        r.offer(ann(&a, 1, list), vec![], long, t);
        let names: Vec<String> = r
            .lookup(&db, &any)
            .iter()
            .map(|i| i.service.to_string())
            .collect();
        assert_eq!(names, ["a", "z"]);
        // Same role kept, another added.
        let list = vec![
            spec("a", "db", "1.2.0", true),
            spec("w", "web", "2.0.0", true),
        ];
        r.offer(ann(&a, 2, list), vec![], long, t);
        assert_eq!(r.lookup(&db, &any).len(), 1);
        assert_eq!(r.lookup(&web, &any).len(), 1);
        r.offer(
            ann(&b, 1, vec![spec("x", "db", "1.0.0", true)]),
            vec![],
            Duration::from_secs(5),
            t,
        );
        assert_eq!(r.lookup(&db, &any).len(), 2);
        // Role dropped.
        r.offer(
            ann(&a, 3, vec![spec("w", "web", "2.0.0", true)]),
            vec![],
            long,
            t,
        );
        assert_eq!(r.lookup(&db, &any).len(), 1);
        // Expiry of b (5 s).
        r.handle_timeout(t + Duration::from_secs(6));
        assert!(r.lookup(&db, &any).is_empty());
        assert!(!r.by_role.contains_key(&db));
        assert_eq!(r.lookup(&web, &any).len(), 1);
    }
}
