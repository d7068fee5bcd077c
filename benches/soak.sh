#!/usr/bin/env bash
# Soak: `nexus up` (in-process events, SQLite registry, local pipelines) under mixed load for
# --duration seconds: HTTP (binary) and gRPC inference from `nexus bench run`, feedback on
# answered requests, MLflow registry writes and searches, and pipeline runs. Samples the
# server's RSS, open file descriptors and threads every --interval seconds into soak.csv, and
# draws soak.svg. Not a CI test.
#
# Passes when RSS at the end is within --tolerance (default 10%) of RSS at the end of the
# warm-up (--warmup seconds), and open descriptors did not grow by more than that (plus 16);
# exits 1 otherwise, 2 when the server or a load generator failed.
#
# usage: benches/soak.sh [--duration 1800] [--warmup 300] [--interval 10] [--tolerance 0.10]
#                        [--out DIR]      (default benches/results/soak-<UTC time>)
#        NEXUS_BIN=... picks the binary (default target/release/nexus, else target/debug/nexus);
#        BUILD=1 builds the release binary first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DURATION=1800
WARMUP=300
INTERVAL=10
TOLERANCE=0.10
OUT=""
while (($#)); do
    case "$1" in
        --duration) DURATION="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --interval) INTERVAL="$2"; shift 2 ;;
        --tolerance) TOLERANCE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "[soak] unknown argument $1" >&2; exit 2 ;;
    esac
done
if ((WARMUP >= DURATION)); then
    echo "[soak] --warmup ($WARMUP s) must be shorter than --duration ($DURATION s)" >&2
    exit 2
fi

if [[ "${BUILD:-0}" == 1 ]]; then
    cargo build --release --bin nexus
fi
BIN="${NEXUS_BIN:-}"
if [[ -z "$BIN" ]]; then
    if [[ -x target/release/nexus ]]; then BIN="$ROOT/target/release/nexus"; else BIN="$ROOT/target/debug/nexus"; fi
fi
[[ -x "$BIN" ]] || { echo "[soak] no nexus binary at $BIN (cargo build --bin nexus)" >&2; exit 2; }

OUT="${OUT:-$ROOT/benches/results/soak-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port); GRPC_PORT=$(free_port); METRICS_PORT=$(free_port)
URL="http://127.0.0.1:$HTTP_PORT"
cp -r examples/models "$WORK/models"

# Steps run `sh` from the server's PATH; nothing else is needed.
"$BIN" up --model-repository "$WORK/models" --data-dir "$WORK/data" --model-cache "$WORK/cache" \
    --address 127.0.0.1 --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" \
    --metrics-port "$METRICS_PORT" >"$OUT/nexus.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 600); do
    curl -sf "$URL/v2/health/ready" >/dev/null && break
    kill -0 "$SERVER" 2>/dev/null || { echo "[soak] nexus exited; see $OUT/nexus.log" >&2; exit 2; }
    sleep 0.1
done
curl -sf "$URL/v2/health/ready" >/dev/null || { echo "[soak] nexus not ready" >&2; exit 2; }
echo "[soak] nexus up (pid $SERVER, $BIN) on $URL; $DURATION s, warm-up $WARMUP s, samples every $INTERVAL s into $OUT"

END=$(($(date +%s) + DURATION))

# Inference: HTTP binary and gRPC, two connections each, for the whole run.
for protocol in http-binary grpc; do
    "$BIN" bench run --model simple --protocol "$protocol" --http-url "$URL" \
        --grpc-addr "127.0.0.1:$GRPC_PORT" --concurrency 2 --warmup-secs 0 \
        --duration-secs "$DURATION" --label "soak-$protocol" --output "$OUT/bench-$protocol" \
        >"$OUT/bench-$protocol.log" 2>&1 &
    PIDS+=("$!")
done

# Registry: a run with metrics, params and a tag, run and model searches, a model version,
# and feedback on a fresh inference; over and over.
registry_load() {
    local api="$URL/api/2.0/mlflow" i=0 exp run id
    exp=$(curl -sf -X POST "$api/experiments/create" -H 'Content-Type: application/json' \
        -d '{"name": "soak"}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["experiment_id"])')
    curl -sf -X POST "$api/registered-models/create" -H 'Content-Type: application/json' \
        -d '{"name": "soak-model"}' >/dev/null
    while (($(date +%s) < END)); do
        i=$((i + 1))
        run=$(curl -sf -X POST "$api/runs/create" -H 'Content-Type: application/json' \
            -d "{\"experiment_id\": \"$exp\", \"run_name\": \"r$i\"}" \
            | python3 -c 'import json, sys; print(json.load(sys.stdin)["run"]["info"]["run_id"])')
        curl -sf -X POST "$api/runs/log-batch" -H 'Content-Type: application/json' -d "{\"run_id\": \"$run\",
            \"metrics\": [{\"key\": \"loss\", \"value\": 0.$i, \"timestamp\": $(date +%s000), \"step\": $i}],
            \"params\": [{\"key\": \"lr\", \"value\": \"0.$i\"}], \"tags\": [{\"key\": \"soak\", \"value\": \"yes\"}]}" >/dev/null
        curl -sf -X POST "$api/runs/search" -H 'Content-Type: application/json' \
            -d "{\"experiment_ids\": [\"$exp\"], \"filter\": \"metrics.loss < 0.5 and params.lr != 'x'\", \"max_results\": 50}" >/dev/null
        curl -sf "$api/registered-models/search?filter=name%20LIKE%20%27soak%25%27" >/dev/null
        if ((i % 10 == 0)); then
            curl -sf -X POST "$api/model-versions/create" -H 'Content-Type: application/json' \
                -d "{\"name\": \"soak-model\", \"source\": \"runs:/$run/model\", \"run_id\": \"$run\"}" >/dev/null
        fi
        id=$(curl -sf -X POST "$URL/v2/models/simple/infer" -H 'Content-Type: application/json' \
            -d '{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]},
                            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}]}' \
            | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
        curl -sf -X POST "$URL/v2/models/simple/feedback" -H 'Content-Type: application/json' \
            -d "{\"id\": \"$id\", \"reward\": 1}" >/dev/null
        sleep 0.2
    done
}
registry_load >"$OUT/registry-load.log" 2>&1 &
PIDS+=("$!")

# Pipelines: a three-step run (a parameter and an artifact passed on) every few seconds.
cat >"$WORK/pipeline.yaml" <<'YAML'
name: soak
parameters:
  n: {default: 3}
steps:
  - name: produce
    command: [sh, -c, 'seq {{params.n}} > {{outputs.numbers}}; printf ok > {{outputs.word}}']
    outputs: {parameters: [word], artifacts: [numbers]}
  - name: consume
    command: [sh, -c, 'wc -l < "$0"; echo "{{steps.produce.outputs.word}}"', '{{steps.produce.outputs.numbers}}']
  - name: last
    command: [echo, done]
    after: [consume]
YAML
pipeline_load() {
    while (($(date +%s) < END)); do
        "$BIN" pipeline --url "$URL" submit "$WORK/pipeline.yaml" --wait >/dev/null
        sleep 3
    done
}
pipeline_load >"$OUT/pipeline-load.log" 2>&1 &
PIDS+=("$!")
LOADERS=("${PIDS[@]:1}")

# Sampling.
echo "seconds,rss_kb,rss_anon_kb,open_fds,threads" >"$OUT/soak.csv"
START=$(date +%s)
sample() {
    local status
    status=$(cat "/proc/$SERVER/status")
    printf '%s,%s,%s,%s,%s\n' "$(($(date +%s) - START))" \
        "$(awk '/^VmRSS:/ {print $2}' <<<"$status")" "$(awk '/^RssAnon:/ {print $2}' <<<"$status")" \
        "$(ls "/proc/$SERVER/fd" | wc -l)" "$(awk '/^Threads:/ {print $2}' <<<"$status")" >>"$OUT/soak.csv"
}
FAILED=""
while (($(date +%s) < END)); do
    kill -0 "$SERVER" 2>/dev/null || { FAILED="nexus exited during the soak"; break; }
    sample
    for pid in "${LOADERS[@]}"; do
        kill -0 "$pid" 2>/dev/null || FAILED="a load generator stopped early (pid $pid; logs in $OUT)"
    done
    [[ -n "$FAILED" ]] && break
    sleep "$INTERVAL"
done
[[ -z "$FAILED" ]] && sample
for pid in "${LOADERS[@]}"; do wait "$pid" 2>/dev/null || true; done

python3 - "$OUT" "$WARMUP" "$TOLERANCE" "${FAILED:-}" <<'PY'
import csv, json, sys
out, warmup, tolerance, failed = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(open(f"{out}/soak.csv"))]
if not rows:
    sys.exit("[soak] no samples")
warm = next((r for r in rows if r["seconds"] >= warmup), rows[-1])
last = rows[-1]
rss_change = last["rss_kb"] / warm["rss_kb"] - 1
fd_growth = last["open_fds"] - warm["open_fds"]
verdict = {
    "samples": len(rows), "seconds": last["seconds"], "warmup_seconds": warmup,
    "rss_mb_start": rows[0]["rss_kb"] / 1024, "rss_mb_after_warmup": warm["rss_kb"] / 1024,
    "rss_mb_end": last["rss_kb"] / 1024, "rss_mb_max": max(r["rss_kb"] for r in rows) / 1024,
    "rss_change_after_warmup": rss_change,
    "fds_after_warmup": warm["open_fds"], "fds_end": last["open_fds"],
    "threads_after_warmup": warm["threads"], "threads_end": last["threads"],
    "rss_pass": abs(rss_change) <= tolerance,
    "fd_pass": fd_growth <= warm["open_fds"] * tolerance + 16,
    "failure": failed or None,
}
json.dump(verdict, open(f"{out}/soak.json", "w"), indent=2)

# soak.svg: RSS (MB, left axis) and open descriptors (right axis) over time.
W, H, L, R, T, B = 900, 420, 70, 70, 30, 50
tmax = max(last["seconds"], 1)
rmax = max(r["rss_kb"] for r in rows) / 1024 * 1.15
fmax = max(max(r["open_fds"] for r in rows) * 1.15, 1)
x = lambda t: L + (W - L - R) * t / tmax
y = lambda v, top: H - B - (H - T - B) * v / top
line = lambda key, top, scale: " ".join(f"{x(r['seconds']):.1f},{y(r[key] / scale, top):.1f}" for r in rows)
parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="18" text-anchor="middle">nexus up soak: RSS and open file descriptors</text>',
         f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
         f'<line x1="{W - R}" y1="{T}" x2="{W - R}" y2="{H - B}" stroke="black"/>']
for i in range(6):
    t, r, f = tmax * i / 5, rmax * i / 5, fmax * i / 5
    parts.append(f'<text x="{x(t):.1f}" y="{H - B + 16}" text-anchor="middle">{t:.0f} s</text>')
    parts.append(f'<text x="{L - 6}" y="{y(r, rmax) + 4:.1f}" text-anchor="end" fill="#1f77b4">{r:.0f} MB</text>')
    parts.append(f'<text x="{W - R + 6}" y="{y(f, fmax) + 4:.1f}" fill="#d62728">{f:.0f}</text>')
band = [warm["rss_kb"] / 1024 * (1 + s * tolerance) for s in (-1, 1)]
parts.append(f'<rect x="{x(warm["seconds"]):.1f}" y="{y(min(band[1], rmax), rmax):.1f}" width="{x(tmax) - x(warm["seconds"]):.1f}" '
             f'height="{y(band[0], rmax) - y(min(band[1], rmax), rmax):.1f}" fill="#1f77b4" opacity="0.12"/>')
parts.append(f'<line x1="{x(warmup):.1f}" y1="{T}" x2="{x(warmup):.1f}" y2="{H - B}" stroke="gray" stroke-dasharray="4"/>')
parts.append(f'<text x="{x(warmup) + 4:.1f}" y="{T + 12}" fill="gray">end of warm-up (±{tolerance:.0%} band)</text>')
parts.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{line("rss_kb", rmax, 1024)}"/>')
parts.append(f'<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="{line("open_fds", fmax, 1)}"/>')
parts.append(f'<text x="{L + 8}" y="{H - 8}" fill="#1f77b4">RSS (MB)</text><text x="{W - R - 120}" y="{H - 8}" fill="#d62728">open descriptors</text>')
parts.append("</svg>")
open(f"{out}/soak.svg", "w").write("\n".join(parts))

print(f"[soak] {len(rows)} samples over {last['seconds']:.0f} s: RSS {verdict['rss_mb_start']:.1f} MB at start, "
      f"{verdict['rss_mb_after_warmup']:.1f} MB after warm-up, {verdict['rss_mb_end']:.1f} MB at the end "
      f"({rss_change:+.1%}; max {verdict['rss_mb_max']:.1f} MB); open descriptors {warm['open_fds']:.0f} -> {last['open_fds']:.0f}; "
      f"threads {warm['threads']:.0f} -> {last['threads']:.0f}")
print(f"[soak] {out}/soak.csv, soak.svg, soak.json")
if failed:
    print(f"[soak] FAIL: {failed}")
    sys.exit(2)
if not verdict["rss_pass"]:
    print(f"[soak] FAIL: RSS changed {rss_change:+.1%} after warm-up (allowed ±{tolerance:.0%})")
    sys.exit(1)
if not verdict["fd_pass"]:
    print(f"[soak] FAIL: open descriptors grew from {warm['open_fds']:.0f} to {last['open_fds']:.0f}")
    sys.exit(1)
print("[soak] PASS")
PY
