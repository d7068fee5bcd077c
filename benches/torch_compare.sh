#!/usr/bin/env bash
# Side-by-side benchmark on a TorchScript model: Nexus (PyTorch plugin, libtorch) vs TorchServe
# 0.12, plus the same module called in-process from Python torch as the floor. Every side runs
# the identical model.pt (a 64→256→256→10 MLP, FP32, one row per request) on one intra-op thread,
# one model instance / worker, no batching.
#
#   bash benches/torch_compare.sh      (from any directory; ~3 min of load on 2 cores with the defaults)
#
# It needs (and checks for): the torch venv of scripts/install-torch-python.sh (TorchServe and
# torch-model-archiver from benches/requirements-bench-torchserve.txt are installed into it), Java
# 17+ for TorchServe's frontend, wrk (apt-get install wrk; installed when missing and apt-get can),
# the PyTorch plugin .nexus/lib/libnexus_torch.so (scripts/install-torch-backend.sh runs when it is
# missing) and a built nexus binary: $NEXUS_BIN, else target/release/nexus, else target/debug/nexus
# (a debug build's figures mean nothing; the summary says which binary ran). It builds nothing.
#
# Runs, each at c=1 and c=16 (closed loop, warm-up, then a measured window per level):
#   libtorch in-process   benches/runtimes/torch_inprocess.py, c=1 only (see that file for why);
#                         and `nexus bench --protocol in-process` through Nexus's own plugin, c=1
#   Nexus                 `nexus bench run`: HTTP binary tensors, gRPC, HTTP JSON tensors
#   Nexus, TorchServe     wrk (benches/runtimes/wrk_post.lua), one JSON body over HTTP/1.1:
#                         Nexus's V2 JSON infer endpoint and TorchServe's /predictions/mlp, so the
#                         one cross-server ratio with the same client is wrk JSON vs wrk JSON
# Results: benches/results/torch_compare/ (override with RESULTS): summary.md (tables, targets),
# report.md + throughput_latency.svg (`nexus bench report`), the runs' JSON, raw/ (wrk output,
# in-process run, server logs, meta.json).
# Environment: WARMUP (s, default 2), DURATION (s per level, default 8), WRK_THREADS (default 1),
# QUIET_WAIT=SECONDS to wait for an idle machine first, WORK (scratch folder, default
# target/bench-torch-compare), RESULTS, NEXUS_BIN, PYTHON (a python3 for the helper steps).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
warmup="${WARMUP:-2}"
duration="${DURATION:-8}"
wrk_threads="${WRK_THREADS:-1}"
python="${PYTHON:-python3}"
work="${WORK:-$repo/target/bench-torch-compare}"   # model files, logs, server working directories
results="${RESULTS:-$repo/benches/results/torch_compare}"
runtimes="$repo/benches/runtimes"

# Fixed loopback ports (checked free before each server starts).
NEXUS_HTTP=18000 NEXUS_GRPC=18001 NEXUS_METRICS=18002
TS_HTTP=18300   # inference; management 18301, metrics 18302, gRPC 18303/18304: benches/runtimes/torchserve/config.properties
TS_PORTS=(18300 18301 18302 18303 18304)

# The model: one size everywhere.
FEATURES=64 HIDDEN=256 CLASSES=10

# log, die, start_server, wait_ready, stop_server (the whole process tree), machine_busy, children_cpu
# shellcheck source=benches/servers.sh
source "$repo/benches/servers.sh"

# bench LABEL ARGS...: one `nexus bench run` into $results.
bench() {
    local label="$1"
    shift
    "$nexus" bench run --label "$label" --output "$results" --warmup-secs "$warmup" --duration-secs "$duration" \
        --model mlp --input "INPUT__0:FP32:-1,$FEATURES" --batch 1 --concurrency 1,16 "$@" 2>&1 | grep -v INFO || true
    [[ -f "$results/$label.json" ]] || die "bench run $label wrote no results"
}

# wrk_run LABEL TARGET_NAME URL BODY_FILE: wrk at c=1 and c=16 (a warm-up run, then the measured
# run, per level); raw output in raw/LABEL-cN.txt, the levels in LABEL.json (`nexus bench run`'s
# layout, protocol http-json: both endpoints take JSON over HTTP/1.1).
wrk_run() {
    local label="$1" name="$2" url="$3" body="$4" c t
    for c in 1 16; do
        echo "$label: c=$c"
        t=$((wrk_threads < c ? wrk_threads : c))   # wrk wants connections >= threads
        WRK_BODY="$body" wrk -t "$t" -c "$c" -d "${warmup}s" --timeout 10s -s "$runtimes/wrk_post.lua" "$url" >/dev/null
        WRK_BODY="$body" wrk -t "$t" -c "$c" -d "${duration}s" --timeout 10s --latency -s "$runtimes/wrk_post.lua" "$url" \
            >"$results/raw/$label-c$c.txt"
        grep -E 'Requests/sec|Non-2xx|Socket errors' "$results/raw/$label-c$c.txt" | sed 's/^/    /' || true
    done
    "$python" - "$results/raw" "$label" "$name" "$url" "$results/$label.json" "$wrk_threads" <<'PY'
import datetime, json, os, sys
raw, label, name, url, out, threads = sys.argv[1:]
levels = []
for c in (1, 16):
    text = open(os.path.join(raw, f"{label}-c{c}.txt")).read()
    line = next((l for l in text.splitlines() if l.startswith("WRK_RESULT ")), None)
    if line is None:
        sys.exit(f"error: no WRK_RESULT line in {label}-c{c}.txt:\n{text}")
    r = json.loads(line[len("WRK_RESULT "):])
    seconds = r["duration_us"] / 1e6
    ok = r["requests"] - r["status_errors"]
    levels.append({
        "concurrency": c, "requests": ok, "errors": r["errors"], "seconds": seconds,
        "throughput": ok / seconds, "rows_per_second": ok / seconds,
        "p50_us": int(r["p50_us"]), "p90_us": int(r["p90_us"]), "p99_us": int(r["p99_us"]),
        "mean_us": r["mean_us"],
    })
json.dump({
    "label": label, "protocol": "http-json", "model": "mlp", "batch": 1,
    "target": f"{name} {url} (wrk, at most {threads} thread{'' if threads == '1' else 's'})", "levels": levels,
    "machine": f"{os.cpu_count()} cores",
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
}, open(out, "w"), indent=2)
PY
}

# --- 1. setup --------------------------------------------------------------------------------
log "setup: torch venv, TorchServe, wrk, Java, the PyTorch plugin, the nexus binary"
torch_python="$(bash scripts/install-torch-python.sh | tail -n 1)"
venv_bin="$(dirname "$torch_python")"
ts_req="benches/requirements-bench-torchserve.txt"
ts_stamp="$venv_bin/../.torchserve-requirements.sha256"
want="$(sha256sum "$ts_req" | cut -d' ' -f1)"
if [[ "$(cat "$ts_stamp" 2>/dev/null || true)" != "$want" || ! -x "$venv_bin/torchserve" ]]; then
    echo "setup: installing $ts_req into $(dirname "$venv_bin")"
    "$torch_python" -m pip install --quiet --disable-pip-version-check -r "$ts_req"
    echo "$want" >"$ts_stamp"
else
    echo "setup: TorchServe is installed in $(dirname "$venv_bin")"
fi
if ! command -v wrk >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing wrk (apt-get)"
        apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
    else
        die "wrk is missing: apt-get install wrk"
    fi
fi
java_major="$(java -version 2>&1 | sed -nE '1s/.*version "([0-9]+).*/\1/p')"
[[ -n "$java_major" && "$java_major" -ge 11 ]] || die "TorchServe needs Java 11+ (17 recommended); java -version: $(java -version 2>&1 | head -n 1)"
plugin="${NEXUS_TORCH_PLUGIN:-$repo/.nexus/lib/libnexus_torch.so}"
if [[ ! -f "$plugin" ]]; then
    echo "setup: no PyTorch plugin at $plugin: scripts/install-torch-backend.sh"
    plugin="$(bash scripts/install-torch-backend.sh | tail -n 1)"
fi
find_nexus
nexus_sha="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!benches' 2>/dev/null || echo '+local changes')"
echo "nexus: $nexus (git $nexus_sha); plugin: $plugin"

# --- 2. the model, its TorchServe archive and Nexus repository, the request bodies ----------
log "model: ${FEATURES}→${HIDDEN}→${HIDDEN}→${CLASSES} MLP, torch.jit.trace, one model.pt for every server"
rm -rf "$work/model" "$work/repo" "$work/ts-store" "$work/nexus" "$work/torchserve"
mkdir -p "$work/model" "$work/repo/mlp/1" "$work/ts-store"
"$torch_python" - "$work/model" "$FEATURES" "$HIDDEN" "$CLASSES" <<'PY'
import json, sys
import torch
out, features, hidden, classes = sys.argv[1], *map(int, sys.argv[2:])
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(features, hidden), torch.nn.ReLU(),
    torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
    torch.nn.Linear(hidden, classes),
).eval()
with torch.no_grad():
    traced = torch.jit.trace(model, torch.randn(1, features))
traced.save(f"{out}/model.pt")
row = [round(float(v), 6) for v in torch.randn(features)]
with torch.inference_mode():
    expected = torch.jit.load(f"{out}/model.pt")(torch.tensor([row])).tolist()[0]
# The same row three ways: TorchServe's body (a JSON list), the V2 JSON body, and the answer.
json.dump(row, open(f"{out}/ts_body.json", "w"))
json.dump({"inputs": [{"name": "INPUT__0", "shape": [1, features], "datatype": "FP32", "data": row}]},
          open(f"{out}/v2_body.json", "w"))
json.dump(expected, open(f"{out}/expected.json", "w"))
PY
cp "$work/model/model.pt" "$work/repo/mlp/1/model.pt"
cat >"$work/repo/mlp/config.pbtxt" <<EOF
name: "mlp"
platform: "pytorch_libtorch"
max_batch_size: 0
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ -1, $FEATURES ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ -1, $CLASSES ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }
EOF
"$venv_bin/torch-model-archiver" --model-name mlp --version 1.0 --serialized-file "$work/model/model.pt" \
    --handler "$runtimes/torchserve/handler.py" --export-path "$work/ts-store" --force
echo "wrote $work/repo/mlp (Nexus) and $work/ts-store/mlp.mar (TorchServe)"

# check_answer NAME RESPONSE_FILE: the server's output row matches PyTorch's within 1e-4.
check_answer() {
    "$python" - "$1" "$2" "$work/model/expected.json" <<'PY'
import json, sys
name, got_file, want_file = sys.argv[1:]
got = json.load(open(got_file))
if isinstance(got, dict):  # V2: {"outputs": [{"data": [...]}]}
    got = got["outputs"][0]["data"]
want = json.load(open(want_file))
diff = max(abs(a - b) for a, b in zip(got, want)) if len(got) == len(want) else float("inf")
if diff > 1e-4:
    sys.exit(f"error: {name} answered {got}, PyTorch {want}")
print(f"{name}: output matches PyTorch in-process (max |diff| {diff:.1e})")
PY
}

rm -rf "$results/raw"
rm -f "$results"/*.json "$results/report.md" "$results/summary.md" "$results/throughput_latency.svg"
mkdir -p "$results/raw"
# The load generators and the servers share this machine's cores: anything else running skews
# the figures (see compare.sh). QUIET_WAIT=SECONDS waits for the 1-minute load average to fall
# below 0.5 first; the load before and after, and the CPU other processes took, are recorded.
start_measuring

# --- 3. libtorch in-process, the floor -------------------------------------------------------
log "libtorch in-process (Python torch, 1 thread), c=1"
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$torch_python" "$runtimes/torch_inprocess.py" --model "$work/model/model.pt" \
    --features "$FEATURES" --warmup "$warmup" --duration "$duration" --output "$results/raw/libtorch-inprocess.json"

log "libtorch in-process through Nexus's PyTorch plugin (nexus bench --protocol in-process), c=1"
NEXUS_TORCH_PLUGIN="$plugin" "$nexus" bench run --label libtorch-plugin-inprocess --output "$results" \
    --warmup-secs "$warmup" --duration-secs "$duration" --model mlp --protocol in-process \
    --model-file "$work/repo/mlp/1/model.pt" --ort-threads 1 --batch 1 --concurrency 1 2>&1 | grep -v INFO || true
[[ -f "$results/libtorch-plugin-inprocess.json" ]] || die "the in-process run through the plugin wrote no results"

# --- 4. Nexus --------------------------------------------------------------------------------
log "Nexus: git $nexus_sha, $nexus"
start_server nexus "$work/nexus.log" "$work/nexus" "$NEXUS_HTTP" "$NEXUS_GRPC" "$NEXUS_METRICS" -- \
    env NEXUS_TORCH_PLUGIN="$plugin" "$nexus" serve --model-repository "$work/repo" \
    --http-port "$NEXUS_HTTP" --grpc-port "$NEXUS_GRPC" --metrics-port "$NEXUS_METRICS"
wait_ready Nexus "$work/nexus.log" "http://127.0.0.1:$NEXUS_HTTP/v2/models/mlp/ready"
nexus_infer="http://127.0.0.1:$NEXUS_HTTP/v2/models/mlp/infer"
curl -sf -H 'Content-Type: application/json' --data-binary @"$work/model/v2_body.json" "$nexus_infer" >"$work/nexus-answer.json"
check_answer Nexus "$work/nexus-answer.json"
curl -sf "http://127.0.0.1:$NEXUS_HTTP/v2/models/mlp/config" >"$results/raw/nexus-model-config.json"
nexus_at=(--http-url "http://127.0.0.1:$NEXUS_HTTP" --grpc-addr "127.0.0.1:$NEXUS_GRPC")
for protocol in http-binary grpc http-json; do
    bench "nexus-$protocol" --protocol "$protocol" "${nexus_at[@]}"
done
wrk_run nexus-wrk-json Nexus "$nexus_infer" "$work/model/v2_body.json"
stop_server

# --- 5. TorchServe ---------------------------------------------------------------------------
ts_version="$("$torch_python" -c "import importlib.metadata as m; print(m.version('torchserve'))")"
log "TorchServe $ts_version: 1 worker, torch threads 1, batch size 1"
# TMPDIR: the launcher's pid file; TEMP: the frontend's java.io.tmpdir (the worker's Unix
# socket); LOG_LOCATION/METRICS_LOCATION: any log file the logging config still writes. All
# inside the working directory, so another TorchServe on the machine is not disturbed.
ts_dir="$work/torchserve"
mkdir -p "$ts_dir/tmp" "$ts_dir/logs"
start_server torchserve "$work/torchserve.log" "$ts_dir" "${TS_PORTS[@]}" -- \
    env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TMPDIR="$ts_dir/tmp" TEMP="$ts_dir/tmp" \
    LOG_LOCATION="$ts_dir/logs" METRICS_LOCATION="$ts_dir/logs" PATH="$venv_bin:$PATH" \
    "$venv_bin/torchserve" --start --foreground --ncs --disable-token-auth \
    --ts-config "$runtimes/torchserve/config.properties" --log-config "$runtimes/torchserve/log4j2.xml" \
    --model-store "$work/ts-store" --models mlp=mlp.mar
ts_url="http://127.0.0.1:$TS_HTTP/predictions/mlp"
wait_ready TorchServe "$work/torchserve.log" -H 'Content-Type: application/json' \
    --data-binary @"$work/model/ts_body.json" "$ts_url"
curl -sf -H 'Content-Type: application/json' --data-binary @"$work/model/ts_body.json" "$ts_url" >"$work/torchserve-answer.json"
check_answer TorchServe "$work/torchserve-answer.json"
# The model as TorchServe describes it (workers, batchSize), for the record.
curl -sf "http://127.0.0.1:18301/models/mlp" >"$results/raw/torchserve-model.json"
wrk_run torchserve-wrk-json TorchServe "$ts_url" "$work/model/ts_body.json"
stop_server

elapsed=$((SECONDS - t0))
children_cpu >"$work/cpu1"
foreign="$(awk -v b0="$busy0" -v b1="$(machine_busy)" -v o0="$(cat "$work/cpu0")" -v o1="$(cat "$work/cpu1")" -v t="$elapsed" -v n="$(nproc)" \
    'BEGIN { f = (b1 - b0) - (o1 - o0); if (f < 0) f = 0
            printf "%.1f CPU-s (%.1f%% of %d cores x %d s; machine busy %.0f CPU-s, benchmark %.0f)", f, 100 * f / (n * t), n, t, b1 - b0, o1 - o0 }')"
echo "other processes used $foreign during the measurements"
read -r load_after _ </proc/loadavg

# --- 6. reports ------------------------------------------------------------------------------
cp "$work/nexus.log" "$work/torchserve.log" "$results/raw/"
"$nexus" bench report --dir "$results" \
    --title "TorchScript MLP ${FEATURES}-${HIDDEN}-${HIDDEN}-${CLASSES}, batch 1: Nexus vs TorchServe" >/dev/null
"$python" - "$results/raw/meta.json" <<PY
import json, sys
json.dump({
    "command": "bash benches/torch_compare.sh", "started": "$started", "elapsed_s": $elapsed,
    "warmup_s": "$warmup", "duration_s": "$duration", "wrk_threads": "$wrk_threads",
    "load_before": "$load_before", "load_after": "$load_after", "foreign_cpu": "$foreign",
    "nexus": "$nexus_sha", "nexus_bin": "${nexus#"$repo/"}", "plugin": "$plugin",
    "libtorch": "$(basename "$(dirname "$(dirname "$(readlink -f "$(ldd "$plugin" | awk '/libtorch_cpu/ { print $3 }')")")")")",
    "torch_python": "$("$torch_python" -c 'import torch; print(torch.__version__)')",
    "torchserve": "$ts_version",
    "java": "$(java -version 2>&1 | head -n 1 | tr -d '"')",
    "wrk": "$(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)",
    "model": "${FEATURES}-${HIDDEN}-${HIDDEN}-${CLASSES} MLP",
    "machine": "$(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), Linux $(uname -r)",
}, open(sys.argv[1], "w"), indent=2)
PY
"$python" benches/write_torch_compare.py --dir "$results"
log "done in ${elapsed}s of load: ${results#"$repo/"}/summary.md"
