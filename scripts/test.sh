#!/usr/bin/env bash
# The project's test command: setup, one debug build, Rust tests, then the Python client
# suite (tests/clients) and the web console's browser tests (tests/console) driving the built
# `nexus` binary. Exits non-zero if anything fails.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

bash scripts/setup.sh
# The PyTorch backend plugin (.nexus/lib/libnexus_torch.so), for tests/clients/test_torch.py.
bash scripts/install-torch-backend.sh >/dev/null
# The Kafka-protocol broker the event tests start (built once into ~/.cache/nexus).
bash scripts/install-tansu.sh
# perf_analyzer (from the tritonclient wheel, into ~/.cache/nexus), for
# tests/clients/test_perf_analyzer.py and benches/compare.sh.
bash scripts/install-perf-analyzer.sh >/dev/null

# PostgreSQL runs on every machine (trust auth); tests that need it make their own
# database or schema there.
export NEXUS_TEST_POSTGRES_URL="${NEXUS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"

# One build: `cargo test` also builds target/debug/nexus (for tests/*.rs), with the same
# features the Python suite below then runs. A separate `cargo build` would compile ~140
# crates a second time with the non-test feature set.
cargo test --workspace
bash scripts/fuzz.sh  # every fuzz target for FUZZ_SECONDS (30) each; fails on a crash

NEXUS_BIN="$repo/target/debug/nexus" .venv/bin/python -m pytest tests/clients -q

# The web console in a real browser (tests/console): Debian's headless Chromium, driven by
# playwright-core, against `nexus up`; screenshots in target/console-screenshots/.
if ! command -v chromium >/dev/null 2>&1; then
    echo "test: installing chromium with apt-get"
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y chromium
fi
node_bin="$(bash scripts/install-node.sh)"
(cd tests/console && PATH="$node_bin:$PATH" npm ci --no-audit --no-fund --loglevel=error)
NEXUS_BIN="$repo/target/debug/nexus" "$node_bin/node" --test --test-concurrency=1 tests/console/
