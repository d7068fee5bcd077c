#!/usr/bin/env bash
# Sentence-embedding throughput/latency, one model (all-MiniLM-L6-v2 as sentence-transformers
# saves it), one fixed sentence, in one run:
#   - Nexus, candle backend, serving the folder (text in);
#   - Hugging Face text-embeddings-inference (TEI, CPU candle backend), the same folder;
#   - Nexus, ONNX Runtime backend, serving the folder's ONNX export (torch.onnx.export in the
#     PyTorch venv, benches/runtimes/export_encoder_onnx.py; token ids in, tokenised once here);
#   - candle and ONNX Runtime in-process (`nexus bench run --protocol in-process`), one text
#     per call and 16 per call: the floor without a server.
# Servers: the same client (wrk + benches/runtimes/wrk_post.lua), each server alone: start,
# wait ready, check its embedding against sentence-transformers', warm up, wrk at each
# concurrency, stop.
#
# Usage: benches/embed_compare.sh            (from the repository root)
# Env:
#   NEXUS_BIN    Nexus binary (release)                     default: target/release/nexus
#   TEI_BIN      text-embeddings-router binary               default: /root/.cache/nexus/tei-target/release/text-embeddings-router
#   TEI_GIT_DIR  TEI git dir, for the commit in the summary  default: unset (commit from TEI_COMMIT or "unknown")
#   TEI_REF      TEI tag/commit that was built               default: v1.9.3
#   TEI_BUILD_NOTE  free text on how TEI was built (goes into the summary)
#   MODEL_DIR    model folder                                default: examples/models/minilm/1
#   TORCH_PYTHON python of the PyTorch venv (exports ONNX)   default: scripts/install-torch-python.sh's
#   QUEUE_DELAY_US  Nexus's max_queue_delay_microseconds     default: 1000
#   WARMUP_S / DURATION_S / CONCURRENCY                      default: 3 / 10 / "1 16"
#   OUT_DIR      results folder                              default: benches/results/embed_compare
# TEI is never vendored into this repository; build it elsewhere (see summary.md for how).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NEXUS_BIN="${NEXUS_BIN:-$ROOT/target/release/nexus}"
TEI_BIN="${TEI_BIN:-/root/.cache/nexus/tei-target/release/text-embeddings-router}"
TEI_REF="${TEI_REF:-v1.9.3}"
MODEL_DIR="$(cd "${MODEL_DIR:-$ROOT/examples/models/minilm/1}" && pwd)"
WARMUP_S="${WARMUP_S:-3}"
DURATION_S="${DURATION_S:-10}"
CONCURRENCY="${CONCURRENCY:-1 16}"
OUT_DIR="${OUT_DIR:-$ROOT/benches/results/embed_compare}"
QUEUE_DELAY_US="${QUEUE_DELAY_US:-1000}"
TORCH_PYTHON="${TORCH_PYTHON:-$(bash "$ROOT/scripts/install-torch-python.sh" | tail -1)}"
LUA="$ROOT/benches/runtimes/wrk_post.lua"
THREADS="$(nproc)"

NEXUS_HTTP=18700; NEXUS_GRPC=18701; NEXUS_METRICS=18702
TEI_PORT=18710

SENTENCE="The quick brown fox jumps over the lazy dog near the river"

for bin in "$NEXUS_BIN" "$TEI_BIN" "$TORCH_PYTHON"; do
    [[ -x "$bin" ]] || { echo "missing binary: $bin" >&2; exit 1; }
done
command -v wrk >/dev/null || { echo "wrk not installed" >&2; exit 1; }

mkdir -p "$OUT_DIR"
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# The ONNX export, the sentence's token ids and sentence-transformers' embedding of it.
echo "== exporting $MODEL_DIR to ONNX ($TORCH_PYTHON)"
"$TORCH_PYTHON" "$ROOT/benches/runtimes/export_encoder_onnx.py" "$MODEL_DIR" "$WORK/onnx" "$SENTENCE" \
    > "$OUT_DIR/export.log" 2>&1 || { cat "$OUT_DIR/export.log" >&2; exit 1; }
cp "$WORK/onnx/embedding.json" "$OUT_DIR/reference_embedding.json"

# Request bodies: one sentence per request (text for Nexus candle and TEI, token ids for the
# ONNX export); in-process data for 1 and 16 rows.
python3 - "$SENTENCE" "$WORK" <<'PY'
import json, sys
s, d = sys.argv[1], sys.argv[2]
json.dump({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [s]}]},
          open(f"{d}/nexus_body.json", "w"))
json.dump({"inputs": s}, open(f"{d}/tei_body.json", "w"))
tokens = {t["name"]: t["data"] for t in json.load(open(f"{d}/onnx/tokens.json"))["inputs"]}
for rows in (1, 16):
    json.dump({"text": [s] * rows}, open(f"{d}/text_{rows}.json", "w"))
    json.dump({k: v * rows for k, v in tokens.items()}, open(f"{d}/tokens_{rows}.json", "w"))
open(f"{d}/length", "w").write(str(len(tokens["input_ids"])))
PY
LENGTH="$(cat "$WORK/length")"

# Nexus model repository: minilm (candle, the folder) and minilm_onnx (ONNX Runtime, the
# export, as many intra-op threads as candle's pool has: one per core), the same batching.
mkdir -p "$WORK/repo/minilm" "$WORK/repo/minilm_onnx/1"
printf 'backend: "candle"\nmax_batch_size: 32\ndynamic_batching { max_queue_delay_microseconds: %s }\n' \
    "$QUEUE_DELAY_US" > "$WORK/repo/minilm/config.pbtxt"
ln -s "$MODEL_DIR" "$WORK/repo/minilm/1"
printf 'platform: "onnxruntime_onnx"\nmax_batch_size: 32\ndynamic_batching { max_queue_delay_microseconds: %s }\nparameters { key: "intra_op_thread_count" value: { string_value: "%s" } }\n' \
    "$QUEUE_DELAY_US" "$THREADS" > "$WORK/repo/minilm_onnx/config.pbtxt"
ln -s "$WORK/onnx/model.onnx" "$WORK/repo/minilm_onnx/1/model.onnx"

wait_ready() { # url timeout_s
    local url="$1" deadline=$((SECONDS + $2))
    while (( SECONDS < deadline )); do
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)" == "200" ]]; then return 0; fi
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited before ready" >&2; return 1; }
        sleep 0.2
    done
    echo "timed out waiting for $url" >&2; return 1
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    sleep 1
}

run_wrk() { # name url body
    local name="$1" url="$2" body="$3"
    echo "== $name: warm-up ${WARMUP_S}s (c=16)"
    WRK_BODY="$body" wrk -t2 -c16 -d"${WARMUP_S}s" -s "$LUA" "$url" > "$OUT_DIR/${name}_warmup.txt" 2>&1
    for c in $CONCURRENCY; do
        local t=$(( c < 2 ? c : 2 ))
        echo "== $name: c=$c, ${DURATION_S}s"
        WRK_BODY="$body" wrk -t"$t" -c"$c" -d"${DURATION_S}s" --latency -s "$LUA" "$url" \
            > "$OUT_DIR/${name}_c${c}.txt" 2>&1
        grep WRK_RESULT "$OUT_DIR/${name}_c${c}.txt"
    done
}

run_in_process() { # name model nexus-bench-args...
    local name="$1" model="$2"; shift 2
    echo "== $name: in-process"
    "$NEXUS_BIN" bench run --protocol in-process --model "$name" --model-file "$model" \
        --ort-threads "$THREADS" --concurrency 1 --warmup-secs "$WARMUP_S" \
        --duration-secs "$DURATION_S" --label "$name" --output "$OUT_DIR/in_process" "$@" \
        > "$OUT_DIR/${name}.txt" 2>&1 || { cat "$OUT_DIR/${name}.txt" >&2; exit 1; }
    grep "c=1 " "$OUT_DIR/${name}.txt" | tail -1
}

# ---- Nexus: candle, then the ONNX export ----
echo "== starting Nexus ($NEXUS_BIN)"
"$NEXUS_BIN" serve --model-repository "$WORK/repo" --address 127.0.0.1 --no-events \
    --http-port "$NEXUS_HTTP" --grpc-port "$NEXUS_GRPC" --metrics-port "$NEXUS_METRICS" \
    > "$OUT_DIR/nexus_server.log" 2>&1 &
SERVER_PID=$!
for model in minilm minilm_onnx; do
    wait_ready "http://127.0.0.1:$NEXUS_HTTP/v2/models/$model/ready" 120
done
curl -sf -H 'Content-Type: application/json' --data-binary @"$WORK/nexus_body.json" \
    "http://127.0.0.1:$NEXUS_HTTP/v2/models/minilm/infer" > "$OUT_DIR/nexus_embedding.json"
run_wrk nexus "http://127.0.0.1:$NEXUS_HTTP/v2/models/minilm/infer" "$WORK/nexus_body.json"
curl -sf -H 'Content-Type: application/json' --data-binary @"$WORK/onnx/tokens.json" \
    "http://127.0.0.1:$NEXUS_HTTP/v2/models/minilm_onnx/infer" > "$OUT_DIR/nexus_onnx_embedding.json"
run_wrk nexus_onnx "http://127.0.0.1:$NEXUS_HTTP/v2/models/minilm_onnx/infer" "$WORK/onnx/tokens.json"
stop_server

# ---- TEI ----
echo "== starting TEI ($TEI_BIN)"
TEI_VERSION="$("$TEI_BIN" --version 2>/dev/null || echo unknown)"
HF_HUB_OFFLINE=1 "$TEI_BIN" --model-id "$MODEL_DIR" --dtype float32 \
    --hostname 127.0.0.1 --port "$TEI_PORT" > "$OUT_DIR/tei_server.log" 2>&1 &
SERVER_PID=$!
wait_ready "http://127.0.0.1:$TEI_PORT/health" 300
curl -sf -H 'Content-Type: application/json' --data-binary @"$WORK/tei_body.json" \
    "http://127.0.0.1:$TEI_PORT/embed" > "$OUT_DIR/tei_embedding.json"
run_wrk tei "http://127.0.0.1:$TEI_PORT/embed" "$WORK/tei_body.json"
stop_server

# ---- in-process: candle and ONNX Runtime, 1 and 16 sentences per call ----
rm -rf "$OUT_DIR/in_process"
for rows in 1 16; do
    run_in_process "candle_b$rows" "$MODEL_DIR" --input "text:BYTES:$rows,1" \
        --input-data "$WORK/text_$rows.json" --batch "$rows"
    run_in_process "ort_b$rows" "$WORK/onnx/model.onnx" --input "input_ids:INT64:$rows,$LENGTH" \
        --input "attention_mask:INT64:$rows,$LENGTH" --input "token_type_ids:INT64:$rows,$LENGTH" \
        --input-data "$WORK/tokens_$rows.json" --batch "$rows"
done

TEI_COMMIT="${TEI_COMMIT:-}"
if [[ -z "$TEI_COMMIT" && -n "${TEI_GIT_DIR:-}" ]]; then
    TEI_COMMIT="$(git --git-dir="$TEI_GIT_DIR" rev-parse "${TEI_REF}^{commit}" 2>/dev/null || true)"
fi
NEXUS_COMMIT="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"

# ---- summary ----
python3 - "$OUT_DIR" "$CONCURRENCY" "$DURATION_S" "$WARMUP_S" "$SENTENCE" "$TEI_VERSION" \
    "${TEI_COMMIT:-unknown}" "$TEI_REF" "$NEXUS_COMMIT" "$NEXUS_BIN" "${TEI_BUILD_NOTE:-}" \
    "$QUEUE_DELAY_US" "$THREADS" "$LENGTH" <<'PY'
import json, math, os, platform, re, sys
(out, levels, dur, warm, sentence, tei_ver, tei_commit, tei_ref, nexus_commit, nexus_bin, note,
 delay, threads, length) = sys.argv[1:15]
levels = [int(c) for c in levels.split()]

def served(name, c):
    txt = open(f"{out}/{name}_c{c}.txt").read()
    r = json.loads(re.search(r"^WRK_RESULT (.*)$", txt, re.M).group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r

def in_process(name):
    level = json.load(open(f"{out}/in_process/{name}.json"))["levels"][0]
    return {"rps": level["rows_per_second"], "p50_us": level["p50_us"], "p90_us": level["p90_us"],
            "p99_us": level["p99_us"], "mean_us": level["mean_us"], "errors": level["errors"]}

servers = {"nexus": "Nexus (candle)", "nexus_onnx": "Nexus (ONNX Runtime, the export)", "tei": "TEI " + tei_ver.split()[-1]}
res = {(n, c): served(n, c) for n in servers for c in levels}
local = {n: in_process(n) for n in ("candle_b1", "candle_b16", "ort_b1", "ort_b16")}

reference = json.load(open(f"{out}/reference_embedding.json"))
def agreement(vector):
    dot = sum(x * y for x, y in zip(vector, reference))
    cos = dot / (math.sqrt(sum(x * x for x in vector)) * math.sqrt(sum(y * y for y in reference)))
    return cos, max(abs(x - y) for x, y in zip(vector, reference)), len(vector)
embeddings = {
    "nexus": json.load(open(f"{out}/nexus_embedding.json"))["outputs"][0]["data"],
    "nexus_onnx": json.load(open(f"{out}/nexus_onnx_embedding.json"))["outputs"][0]["data"],
    "tei": json.load(open(f"{out}/tei_embedding.json"))[0],
}
checks = {n: agreement(v) for n, v in embeddings.items()}
ok = all(dim == len(reference) and cos > 0.9999 for cos, _, dim in checks.values())

cpu = "unknown"
try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except Exception:
    pass

L = []
L.append("# Sentence embeddings: Nexus candle and ONNX Runtime vs text-embeddings-inference vs in-process (CPU)\n")
L.append("- Model: all-MiniLM-L6-v2 (one sentence-transformers folder), float32, mean pooling + L2 normalize; "
         "the ONNX export made from the same folder by torch.onnx.export (benches/runtimes/export_encoder_onnx.py)")
L.append(f"- Sentence ({len(sentence.split())} words, {length} tokens, one per request): \"{sentence}\"; "
         "text for Nexus candle and TEI, token ids (tokenised once by the client) for the ONNX export")
L.append(f"- Client: wrk + benches/runtimes/wrk_post.lua (fixed body, keep-alive), warm-up {warm} s, {dur} s per level; "
         f"threads = min(c, 2); client runs on the same host")
L.append(f"- In-process: `nexus bench run --protocol in-process`, one thread calling the runtime with 1 or 16 "
         f"sentences per call, {dur} s after {warm} s of warm-up")
L.append(f"- Host: {cpu}, {os.cpu_count()} CPUs, {platform.platform()}")
L.append(f"- Nexus: {nexus_bin} (commit {nexus_commit}), max_batch_size 32, dynamic_batching "
         f"max_queue_delay {delay} us; candle's pool and ONNX Runtime: {threads} threads")
L.append(f"- TEI: {tei_ver}, ref {tei_ref}, commit {tei_commit}; `--dtype float32`, CPU candle backend, other options default")
if note:
    L.append(f"- TEI build: {note}")
L.append("")
L.append("| server | c | sentences/s | p50 ms | p90 ms | p99 ms | mean ms | errors |")
L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
for n, label in servers.items():
    for c in levels:
        r = res[(n, c)]
        L.append(f"| {label} | {c} | {r['rps']:.1f} | {r['p50_us']/1e3:.2f} | {r['p90_us']/1e3:.2f} | "
                 f"{r['p99_us']/1e3:.2f} | {r['mean_us']/1e3:.2f} | {r['errors']} |")
labels = {"candle_b1": "candle in-process, 1 per call", "candle_b16": "candle in-process, 16 per call",
          "ort_b1": "ONNX Runtime in-process, 1 per call", "ort_b16": "ONNX Runtime in-process, 16 per call"}
for n, label in labels.items():
    r = local[n]
    L.append(f"| {label} | — | {r['rps']:.1f} | {r['p50_us']/1e3:.2f} | {r['p90_us']/1e3:.2f} | "
             f"{r['p99_us']/1e3:.2f} | {r['mean_us']/1e3:.2f} | {r['errors']} |")
L.append("")
hi, lo = max(levels), min(levels)
ratio = res[("nexus", hi)]["rps"] / res[("tei", hi)]["rps"]
p50n, p50t = res[("nexus", lo)]["p50_us"] / 1e3, res[("tei", lo)]["p50_us"] / 1e3
L.append(f"- Throughput ratio Nexus candle/TEI at c={hi}: **{ratio:.2f}x** (target >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'})")
L.append(f"- p50 at c={lo}: Nexus candle {p50n:.2f} ms vs TEI {p50t:.2f} ms "
         f"(target Nexus no worse: {'met' if p50n <= p50t else 'NOT met'})")
L.append(f"- Nexus candle vs candle in-process: c={lo} p50 +{p50n - local['candle_b1']['p50_us'] / 1e3:.2f} ms, "
         f"c={hi} sentences/s {res[('nexus', hi)]['rps'] / local['candle_b16']['rps']:.2f}x of 16 per call")
L.append(f"- Nexus ONNX Runtime vs ONNX Runtime in-process: c={lo} p50 "
         f"+{res[('nexus_onnx', lo)]['p50_us'] / 1e3 - local['ort_b1']['p50_us'] / 1e3:.2f} ms, "
         f"c={hi} sentences/s {res[('nexus_onnx', hi)]['rps'] / local['ort_b16']['rps']:.2f}x of 16 per call")
for n, (cos, diff, dim) in checks.items():
    L.append(f"- Embedding of {servers[n]} vs sentence-transformers: cosine {cos:.8f}, max abs diff {diff:.3e}, dim {dim}")
L.append(f"- Embeddings {'agree' if ok else 'DISAGREE'} (threshold cosine > 0.9999)")
L.append("")
L.append("Raw outputs: `*_c*.txt` (wrk reports), `in_process/` (nexus bench runs), `*_embedding.json`, `*_server.log`.")
open(f"{out}/summary.md", "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
