//! Deterministic simulation of svcnet (`just sim`, `docs/simulation.md`).
//!
//! Two levels, one framework:
//! - [`core_level`]: a pure sans-IO harness. Several nodes, each a [`svcnet_core::peering::PeerBook`]
//!   and one mux [`svcnet_core::mux::Session`] per connection, wired by simulated segment links
//!   (loss, duplication, reordering, corruption, latency, bandwidth, cuts) on a simulated clock
//!   that jumps to the next due instant. No runtime, no threads.
//! - [`turmoil_level`]: whole nodes under turmoil 0.7: quinn over turmoil UDP with svcnet's real
//!   TLS configs and stream protocol, the mux adapter over turmoil TCP, real TCP services and
//!   clients, partitions and crashes.
//!
//! Every run is a function of `(scenario, seed)`: the seed derives the fault mix ([`mix::Mix`],
//! swarm testing) and every random choice. A run returns an [`Outcome`] whose trace hash
//! (blake3 over the event log, [`trace::Trace`]) is identical across processes for the same seed.
//! Scenarios are listed in [`scenarios::SCENARIOS`]; adding one is one function and one entry.

pub mod core_level;
pub mod mix;
pub mod scenarios;
pub mod trace;
pub mod turmoil_level;

pub use svcnet_core as core;

use std::collections::BTreeMap;

/// A deliberately injected defect, for the self-test that proves the invariants catch bugs.
/// Off in every normal run; the check it costs in the harness is one branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// Flip one byte of a link's byte stream after the segment checksum has passed (a bug in
    /// the transport under the mux).
    CorruptOneByte,
    /// Silently drop one application write on one stream end (a bug in a stream pump).
    DropOneWrite,
}

impl Defect {
    pub fn parse(s: &str) -> Option<Defect> {
        match s {
            "corrupt-byte" => Some(Defect::CorruptOneByte),
            "drop-write" => Some(Defect::DropOneWrite),
            _ => None,
        }
    }
}

/// Options of one run.
#[derive(Clone, Debug, Default)]
pub struct RunOpts {
    /// Test-only defect (self-test).
    pub defect: Option<Defect>,
    /// Keep the event log in the outcome (for `--trace`).
    pub keep_log: bool,
}

/// The result of one run of one scenario with one seed.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub scenario: &'static str,
    pub seed: u64,
    /// The fault mix the seed derived, printable.
    pub mix: String,
    /// blake3 of the event log, hex.
    pub trace_hash: String,
    pub events: u64,
    /// Simulated time at the end, in milliseconds.
    pub sim_millis: u64,
    /// Invariant violations; empty means the run passed.
    pub violations: Vec<String>,
    /// Counters for coverage (streams completed, failed, faults injected, …).
    pub counters: BTreeMap<&'static str, u64>,
    /// The event log, when asked for.
    pub log: Vec<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs one scenario with one seed. Panics inside the scenario become a violation, so a
/// crashing seed is reported (and saved) like any other failure.
pub fn run(name: &str, seed: u64, opts: &RunOpts) -> Option<Outcome> {
    let def = scenarios::find(name)?;
    let opts2 = opts.clone();
    let result = std::panic::catch_unwind(move || (def.run)(seed, &opts2));
    Some(match result {
        Ok(o) => o,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Outcome {
                scenario: def.name,
                seed,
                mix: String::new(),
                trace_hash: String::new(),
                events: 0,
                sim_millis: 0,
                violations: vec![format!("panicked: {msg}")],
                counters: BTreeMap::new(),
                log: Vec::new(),
            }
        }
    })
}

/// Parses a seed as decimal or `0x` hex.
pub fn parse_seed(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The canonical text of a seed.
pub fn fmt_seed(seed: u64) -> String {
    format!("{seed:#018x}")
}
