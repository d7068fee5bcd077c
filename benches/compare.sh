#!/usr/bin/env bash
# Side-by-side benchmark: Nexus vs KServe vs MLServer vs Triton (all serving the same ONNX files
# with ONNX Runtime at the same intra-op thread counts), plus ONNX Runtime in-process as the floor.
#
#   bash benches/compare.sh            (from any directory; idempotent; ~17 min on 2 cores once built)
#
# It sets up the checkout (scripts/setup.sh), the Python servers' venvs (.venv-bench/kserve and
# .venv-bench/mlserver, from benches/requirements-*.txt), builds target/release/nexus, writes the
# models (benches/make_models.py), then starts each server on fixed loopback ports, waits until
# its model is ready, drives it with `nexus bench run` and stops it. Results:
#   benches/results/small_mlp/   overhead-bound model, batch 1, c=1 and c=16, every server/protocol
#   benches/results/wide_mlp/    compute-bound model on Nexus: dynamic batching vs none vs ORT batch 32
#   benches/results/profile/     perf profiles of Nexus on small_mlp at c=1 and c=16 (when perf works)
#   benches/results/triton/      Nexus vs real Triton (tritonserver 2.51, .venv-bench/triton) with
#                                identical configs, with and without dynamic batching, driven by
#                                `nexus bench run` and by Triton's perf_analyzer
#                                (scripts/install-perf-analyzer.sh), also with system shared
#                                memory; Nexus vs a bare axum server
#   benches/RESULTS.md           tables, ratios against the targets, versions, machine
# Environment: WARMUP (s, default 2), DURATION (s per concurrency level, default 8),
# PROFILE=0 to skip perf, QUIET_WAIT=SECONDS to wait for an idle machine before measuring,
# ONLY=triton to run only the Triton / perf_analyzer / floor section (the other sections' results
# from an earlier run stay and go into RESULTS.md with it), BUILD=0 to measure the release
# binaries already in target/release (when the tree does not build as it stands).
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
TRITON_HTTP=18500 TRITON_GRPC=18501 TRITON_METRICS=18502
FLOOR_HTTP=18600
only="${ONLY:-}"
[[ -z "$only" || "$only" == triton ]] || { echo "error: ONLY=$only: the only section that runs alone is triton" >&2; exit 2; }

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
if [[ "$only" != triton ]]; then
    venv kserve benches/requirements-bench-kserve.txt
    venv mlserver benches/requirements-bench-mlserver.txt
fi
venv triton benches/requirements-bench-triton.txt
log "setup: perf_analyzer (scripts/install-perf-analyzer.sh)"
perf_analyzer="$(bash scripts/install-perf-analyzer.sh | tail -n 1)"

if [[ "${BUILD:-1}" != 0 ]]; then
    log "build: cargo build --release --bin nexus, and the floor server"
    cargo build --release --bin nexus
    cargo build --release -p nexus-bench --bin floor
fi

# The commit the binary was built from (and whether files outside benches/ differ from it).
nexus_sha="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!benches' 2>/dev/null || echo '+local changes')"

log "models: benches/make_models.py"
.venv/bin/python benches/make_models.py

mkdir -p "$work"

# --- Triton, perf_analyzer and the protocol floor (section 7; a function so ONLY=triton can
# run it alone) ----------------------------------------------------------------------------
# Real tritonserver 2.51 (nvidia-pytriton's build, whose only backend is Python) serves
# small_mlp (dynamic batching, no queue delay) and small_mlp_nobatch (no batcher) from Nexus's
# own config.pbtxt files with `backend: "python"` for the platform, each model a model.py running
# the same ONNX file with onnxruntime and one intra-op thread (benches/runtimes/triton/). Nexus
# serves the same two configs. Both are driven by `nexus bench run` (HTTP JSON, HTTP binary,
# gRPC; the verdicts) and by Triton's perf_analyzer (HTTP binary and JSON, gRPC; small_mlp), at
# c=1 and c=16. Then the bare axum server (benches/src/bin/floor.rs) answers Nexus's own reply
# bytes under the same `nexus bench run` JSON load: what HTTP/JSON costs before any serving.
triton_dir="$results/triton"
triton_venv="$repo/.venv-bench/triton"

# pa_run LABEL MODEL PROTOCOL URL: perf_analyzer at c=1 and c=16, batch 1, random
# data, PROTOCOL http-binary, http-json or grpc (`-i http` sends binary tensors unless told JSON),
# or http-shm / grpc-shm (tensors in system shared memory regions under /dev/shm that
# perf_analyzer registers with the server: no tensor bytes on the wire); each level is measured in windows of half of
# DURATION until 3 in a row agree within 50 % (the default 10 % rarely settles on 2 shared
# cores). Its output and CSV go to raw/, the levels to LABEL.json in `nexus bench run`'s layout.
pa_run() {
    local label="$1" model="$2" protocol="$3" url="$4" extra=()
    shift 4
    [[ "$protocol" == http-json ]] && extra=(--input-tensor-format json --output-tensor-format json)
    [[ "$protocol" == *-shm ]] && extra=(--shared-memory system --output-shared-memory-size 1024)
    echo "$label: perf_analyzer -i ${protocol%%-*} ${extra[*]}"
    if ! "$perf_analyzer" -m "$model" -u "$url" -i "${protocol%%-*}" "${extra[@]}" -b 1 --concurrency-range 1:16:15 \
        --measurement-interval "$((duration * 500))" --stability-percentage 50 --max-trials 10 \
        -f "$triton_dir/raw/$label.csv" >"$triton_dir/raw/$label.txt" 2>&1; then
        tail -n 20 "$triton_dir/raw/$label.txt" >&2
        die "perf_analyzer $label failed (output in $triton_dir/raw/$label.txt)"
    fi
    "$python" - "$triton_dir/raw/$label" "$label" "$model" "$protocol" "$url" "$triton_dir/$label.json" <<'PY'
import csv, datetime, json, os, re, sys
raw, label, model, protocol, url, out = sys.argv[1:]
# The CSV has rates and percentiles; the text report has each level's request count and mean.
text = open(raw + ".txt").read()
counts = {int(c): int(n) for c, n in re.findall(r"Request concurrency: (\d+)\n\s+Client:\s+Request count: (\d+)", text)}
means = [int(m) for m in re.findall(r"Avg latency: (\d+) usec", text)]
levels = []
for i, row in enumerate(csv.DictReader(open(raw + ".csv"))):
    c, rate = int(row["Concurrency"]), float(row["Inferences/Second"])
    levels.append({
        "concurrency": c, "requests": counts[c], "errors": 0,  # perf_analyzer stops on any error
        "seconds": counts[c] / rate, "throughput": rate, "rows_per_second": rate,
        "p50_us": int(row["p50 latency"]), "p90_us": int(row["p90 latency"]), "p99_us": int(row["p99 latency"]),
        "mean_us": float(means[i]),
    })
json.dump({
    # `nexus bench report` knows the wire protocols; the label keeps "-shm".
    "label": label, "protocol": {"http-shm": "http-binary", "grpc-shm": "grpc"}.get(protocol, protocol),
    "model": model, "batch": 1,
    "target": f"{url} (perf_analyzer 2.51.0)", "levels": levels, "machine": f"{os.cpu_count()} cores",
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
}, open(out, "w"), indent=2)
PY
}

# both_variants SERVER HTTP GRPC: `nexus bench run` on small_mlp and small_mlp_nobatch over every
# protocol, then perf_analyzer on small_mlp, against one running server.
both_variants() {
    local server="$1" http="$2" grpc="$3" model variant protocol
    for model in small_mlp small_mlp_nobatch; do
        variant="$([[ "$model" == small_mlp ]] && echo batching || echo nobatch)"
        for protocol in http-json http-binary grpc; do
            run "$triton_dir" "$server-$variant-$protocol" --protocol "$protocol" --model "$model" \
                --http-url "http://$http" --grpc-addr "$grpc" "${small_input[@]}" --concurrency 1,16
        done
    done
    for protocol in http-binary http-json grpc http-shm grpc-shm; do
        pa_run "pa-$server-batching-$protocol" small_mlp "$protocol" "$([[ "$protocol" == grpc* ]] && echo "$grpc" || echo "$http")"
    done
}

triton_section() {
    local t_start=$SECONDS started_at load_start load_end tpkg pylib triton_version body reply
    started_at="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    read -r load_start _ </proc/loadavg
    rm -rf "$triton_dir"
    mkdir -p "$triton_dir/raw"

    log "Triton section: Nexus $nexus_sha on small_mlp and small_mlp_nobatch"
    start_server nexus "$work/nexus-triton.log" "$work/nexus" "$NEXUS_HTTP" "$NEXUS_GRPC" "$NEXUS_METRICS" -- "${nexus_cmd[@]}"
    wait_ready Nexus "$work/nexus-triton.log" "http://127.0.0.1:$NEXUS_HTTP/v2/models/small_mlp_nobatch/ready"
    # The floor's reply: Nexus's answer to a 1-row JSON request like the load generator's.
    body="$work/small_mlp-body.json" reply="$work/small_mlp-reply.json"
    "$python" -c 'import json, random; print(json.dumps({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
        "data": [random.uniform(-1, 1) for _ in range(16)]}], "parameters": {"binary_data_output": False}}))' >"$body"
    curl -sf -H 'Content-Type: application/json' --data-binary "@$body" \
        "http://127.0.0.1:$NEXUS_HTTP/v2/models/small_mlp/infer" -o "$reply"
    both_variants nexus "127.0.0.1:$NEXUS_HTTP" "127.0.0.1:$NEXUS_GRPC"
    stop_server

    # tritonserver from the wheel needs its bundled libraries and the venv Python's libpython;
    # with the venv's bin/ first on PATH the Python backend stub (an embedded, isolated
    # interpreter that ignores PYTHONPATH) finds the venv's site-packages, as if activated.
    tpkg="$("$triton_venv/bin/python" -c 'import os, pytriton; print(os.path.dirname(pytriton.__file__))')"
    pylib="$("$triton_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
    "$triton_venv/bin/python" benches/runtimes/triton_repo.py --models "$models" --out "$work/triton" \
        small_mlp small_mlp_nobatch
    start_server triton "$work/triton.log" "$work/triton" "$TRITON_HTTP" "$TRITON_GRPC" "$TRITON_METRICS" -- \
        env PATH="$triton_venv/bin:$PATH" LD_LIBRARY_PATH="$(dirname "$tpkg")/nvidia_pytriton.libs:$pylib" \
        "$tpkg/tritonserver/bin/tritonserver" --model-repository "$work/triton/models" \
        --backend-directory "$work/triton/backends" --http-port "$TRITON_HTTP" --grpc-port "$TRITON_GRPC" \
        --metrics-port "$TRITON_METRICS"
    wait_ready Triton "$work/triton.log" "http://127.0.0.1:$TRITON_HTTP/v2/models/small_mlp/ready"
    wait_ready Triton "$work/triton.log" "http://127.0.0.1:$TRITON_HTTP/v2/models/small_mlp_nobatch/ready"
    triton_version="$(curl -sf "http://127.0.0.1:$TRITON_HTTP/v2" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["version"])')"
    log "Triton: tritonserver $triton_version (nvidia-pytriton $(ver triton nvidia-pytriton))"
    both_variants triton "127.0.0.1:$TRITON_HTTP" "127.0.0.1:$TRITON_GRPC"
    stop_server

    log "floor: bare axum server, Nexus's reply ($(wc -c <"$reply") bytes)"
    start_server floor "$work/floor.log" "$work" "$FLOOR_HTTP" -- \
        "$repo/target/release/floor" --port "$FLOOR_HTTP" --reply "$reply"
    wait_ready Floor "$work/floor.log" -H 'Content-Type: application/json' --data-binary "@$body" \
        "http://127.0.0.1:$FLOOR_HTTP/v2/models/small_mlp/infer"
    run "$triton_dir" floor-http-json --protocol http-json --model small_mlp --http-url "http://127.0.0.1:$FLOOR_HTTP" \
        "${small_input[@]}" --concurrency 1,16
    stop_server

    "$bench" bench report --dir "$triton_dir" --title "small_mlp: Nexus vs Triton 2.51 (identical configs) and the axum floor" >/dev/null
    read -r load_end _ </proc/loadavg
    "$python" - "$results/meta-triton.json" <<PY
import json, sys
json.dump({
    "command": "ONLY=triton bash benches/compare.sh (or the whole script)", "elapsed_s": $((SECONDS - t_start)),
    "started": "$started_at",
    "warmup_s": "$warmup", "duration_s": "$duration", "load_before": "$load_start", "load_after": "$load_end",
    "nexus": "$nexus_sha", "tritonserver": "$triton_version", "pytriton": "$(ver triton nvidia-pytriton)",
    "ort_triton": "$(ver triton onnxruntime)", "perf_analyzer": "2.51.0", "reply_bytes": $(wc -c <"$reply"),
}, open(sys.argv[1], "w"), indent=2)
PY
}

nexus_cmd=("$bench" serve --model-repository "$models" --http-port "$NEXUS_HTTP" --grpc-port "$NEXUS_GRPC"
    --metrics-port "$NEXUS_METRICS")
if [[ "$only" == triton ]]; then
    triton_section
    log "writing benches/RESULTS.md"
    .venv/bin/python benches/write_results.py
    exit 0
fi

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
    # c=1 over HTTP binary and gRPC (the latency targets), c=16 over HTTP JSON (the Triton and
    # floor targets).
    for case in http-binary:1 grpc:1 http-json:16; do
        protocol="${case%:*}" c="${case#*:}" name="nexus-${case/:/-c}"
        log "profile: perf record on Nexus, small_mlp, $protocol, c=$c"
        "$bench" bench run --label "profile-$name" --output "$work/profile-runs" --warmup-secs 1 --duration-secs 6 \
            --protocol "$protocol" --model small_mlp "${nexus_at[@]}" "${small_input[@]}" --concurrency "$c" >/dev/null 2>&1 &
        client=$!
        sleep 2
        perf record -e cpu-clock -F 1999 -p "$server_pid" -o "$work/perf-$name.data" -- sleep 4 >/dev/null 2>&1 || true
        wait "$client" || true
        # Flat profile of the server process: by thread, and by library + function.
        { perf report -i "$work/perf-$name.data" --stdio --no-children --sort comm --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' || true; } \
            >"$profile_dir/$name-threads.txt"
        { perf report -i "$work/perf-$name.data" --stdio --no-children --sort dso,symbol --percent-limit 0.7 2>/dev/null | grep -v '^#' | grep -v '^$' || true; } |
            sed -E 's/[[:space:]]+$//' | cut -c1-160 >"$profile_dir/$name-symbols.txt"
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

# --- 7. Triton, perf_analyzer, the floor (above) ---------------------------------------------
triton_section
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
