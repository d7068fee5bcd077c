#!/usr/bin/env bash
# GPU benchmark: Nexus serving a model on the GPU against the same model run in-process on the
# same GPU (the floor), at each concurrency and batch size, with `nexus bench run --gpu`
# sampling GPU utilisation and memory used every 250 ms of each level.
#
#   bash benches/gpu.sh                                   (from any directory)
#   WARMUP=1 DURATION=3 BATCHES="1 64" bash benches/gpu.sh   (a quick pass, as scripts/gpu-check.sh runs it)
#
# Sides, each only where `nexus gpu --json` says its runtime can use the GPU (else the summary
# says why it was skipped):
#   nexus-ort-bN        `nexus serve`, wide_mlp (benches/make_models.py: [N,1024] -> 8192 -> 1024,
#                       64 MiB of FP32 weights) with instance_group KIND_GPU: ONNX Runtime's CUDA EP
#   inprocess-ort-bN    `nexus bench run --protocol in-process --device gpu:$GPU`: the same file in
#                       ONNX Runtime with the CUDA EP, one session per worker, no server
#   nexus-torch-bN      `nexus serve` with the PyTorch plugin (libtorch CUDA), a TorchScript MLP of
#                       the same shape made by Python torch; needs the plugin and python3 torch.
#                       (No in-process torch side: `nexus bench`'s in-process path has no
#                       config.pbtxt to read a TorchScript model's inputs and outputs from.)
# Without a usable GPU (no device with a CUDA ordinal in `nexus gpu --json`) it prints
# "no GPU: <why>" and exits 0 having measured nothing.
#
# It needs: a nexus binary ($NEXUS_BIN, else target/release/nexus, else target/debug/nexus; a debug
# build's figures mean nothing), curl, python3 with numpy and onnx (the model); for the torch side
# python3 with torch and the plugin ($NEXUS_TORCH_PLUGIN, else .nexus/lib/libnexus_torch.so). ONNX
# Runtime is the library Nexus finds (ORT_DYLIB_PATH, else .nexus/lib/). It builds nothing.
# Results: benches/results/gpu/ (override with RESULTS): report.md with the GPU table,
# throughput_latency.svg, gpu_utilization.svg, gpu_memory_used.svg (`nexus bench report`), the
# runs' JSON, summary.md (what ran, what was skipped and why), raw/ (nexus gpu --json, server
# logs, the served model configs).
# Environment: WARMUP (s, default 2), DURATION (s per level, default 8), CONCURRENCY (default
# 1,16,64), BATCHES (default "1 8 64"), PROTOCOL (nexus bench protocol for the servers, default
# grpc), INSTANCES (model instances on the GPU, default 1), GPU (CUDA ordinal, default 0), WORK
# (scratch folder, default target/bench-gpu), RESULTS, NEXUS_BIN, PYTHON (a python3).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
warmup="${WARMUP:-2}"
duration="${DURATION:-8}"
concurrency="${CONCURRENCY:-1,16,64}"
batches="${BATCHES:-1 8 64}"
protocol="${PROTOCOL:-grpc}"
instances="${INSTANCES:-1}"
gpu="${GPU:-0}"
python="${PYTHON:-python3}"
work="${WORK:-$repo/target/bench-gpu}"
results="${RESULTS:-$repo/benches/results/gpu}"
FEATURES=1024 HIDDEN=8192

# Fixed loopback ports (checked free before each server starts).
NEXUS_HTTP=18500 NEXUS_GRPC=18501 NEXUS_METRICS=18502

# log, die, find_nexus, start_server, wait_ready, stop_server (on exit too)
# shellcheck source=benches/servers.sh
source "$repo/benches/servers.sh"

find_nexus

# --- 1. is there a GPU, and which runtimes can use it ----------------------------------------
mkdir -p "$work"
"$nexus" gpu --json >"$work/gpu.json" 2>"$work/gpu.err" || die "nexus gpu --json failed: $(cat "$work/gpu.err")"
# gpu_fact KEY: from `nexus gpu --json`: `devices` (how many have a CUDA ordinal), `names`
# (theirs), `why` (why none), or `<runtime>` (yes, or why not) for onnxruntime / pytorch.
gpu_fact() {
    "$python" - "$work/gpu.json" "$1" <<'PY'
import json, sys
report, key = json.load(open(sys.argv[1])), sys.argv[2]
usable = [d for d in report.get("devices", []) if d.get("ordinal") is not None]
if key == "devices":
    print(len(usable))
elif key == "names":
    print(", ".join(f"{d['ordinal']}: {d['name']} {d['uuid']}" for d in usable))
elif key == "why":
    print(report.get("nvml_error") or ("no device this process may use (CUDA_VISIBLE_DEVICES)"
                                         if report.get("devices") else "NVML lists no GPU"))
else:
    runtime = next((r for r in report.get("runtimes", []) if r.get("runtime") == key), None)
    if runtime is None:
        print(f"this nexus build has no {key} runtime")
    else:
        print("yes" if runtime.get("usable") else runtime.get("detail", "not usable"))
PY
}
if [[ "$(gpu_fact devices)" == 0 ]]; then
    echo "no GPU: $(gpu_fact why); nothing measured"
    exit 0
fi

rm -rf "$results/raw"
rm -f "$results"/*.json "$results"/*.svg "$results/report.md" "$results/summary.md"
mkdir -p "$results/raw"
cp "$work/gpu.json" "$results/raw/nexus-gpu.json"
summary=()   # lines of summary.md
note() {
    echo "$*"
    summary+=("- $*")
}

# --- 2. the models ---------------------------------------------------------------------------
log "models: wide_mlp (ONNX) and, for the torch side, the same shape as TorchScript"
"$python" benches/make_models.py --out "$work/models" >/dev/null
onnx_model="$work/models/wide_mlp/1/model.onnx"
[[ -f "$onnx_model" ]] || die "benches/make_models.py wrote no $onnx_model"

# serve_repo DIR NAME PLATFORM FILE INPUT OUTPUT: a repository with one model on GPU $gpu.
serve_repo() {
    local dir="$1" name="$2" platform="$3" file="$4" input="$5" output="$6"
    rm -rf "$dir"
    mkdir -p "$dir/$name/1"
    cp "$file" "$dir/$name/1/"
    local max_batch=64
    for b in $batches; do ((b > max_batch)) && max_batch=$b; done
    cat >"$dir/$name/config.pbtxt" <<EOF
name: "$name"
platform: "$platform"
max_batch_size: $max_batch
input [ { name: "$input" data_type: TYPE_FP32 dims: [ $FEATURES ] } ]
output [ { name: "$output" data_type: TYPE_FP32 dims: [ $FEATURES ] } ]
instance_group [ { kind: KIND_GPU count: $instances gpus: [ $gpu ] } ]
EOF
}

# bench LABEL BATCH ARGS...: one `nexus bench run --gpu` into $results; a failed run is noted
# in the summary, not fatal, so the other sides still run.
bench() {
    local label="$1" batch="$2"
    shift 2
    if RUST_BACKTRACE=0 "$nexus" bench run --label "$label" --output "$results" --warmup-secs "$warmup" \
        --duration-secs "$duration" --concurrency "$concurrency" --batch "$batch" --gpu "$@" \
        >"$results/raw/$label.log" 2>&1 && [[ -f "$results/$label.json" ]]; then
        grep -v INFO "$results/raw/$label.log" || true
        note "$label: ran (batch $batch, c=$concurrency)"
    else
        tail -n 5 "$results/raw/$label.log" >&2
        note "$label: FAILED, see raw/$label.log: $(grep -A 3 '^Error' "$results/raw/$label.log" | tr -s '\n ' ' ')"
    fi
}

# serve_and_bench SIDE NAME REPO [ENV...]: a `nexus serve` over REPO, every batch size against
# it, then stopped.
serve_and_bench() {
    local side="$1" name="$2" dir="$3"
    shift 3
    start_server "nexus-$side" "$results/raw/nexus-$side.log" "$work/nexus-$side" \
        "$NEXUS_HTTP" "$NEXUS_GRPC" "$NEXUS_METRICS" -- \
        env "$@" "$nexus" serve --model-repository "$dir" \
        --http-port "$NEXUS_HTTP" --grpc-port "$NEXUS_GRPC" --metrics-port "$NEXUS_METRICS"
    wait_ready "Nexus ($side)" "$results/raw/nexus-$side.log" "http://127.0.0.1:$NEXUS_HTTP/v2/health/ready"
    local state
    state="$(curl -s "http://127.0.0.1:$NEXUS_HTTP/v2/models/$name/ready" -o /dev/null -w '%{http_code}' || true)"
    curl -s "http://127.0.0.1:$NEXUS_HTTP/v2/models/$name/config" >"$results/raw/nexus-$side-config.json" || true
    if [[ "$state" != 200 ]]; then
        curl -s -X POST "http://127.0.0.1:$NEXUS_HTTP/v2/repository/index" >"$results/raw/nexus-$side-index.json" || true
        note "nexus-$side: SKIPPED, $name is not ready on the GPU: $(cat "$results/raw/nexus-$side-index.json")"
        stop_server
        return 0
    fi
    for b in $batches; do
        bench "nexus-$side-b$b" "$b" --model "$name" --protocol "$protocol" \
            --http-url "http://127.0.0.1:$NEXUS_HTTP" --grpc-addr "127.0.0.1:$NEXUS_GRPC" \
            --metrics-url "http://127.0.0.1:$NEXUS_METRICS/metrics"
    done
    stop_server
}

# --- 3. ONNX Runtime, CUDA EP: Nexus, then in-process ----------------------------------------
ort="$(gpu_fact onnxruntime)"
if [[ "$ort" == yes ]]; then
    log "ONNX Runtime CUDA EP: Nexus ($protocol) and in-process, GPU $gpu"
    serve_repo "$work/repo-ort" wide_mlp onnxruntime_onnx "$onnx_model" input output
    serve_and_bench ort wide_mlp "$work/repo-ort"
    for b in $batches; do
        bench "inprocess-ort-b$b" "$b" --model wide_mlp --protocol in-process \
            --model-file "$onnx_model" --device "gpu:$gpu" --ort-threads 1
    done
else
    note "ONNX Runtime (nexus-ort, inprocess-ort): SKIPPED, $ort"
fi

# --- 4. libtorch CUDA through the PyTorch plugin ----------------------------------------------
torch="$(gpu_fact pytorch)"
plugin="${NEXUS_TORCH_PLUGIN:-$repo/.nexus/lib/libnexus_torch.so}"
if [[ "$torch" != yes ]]; then
    note "libtorch (nexus-torch): SKIPPED, $torch"
elif [[ ! -f "$plugin" ]]; then
    note "libtorch (nexus-torch): SKIPPED, no PyTorch plugin at $plugin (scripts/install-torch-backend.sh)"
elif ! "$python" -c 'import torch' 2>/dev/null; then
    note "libtorch (nexus-torch): SKIPPED, $python cannot import torch to make the TorchScript model"
else
    log "libtorch CUDA: Nexus ($protocol), GPU $gpu"
    mkdir -p "$work/torch"
    "$python" - "$work/torch/model.pt" "$FEATURES" "$HIDDEN" <<'PY'
import sys
import torch
out, features, hidden = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, features)
).eval()
with torch.no_grad():
    torch.jit.trace(model, torch.randn(1, features)).save(out)
PY
    serve_repo "$work/repo-torch" mlp pytorch_libtorch "$work/torch/model.pt" INPUT__0 OUTPUT__0
    serve_and_bench torch mlp "$work/repo-torch" NEXUS_TORCH_PLUGIN="$plugin"
fi

# --- 5. reports ------------------------------------------------------------------------------
if compgen -G "$results/*.json" >/dev/null; then
    "$nexus" bench report --dir "$results" \
        --title "GPU $gpu: Nexus vs in-process, wide MLP ${FEATURES}-${HIDDEN}-${FEATURES}" >/dev/null
fi
{
    echo "# benches/gpu.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "nexus: $nexus (git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)); GPUs: $(gpu_fact names)"
    echo "warm-up ${warmup}s, ${duration}s per level, c=$concurrency, batches $batches, $protocol, $instances instance(s)"
    echo
    printf '%s\n' "${summary[@]}"
    echo
    [[ -f "$results/report.md" ]] && echo "Figures: report.md (GPU table), gpu_utilization.svg, gpu_memory_used.svg."
} >"$results/summary.md"
log "done: ${results#"$repo/"}/summary.md"
