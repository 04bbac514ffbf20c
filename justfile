# svcnet tasks. Every recipe is a plain command too (see the lines below each name), so `just`
# is a convenience, not a requirement: `cargo install just` to get it.

export CARGO_BUILD_JOBS := env_var_or_default("CARGO_BUILD_JOBS", "2")

# List the recipes.
default:
    @just --list

# Build everything (debug).
build:
    cargo build --workspace

# All tests (the README's test command).
test:
    cargo test --workspace

# Formatting and lints as CI runs them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Exactly what CI runs.
ci:
    bash .ci/run

# Every benchmark; figures are printed as key=value.
bench: bench-mux bench-quic bench-netstack bench-tun

# The multiplexer against raw TCP and rust-yamux over loopback TCP (add --quick for a smoke run).
bench-mux *ARGS:
    cargo run --release -p svcnet-bench --bin bench-mux -- {{ARGS}}

# One TCP connection through two svcnet nodes over QUIC vs direct loopback TCP (--quick: smoke run).
bench-quic *ARGS:
    cargo run --release -p svcnet-bench --bin bench-quic -- {{ARGS}}

# iperf3 through svcnet in TUN mode between two network namespaces vs direct (root; --quick: smoke).
bench-tun *ARGS:
    cargo run --release -p svcnet-e2e --bin bench-tun -- {{ARGS}}

# The end-to-end tests alone (network namespaces, TUN: root).
e2e:
    cargo test -p svcnet-e2e
    cargo test -p svcnet --test daemon

# The main job on an embedded default: a two-node network on 127.0.0.1 serving a real HTTP service.
demo *ARGS:
    cargo run --release -p svcnet -- demo {{ARGS}}

# The netstack (user-space TCP on smoltcp) against an in-memory client stack (add --quick for a smoke run).
bench-netstack *ARGS:
    cargo run --release -p svcnet-bench --bin bench-netstack -- {{ARGS}}

# Simulation: every scenario over N seeds on all cores with a summary table, or one replay:
# `just sim`, `just sim core-crash --seeds 100`, `just sim node-crash --seed 0x2a` (see docs/simulation.md).
sim *ARGS:
    cargo run --release -q -p svcnet-sim -- {{ARGS}}

# Determinism check: each scenario's seed run twice in separate processes must give the same
# trace hash, and the next seed a different one.
sim-check SEED="0x5eed":
    bash sim/check.sh {{SEED}}

# Fuzz every target for SECONDS each (nightly and cargo-fuzz: `cargo install cargo-fuzz`).
fuzz SECONDS="60":
    cd fuzz && for t in $(cargo +nightly fuzz list); do cargo +nightly fuzz run "$t" corpus/"$t" -- -max_total_time={{SECONDS}} || exit 1; done
