#!/usr/bin/env bash
# Sentence-embedding throughput/latency: Nexus candle backend vs Hugging Face
# text-embeddings-inference (TEI, CPU candle backend), same model folder
# (all-MiniLM-L6-v2, sentence-transformers layout), same client (wrk + benches/runtimes/wrk_post.lua),
# same fixed sentence. Each server runs alone: start, wait ready, check embeddings, warm up,
# wrk at each concurrency, stop.
#
# Usage: benches/embed_compare.sh            (from the repository root)
# Env:
#   NEXUS_BIN    Nexus binary (release)                     default: target/release/nexus
#   TEI_BIN      text-embeddings-router binary               default: /root/.cache/nexus/tei-target/release/text-embeddings-router
#   TEI_GIT_DIR  TEI git dir, for the commit in the summary  default: unset (commit from TEI_COMMIT or "unknown")
#   TEI_REF      TEI tag/commit that was built               default: v1.9.3
#   TEI_BUILD_NOTE  free text on how TEI was built (goes into the summary)
#   MODEL_DIR    model folder                                default: examples/models/minilm/1
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
LUA="$ROOT/benches/runtimes/wrk_post.lua"

NEXUS_HTTP=18700; NEXUS_GRPC=18701; NEXUS_METRICS=18702
TEI_PORT=18710

SENTENCE="The quick brown fox jumps over the lazy dog near the river"

for bin in "$NEXUS_BIN" "$TEI_BIN"; do
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

# Request bodies: one sentence per request for both servers.
python3 - "$SENTENCE" "$WORK" <<'EOF'
import json, sys
s, d = sys.argv[1], sys.argv[2]
json.dump({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [s]}]},
          open(f"{d}/nexus_body.json", "w"))
json.dump({"inputs": s}, open(f"{d}/tei_body.json", "w"))
EOF

# Nexus model repository: <repo>/minilm/config.pbtxt + <repo>/minilm/1 -> MODEL_DIR
mkdir -p "$WORK/repo/minilm"
printf 'backend: "candle"\nmax_batch_size: 32\ndynamic_batching { max_queue_delay_microseconds: 1000 }\n' \
    > "$WORK/repo/minilm/config.pbtxt"
ln -s "$MODEL_DIR" "$WORK/repo/minilm/1"

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

# ---- Nexus ----
echo "== starting Nexus ($NEXUS_BIN)"
"$NEXUS_BIN" serve --model-repository "$WORK/repo" --address 127.0.0.1 --no-events \
    --http-port "$NEXUS_HTTP" --grpc-port "$NEXUS_GRPC" --metrics-port "$NEXUS_METRICS" \
    > "$OUT_DIR/nexus_server.log" 2>&1 &
SERVER_PID=$!
wait_ready "http://127.0.0.1:$NEXUS_HTTP/v2/models/minilm/ready" 120
curl -sf -H 'Content-Type: application/json' --data-binary @"$WORK/nexus_body.json" \
    "http://127.0.0.1:$NEXUS_HTTP/v2/models/minilm/infer" > "$OUT_DIR/nexus_embedding.json"
run_wrk nexus "http://127.0.0.1:$NEXUS_HTTP/v2/models/minilm/infer" "$WORK/nexus_body.json"
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

TEI_COMMIT="${TEI_COMMIT:-}"
if [[ -z "$TEI_COMMIT" && -n "${TEI_GIT_DIR:-}" ]]; then
    TEI_COMMIT="$(git --git-dir="$TEI_GIT_DIR" rev-parse "${TEI_REF}^{commit}" 2>/dev/null || true)"
fi
NEXUS_COMMIT="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"

# ---- summary ----
python3 - "$OUT_DIR" "$CONCURRENCY" "$DURATION_S" "$WARMUP_S" "$SENTENCE" "$TEI_VERSION" \
    "${TEI_COMMIT:-unknown}" "$TEI_REF" "$NEXUS_COMMIT" "$NEXUS_BIN" "${TEI_BUILD_NOTE:-}" <<'EOF'
import json, math, os, platform, re, sys
out, levels, dur, warm, sentence, tei_ver, tei_commit, tei_ref, nexus_commit, nexus_bin, note = sys.argv[1:12]
levels = [int(c) for c in levels.split()]

def result(name, c):
    txt = open(f"{out}/{name}_c{c}.txt").read()
    m = re.search(r"^WRK_RESULT (.*)$", txt, re.M)
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r

res = {(n, c): result(n, c) for n in ("nexus", "tei") for c in levels}

a = json.load(open(f"{out}/nexus_embedding.json"))["outputs"][0]["data"]
b = json.load(open(f"{out}/tei_embedding.json"))[0]
dot = sum(x * y for x, y in zip(a, b))
cos = dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
maxdiff = max(abs(x - y) for x, y in zip(a, b))
emb_ok = len(a) == len(b) and cos > 0.9999
print(f"embedding check: dim nexus={len(a)} tei={len(b)} cosine={cos:.8f} max_abs_diff={maxdiff:.3e} "
      f"-> {'OK' if emb_ok else 'MISMATCH'}")

cpu = "unknown"
try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except Exception:
    pass

L = []
L.append("# Sentence embeddings: Nexus candle backend vs text-embeddings-inference (CPU)\n")
L.append(f"- Model: all-MiniLM-L6-v2 (same sentence-transformers folder for both), float32, mean pooling + L2 normalize")
L.append(f"- Sentence ({len(sentence.split())} words, one per request): \"{sentence}\"")
L.append(f"- Client: wrk + benches/runtimes/wrk_post.lua (fixed body, keep-alive), warm-up {warm} s, {dur} s per level; "
         f"threads = min(c, 2); client runs on the same host")
L.append(f"- Host: {cpu}, {os.cpu_count()} CPUs, {platform.platform()}")
L.append(f"- Nexus: {nexus_bin} (commit {nexus_commit}), config `backend: \"candle\"`, max_batch_size 32, "
         f"dynamic_batching max_queue_delay 1000 us")
L.append(f"- TEI: {tei_ver}, ref {tei_ref}, commit {tei_commit}; `--dtype float32`, CPU candle backend, other options default")
if note:
    L.append(f"- TEI build: {note}")
L.append("")
L.append("| server | c | sentences/s | p50 ms | p90 ms | p99 ms | mean ms | errors |")
L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
for n, label in (("nexus", "Nexus"), ("tei", "TEI")):
    for c in levels:
        r = res[(n, c)]
        L.append(f"| {label} | {c} | {r['rps']:.1f} | {r['p50_us']/1e3:.2f} | {r['p90_us']/1e3:.2f} | "
                 f"{r['p99_us']/1e3:.2f} | {r['mean_us']/1e3:.2f} | {r['errors']} |")
L.append("")
hi, lo = max(levels), min(levels)
ratio = res[("nexus", hi)]["rps"] / res[("tei", hi)]["rps"]
p50n, p50t = res[("nexus", lo)]["p50_us"] / 1e3, res[("tei", lo)]["p50_us"] / 1e3
L.append(f"- Throughput ratio Nexus/TEI at c={hi}: **{ratio:.2f}x** (target >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'})")
L.append(f"- p50 at c={lo}: Nexus {p50n:.2f} ms vs TEI {p50t:.2f} ms "
         f"(target Nexus no worse: {'met' if p50n <= p50t else 'NOT met'})")
L.append(f"- Embedding agreement: cosine {cos:.8f}, max abs diff {maxdiff:.3e}, dim {len(a)}/{len(b)} "
         f"({'OK' if emb_ok else 'MISMATCH'}, threshold cosine > 0.9999)")
L.append("")
L.append("Raw outputs: `nexus_c*.txt`, `tei_c*.txt` (wrk reports), `*_embedding.json`, `*_server.log`.")
open(f"{out}/summary.md", "w").write("\n".join(L) + "\n")
print("\n".join(L))
EOF
