#!/usr/bin/env bash
# Installs the PyTorch backend: libtorch (scripts/install-libtorch.sh, cached in
# ~/.cache/nexus) and the plugin that runs TorchScript with it, built from
# backends/torch/plugin into .nexus/lib/libnexus_torch.so, where `nexus` finds it the first
# time a PyTorch model loads (or set NEXUS_TORCH_PLUGIN). Its build folder is kept in the
# cache too, so a fresh clone rebuilds only the plugin's own code (tch's C++ wrapper is
# compiled once, ~3 minutes here). Built optimised: the plugin's own code (the wire format, the
# copies into and out of libtorch) runs on every request. The last line of output is the
# plugin's path.
#
# --gpu: against the whole libtorch with CUDA (`scripts/install-libtorch.sh --gpu`, ~4 GB), for a
# GPU machine: PyTorch models with instance_group KIND_GPU then run on CUDA devices. Built in
# its own cache folder; the plugin replaces the CPU one in .nexus/lib (and serves CPU models too).
set -euo pipefail

flavour=""
case "${1:-}" in
    "") ;;
    --gpu) flavour="--gpu" ;;
    *) echo "usage: install-torch-backend.sh [--gpu]" >&2; exit 2 ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cache="${NEXUS_CACHE:-$HOME/.cache/nexus}"

LIBTORCH="$(bash scripts/install-libtorch.sh $flavour | tail -n 1)"
export LIBTORCH
target="$cache/torch-plugin-target${flavour:+-cuda}"
echo "install-torch-backend: building the plugin against $LIBTORCH" >&2
CARGO_TARGET_DIR="$target" \
    cargo build --release --manifest-path backends/torch/plugin/Cargo.toml --lib >&2
mkdir -p .nexus/lib
plugin=".nexus/lib/libnexus_torch.so"
cp "$target/release/libnexus_torch.so" "$plugin.partial"
mv "$plugin.partial" "$plugin"
echo "$repo/$plugin"
