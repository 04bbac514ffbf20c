#!/usr/bin/env bash
# `just sim-check [SEED]`: every scenario runs SEED twice, in two separate processes, and the
# trace hashes must match; SEED+1 must give a different hash. Any difference means something
# in a run is not a function of the seed (see docs/simulation.md, "Determinism").
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${1:-0x5eed}"
other=$(printf '%#x' $(( seed + 1 )))
cargo build --release -q -p svcnet-sim
bin="${CARGO_TARGET_DIR:-target}/release/svcnet-sim"
status=0
printf '%-20s %-18s %-16s %-16s %s\n' scenario seed run-1 run-2 seed+1
for s in $("$bin" --list); do
    a=$("$bin" "$s" --seed "$seed" --trace-hash --no-save | awk '{print $3}') || true
    b=$("$bin" "$s" --seed "$seed" --trace-hash --no-save | awk '{print $3}') || true
    c=$("$bin" "$s" --seed "$other" --trace-hash --no-save | awk '{print $3}') || true
    verdict=ok
    if [ -z "$a" ] || [ "$a" != "$b" ]; then verdict="NOT DETERMINISTIC"; status=1; fi
    if [ "$a" = "$c" ]; then verdict="SEED IGNORED (seed+1 gives the same trace)"; status=1; fi
    printf '%-20s %-18s %-16s %-16s %-16s %s\n' "$s" "$seed" "${a:0:16}" "${b:0:16}" "${c:0:16}" "$verdict"
done
exit $status
