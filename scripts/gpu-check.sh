#!/usr/bin/env bash
# Proves Nexus's GPU path on a lent GPU machine in one `device` call of under 8 minutes, and says
# plainly what it cannot prove there. The machine reaches no package registry and takes at most
# 64 MiB of carried build output, so this script installs and builds nothing: it runs what was
# carried against what the image has (Python 3.12, torch 2.11.0+cu130, onnxruntime, the CUDA 13
# libraries, nvcc).
#
# 1. Here, once (builds a release nexus, ~7 min cold on 2 cores):
#        bash scripts/gpu-check.sh --prepare
#    writes .nexus/gpu-check/: nexus.xz (the stripped release binary, checked < 60 MiB before
#    compression) and, when .nexus/lib has it, libonnxruntime.so.xz (the CPU ONNX Runtime 1.32
#    that the image lacks: its onnxruntime is older than the API 31 the `ort` crate needs), and
#    checks that they and the working tree stay under the 64 MiB a call carries.
# 2. On the GPU machine, one call of the device tool's `run`:
#        command: bash scripts/gpu-check.sh --out $OUT/gpu-check      carry: [".nexus/gpu-check"]
#        timeout_s: 540
#    (the script keeps itself under 8 minutes; what comes back is at most 8 files, so the
#    details are packed into one archive).
# Without a GPU (here) it runs too: it says "no GPU", proves that benches/gpu.sh stops early, and
# exits 0. NEXUS_BIN overrides the carried binary (without either, target/release or target/debug
# is used); PYTHON the python3 (one with numpy and onnx, e.g. .venv/bin/python here).
#
# Checks, each PASS / FAIL / NOT PROVEN (with why) in summary.md:
#   versions            nvidia-smi, python3, torch and its CUDA, onnxruntime and its providers,
#                       cargo, nvcc (printed and kept in versions.txt)
#   nexus gpu           `nexus gpu --json` lists the GPU with a CUDA ordinal
#   gpu metrics         `nexus serve` exports nv_gpu_utilization / nv_gpu_memory_used_bytes
#                       with a gpu_uuid label on :metrics
#   ort cuda            with the image's onnxruntime, if it ships libonnxruntime_providers_cuda.so
#                       and libonnxruntime.so >= 1.31: a KIND_GPU model serves, its config shows
#                       the GPU group, its output matches a KIND_CPU copy's
#   kind_gpu refused    otherwise (CPU ONNX Runtime): the KIND_GPU model is UNAVAILABLE with the
#                       reason while the KIND_CPU copy serves (no panic, no crash)
#   bench --gpu         `nexus bench run --gpu` against that server reads the server's nv_gpu_*
#                       metrics into every level
#   cuda shared memory  scripts/gpu_check_cuda_shm.py: a torch client's GPU buffer registered by its
#                       CUDA IPC handle carries the model's input and output; equal to the JSON answer
#   cargo test gpu      `cargo test --offline --test gpu`, only where cargo exists and builds offline
#   benches/gpu.sh      a short pass (1 s warm-up, 2 s per level, batches 1 and 64)
#   libtorch cuda       as `nexus gpu` sees it (tch 0.26 needs libtorch 2.13; the image has 2.11)
# Results: --out DIR (default $OUT/gpu-check where OUT is set, else target/gpu-check): summary.md,
# versions.txt, check.log and results.tar.gz (every server log, model config, run JSON and plot).
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
carried="$repo/.nexus/gpu-check"
CARRY_LIMIT=$((64 << 20))
BINARY_LIMIT=$((60 << 20))

prepare() {
    set -e
    echo "building the release nexus (cargo build --release --bin nexus)"
    cargo build --release --bin nexus
    mkdir -p "$carried"
    rm -f "$carried"/*
    strip -o "$carried/nexus" target/release/nexus
    local size
    size=$(stat -c %s "$carried/nexus")
    echo "stripped nexus: $((size >> 20)) MiB"
    ((size < BINARY_LIMIT)) || { echo "error: the stripped nexus is over 60 MiB" >&2; exit 1; }
    xz -T0 -6 "$carried/nexus"
    local ort="$repo/.nexus/lib/libonnxruntime.so.1.32.0"
    if [[ -f "$ort" ]]; then
        xz -T0 -6 -c "$ort" >"$carried/libonnxruntime.so.xz"
    else
        echo "warning: no $ort (scripts/install-onnxruntime.sh): the GPU machine will have no usable ONNX Runtime" >&2
    fi
    local tree carry
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
    carry=$(du -cb "$carried" | tail -n 1 | cut -f1)
    echo "carried: $((carry >> 20)) MiB ($(ls "$carried" | tr '\n' ' ')); working tree: $((tree >> 20)) MiB"
    ((tree + carry < CARRY_LIMIT)) || { echo "error: working tree + carried files are over 64 MiB" >&2; exit 1; }
    echo "ready: run 'bash scripts/gpu-check.sh --out \$OUT/gpu-check' with carry [\".nexus/gpu-check\"]"
}

out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --prepare) prepare; exit 0 ;;
        --out) out="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -uo/p' "$0" | sed 's/^# \{0,1\}//' | head -n -1; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n "$out" ]] || out="${OUT:+$OUT/gpu-check}"
[[ -n "$out" ]] || out="$repo/target/gpu-check"
work="$(mktemp -d /tmp/nexus-gpu-check.XXXXXX)"
mkdir -p "$out" "$work/results"
exec > >(tee "$out/check.log") 2>&1
t0=$SECONDS
python="${PYTHON:-python3}"   # the image's python3 holds numpy, onnx, torch, onnxruntime
results=()   # "check|RESULT|why"
record() {
    results+=("$1|$2|$3")
    printf '%-18s %-11s %s\n' "$1" "$2" "$3"
}
# Servers: start_server, wait_ready, stop_server (on exit too), with $python and $work.
# shellcheck source=benches/servers.sh
source "$repo/benches/servers.sh"
finish() {
    stop_server
    {
        echo "# scripts/gpu-check.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), $((SECONDS - t0)) s"
        echo
        echo "$headline"
        echo
        echo "| check | result | why |"
        echo "|---|---|---|"
        local r
        for r in "${results[@]}"; do
            IFS='|' read -r check result why <<<"$r"
            echo "| $check | $result | ${why//|/\\|} |"
        done
    } >"$out/summary.md"
    tar -czf "$out/results.tar.gz" -C "$work" results 2>/dev/null || true
    rm -rf "$work"
    echo
    cat "$out/summary.md"
}
trap 'finish' EXIT
headline="GPU path checked."

# --- versions ----------------------------------------------------------------------------------
{
    echo "== nvidia-smi"
    nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi: not found"
    echo "== python3: $($python --version 2>&1)"
    $python - <<'PY' 2>&1
import glob, os
try:
    import torch
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
except Exception as e:
    print(f"torch: {e}")
try:
    import onnxruntime as ort
    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}, "
          f"libraries {sorted(os.path.basename(p) for p in glob.glob(capi + '/lib*.so*'))}")
except Exception as e:
    print(f"onnxruntime: {e}")
PY
    echo "== cargo: $(command -v cargo >/dev/null && cargo --version || echo 'not found')"
    echo "== nvcc: $(command -v nvcc >/dev/null && nvcc --version | tail -n 1 || echo 'not found')"
    echo "== uname: $(uname -srm)"
} >"$out/versions.txt"
cat "$out/versions.txt"

# --- the nexus binary and ONNX Runtime that were carried --------------------------------------
mkdir -p "$work/bin"
unpack() {  # unpack NAME: $carried/NAME(.xz) into $work/bin; prints the path, or nothing
    if [[ -f "$carried/$1" ]]; then
        cp "$carried/$1" "$work/bin/$1"
    elif [[ -f "$carried/$1.xz" ]]; then
        $python -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$carried/$1.xz" "$work/bin/$1" || return 0
    else
        return 0
    fi
    chmod +x "$work/bin/$1"
    echo "$work/bin/$1"
}
nexus="${NEXUS_BIN:-$(unpack nexus)}"
for built in target/release/nexus target/debug/nexus; do   # here, without a carried one
    [[ -z "$nexus" && -x "$built" ]] && nexus="$repo/$built"
done
if [[ -z "$nexus" || ! -x "$nexus" ]]; then
    headline="FAIL: no nexus binary: run 'bash scripts/gpu-check.sh --prepare' here and carry .nexus/gpu-check (or set NEXUS_BIN)."
    record "nexus binary" FAIL "none at $carried and no NEXUS_BIN"
    exit 1
fi
record "nexus binary" PASS "$nexus ($("$nexus" --version 2>&1 | head -n 1))"

# --- nexus gpu ---------------------------------------------------------------------------------
"$nexus" gpu --json >"$work/results/nexus-gpu.json" 2>"$work/results/nexus-gpu.err"
gpu_status=$?
"$nexus" gpu >"$work/results/nexus-gpu.txt" 2>&1 || true
cat "$work/results/nexus-gpu.txt"
gpus="$($python -c 'import json,sys; print(sum(d.get("ordinal") is not None for d in json.load(open(sys.argv[1]))["devices"]))' "$work/results/nexus-gpu.json" 2>/dev/null || echo 0)"
gpu_why="$($python -c 'import json,sys; print(json.load(open(sys.argv[1])).get("nvml_error") or "no device this process may use")' "$work/results/nexus-gpu.json" 2>/dev/null || echo "nexus gpu --json failed")"
runtime_detail() {  # runtime_detail NAME: "yes" or why not, from nexus gpu --json
    $python -c 'import json,sys; r=[x for x in json.load(open(sys.argv[1]))["runtimes"] if x["runtime"]==sys.argv[2]]; print(("yes" if r[0]["usable"] else r[0]["detail"]) if r else "no such runtime in this build")' \
        "$work/results/nexus-gpu.json" "$1" 2>/dev/null || echo "unknown"
}
if [[ "$gpu_status" != 0 ]]; then
    record "nexus gpu" FAIL "exit $gpu_status: $(head -c 300 "$work/results/nexus-gpu.err")"
    exit 1
fi

if [[ "$gpus" == 0 ]]; then
    headline="no GPU: $gpu_why. Nothing GPU-specific could be proven on this machine."
    record "nexus gpu" PASS "exits 0 and says why: $gpu_why"
    gpu_sh="$(NEXUS_BIN="$nexus" PYTHON="$python" WORK="$work/bench-gpu" RESULTS="$work/results/bench-gpu" bash benches/gpu.sh 2>&1 | tail -n 1)"
    if [[ "$gpu_sh" == "no GPU: "* ]]; then
        record "benches/gpu.sh" PASS "stops early: $gpu_sh"
    else
        record "benches/gpu.sh" FAIL "expected 'no GPU: ...', got: $gpu_sh"
    fi
    for check in "gpu metrics" "ort cuda" "bench --gpu" "cuda shared memory" "cargo test gpu" "libtorch cuda"; do
        record "$check" "NOT PROVEN" "no GPU on this machine"
    done
    exit 0
fi
record "nexus gpu" PASS "$gpus GPU(s): $($python -c 'import json,sys; print(", ".join(d["name"] + " " + d["uuid"] for d in json.load(open(sys.argv[1]))["devices"]))' "$work/results/nexus-gpu.json")"

# --- ONNX Runtime: the image's (CUDA EP) when it can serve, else the carried CPU build ---------
image_ort="$($python - <<'PY' 2>/dev/null
import glob, os, re
import onnxruntime as ort
capi = os.path.join(os.path.dirname(ort.__file__), "capi")
libs = [p for p in glob.glob(capi + "/libonnxruntime.so*") if re.search(r"\.so\.\d+\.\d+", p)]
cuda = os.path.exists(os.path.join(capi, "libonnxruntime_providers_cuda.so"))
version = tuple(int(x) for x in ort.__version__.split(".")[:2])
if not cuda:
    print(f"NO the image's onnxruntime {ort.__version__} has no libonnxruntime_providers_cuda.so (the CPU wheel; onnxruntime-gpu's 255 MB cannot be carried)")
elif version < (1, 31) or not libs:
    print(f"NO the image's onnxruntime {ort.__version__} has the CUDA EP but is older than 1.31 (the ort crate needs API 31)")
else:
    print("YES " + libs[0])
PY
)"
[[ -n "$image_ort" ]] || image_ort="NO python3 cannot import onnxruntime"
ort=none   # cuda: the image's ORT with its CUDA EP; cpu: the carried CPU build; none
if [[ "$image_ort" == YES* ]]; then
    export ORT_DYLIB_PATH="${image_ort#YES }"
    # The CUDA EP needs cuBLAS, cuDNN, cudart from the nvidia-* wheels, which Python's
    # onnxruntime preloads itself and a Rust process must find through the loader's path.
    nvidia_libs="$($python -c 'import glob, os, site; print(":".join(d for p in site.getsitepackages() for d in glob.glob(os.path.join(p, "nvidia", "*", "lib"))))' 2>/dev/null || true)"
    export LD_LIBRARY_PATH="$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    ort=cuda
elif cpu_ort="$(unpack libonnxruntime.so)" && [[ -n "$cpu_ort" ]]; then
    export ORT_DYLIB_PATH="$cpu_ort"
    ort=cpu
    record "ort cuda" "NOT PROVEN" "${image_ort#NO }; serving with the carried CPU ONNX Runtime instead"
else
    record "ort cuda" "NOT PROVEN" "${image_ort#NO }, and no CPU ONNX Runtime was carried"
fi

# --- a server: the same small model as KIND_GPU and KIND_CPU ----------------------------------
HTTP=18600 GRPC=18601 METRICS=18602
$python benches/make_models.py --out "$work/models" >/dev/null 2>&1 || record "models" FAIL "benches/make_models.py failed"
repo_dir="$work/repo"
for kind in GPU CPU; do
    name="mlp_$(tr '[:upper:]' '[:lower:]' <<<"$kind")"
    mkdir -p "$repo_dir/$name/1"
    cp "$work/models/small_mlp/1/model.onnx" "$repo_dir/$name/1/model.onnx" 2>/dev/null
    cat >"$repo_dir/$name/config.pbtxt" <<EOF
name: "$name"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "input" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "output" data_type: TYPE_FP32 dims: [ 8 ] } ]
instance_group [ { kind: KIND_$kind count: 1 } ]
EOF
done
start_server nexus "$work/results/nexus-serve.log" "$work/serve" "$HTTP" "$GRPC" "$METRICS" -- \
    "$nexus" serve --model-repository "$repo_dir" --http-port "$HTTP" --grpc-port "$GRPC" --metrics-port "$METRICS"
base="http://127.0.0.1:$HTTP"
# wait_ready exits the script when the server dies; run it in a subshell to record that instead.
if ! (wait_ready Nexus "$work/results/nexus-serve.log" "$base/v2/health/ready"); then
    record "nexus serve" FAIL "did not become ready: $(tail -n 3 "$work/results/nexus-serve.log" | tr '\n' ' ')"
    exit 1
fi
sleep 1   # one metrics sampling period
curl -s "http://127.0.0.1:$METRICS/metrics" >"$work/results/metrics.txt"
if grep -Eq '^nv_gpu_utilization\{gpu_uuid="[^"]+"\}' "$work/results/metrics.txt" &&
    grep -Eq '^nv_gpu_memory_used_bytes\{gpu_uuid="[^"]+"\}' "$work/results/metrics.txt"; then
    record "gpu metrics" PASS "$(grep -E '^nv_gpu_(utilization|memory_used_bytes)\{' "$work/results/metrics.txt" | tr '\n' ' ')"
else
    record "gpu metrics" FAIL "no nv_gpu_* with gpu_uuid on :$METRICS/metrics"
fi
curl -s -X POST "$base/v2/repository/index" >"$work/results/index.json"
curl -s "$base/v2/models/mlp_gpu/config" >"$work/results/mlp_gpu-config.json"
body='{"inputs":[{"name":"input","shape":[2,16],"datatype":"FP32","data":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6,-0.1,-0.2,-0.3,-0.4,-0.5,-0.6,-0.7,-0.8,-0.9,-1.0,-1.1,-1.2,-1.3,-1.4,-1.5,-1.6]}]}'
for name in mlp_gpu mlp_cpu; do
    curl -s -o "$work/results/$name-answer.json" -w '%{http_code}' -H 'Content-Type: application/json' \
        --data "$body" "$base/v2/models/$name/infer" >"$work/results/$name-status" || true
done
if [[ "$ort" == none ]]; then
    record "kind_gpu refused" "NOT PROVEN" "no ONNX Runtime to serve either copy with"
elif [[ "$ort" == cuda ]]; then
    verdict="$($python - "$work/results" <<'PY'
import json, sys
d = sys.argv[1]
status = {n: open(f"{d}/{n}-status").read() for n in ("mlp_gpu", "mlp_cpu")}
if status != {"mlp_gpu": "200", "mlp_cpu": "200"}:
    sys.exit(print(f"FAIL infer status {status}: {open(d + '/mlp_gpu-answer.json').read()[:300]}"))
config = json.load(open(f"{d}/mlp_gpu-config.json"))
group = config.get("instance_group", [{}])[0]
if group.get("kind") != "KIND_GPU":
    sys.exit(print(f"FAIL the config shows {group}, not a KIND_GPU group"))
gpu, cpu = (json.load(open(f"{d}/{n}-answer.json"))["outputs"][0]["data"] for n in ("mlp_gpu", "mlp_cpu"))
diff = max(abs(a - b) for a, b in zip(gpu, cpu))
print(("PASS" if diff < 1e-3 else "FAIL") + f" KIND_GPU answers, config {group}, max |GPU - CPU| {diff:.1e}")
PY
)"
    record "ort cuda" "${verdict%% *}" "${verdict#* }"
else
    verdict="$($python - "$work/results" <<'PY'
import json, sys
d = sys.argv[1]
rows = {r.get("name"): r for r in json.load(open(f"{d}/index.json"))}
gpu, cpu = rows.get("mlp_gpu", {}), rows.get("mlp_cpu", {})
cpu_ok = open(f"{d}/mlp_cpu-status").read() == "200"
if gpu.get("state") == "UNAVAILABLE" and gpu.get("reason") and cpu_ok:
    print(f"PASS KIND_GPU is UNAVAILABLE with the reason ({gpu['reason'][:200]}); the KIND_CPU copy serves")
else:
    print(f"FAIL mlp_gpu {gpu}, mlp_cpu answered {open(d + '/mlp_cpu-status').read()}")
PY
)"
    record "kind_gpu refused" "${verdict%% *}" "${verdict#* }"
fi

# --- bench --gpu against that server, reading its metrics --------------------------------------
bench_model=mlp_cpu
[[ "$ort" == cuda ]] && bench_model=mlp_gpu
if [[ "$ort" == none ]]; then
    record "bench --gpu" "NOT PROVEN" "no model can be served without an ONNX Runtime"
elif "$nexus" bench run --model "$bench_model" --protocol grpc --grpc-addr "127.0.0.1:$GRPC" \
    --concurrency 1,8 --warmup-secs 0.5 --duration-secs 2 --batch 8 --gpu \
    --metrics-url "http://127.0.0.1:$METRICS/metrics" --label "check-$bench_model" \
    --output "$work/results/bench" >"$work/results/bench.log" 2>&1; then
    verdict="$($python - "$work/results/bench/check-$bench_model.json" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
levels = run["levels"]
counts = [sum(g["samples"] for g in (l.get("gpu") or {}).get("summary", [])) for l in levels]
if run.get("gpu", {}).get("source") and all(counts):
    print(f"PASS source {run['gpu']['source']}, samples per level {counts}")
else:
    print(f"FAIL gpu {run.get('gpu')}, samples per level {counts}")
PY
)"
    record "bench --gpu" "${verdict%% *}" "${verdict#* } ($bench_model)"
else
    record "bench --gpu" FAIL "$(tail -n 1 "$work/results/bench.log")"
fi
# --- CUDA shared memory: the client's GPU buffer registered by its IPC handle -------------------
if [[ "$ort" == none ]]; then
    record "cuda shared memory" "NOT PROVEN" "no model can be served without an ONNX Runtime"
elif verdict="$($python scripts/gpu_check_cuda_shm.py --url "$base" --model "$bench_model" --input input \
    --input-shape 2,16 --output output --output-shape 2,8 2>&1)"; then
    record "cuda shared memory" PASS "${verdict#PASS }"
else
    record "cuda shared memory" FAIL "$(tail -n 2 <<<"$verdict" | tr '\n' ' ' | head -c 400)"
fi
stop_server

# --- cargo test --test gpu ---------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
    record "cargo test gpu" "NOT PROVEN" "cargo is not in the image (and no registry to fetch crates from); tests/gpu.rs runs in CI without a GPU"
elif timeout 240 cargo test --offline --test gpu >"$work/results/cargo-test-gpu.log" 2>&1; then
    record "cargo test gpu" PASS "$(grep -E '^test result' "$work/results/cargo-test-gpu.log" | tail -n 1)"
else
    record "cargo test gpu" "NOT PROVEN" "cargo cannot build offline here in time: $(grep -m1 -E 'error' "$work/results/cargo-test-gpu.log" | head -c 200)"
fi

# --- benches/gpu.sh, a short pass --------------------------------------------------------------
if NEXUS_BIN="$nexus" PYTHON="$python" WARMUP=1 DURATION=2 BATCHES="1 64" WORK="$work/bench-gpu" \
    RESULTS="$work/results/bench-gpu" bash benches/gpu.sh >"$work/results/bench-gpu.log" 2>&1; then
    s="$work/results/bench-gpu/summary.md"
    if grep -q ': FAILED' "$s"; then
        record "benches/gpu.sh" FAIL "$(grep ': FAILED' "$s" | head -n 1)"
    elif grep -q ': ran' "$s"; then
        record "benches/gpu.sh" PASS "$(grep -c ': ran' "$s") runs; $(grep -c 'SKIPPED' "$s") sides skipped"
    else
        record "benches/gpu.sh" "NOT PROVEN" "every side skipped: $(grep SKIPPED "$s" | tr '\n' ' ' | head -c 400)"
    fi
else
    record "benches/gpu.sh" FAIL "$(tail -n 2 "$work/results/bench-gpu.log" | tr '\n' ' ')"
fi

# --- libtorch CUDA -----------------------------------------------------------------------------
torch="$(runtime_detail pytorch)"
if [[ "$torch" == yes ]]; then
    record "libtorch cuda" PASS "nexus gpu: the PyTorch runtime can use the GPU (benches/gpu.sh ran its side)"
else
    record "libtorch cuda" "NOT PROVEN" "$torch; tch 0.26 needs libtorch 2.13 while the image has torch 2.11 (a different C++ ABI), and the 2 GB CUDA libtorch cannot be carried"
fi
grep -q '|FAIL|' <<<"$(printf '%s\n' "${results[@]}")" && headline="GPU path checked: some checks FAILED."
exit 0
