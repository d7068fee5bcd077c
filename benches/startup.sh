#!/usr/bin/env bash
# Start-up cost of `nexus up` on the ONNX example models: time until /v2/health/ready answers
# 200, and resident memory (VmRSS) 3 s after that, idle. Compares two binaries side by side in
# alternating rounds (machines here are noisy), e.g. before and after a change:
#
#   bash benches/startup.sh OLD_NEXUS NEW_NEXUS [ROUNDS]      (default 7 rounds)
#
# The repository is examples/models without the candle example (ONNX models only), so the
# comparison shows what ONNX-only users pay. Prints one line per run and the medians.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
old="$1" new="$2" rounds="${3:-7}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/models"
for model in examples/models/*/; do
    name="$(basename "$model")"
    [[ -f "$model/config.pbtxt" ]] && grep -q '"candle"' "$model/config.pbtxt" && continue
    cp -r "$model" "$work/models/$name"
done
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# One start: prints "<ready ms> <rss kB>".
measure() {
    local bin="$1" http grpc metrics data pid start ready rss
    http=$(free_port); grpc=$(free_port); metrics=$(free_port)
    data="$(mktemp -d -p "$work")"
    start=$(date +%s%N)
    "$bin" up --model-repository "$work/models" --data-dir "$data" --model-cache "$data/cache" \
        --address 127.0.0.1 --http-port "$http" --grpc-port "$grpc" --metrics-port "$metrics" \
        >"$data/log" 2>&1 &
    pid=$!
    until curl -sf "http://127.0.0.1:$http/v2/health/ready" >/dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "nexus exited: $(tail -5 "$data/log")" >&2; return 1; }
        sleep 0.005
    done
    ready=$((($(date +%s%N) - start) / 1000000))
    sleep 3
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    echo "$ready $rss"
}

printf '%-4s %-6s %10s %10s\n' round binary ready_ms rss_kB
: >"$work/old.txt"; : >"$work/new.txt"
for round in $(seq "$rounds"); do
    for side in old new; do
        bin="$old"; [[ "$side" == new ]] && bin="$new"
        read -r ready rss < <(measure "$bin")
        printf '%-4s %-6s %10s %10s\n' "$round" "$side" "$ready" "$rss"
        echo "$ready $rss" >>"$work/$side.txt"
    done
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for side in old new; do
    printf 'median %-6s ready %s ms, idle RSS %s kB\n' "$side" \
        "$(cut -d' ' -f1 "$work/$side.txt" | median)" "$(cut -d' ' -f2 "$work/$side.txt" | median)"
done
