#!/usr/bin/env bash
# Pipeline orchestration overhead: 100 no-op steps (a chain and a fan-out) through Nexus
# (`nexus up`, pipelines REST API) vs kfp.local's SubprocessRunner(use_venv=False), one run.
# Target: >= 20x less total overhead. How overhead is defined (and why that is fair) is in the
# header of benches/pipelines/bench.py. Prints a markdown table; does not write RESULTS.md.
#
# usage: benches/pipelines_bench.sh [--launcher bare|pip] [--steps 100] [--samples 20] [--json OUT]
#        NEXUS_BIN=... to pick the binary (default target/release/nexus if it has
#        `nexus pipeline`, else target/debug/nexus); BUILD=1 builds the release binary first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"

if ! "$PY" -c 'import kfp, requests, yaml' >/dev/null 2>&1; then
    echo "[pipelines_bench] .venv lacks kfp/requests: running scripts/setup.sh" >&2
    bash "$ROOT/scripts/setup.sh"
fi
if [[ "${BUILD:-0}" == 1 ]]; then
    cargo build --release --bin nexus
fi
exec "$PY" "$ROOT/benches/pipelines/bench.py" "$@"
