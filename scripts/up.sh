#!/usr/bin/env bash
# Sets up a checkout (scripts/setup.sh), builds the release binary and runs `nexus up`
# on the example models. Extra arguments go to `nexus up` (e.g. --address, --http-port).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
# The PyTorch backend plugin (.nexus/lib/libnexus_torch.so), opened when a PyTorch model loads.
bash scripts/install-torch-backend.sh >/dev/null
cargo build --release --bin nexus
# Pipeline steps run `python3` from PATH: the project venv has numpy, onnx, onnxruntime and kfp
# (what examples/pipelines and KFP lightweight components need).
export PATH="$repo/.venv/bin:$PATH"
exec target/release/nexus up "$@"
