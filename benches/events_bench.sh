#!/usr/bin/env bash
# What inference events cost serving: events off vs on at 100% sampling (in-process bus, and
# Kafka through a local tansu broker), side by side in one run. Target: <= 5% throughput cost.
# Prints a markdown table; does not write RESULTS.md (paste it into benches/results/NOTES.md and
# run benches/write_results.py).
#
# usage: benches/events_bench.sh [--rounds 3] [--duration 8] [--concurrency 1,16] [--json OUT]
#        BUILD=1 builds target/release/nexus first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh >/dev/null
bash scripts/install-tansu.sh >/dev/null
.venv/bin/python benches/make_models.py >/dev/null
if [[ "${BUILD:-0}" == 1 || ! -x target/release/nexus ]]; then
    cargo build --release --bin nexus
fi
exec .venv/bin/python benches/events/bench.py "$@"
