#!/usr/bin/env bash
# Dynamic batching on vs off, side by side on one Nexus: the same small ONNX model served as
# small_mlp (`dynamic_batching { max_queue_delay_microseconds: 0 }`), small_mlp_nobatch (no
# batcher) and small_mlp_delay500 (a 500 µs queue delay), in alternating rounds.
#
#   NEXUS_BIN=/abs/target/release/nexus bash benches/batching_compare.sh
#
# Each round drives small_mlp and small_mlp_nobatch with `nexus bench run` (HTTP JSON, 1 row
# per request) at c=1, 4, 16 and 64, one after the other; ROUNDS (default 3) rounds, and the
# verdicts use the median of the rounds: batching on must never be slower than off (>=1.0x at
# every level) and faster at c=64 (>=1.5x). Then small_mlp_delay500 at c=1, whose p50 must sit
# about 500 µs above small_mlp's, not the ~1 ms a timer wheel would round it up to.
# Results: benches/results/batching/ (raw runs and summary.md).
# Environment: WARMUP (s, default 1), DURATION (s per level, default 5), ROUNDS.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
nexus="${NEXUS_BIN:-$repo/target/release/nexus}"
python="${PYTHON:-python3}"
warmup="${WARMUP:-1}"
duration="${DURATION:-5}"
rounds="${ROUNDS:-3}"
out="$repo/benches/results/batching"
work="$repo/target/bench-batching"
HTTP=18300 GRPC=18301 METRICS=18302

# shellcheck source=benches/servers.sh
source "$repo/benches/servers.sh"

[[ -x "$nexus" ]] || die "no nexus binary at $nexus (cargo build --release --bin nexus)"
.venv/bin/python benches/make_models.py >/dev/null

# The repository: the benchmark's small_mlp folders, and a delayed copy of small_mlp's config.
rm -rf "$work" "$out"
mkdir -p "$work/models" "$out/raw"
for model in small_mlp small_mlp_nobatch; do
    cp -rL "benches/models/$model" "$work/models/$model"
done
cp -r "$work/models/small_mlp" "$work/models/small_mlp_delay500"
sed -e 's/^name: "small_mlp"/name: "small_mlp_delay500"/' \
    -e 's/max_queue_delay_microseconds: 0/max_queue_delay_microseconds: 500/' \
    benches/models/small_mlp/config.pbtxt >"$work/models/small_mlp_delay500/config.pbtxt"
grep -q 'max_queue_delay_microseconds: 500' "$work/models/small_mlp_delay500/config.pbtxt" ||
    die "small_mlp's config no longer has a zero queue delay to change"

start_server nexus "$work/nexus.log" "$work" "$HTTP" "$GRPC" "$METRICS" -- \
    "$nexus" serve --model-repository "$work/models" --http-port "$HTTP" --grpc-port "$GRPC" \
    --metrics-port "$METRICS"
wait_ready Nexus "$work/nexus.log" "http://127.0.0.1:$HTTP/v2/health/ready"

bench() {  # bench LABEL MODEL CONCURRENCY
    "$nexus" bench run --label "$1" --output "$out/raw" --model "$2" --protocol http-json \
        --http-url "http://127.0.0.1:$HTTP" --input input:FP32:-1,16 --batch 1 \
        --concurrency "$3" --warmup-secs "$warmup" --duration-secs "$duration" 2>&1 | grep -v INFO || true
    [[ -f "$out/raw/$1.json" ]] || die "bench run $1 wrote no results"
}

levels=1,4,16,64
for round in $(seq "$rounds"); do
    log "round $round of $rounds"
    # Alternate which goes first, so neither always runs on a machine the other just warmed.
    if ((round % 2)); then order=(small_mlp small_mlp_nobatch); else order=(small_mlp_nobatch small_mlp); fi
    for model in "${order[@]}"; do
        bench "$model-r$round" "$model" "$levels"
    done
done
log "queue delay below a millisecond"
bench "small_mlp_delay500-c1" small_mlp_delay500 1
bench "small_mlp-c1" small_mlp 1
stop_server

"$python" - "$out" "$rounds" "$("$nexus" --version)" <<'PY'
import json, pathlib, statistics, sys
out, rounds, version = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def levels(label):
    return {l["concurrency"]: l for l in json.load(open(out / "raw" / f"{label}.json"))["levels"]}
on = [levels(f"small_mlp-r{r}") for r in range(1, rounds + 1)]
off = [levels(f"small_mlp_nobatch-r{r}") for r in range(1, rounds + 1)]
lines = [f"# Dynamic batching on vs off ({version}, {rounds} alternating rounds, medians)", "",
         "HTTP JSON, 1 row per request, small_mlp (16 -> 8 MLP, one CPU instance, 1 intra-op thread).", "",
         "| concurrency | batching on infer/s | off infer/s | on/off | on p50 µs | off p50 µs | verdict |",
         "|---|---|---|---|---|---|---|"]
verdicts = []
for c in sorted(on[0]):
    a = statistics.median(r[c]["throughput"] for r in on)
    b = statistics.median(r[c]["throughput"] for r in off)
    pa = statistics.median(r[c]["p50_us"] for r in on)
    pb = statistics.median(r[c]["p50_us"] for r in off)
    need = 1.5 if c == 64 else 1.0
    ok = a / b >= need
    verdicts.append(ok)
    errors = sum(r[c]["errors"] for r in on + off)
    lines.append(f"| {c} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x | {pa} | {pb} | "
                 f"{'PASS' if ok else 'MISS'} (>= {need}x){'' if not errors else f', {errors} errors'} |")
delayed = levels("small_mlp_delay500-c1")[1]["p50_us"]
plain = levels("small_mlp-c1")[1]["p50_us"]
extra = delayed - plain
ok = 300 <= extra < 900
verdicts.append(ok)
lines += ["", f"max_queue_delay_microseconds 500 at c=1: p50 {delayed} µs vs {plain} µs with no delay: "
          f"+{extra} µs ({'PASS' if ok else 'MISS'}: the delay is honoured below a millisecond, 300..900 µs)"]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
