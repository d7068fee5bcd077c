#!/usr/bin/env bash
# Installs Python PyTorch with sentence-transformers and transformers into a venv in a cache
# folder outside the checkout, shared by every clone on this machine:
#   ${NEXUS_CACHE:-$HOME/.cache/nexus}/torch-venv-2.13.0
# The client tests use it to make models the way users make them (torch.jit.trace/script,
# save_pretrained) and for reference answers (sentence-transformers' encode, transformers'
# logits, TorchScript run by PyTorch), which the test venv cannot hold: PyPI's torch 2.13.0
# for Linux is built for CUDA 13 and pulls ~2.5 GB of nvidia-* wheels (no GPU is needed to
# import it). ~5 GB on disk, ~3.5 minutes the first time here; a marker file is written last,
# so a second run only prints the folder. The last line of output is the venv's python.
set -euo pipefail

TORCH_VERSION="2.13.0"
SENTENCE_TRANSFORMERS_VERSION="6.3.0"
TRANSFORMERS_VERSION="5.25.0"
# torch.onnx.export needs onnx (benches/embed_compare.sh exports an encoder with it).
ONNX_VERSION="1.23.2"

cache="${NEXUS_CACHE:-$HOME/.cache/nexus}"
venv="$cache/torch-venv-$TORCH_VERSION"
marker="$venv/.nexus-installed"
want="torch==$TORCH_VERSION sentence-transformers==$SENTENCE_TRANSFORMERS_VERSION transformers==$TRANSFORMERS_VERSION onnx==$ONNX_VERSION"

if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
    echo "$venv/bin/python"
    exit 0
fi
echo "install-torch-python: installing $want into $venv (~5 GB, a few minutes the first time)" >&2
mkdir -p "$cache"
# A venv from an earlier package list only gains what is new.
[[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv"
# shellcheck disable=SC2086 # $want is a list of requirements
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check $want >&2
"$venv/bin/python" -c "import torch, sentence_transformers, transformers" >&2
echo "$want" >"$marker"
echo "$venv/bin/python"
