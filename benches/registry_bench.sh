#!/usr/bin/env bash
# Side-by-side benchmark of the Nexus registry (`nexus registry`, release build) and the pinned
# MLflow tracking server (`mlflow server`, SQLite backend), both on loopback, seeded with the
# same data. Measures in one run:
#   (a) wrk -t2 -c16 -d10s on four hot read endpoints (after checking both answer 200 with
#       identical results),
#   (b) one MLflow Python client workload end to end against each server,
#   (c) a 1 GiB streamed artifact PUT + GET against each server vs `cp` on the same disk, with
#       the server's RSS sampled every 20 ms.
# Writes benches/REGISTRY_RESULTS.md (and the raw numbers to benches/registry/last_results.json).
#
# usage: benches/registry_bench.sh            (from any directory; about 4-5 minutes on 2 cores)
# knobs (environment): WRK_DURATION=10s  ARTIFACT_MIB=1024  RESULTS_MD=benches/REGISTRY_RESULTS.md
#                      RESULTS_JSON=benches/registry/last_results.json  BENCH_TMP=/tmp  SKIP_BUILD=0
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WRK_DURATION="${WRK_DURATION:-10s}"
ARTIFACT_MIB="${ARTIFACT_MIB:-1024}"
RESULTS_MD="${RESULTS_MD:-$ROOT/benches/REGISTRY_RESULTS.md}"
RESULTS_JSON="${RESULTS_JSON:-$ROOT/benches/registry/last_results.json}"
PY="$ROOT/.venv/bin/python"
MLFLOW="$ROOT/.venv/bin/mlflow"
NEXUS="$ROOT/target/release/nexus"
HERE="$ROOT/benches/registry"
COMMAND_LINE="$0 $*"
STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
T_START=$SECONDS

say() { printf '[registry_bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ------------------------------------------------------------------ prerequisites
if [[ ! -x "$MLFLOW" ]]; then
    say "no .venv with mlflow: running scripts/setup.sh"
    bash "$ROOT/scripts/setup.sh"
fi
if ! command -v wrk >/dev/null 2>&1; then
    say "installing wrk (Debian package)"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get install -y wrk >/dev/null 2>&1 || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y wrk >/dev/null; }
fi
for tool in curl cmp; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    say "cargo build --release --bin nexus (waits for any other cargo build)"
    cargo build --release --bin nexus >&2
fi
[[ -x "$NEXUS" ]] || { echo "no $NEXUS" >&2; exit 1; }
NEXUS_SHA="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"  # what the binary was built from

# ------------------------------------------------------------------ servers
WORK="$(mktemp -d "${BENCH_TMP:-/tmp}/registry-bench.XXXXXX")"
NEXUS_PID=""
MLFLOW_PID=""
CHILD_PIDS=()  # seeders and the measuring driver, stopped on exit too

stop_group() {  # $1: pid of a process started with setsid (= its process group and session)
    local pid="$1" left
    [[ -n "$pid" ]] || return 0
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        left="$(ps -o pid= -s "$pid" 2>/dev/null || true)"
        [[ -z "$left" ]] && return 0
        sleep 0.2
    done
    for p in $(ps -o pid= -s "$pid" 2>/dev/null || true); do kill -KILL "$p" 2>/dev/null || true; done
}
cleanup() {
    local rc=$?
    for p in "${CHILD_PIDS[@]}"; do stop_group "$p"; done
    stop_group "$NEXUS_PID"
    stop_group "$MLFLOW_PID"
    if [[ $rc -ne 0 ]]; then
        say "failed (exit $rc); server logs:"
        tail -n 20 "$WORK/nexus.log" "$WORK/mlflow.log" >&2 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
NEXUS_PORT="$(free_port)"
MLFLOW_PORT="$(free_port)"
while [[ "$MLFLOW_PORT" == "$NEXUS_PORT" ]]; do MLFLOW_PORT="$(free_port)"; done
NEXUS_URL="http://127.0.0.1:$NEXUS_PORT"
MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"
mkdir -p "$WORK/nexus" "$WORK/mlflow"

say "starting nexus registry on $NEXUS_URL and mlflow server on $MLFLOW_URL (work dir $WORK)"
# setsid: each server leads its own process group/session, so cleanup stops exactly what it started.
RUST_LOG=warn setsid "$NEXUS" registry --address 127.0.0.1 --port "$NEXUS_PORT" --data-dir "$WORK/nexus" \
    >"$WORK/nexus.log" 2>&1 &
NEXUS_PID=$!
setsid "$MLFLOW" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
    --backend-store-uri "sqlite:///$WORK/mlflow/mlflow.db" --artifacts-destination "$WORK/mlflow/artifacts" \
    >"$WORK/mlflow.log" 2>&1 &
MLFLOW_PID=$!

wait_healthy() {  # $1 url, $2 pid, $3 name
    for _ in $(seq 240); do
        kill -0 "$2" 2>/dev/null || { echo "$3 exited; log:" >&2; cat "$WORK/$3.log" >&2; exit 1; }
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "$1/health" || true)" == 200 ]] && return 0
        sleep 0.5
    done
    echo "$3 did not become healthy in 120 s" >&2; exit 1
}
wait_healthy "$NEXUS_URL" "$NEXUS_PID" nexus
wait_healthy "$MLFLOW_URL" "$MLFLOW_PID" mlflow
say "both healthy after $((SECONDS - T_START)) s"

# ------------------------------------------------------------------ seed (both at once)
say "seeding both servers (200 runs, model 'm' with 50 versions + 4 aliases) through the MLflow client"
# Long steps run in the background and are waited for, so a signal reaches the trap at once.
setsid "$PY" "$HERE/seed.py" "$NEXUS_URL" "$WORK/seed-nexus.json" >"$WORK/seed-nexus.log" 2>&1 &
SEED_N=$!
setsid "$PY" "$HERE/seed.py" "$MLFLOW_URL" "$WORK/seed-mlflow.json" >"$WORK/seed-mlflow.log" 2>&1 &
SEED_M=$!
CHILD_PIDS+=("$SEED_N" "$SEED_M")
wait "$SEED_N" || { tail -n 30 "$WORK/seed-nexus.log" >&2; exit 1; }
wait "$SEED_M" || { tail -n 30 "$WORK/seed-mlflow.log" >&2; exit 1; }
CHILD_PIDS=()
say "seeded after $((SECONDS - T_START)) s"

# ------------------------------------------------------------------ measure
"$PY" - "$WORK" <<EOF
import json, sys
work = sys.argv[1]
cfg = {
    "tmp": work, "wrk_duration": "$WRK_DURATION", "wrk_threads": 2, "wrk_connections": 16,
    "artifact_mib": int("$ARTIFACT_MIB"),
    "servers": {
        "nexus": {"url": "$NEXUS_URL", "pid": $NEXUS_PID, "seed": json.load(open(work + "/seed-nexus.json")),
                  "cmd": "target/release/nexus registry --address 127.0.0.1 --port $NEXUS_PORT --data-dir WORK/nexus"},
        "mlflow": {"url": "$MLFLOW_URL", "pid": $MLFLOW_PID, "seed": json.load(open(work + "/seed-mlflow.json")),
                   "cmd": ".venv/bin/mlflow server --host 127.0.0.1 --port $MLFLOW_PORT --backend-store-uri sqlite:///WORK/mlflow/mlflow.db --artifacts-destination WORK/mlflow/artifacts"},
    },
}
for s in cfg["servers"].values():
    s["seed"].pop("run_ids", None)
json.dump(cfg, open(work + "/config.json", "w"), indent=1)
EOF
setsid "$PY" "$HERE/bench.py" --config "$WORK/config.json" --out "$WORK/results.json" &
BENCH_PID=$!
CHILD_PIDS+=("$BENCH_PID")
wait "$BENCH_PID"
CHILD_PIDS=()

# ------------------------------------------------------------------ report
NEXUS_VERSION="$(curl -s "$NEXUS_URL/version" || true)"
stop_group "$NEXUS_PID"; NEXUS_PID=""
stop_group "$MLFLOW_PID"; MLFLOW_PID=""
"$PY" "$HERE/report.py" --results "$WORK/results.json" --md "$RESULTS_MD" --json "$RESULTS_JSON" \
    --command "$COMMAND_LINE" --started "$STARTED" --elapsed "$((SECONDS - T_START))" \
    --nexus-version "$NEXUS_VERSION" --nexus-sha "$NEXUS_SHA" --root "$ROOT"
say "done in $((SECONDS - T_START)) s: $RESULTS_MD"
