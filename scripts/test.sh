#!/usr/bin/env bash
# The project's test command: setup, one debug build, Rust tests, then the Python client
# suite (tests/clients) driving the built `nexus` binary. Exits non-zero if anything fails.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

bash scripts/setup.sh

cargo build --bin nexus
cargo test --workspace

NEXUS_BIN="$repo/target/debug/nexus" .venv/bin/python -m pytest tests/clients -q
