//! The simulator under `cargo test`: replays every saved failing seed, runs a few seeds of every
//! scenario, checks determinism, and proves with injected defects that the invariants catch bugs.

use std::path::PathBuf;

use svcnet_sim::scenarios::SCENARIOS;
use svcnet_sim::{fmt_seed, parse_seed, Defect, RunOpts};

fn assert_passes(name: &str, seed: u64) {
    let o = svcnet_sim::run(name, seed, &RunOpts::default()).expect("scenario exists");
    assert!(
        o.passed(),
        "{name} seed {} [{}] failed:\n  {}\nreplay: just sim {name} --seed {}",
        fmt_seed(seed),
        o.mix,
        o.violations.join("\n  "),
        fmt_seed(seed)
    );
}

/// Every seed in `sim/seeds/<scenario>.txt` (saved by `svcnet-sim` when it failed) passes now.
#[test]
fn saved_failing_seeds_replay() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("sim/seeds")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    for f in files {
        let name = f
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file name")
            .to_string();
        assert!(
            svcnet_sim::scenarios::find(&name).is_some(),
            "{} names no scenario",
            f.display()
        );
        for line in std::fs::read_to_string(&f).expect("seed file").lines() {
            let text = line.split('#').next().unwrap_or("").trim();
            if text.is_empty() {
                continue;
            }
            let seed =
                parse_seed(text).unwrap_or_else(|| panic!("{}: bad seed {text:?}", f.display()));
            assert_passes(&name, seed);
        }
    }
}

macro_rules! quick {
    ($($test:ident => $name:literal),* $(,)?) => {$(
        /// Two fresh seeds (well away from the ones `just sim` starts at).
        #[test]
        fn $test() {
            for seed in [0x7e57_0001u64, 0x7e57_0002] {
                assert_passes($name, seed);
            }
        }
    )*};
}

quick! {
    core_netstack => "core-netstack",
    core_integrity => "core-integrity",
    core_partition => "core-partition",
    core_oneway => "core-oneway",
    core_crash => "core-crash",
    core_churn => "core-churn",
    node_integrity => "node-integrity",
    node_partition => "node-partition",
    node_oneway => "node-oneway",
    node_crash => "node-crash",
    node_service_dies => "node-service-dies",
    node_many_streams => "node-many-streams",
    node_mux_tcp => "node-mux-tcp",
}

#[test]
fn every_scenario_has_a_quick_test() {
    assert_eq!(SCENARIOS.len(), 13, "add the new scenario to quick! above");
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    for name in ["core-partition", "core-netstack", "node-mux-tcp"] {
        let a = svcnet_sim::run(name, 42, &RunOpts::default()).expect("scenario");
        let b = svcnet_sim::run(name, 42, &RunOpts::default()).expect("scenario");
        let c = svcnet_sim::run(name, 43, &RunOpts::default()).expect("scenario");
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "{name}: same seed, different traces"
        );
        assert_eq!(a.events, b.events);
        assert_ne!(
            a.trace_hash, c.trace_hash,
            "{name}: different seeds, same trace"
        );
        assert_ne!(a.mix, c.mix, "{name}: the seed must derive the fault mix");
    }
}

/// The self-test: a defect injected behind a test-only switch is caught within K seeds.
fn detected_within(name: &str, defect: Defect, k: u64) -> u64 {
    let opts = RunOpts {
        defect: Some(defect),
        keep_log: false,
    };
    for seed in 1..=k {
        let o = svcnet_sim::run(name, seed, &opts).expect("scenario");
        if !o.passed() {
            assert!(
                o.violations.iter().any(|v| v.starts_with("integrity")),
                "{name} {defect:?}: failed for another reason: {:?}",
                o.violations
            );
            return seed;
        }
    }
    panic!("{name}: the injected defect {defect:?} went unnoticed for {k} seeds");
}

#[test]
fn self_test_core_level_catches_a_corrupted_byte() {
    detected_within("core-integrity", Defect::CorruptOneByte, 3);
}

#[test]
fn self_test_core_level_catches_a_dropped_write() {
    detected_within("core-integrity", Defect::DropOneWrite, 3);
}

#[test]
fn self_test_node_level_catches_a_corrupted_byte() {
    detected_within("node-integrity", Defect::CorruptOneByte, 5);
}

#[test]
fn self_test_node_level_catches_a_dropped_write() {
    detected_within("node-mux-tcp", Defect::DropOneWrite, 5);
}

#[test]
fn self_test_netstack_level_catches_a_corrupted_byte_and_a_dropped_write() {
    detected_within("core-netstack", Defect::CorruptOneByte, 3);
    detected_within("core-netstack", Defect::DropOneWrite, 3);
}
