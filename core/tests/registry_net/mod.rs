//! An in-memory network of registries for the registry tests: N `Registry` instances wired by
//! message queues, a simulated clock that jumps to the next event (no sleeping), seeded loss,
//! latency, partitions, crashes and restarts. Health checks are answered from a table.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use svcnet_core::addressing::{RoleName, ServiceName};
use svcnet_core::identity::{NodeId, NodeKey};
use svcnet_core::registry::{
    LocalInstance, Registry, RegistryConfig, RegistryEvent, RemovalReason, Stamp,
};
use svcnet_core::rng::SplitMix64;
use svcnet_core::time::Instant;

pub fn key(i: usize) -> NodeKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    seed[31] = 0x5a;
    NodeKey::from_seed(seed)
}

pub fn instance(service: &str, role_at_version: &str) -> LocalInstance {
    let (role, version) = role_at_version.split_once('@').expect("role@version");
    LocalInstance {
        service: ServiceName::parse(service).unwrap(),
        role: RoleName::parse(role).unwrap(),
        version: semver::Version::parse(version).unwrap(),
        port: None,
        http_path: None,
    }
}

pub fn role(name: &str) -> RoleName {
    RoleName::parse(name).unwrap()
}

pub fn req(text: &str) -> semver::VersionReq {
    semver::VersionReq::parse(text).unwrap()
}

/// A message in flight.
#[derive(Debug)]
struct Flight {
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

pub struct Net {
    pub nodes: Vec<Registry>,
    pub ids: Vec<NodeId>,
    pub now: Instant,
    pub config: RegistryConfig,
    links: BTreeSet<(usize, usize)>,
    cut: BTreeSet<(usize, usize)>,
    pub crashed: BTreeSet<usize>,
    queue: BTreeMap<(Instant, u64), Flight>,
    seq: u64,
    rng: SplitMix64,
    /// Probability of losing a message, in thousandths.
    pub loss_per_mille: u64,
    pub latency: Duration,
    /// Deliver to nodes that are not directly linked, over a path of links (as the frontend's
    /// routing through relays would), at one latency per hop. Off: only direct links carry.
    pub routed: bool,
    /// Cached shortest paths; cleared whenever the topology changes.
    routes: Option<Vec<Vec<usize>>>,
    /// Health verdicts answered to HealthCheckDue (default healthy).
    pub health: BTreeMap<(usize, ServiceName), bool>,
    /// Every event, with the node and time.
    pub events: Vec<(Instant, usize, RegistryEvent)>,
    /// Messages delivered and dropped.
    pub delivered: u64,
    pub dropped: u64,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Net {
    /// `n` registries, every one authorizing every other, no links yet.
    pub fn new(n: usize, config: RegistryConfig, seed: u64) -> Net {
        let now = Instant::from_millis(1_000);
        let ids: Vec<NodeId> = (0..n).map(|i| key(i).node_id()).collect();
        let nodes = (0..n)
            .map(|i| Net::make(i, &ids, &config, seed, 1, now))
            .collect();
        Net {
            nodes,
            ids,
            now,
            config,
            links: BTreeSet::new(),
            cut: BTreeSet::new(),
            crashed: BTreeSet::new(),
            queue: BTreeMap::new(),
            seq: 0,
            rng: SplitMix64::new(seed ^ 0xfeed),
            loss_per_mille: 0,
            latency: Duration::from_millis(5),
            routed: false,
            routes: None,
            health: BTreeMap::new(),
            events: Vec::new(),
            delivered: 0,
            dropped: 0,
        }
    }

    fn make(
        i: usize,
        ids: &[NodeId],
        config: &RegistryConfig,
        seed: u64,
        incarnation: u64,
        now: Instant,
    ) -> Registry {
        let mut c = config.clone();
        c.seed = seed
            .wrapping_mul(1000)
            .wrapping_add(i as u64 * 7 + incarnation);
        let mut r = Registry::new(key(i), incarnation, c, now);
        for (j, id) in ids.iter().enumerate() {
            if j != i {
                r.authorize(*id);
            }
        }
        r
    }

    /// Links `a` and `b` (a connection comes up).
    pub fn connect(&mut self, a: usize, b: usize) {
        self.routes = None;
        self.links.insert(pair(a, b));
        if !self.crashed.contains(&a) && !self.crashed.contains(&b) {
            let (ida, idb, now) = (self.ids[a], self.ids[b], self.now);
            self.nodes[a].peer_connected(idb, now);
            self.nodes[b].peer_connected(ida, now);
            self.flush(a);
            self.flush(b);
        }
    }

    pub fn full_mesh(&mut self) {
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                self.connect(a, b);
            }
        }
    }

    pub fn chain(&mut self) {
        for a in 1..self.nodes.len() {
            self.connect(a - 1, a);
        }
    }

    fn usable(&self, a: usize, b: usize) -> bool {
        let p = pair(a, b);
        self.links.contains(&p)
            && !self.cut.contains(&p)
            && !self.crashed.contains(&a)
            && !self.crashed.contains(&b)
    }

    /// Number of links on the shortest usable path from `a` to `b` (1 for a direct link).
    fn hops(&mut self, a: usize, b: usize) -> Option<usize> {
        if self.usable(a, b) {
            return Some(1);
        }
        if !self.routed || self.crashed.contains(&a) || self.crashed.contains(&b) {
            return None;
        }
        if self.routes.is_none() {
            self.routes = Some(self.all_pairs());
        }
        let d = self.routes.as_ref()?[a][b];
        (d != usize::MAX).then_some(d)
    }

    /// Shortest path lengths over usable links (BFS from every node).
    fn all_pairs(&self) -> Vec<Vec<usize>> {
        let n = self.nodes.len();
        let mut adjacency = vec![Vec::new(); n];
        for &(a, b) in &self.links {
            if self.usable(a, b) {
                adjacency[a].push(b);
                adjacency[b].push(a);
            }
        }
        (0..n)
            .map(|start| {
                let mut dist = vec![usize::MAX; n];
                dist[start] = 0;
                let mut queue = std::collections::VecDeque::from([start]);
                while let Some(x) = queue.pop_front() {
                    for &y in &adjacency[x] {
                        if dist[y] == usize::MAX {
                            dist[y] = dist[x] + 1;
                            queue.push_back(y);
                        }
                    }
                }
                dist
            })
            .collect()
    }

    /// Cuts every link between `group` and the rest; both sides see the connections drop.
    pub fn partition(&mut self, group: &[usize]) {
        self.routes = None;
        let links: Vec<(usize, usize)> = self.links.iter().copied().collect();
        for (a, b) in links {
            if group.contains(&a) != group.contains(&b) {
                self.cut.insert((a, b));
                self.disconnect_pair(a, b);
            }
        }
    }

    fn disconnect_pair(&mut self, a: usize, b: usize) {
        let (ida, idb, now) = (self.ids[a], self.ids[b], self.now);
        if !self.crashed.contains(&a) {
            self.nodes[a].peer_disconnected(&idb, now);
            self.flush(a);
        }
        if !self.crashed.contains(&b) {
            self.nodes[b].peer_disconnected(&ida, now);
            self.flush(b);
        }
    }

    /// Restores every cut link; connections come back up.
    pub fn heal(&mut self) {
        self.routes = None;
        let cut: Vec<(usize, usize)> = std::mem::take(&mut self.cut).into_iter().collect();
        for (a, b) in cut {
            self.connect(a, b);
        }
    }

    /// Node `i` stops dead: no withdrawal, nothing sent or received; its neighbours notice the
    /// connections dropping.
    pub fn crash(&mut self, i: usize) {
        self.routes = None;
        self.crashed.insert(i);
        let links: Vec<(usize, usize)> = self.links.iter().copied().collect();
        for (a, b) in links {
            if a == i || b == i {
                let other = if a == i { b } else { a };
                if !self.crashed.contains(&other) {
                    let (id, now) = (self.ids[i], self.now);
                    self.nodes[other].peer_disconnected(&id, now);
                    self.flush(other);
                }
            }
        }
    }

    /// Node `i` starts again (fresh state, same key) with `incarnation` and reconnects.
    pub fn restart(&mut self, i: usize, incarnation: u64, seed: u64) {
        self.routes = None;
        self.nodes[i] = Net::make(i, &self.ids, &self.config, seed, incarnation, self.now);
        self.crashed.remove(&i);
        let links: Vec<(usize, usize)> = self.links.iter().copied().collect();
        for (a, b) in links {
            if (a == i || b == i) && !self.cut.contains(&(a, b)) {
                self.connect(a, b);
            }
        }
    }

    pub fn set_instances(&mut self, i: usize, instances: Vec<LocalInstance>) {
        let now = self.now;
        self.nodes[i].set_local_instances(instances, now).unwrap();
        self.flush(i);
    }

    pub fn withdraw(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].withdraw(now);
        self.flush(i);
    }

    /// Moves node `i`'s output into the network and answers its health checks.
    fn flush(&mut self, i: usize) {
        loop {
            while let Some((to, bytes)) = self.nodes[i].poll_transmit() {
                let Some(j) = self.ids.iter().position(|id| *id == to) else {
                    continue;
                };
                let Some(hops) = self.hops(i, j) else {
                    self.dropped += 1;
                    continue;
                };
                if self.rng.below(1000) < self.loss_per_mille {
                    self.dropped += 1;
                    continue;
                }
                self.seq += 1;
                self.queue.insert(
                    (self.now + self.latency * hops as u32, self.seq),
                    Flight {
                        from: i,
                        to: j,
                        bytes,
                    },
                );
            }
            let mut checks = Vec::new();
            while let Some(e) = self.nodes[i].poll_event() {
                if let RegistryEvent::HealthCheckDue { service, .. } = &e {
                    checks.push(service.clone());
                }
                self.events.push((self.now, i, e));
            }
            if checks.is_empty() {
                break;
            }
            for service in checks {
                let healthy = *self.health.get(&(i, service.clone())).unwrap_or(&true);
                let now = self.now;
                self.nodes[i].handle_health_result(&service, healthy, now);
            }
        }
    }

    fn next_time(&self) -> Option<Instant> {
        let timers = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.crashed.contains(i))
            .filter_map(|(_, n)| n.poll_timeout())
            .min();
        let flight = self.queue.keys().next().map(|(t, _)| *t);
        [timers, flight].into_iter().flatten().min()
    }

    /// Runs every event up to and including `deadline`, then sets the clock to it.
    pub fn run_until(&mut self, deadline: Instant) {
        let mut steps = 0u64;
        while let Some(t) = self.next_time() {
            if t > deadline {
                break;
            }
            steps += 1;
            assert!(steps < 50_000_000, "simulation does not settle");
            self.now = self.now.max(t);
            // Deliver everything due.
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let f = entry.remove();
                // What a node sent before it crashed still arrives.
                let p = pair(f.from, f.to);
                let lost = if self.links.contains(&p) {
                    self.cut.contains(&p)
                } else {
                    self.hops(f.from, f.to).is_none()
                };
                if lost || self.crashed.contains(&f.to) {
                    self.dropped += 1;
                    continue;
                }
                self.delivered += 1;
                let (from, now) = (self.ids[f.from], self.now);
                let _ = self.nodes[f.to].handle_message(from, &f.bytes, now);
                self.flush(f.to);
            }
            for i in 0..self.nodes.len() {
                if self.crashed.contains(&i) {
                    continue;
                }
                if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                    let now = self.now;
                    self.nodes[i].handle_timeout(now);
                    self.flush(i);
                }
            }
        }
        self.now = self.now.max(deadline);
    }

    pub fn run_for(&mut self, d: Duration) {
        let deadline = self.now + d;
        self.run_until(deadline);
    }

    /// Runs until `done` holds (checked every 100 ms of simulated time) or `limit` passes;
    /// returns the time it took.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Net) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        while self.now < start + limit {
            if done(self) {
                return Some(self.now - start);
            }
            self.run_for(Duration::from_millis(100));
        }
        done(self).then(|| self.now - start)
    }

    /// The (origin → stamp) view of node `i` for the given origins.
    pub fn view(&self, i: usize, origins: &[usize]) -> Vec<Option<Stamp>> {
        origins
            .iter()
            .map(|o| {
                if *o == i {
                    self.nodes[i].own_stamp()
                } else {
                    self.nodes[i].stamp_of(&self.ids[*o])
                }
            })
            .collect()
    }

    /// Whether every live node holds the same stamp as each live origin's own.
    pub fn converged(&self) -> bool {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !self.crashed.contains(i))
            .collect();
        let truth = |o: usize| self.nodes[o].own_stamp();
        live.iter().all(|&i| {
            live.iter()
                .all(|&o| o == i || self.nodes[i].stamp_of(&self.ids[o]) == truth(o))
        })
    }

    /// Whether every live node holds the same instances (stamps may differ by heartbeats in
    /// flight).
    pub fn same_instances(&self) -> bool {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !self.crashed.contains(i))
            .collect();
        let first = self.nodes[live[0]].instances();
        live.iter().all(|&i| self.nodes[i].instances() == first)
    }

    /// Removal events of origin `o`'s instances at node `i`, with their reasons.
    pub fn removals(&self, i: usize, o: usize) -> Vec<RemovalReason> {
        self.events
            .iter()
            .filter_map(|(_, n, e)| match e {
                RegistryEvent::InstanceRemoved { key, reason }
                    if *n == i && key.origin == self.ids[o] =>
                {
                    Some(*reason)
                }
                _ => None,
            })
            .collect()
    }

    /// A hash of every event in order, for determinism checks.
    pub fn trace_hash(&self) -> String {
        let mut h = blake3::Hasher::new();
        for (t, i, e) in &self.events {
            h.update(format!("{t:?} {i} {e:?}\n").as_bytes());
        }
        h.finalize().to_hex().to_string()
    }
}
