#!/usr/bin/env bash
# Side-by-side benchmark: Nexus vs KServe vs MLServer (all serving the same ONNX files with
# ONNX Runtime at the same intra-op thread counts), plus ONNX Runtime in-process as the floor.
#
#   bash benches/compare.sh            (from any directory; idempotent; ~5 min on 2 cores once built)
#
# It sets up the checkout (scripts/setup.sh), the Python servers' venvs (.venv-bench/kserve and
# .venv-bench/mlserver, from benches/requirements-*.txt), builds target/release/nexus, writes the
# models (benches/make_models.py), then starts each server on fixed loopback ports, waits until
# its model is ready, drives it with `nexus bench run` and stops it. Results:
#   benches/results/small_mlp/   overhead-bound model, batch 1, c=1 and c=16, every server/protocol
#   benches/results/wide_mlp/    compute-bound model on Nexus: dynamic batching vs none vs ORT batch 32
#   benches/results/profile/     perf profile of Nexus on small_mlp at c=1 (when perf works)
#   benches/RESULTS.md           tables, ratios against the targets, versions, machine
# Environment: WARMUP (s, default 2), DURATION (s per concurrency level, default 8),
# PROFILE=0 to skip perf, QUIET_WAIT=SECONDS to wait for an idle machine before measuring.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
warmup="${WARMUP:-2}"
duration="${DURATION:-8}"
python="${PYTHON:-python3}"
bench="$repo/target/release/nexus"
models="$repo/benches/models"
results="$repo/benches/results"
work="$repo/target/bench-compare"   # logs and server working directories (ignored)

# Fixed loopback ports (checked free before each server starts).
NEXUS_HTTP=18000 NEXUS_GRPC=18001 NEXUS_METRICS=18002
KSERVE_HTTP=18100 KSERVE_GRPC=18101
MLSERVER_HTTP=18200 MLSERVER_GRPC=18201   # also in benches/runtimes/mlserver/settings.json (metrics 18202)

ver() { "$repo/.venv-bench/$1/bin/python" -c "import importlib.metadata as m; print(m.version('$2'))"; }  # ver VENV PACKAGE

# log, die, start_server, wait_ready, stop_server, machine_busy, children_cpu
# shellcheck source=benches/servers.sh
source "$repo/benches/servers.sh"

# run DIR LABEL ARGS...: one `nexus bench run` into DIR.
run() {
    local dir="$1" label="$2"
    shift 2
    "$bench" bench run --label "$label" --output "$dir" --warmup-secs "$warmup" --duration-secs "$duration" "$@" 2>&1 |
        grep -v INFO || true
    [[ -f "$dir/$label.json" ]] || { echo "error: bench run $label wrote no results" >&2; exit 1; }
}

small_input=(--input input:FP32:-1,16 --batch 1)
wide_input=(--input input:FP32:-1,1024)

# --- 1. setup --------------------------------------------------------------------------------
log "setup: scripts/setup.sh"
bash scripts/setup.sh

venv() {  # venv NAME REQUIREMENTS: .venv-bench/NAME with REQUIREMENTS, re-installed when it changes
    local dir=".venv-bench/$1" req="$2"
    local stamp="$dir/.requirements.sha256" want
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    [[ -x "$dir/bin/python" ]] || { echo "setup: creating $dir"; mkdir -p .venv-bench; "$python" -m venv "$dir"; }
    if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
        echo "setup: installing $req into $dir"
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
        echo "$want" >"$stamp"
    else
        echo "setup: $dir is up to date"
    fi
}
log "setup: benchmark venvs"
venv kserve benches/requirements-bench-kserve.txt
venv mlserver benches/requirements-bench-mlserver.txt

log "build: cargo build --release --bin nexus"
cargo build --release --bin nexus

# The commit the binary was built from (and whether files outside benches/ differ from it).
nexus_sha="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!benches' 2>/dev/null || echo '+local changes')"

log "models: benches/make_models.py"
.venv/bin/python benches/make_models.py

mkdir -p "$work"
rm -rf "$results/small_mlp" "$results/wide_mlp" "$results/profile"
mkdir -p "$results/small_mlp" "$results/wide_mlp"
# The load generator and the servers share this machine's cores: anything else running skews
# the figures. QUIET_WAIT=SECONDS waits (up to that long) for the 1-minute load average to fall
# below 0.5 first; the load before and after is written into RESULTS.md either way.
start_measuring

# --- 2. small_mlp: every server, batch 1, c=1 and c=16 -----------------------------------
small="$results/small_mlp"
log "small_mlp: ONNX Runtime in-process (floor), 1 thread"
run "$small" ort --protocol ort --model small_mlp --model-file "$models/small_mlp/1/model.onnx" \
    --ort-threads 1 "${small_input[@]}" --concurrency 1

nexus_cmd=("$bench" serve --model-repository "$models" --http-port "$NEXUS_HTTP" --grpc-port "$NEXUS_GRPC"
    --metrics-port "$NEXUS_METRICS")
log "Nexus: $nexus_sha"
start_server nexus "$work/nexus.log" "$work/nexus" "$NEXUS_HTTP" "$NEXUS_GRPC" "$NEXUS_METRICS" -- "${nexus_cmd[@]}"
wait_ready Nexus "$work/nexus.log" "http://127.0.0.1:$NEXUS_HTTP/v2/models/small_mlp/ready"
nexus_at=(--http-url "http://127.0.0.1:$NEXUS_HTTP" --grpc-addr "127.0.0.1:$NEXUS_GRPC")
for protocol in http-binary grpc http-json; do
    run "$small" "nexus-$protocol" --protocol "$protocol" --model small_mlp "${nexus_at[@]}" "${small_input[@]}" --concurrency 1,16
done

# --- 3. wide_mlp on Nexus: dynamic batching vs none, ORT batch 32 ------------------------
wide="$results/wide_mlp"
log "wide_mlp: Nexus with dynamic batching, then without, c=32, batch 1 per request"
run "$wide" nexus-batching --protocol http-binary --model wide_mlp "${nexus_at[@]}" "${wide_input[@]}" --batch 1 --concurrency 32
run "$wide" nexus-nobatch --protocol http-binary --model wide_mlp_nobatch "${nexus_at[@]}" "${wide_input[@]}" --batch 1 --concurrency 32

# --- 4. perf profile of Nexus on small_mlp at c=1 ----------------------------------------
profile_dir="$results/profile"
if [[ "${PROFILE:-1}" != 0 ]] && command -v perf >/dev/null 2>&1 && perf stat -e cpu-clock true >/dev/null 2>&1; then
    mkdir -p "$profile_dir"
    for protocol in http-binary grpc; do
        log "profile: perf record on Nexus, small_mlp, $protocol, c=1"
        "$bench" bench run --label "profile-$protocol" --output "$work/profile-runs" --warmup-secs 1 --duration-secs 6 \
            --protocol "$protocol" --model small_mlp "${nexus_at[@]}" "${small_input[@]}" --concurrency 1 >/dev/null 2>&1 &
        client=$!
        sleep 2
        perf record -e cpu-clock -F 1999 -p "$server_pid" -o "$work/perf-$protocol.data" -- sleep 4 >/dev/null 2>&1 || true
        wait "$client" || true
        # Flat profile of the server process: by thread, and by library + function.
        { perf report -i "$work/perf-$protocol.data" --stdio --no-children --sort comm --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' || true; } \
            >"$profile_dir/nexus-$protocol-threads.txt"
        { perf report -i "$work/perf-$protocol.data" --stdio --no-children --sort dso,symbol --percent-limit 0.7 2>/dev/null | grep -v '^#' | grep -v '^$' || true; } |
            sed -E 's/[[:space:]]+$//' | cut -c1-160 >"$profile_dir/nexus-$protocol-symbols.txt"
    done
else
    echo "profile: skipped (PROFILE=0, or perf missing or not permitted)"
fi
stop_server

log "wide_mlp: ONNX Runtime in-process, 2 threads, batch 32 and batch 1"
run "$wide" ort-batch32 --protocol ort --model wide_mlp --model-file "$models/wide_mlp/1/model.onnx" \
    --ort-threads 2 "${wide_input[@]}" --batch 32 --concurrency 1
run "$wide" ort-batch1 --protocol ort --model wide_mlp --model-file "$models/wide_mlp/1/model.onnx" \
    --ort-threads 2 "${wide_input[@]}" --batch 1 --concurrency 1

# --- 5. KServe -----------------------------------------------------------------------------
log "KServe: kserve $(ver kserve kserve)"
start_server kserve "$work/kserve.log" "$work/kserve" "$KSERVE_HTTP" "$KSERVE_GRPC" -- \
    "$repo/.venv-bench/kserve/bin/python" "$repo/benches/runtimes/kserve_onnx.py" --name small_mlp \
    --model-file "$models/small_mlp/1/model.onnx" --http-port "$KSERVE_HTTP" --grpc-port "$KSERVE_GRPC" --intra-op-threads 1
wait_ready KServe "$work/kserve.log" "http://127.0.0.1:$KSERVE_HTTP/v2/models/small_mlp/ready"
for protocol in http-binary grpc; do
    run "$small" "kserve-$protocol" --protocol "$protocol" --model small_mlp --http-url "http://127.0.0.1:$KSERVE_HTTP" \
        --grpc-addr "127.0.0.1:$KSERVE_GRPC" "${small_input[@]}" --concurrency 1,16
done
stop_server

# --- 6. MLServer (V2 REST has JSON tensors only: no binary extension) --------------------
log "MLServer: mlserver $(ver mlserver mlserver)"
start_server mlserver "$work/mlserver.log" "$work/mlserver" "$MLSERVER_HTTP" "$MLSERVER_GRPC" 18202 -- \
    env PYTHONPATH="$repo/benches/runtimes" "$repo/.venv-bench/mlserver/bin/mlserver" start "$repo/benches/runtimes/mlserver"
wait_ready MLServer "$work/mlserver.log" "http://127.0.0.1:$MLSERVER_HTTP/v2/models/small_mlp/ready"
for protocol in http-json grpc; do
    run "$small" "mlserver-$protocol" --protocol "$protocol" --model small_mlp --http-url "http://127.0.0.1:$MLSERVER_HTTP" \
        --grpc-addr "127.0.0.1:$MLSERVER_GRPC" "${small_input[@]}" --concurrency 1,16
done
stop_server
elapsed=$((SECONDS - t0))
children_cpu >"$work/cpu1"
foreign="$(awk -v b0="$busy0" -v b1="$(machine_busy)" -v o0="$(cat "$work/cpu0")" -v o1="$(cat "$work/cpu1")" -v t="$elapsed" -v n="$(nproc)" \
    'BEGIN { f = (b1 - b0) - (o1 - o0); if (f < 0) f = 0
            printf "%.1f CPU-s (%.1f%% of %d cores x %d s; machine busy %.0f CPU-s, benchmark %.0f)", f, 100 * f / (n * t), n, t, b1 - b0, o1 - o0 }')"
echo "other processes used $foreign during the measurements"

# --- 7. reports ------------------------------------------------------------------------------
"$bench" bench report --dir "$small" --title "small_mlp (16-32-8 MLP), batch 1: Nexus vs KServe vs MLServer vs ORT" >/dev/null
"$bench" bench report --dir "$wide" --title "wide_mlp (1024-8192-1024 MLP): Nexus batching vs none vs ORT" >/dev/null
read -r load_after _ </proc/loadavg
log "writing benches/RESULTS.md"
.venv/bin/python - "$results/meta.json" <<PY
import json, sys
json.dump({
    "command": "bash benches/compare.sh", "started": "$started", "elapsed_s": $elapsed,
    "warmup_s": "$warmup", "duration_s": "$duration",
    "load_before": "$load_before", "load_after": "$load_after", "foreign_cpu": "$foreign",
    "nexus": "$nexus_sha", "ort_nexus": "$(basename "$(readlink -f .nexus/lib/libonnxruntime.so)")",
    "kserve": "$(ver kserve kserve)", "mlserver": "$(ver mlserver mlserver)",
    "ort_python": "$(ver kserve onnxruntime)",
}, open(sys.argv[1], "w"), indent=2)
PY
.venv/bin/python benches/write_results.py
log "done in ${elapsed}s of load: benches/RESULTS.md"
