#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ with cargo-fuzz (libFuzzer, no sanitizer, stable
# toolchain) and fuzzes each for a bounded time; exits non-zero on the first crash, printing
# the reproducer's path and the command that replays it.
#
#   bash scripts/fuzz.sh                      # every target, FUZZ_SECONDS (30) each
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh kfp_ir mlflow_filter
#
# cargo-fuzz, the build and the corpus the fuzzer grows live in ~/.cache/nexus (outside the
# clone, so CI reuses them); the committed seeds in fuzz/corpus/<target>/ are only read.
# A crash's input is written to ~/.cache/nexus/fuzz-artifacts/<target>/.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${NEXUS_CACHE:-$HOME/.cache/nexus}"
seconds="${FUZZ_SECONDS:-30}"
cargo_fuzz_version="0.13.2"

export PATH="$cache/cargo-fuzz/bin:$PATH"
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]; then
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --root "$cache/cargo-fuzz"
fi

cd "$repo/fuzz"
# Build with the versions the workspace tests (fuzz/ is a workspace of its own; its lock
# file is not committed). Cargo adds libfuzzer-sys to the copy.
cp ../Cargo.lock Cargo.lock

export CARGO_TARGET_DIR="$cache/fuzz-target"
triple="x86_64-unknown-linux-gnu"
# 16 codegen units (cargo-fuzz's default is 1): a shorter cold build, slightly slower runs.
cargo fuzz build -s none --codegen-units 16 --target "$triple"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

for target in "${targets[@]}"; do
    work="$cache/fuzz-corpus/$target"
    artifacts="$cache/fuzz-artifacts/$target"
    mkdir -p "$work" "$artifacts"
    echo "fuzz.sh: $target for ${seconds}s"
    dict=()
    if [ -f "dicts/$target.dict" ]; then
        dict=(-dict="dicts/$target.dict")
    fi
    # New inputs go to the first folder (the cache); the committed seeds are read only.
    # The heap bound is fuzz/harness's allocator; -rss_limit_mb adds memory held outside it
    # (C libraries), -timeout an input that takes seconds.
    if ! "$CARGO_TARGET_DIR/$triple/release/$target" "$work" "corpus/$target" \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" \
        2>"$cache/fuzz-$target.log"; then
        tail -n 60 "$cache/fuzz-$target.log"
        echo "fuzz.sh: $target crashed; reproducer(s):" >&2
        ls -t "$artifacts"/* >&2
        echo "replay: $CARGO_TARGET_DIR/$triple/release/$target <reproducer>" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^Done' "$cache/fuzz-$target.log" || true
done
