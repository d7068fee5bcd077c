#!/usr/bin/env bash
# Installs the PyTorch backend: libtorch (scripts/install-libtorch.sh, cached in
# ~/.cache/nexus) and the plugin that runs TorchScript with it, built from
# backends/torch/plugin into .nexus/lib/libnexus_torch.so, where `nexus` finds it the first
# time a PyTorch model loads (or set NEXUS_TORCH_PLUGIN). Its build folder is kept in the
# cache too, so a fresh clone rebuilds only the plugin's own code (tch's C++ wrapper is
# compiled once, ~3 minutes here). Built optimised: the plugin's own code (the wire format, the
# copies into and out of libtorch) runs on every request. The last line of output is the
# plugin's path.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cache="${NEXUS_CACHE:-$HOME/.cache/nexus}"

LIBTORCH="$(bash scripts/install-libtorch.sh | tail -n 1)"
export LIBTORCH
echo "install-torch-backend: building the plugin against $LIBTORCH" >&2
CARGO_TARGET_DIR="$cache/torch-plugin-target" \
    cargo build --release --manifest-path backends/torch/plugin/Cargo.toml --lib >&2
mkdir -p .nexus/lib
plugin=".nexus/lib/libnexus_torch.so"
cp "$cache/torch-plugin-target/release/libnexus_torch.so" "$plugin.partial"
mv "$plugin.partial" "$plugin"
echo "$repo/$plugin"
