#!/usr/bin/env bash
# Puts ONNX Runtime's shared library where Nexus looks for it by default:
#   <repo>/.nexus/lib/libonnxruntime.so -> libonnxruntime.so.<version>
# The library comes out of the pinned `onnxruntime` wheel on PyPI (no compiler, no unzip).
# Idempotent: does nothing when the library is already there.
# Nexus also honours ORT_DYLIB_PATH to point at a library elsewhere.
#
#   bash scripts/install-onnxruntime.sh --gpu
# installs ONNX Runtime for NVIDIA GPUs instead, for a GPU machine: the `onnxruntime-gpu`
# wheel (PyPI's newest is 1.31.1: CUDA 13, cuDNN 9) with its CUDA execution provider, and the
# libraries that provider needs from PyPI's nvidia-* wheels, pinned to CUDA 13.0 (the resolver
# would otherwise take newer ones), into one folder of the per-user cache:
#   ${NEXUS_CACHE:-$HOME/.cache/nexus}/onnxruntime-gpu-1.31.1/
# (~1.6 GB: the provider alone is 284 MB, cuDNN ~900 MB unpacked). The provider's RUNPATH is set
# to its own folder, so no LD_LIBRARY_PATH is needed; the driver supplies libcuda.so.1. The last
# line printed is the library to give Nexus:
#   nexus serve --ort-library "$(bash scripts/install-onnxruntime.sh --gpu | tail -n 1)" …
# TensorRT's provider is left out (it needs TensorRT's own libraries, not on PyPI as wheels
# Nexus pins); `nexus gpu --ort-library PATH` says whether the result can use the GPUs here.
set -euo pipefail

if [[ "${1:-}" == --gpu ]]; then
    ORT_GPU_VERSION="1.31.1"
    python="${PYTHON:-python3}"
    cache="${NEXUS_CACHE:-$HOME/.cache/nexus}"
    dir="$cache/onnxruntime-gpu-$ORT_GPU_VERSION"
    if [[ -f "$dir/.complete" ]]; then
        echo "onnxruntime-gpu $ORT_GPU_VERSION: already in $dir" >&2
        echo "$dir/libonnxruntime.so"
        exit 0
    fi
    command -v patchelf >/dev/null || { echo "error: --gpu needs patchelf (apt-get install patchelf)" >&2; exit 1; }
    mkdir -p "$cache"
    tmp="$(mktemp -d "$cache/.onnxruntime-gpu.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    echo "onnxruntime-gpu $ORT_GPU_VERSION: downloading it and its CUDA 13.0 libraries from PyPI (~1.3 GB)" >&2
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: -d "$tmp/wheels" \
        "onnxruntime-gpu==$ORT_GPU_VERSION" nvidia-cublas==13.0.2.14 nvidia-cuda-runtime==13.0.96 \
        nvidia-curand==10.4.0.35 nvidia-cudnn-cu13==9.13.0.50 >&2
    mkdir -p "$tmp/lib"
    # From onnxruntime-gpu: the runtime and its providers (not TensorRT's, see above); from the
    # nvidia-* wheels: their shared libraries.
    "$python" - "$tmp/wheels" "$tmp/lib" <<'PY'
import glob, os, re, shutil, sys, zipfile
wheels, out = sys.argv[1:]
wanted = re.compile(r"^(onnxruntime/capi/libonnxruntime(\.so\.[0-9.]+|_providers_(shared|cuda)\.so)|nvidia/[^/]+/lib/lib[^/]+\.so[.0-9]*)$")
for wheel in glob.glob(os.path.join(wheels, "*.whl")):
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if wanted.match(member):
                with zf.open(member) as src, open(os.path.join(out, os.path.basename(member)), "wb") as dst:
                    shutil.copyfileobj(src, dst)
PY
    lib="libonnxruntime.so.$ORT_GPU_VERSION"
    for needed in "$lib" libonnxruntime_providers_cuda.so libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libcurand.so.10 libcudnn.so.9; do
        [[ -f "$tmp/lib/$needed" ]] || { echo "error: $needed is not in the downloaded wheels" >&2; exit 1; }
    done
    patchelf --set-rpath '$ORIGIN' "$tmp/lib/libonnxruntime_providers_cuda.so"
    chmod 0755 "$tmp/lib"/*.so*
    ln -sfn "$lib" "$tmp/lib/libonnxruntime.so"
    touch "$tmp/lib/.complete"
    rm -rf "$dir"
    mv "$tmp/lib" "$dir"
    echo "onnxruntime-gpu $ORT_GPU_VERSION: installed in $dir ($(du -sh "$dir" | cut -f1))" >&2
    echo "$dir/libonnxruntime.so"
    exit 0
fi

ORT_VERSION="${ORT_VERSION:-1.32.0}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
libdir="$repo/.nexus/lib"
lib="libonnxruntime.so.$ORT_VERSION"
python="${PYTHON:-python3}"

if [[ -f "$libdir/$lib" ]]; then
    ln -sfn "$lib" "$libdir/libonnxruntime.so"
    echo "onnxruntime $ORT_VERSION: already at $libdir/$lib"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "onnxruntime $ORT_VERSION: downloading the wheel from PyPI"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary :all: "onnxruntime==$ORT_VERSION" -d "$tmp"

wheel="$(ls "$tmp"/onnxruntime-"$ORT_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
if [[ -z "$wheel" ]]; then
    echo "error: pip did not produce an onnxruntime $ORT_VERSION wheel in $tmp" >&2
    exit 1
fi

mkdir -p "$libdir"
# Extract to a temporary name first so an interrupted run never leaves a half-written library.
"$python" - "$wheel" "onnxruntime/capi/$lib" "$libdir/$lib.partial" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    try:
        src = zf.open(member)
    except KeyError:
        sys.exit(f"error: {member} is not in {wheel}")
    with src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
PY
chmod 0755 "$libdir/$lib.partial"
mv -f "$libdir/$lib.partial" "$libdir/$lib"
ln -sfn "$lib" "$libdir/libonnxruntime.so"
echo "onnxruntime $ORT_VERSION: installed $libdir/$lib"
echo "                     link $libdir/libonnxruntime.so"
