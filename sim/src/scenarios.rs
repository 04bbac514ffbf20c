//! The scenario registry: every scenario `just sim` knows, by name.
//!
//! Adding a scenario is one entry here plus, at most, one function: core-level scenarios are a
//! [`CoreSpec`] (nodes, chaos length, which faults the swarm may switch on); whole-node scenarios
//! are a [`turmoil_level::NodeSpec`] run by [`crate::turmoil_level`]. Plug-in points for the subsystems that
//! land later (see `docs/simulation.md`): the netstack (many TCP connections through the
//! user-space stack: `core-netstack` drives it at core level; a node-level variant would be a
//! `NodeSpec` whose clients dial service IPs through a simulated TUN), the
//! registry (convergence after healing: a core-level spec with a registry per node and an
//! invariant in `core_level::World::check_end`), DNS (names resolve to the right service
//! addresses during churn).

use std::time::Duration;

use crate::core_level::{self, CoreSpec};
use crate::mix::{Knob, Profile};
use crate::turmoil_level;
use crate::{Outcome, RunOpts};

/// One named scenario.
pub struct ScenarioDef {
    pub name: &'static str,
    /// `core` (sans-IO harness) or `node` (turmoil, real transport).
    pub level: &'static str,
    pub about: &'static str,
    pub run: fn(u64, &RunOpts) -> Outcome,
}

use Knob::{On, Swarm};

const CORE_INTEGRITY: CoreSpec = CoreSpec {
    name: "core-integrity",
    nodes: 3,
    chaos: Duration::from_secs(5),
    profile: Profile {
        loss: On,
        dup: Swarm,
        corrupt: Swarm,
        reorder: Swarm,
        bandwidth: Swarm,
        resets: Swarm,
        streams: (16, 48),
        ..Profile::QUIET
    },
};

const CORE_PARTITION: CoreSpec = CoreSpec {
    name: "core-partition",
    nodes: 3,
    chaos: Duration::from_secs(15),
    profile: Profile {
        partitions: On,
        oneway: Swarm,
        loss: Swarm,
        reorder: Swarm,
        resets: Swarm,
        streams: (16, 48),
        ..Profile::QUIET
    },
};

const CORE_ONEWAY: CoreSpec = CoreSpec {
    name: "core-oneway",
    nodes: 3,
    chaos: Duration::from_secs(15),
    profile: Profile {
        oneway: On,
        loss: Swarm,
        dup: Swarm,
        streams: (16, 48),
        ..Profile::QUIET
    },
};

const CORE_CRASH: CoreSpec = CoreSpec {
    name: "core-crash",
    nodes: 4,
    chaos: Duration::from_secs(15),
    profile: Profile {
        crashes: On,
        partitions: Swarm,
        loss: Swarm,
        reorder: Swarm,
        resets: Swarm,
        streams: (16, 48),
        ..Profile::QUIET
    },
};

const CORE_CHURN: CoreSpec = CoreSpec {
    name: "core-churn",
    nodes: 4,
    chaos: Duration::from_secs(8),
    profile: Profile {
        resets: On,
        // No bandwidth limit: hundreds of streams of up to 256 KiB would need minutes at the
        // lowest rates (core-integrity covers rate limits).
        loss: Swarm,
        reorder: Swarm,
        streams: (100, 300),
        ..Profile::QUIET
    },
};

macro_rules! core_scenario {
    ($f:ident, $spec:expr) => {
        fn $f(seed: u64, opts: &RunOpts) -> Outcome {
            core_level::run(&$spec, seed, opts)
        }
    };
}
core_scenario!(core_integrity, CORE_INTEGRITY);
core_scenario!(core_partition, CORE_PARTITION);
core_scenario!(core_oneway, CORE_ONEWAY);
core_scenario!(core_crash, CORE_CRASH);
core_scenario!(core_churn, CORE_CHURN);

macro_rules! node_scenario {
    ($f:ident, $spec:expr) => {
        fn $f(seed: u64, opts: &RunOpts) -> Outcome {
            turmoil_level::run(&$spec, seed, opts)
        }
    };
}
node_scenario!(node_integrity, turmoil_level::INTEGRITY);
node_scenario!(node_partition, turmoil_level::PARTITION);
node_scenario!(node_oneway, turmoil_level::ONEWAY);
node_scenario!(node_crash, turmoil_level::CRASH);
node_scenario!(node_service_dies, turmoil_level::SERVICE_DIES);
node_scenario!(node_many_streams, turmoil_level::MANY_STREAMS);

fn node_mux_tcp(seed: u64, opts: &RunOpts) -> Outcome {
    turmoil_level::mux_tcp::run(seed, opts)
}

/// Every scenario, in the order `just sim` runs them.
pub const SCENARIOS: &[ScenarioDef] = &[
    ScenarioDef {
        name: core_level::netstack::NAME,
        level: "core",
        about: "hundreds of TCP connections through the netstack from client stacks behind a lossy, duplicating, corrupting, reordering packet link",
        run: core_level::netstack::run,
    },
    ScenarioDef {
        name: "core-integrity",
        level: "core",
        about: "mux streams over lossy, duplicating, corrupting, reordering, rate-limited links",
        run: core_integrity,
    },
    ScenarioDef {
        name: "core-partition",
        level: "core",
        about: "partitions that heal; peers redial with backoff; streams fail loudly or complete",
        run: core_partition,
    },
    ScenarioDef {
        name: "core-oneway",
        level: "core",
        about: "one-way partitions: dead-link detection on the deaf side",
        run: core_oneway,
    },
    ScenarioDef {
        name: "core-crash",
        level: "core",
        about: "nodes crash (state lost, no goodbye) and restart",
        run: core_crash,
    },
    ScenarioDef {
        name: "core-churn",
        level: "core",
        about: "hundreds of streams, services dying mid-stream",
        run: core_churn,
    },
    ScenarioDef {
        name: "node-integrity",
        level: "node",
        about: "quinn over turmoil UDP with loss and latency: echo bytes intact",
        run: node_integrity,
    },
    ScenarioDef {
        name: "node-partition",
        level: "node",
        about: "partition and heal between two daemons",
        run: node_partition,
    },
    ScenarioDef {
        name: "node-oneway",
        level: "node",
        about: "one-way partition between two daemons",
        run: node_oneway,
    },
    ScenarioDef {
        name: "node-crash",
        level: "node",
        about: "a daemon crashes and restarts; peers reconnect",
        run: node_crash,
    },
    ScenarioDef {
        name: "node-service-dies",
        level: "node",
        about: "the service host dies mid-stream: both ends see an error",
        run: node_service_dies,
    },
    ScenarioDef {
        name: "node-many-streams",
        level: "node",
        about: "many concurrent proxied connections",
        run: node_many_streams,
    },
    ScenarioDef {
        name: "node-mux-tcp",
        level: "node",
        about: "the mux adapter over turmoil TCP",
        run: node_mux_tcp,
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static ScenarioDef> {
    SCENARIOS.iter().find(|s| s.name == name)
}
