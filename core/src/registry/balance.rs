//! Load balancing over a role's healthy instances, per connection, and failover bookkeeping.
//!
//! The frontend asks for an instance for each new client connection ([`Balancer::pick`]), tells
//! the balancer when a connection to it starts and ends (for least-outstanding and
//! power-of-two), and when a dial fails it reports the instance ([`Balancer::report_failure`])
//! and picks again with the failed instances excluded — before the client's SYN is answered, so
//! the client sees no failure while a healthy instance is left. A failed instance is *suspect*
//! for a short while: picks avoid it unless nothing else is left (the hyperseaport seed banned
//! a failed instance locally for 10 s and dropped the connection when none was left; here the
//! connection still gets the suspect as a last resort).
//!
//! Strategies:
//! - [`Strategy::RoundRobin`]: a cursor per (role, range) walks the instances in key order;
//!   per connection, not per refresh tick (the seed rotated only every 5 s).
//! - [`Strategy::LeastOutstanding`]: the instance with the fewest open connections from this
//!   node; ties rotate.
//! - [`Strategy::PowerOfTwo`]: two distinct instances drawn from the seeded generator, the less
//!   loaded one wins ("the power of two choices", Mitzenmacher 2001): near-least-loaded without
//!   the herd effect of every node choosing the same idle instance.
//! - [`Strategy::Sticky`]: rendezvous (highest-random-weight) hashing of the client address
//!   over the instances: a client keeps its instance while it exists, and removing one instance
//!   moves only that instance's clients. Without a client address it falls back to power of two.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::rng::SplitMix64;
use crate::time::Instant;

use super::replica::{Instance, InstanceKey};

/// How to choose among a role's healthy instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Each instance in turn.
    RoundRobin,
    /// Fewest connections opened through this node and not yet ended.
    LeastOutstanding,
    /// The less loaded of two random instances.
    #[default]
    PowerOfTwo,
    /// Same client address, same instance (rendezvous hashing).
    Sticky,
}

/// Most (role, range) cursors kept; beyond it they are reset (round robin restarts).
const MAX_CURSORS: usize = 4096;

/// Balancer state: cursors, outstanding connections, suspects.
#[derive(Debug)]
pub struct Balancer {
    rng: SplitMix64,
    cursors: BTreeMap<String, u64>,
    outstanding: BTreeMap<InstanceKey, u32>,
    suspects: BTreeMap<InstanceKey, Instant>,
    suspect_for: Duration,
}

impl Balancer {
    /// A balancer drawing from `seed`, keeping failed instances suspect for `suspect_for`.
    pub fn new(seed: u64, suspect_for: Duration) -> Balancer {
        Balancer {
            rng: SplitMix64::new(seed),
            cursors: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            suspects: BTreeMap::new(),
            suspect_for,
        }
    }

    /// Chooses one of `candidates` (the healthy instances of a lookup, in key order) that is not
    /// in `exclude`, preferring instances that are neither suspect nor `avoid`ed (the registry
    /// avoids instances whose node SWIM declared down). `pool` names the (role, range) for
    /// round-robin cursors. `None` only when every candidate is excluded.
    #[allow(clippy::too_many_arguments)]
    pub fn pick(
        &mut self,
        strategy: Strategy,
        pool: &str,
        candidates: &[Instance],
        client: Option<IpAddr>,
        exclude: &[InstanceKey],
        avoid: &dyn Fn(&Instance) -> bool,
        now: Instant,
    ) -> Option<Instance> {
        let allowed: Vec<&Instance> = candidates
            .iter()
            .filter(|i| !exclude.contains(&i.key()))
            .collect();
        let fresh: Vec<&Instance> = allowed
            .iter()
            .copied()
            .filter(|i| !self.is_suspect(&i.key(), now) && !avoid(i))
            .collect();
        let set = if fresh.is_empty() { allowed } else { fresh };
        if set.is_empty() {
            return None;
        }
        let index = match (strategy, client) {
            (Strategy::RoundRobin, _) => self.next_cursor(pool) % set.len(),
            (Strategy::LeastOutstanding, _) => {
                let load = |i: &&Instance| self.outstanding(&i.key());
                let least = set.iter().map(load).min().unwrap_or(0);
                let tied: Vec<usize> = (0..set.len()).filter(|&k| load(&set[k]) == least).collect();
                tied[self.next_cursor(pool) % tied.len()]
            }
            (Strategy::Sticky, Some(client)) => (0..set.len())
                .max_by_key(|&k| rendezvous_weight(client, &set[k].key()))
                .unwrap_or(0),
            (Strategy::PowerOfTwo | Strategy::Sticky, _) => {
                let n = set.len() as u64;
                if n == 1 {
                    0
                } else {
                    let a = self.rng.below(n) as usize;
                    // A second, distinct index: offset by 1..n.
                    let b = (a + 1 + self.rng.below(n - 1) as usize) % set.len();
                    if self.outstanding(&set[b].key()) < self.outstanding(&set[a].key()) {
                        b
                    } else {
                        a
                    }
                }
            }
        };
        set.get(index).map(|i| (*i).clone())
    }

    fn next_cursor(&mut self, pool: &str) -> usize {
        if self.cursors.len() >= MAX_CURSORS && !self.cursors.contains_key(pool) {
            self.cursors.clear();
        }
        let cursor = self.cursors.entry(pool.to_string()).or_insert(0);
        let value = *cursor;
        *cursor = cursor.wrapping_add(1);
        // Truncation on 32-bit targets only shortens the cycle; the modulo stays fair.
        value as usize
    }

    /// A connection to `key` was opened.
    pub fn connection_started(&mut self, key: &InstanceKey) {
        *self.outstanding.entry(key.clone()).or_insert(0) += 1;
    }

    /// A connection to `key` ended (or its dial failed after `connection_started`).
    pub fn connection_ended(&mut self, key: &InstanceKey) {
        if let Some(n) = self.outstanding.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.outstanding.remove(key);
            }
        }
    }

    /// Open connections to `key` through this node.
    pub fn outstanding(&self, key: &InstanceKey) -> u32 {
        self.outstanding.get(key).copied().unwrap_or(0)
    }

    /// A dial to `key` was refused or timed out: avoid it for a while.
    pub fn report_failure(&mut self, key: &InstanceKey, now: Instant) {
        self.suspects.insert(key.clone(), now + self.suspect_for);
    }

    /// Whether `key` is avoided after a recent failure.
    pub fn is_suspect(&self, key: &InstanceKey, now: Instant) -> bool {
        self.suspects.get(key).is_some_and(|until| *until > now)
    }

    /// Forgets suspicions that ran out.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.suspects.retain(|_, until| *until > now);
    }

    /// When a suspicion runs out next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.suspects.values().min().copied()
    }

    /// Drops the state of instances that no longer exist.
    pub fn forget(&mut self, key: &InstanceKey) {
        self.suspects.remove(key);
        self.outstanding.remove(key);
    }
}

/// Rendezvous weight of (client, instance): the first 8 bytes of a keyed blake3 hash.
fn rendezvous_weight(client: IpAddr, key: &InstanceKey) -> u64 {
    let mut h = blake3::Hasher::new_derive_key("svcnet registry sticky v1");
    match client {
        IpAddr::V4(a) => h.update(&a.to_ipv6_mapped().octets()),
        IpAddr::V6(a) => h.update(&a.octets()),
    };
    h.update(key.origin.as_bytes());
    h.update(key.service.as_str().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_be_bytes(first)
}
