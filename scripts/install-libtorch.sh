#!/usr/bin/env bash
# Installs a CPU-only libtorch 2.13.0 for the `tch` 0.26 crate (torch-sys) into a cache
# folder outside the checkout, shared by every clone on this machine:
#   ${NEXUS_CACHE:-$HOME/.cache/nexus}/libtorch-2.13.0/{include,lib,build-version}
# which is the layout torch-sys expects from LIBTORCH=<dir>. Use it as
#   export LIBTORCH="$(bash scripts/install-libtorch.sh | tail -n 1)"
#   export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# (torch-sys does not put an rpath into the binaries it links, so they need LD_LIBRARY_PATH,
# or -Wl,-rpath,$LIBTORCH/lib, at run time). The last line of output is always the folder.
#
# Where it comes from: the only libtorch 2.13.0 on PyPI is the `torch` wheel (~530 MB, built
# for CUDA 13; there is no CPU-only Linux wheel). We take its headers and the CPU libraries
# only (libc10, libtorch_cpu, libtorch, libgomp) and skip libtorch_cuda.so, whose ~2 GB of
# CUDA dependencies a CPU build does not need:
#   - libtorch_cpu.so still NEEDs libcudart.so.13 and libcupti.so.13 (a few MB); they come
#     from the pinned nvidia-cuda-runtime / nvidia-cuda-cupti wheels and go into lib/ too.
#     Neither needs a GPU or the driver to load.
#   - libtorch.so NEEDs libtorch_cuda.so; that edge is removed with patchelf.
#   - the wheel's rpath ($ORIGIN/../../nvidia/...:$ORIGIN) becomes just $ORIGIN, so every
#     library finds its neighbours in lib/ and nothing outside it.
#   - lib/libgomp.so -> libgomp.so.1 so that torch-sys's `-lgomp` links torch's own OpenMP.
# patchelf comes from apt-get when missing (sudo unless root), else from its PyPI wheel.
# Idempotent: a marker file is written last; a second run only prints the folder.
# Needs ~1.1 GB free in the cache folder while it runs (the wheel), ~0.5 GB afterwards.
#
# --gpu: the whole libtorch for a GPU machine instead, into libtorch-2.13.0-cuda/: every library
# of the wheel (libtorch_cuda.so included, libtorch.so left as built) and the CUDA 13 libraries
# its dependencies pin (cuDNN, cuBLAS, NCCL, … from PyPI's nvidia-* wheels: ~4 GB on disk,
# ~6 GB free needed while it runs), all with RUNPATH $ORIGIN. Only the driver (libcuda.so.1)
# comes from the machine. Build the PyTorch plugin against it with
# `scripts/install-torch-backend.sh --gpu`.
set -euo pipefail

gpu=0
case "${1:-}" in
    "") ;;
    --gpu) gpu=1 ;;
    *) echo "usage: install-libtorch.sh [--gpu]" >&2; exit 2 ;;
esac

# Pinned together: tch 0.26 expects torch 2.13.0, whose libtorch_cpu.so is linked against
# CUDA 13.0 (libcudart.so.13, libcupti.so.13).
TORCH_VERSION="2.13.0"
CUDA_RUNTIME_VERSION="13.0.96"
CUDA_CUPTI_VERSION="13.0.85"
# The wheel's headers and libraries do not depend on the Python version; pin one so the
# download is the same whatever python3 this machine has.
TORCH_WHEEL_PYTHON="3.11"

cache="${NEXUS_CACHE:-$HOME/.cache/nexus}"
dir="$cache/libtorch-$TORCH_VERSION"
flavour="CPU"
if [[ $gpu -eq 1 ]]; then
    dir="$cache/libtorch-$TORCH_VERSION-cuda"
    flavour="CUDA"
fi
marker="$dir/.nexus-installed"
python="${PYTHON:-python3}"
arch="$(uname -m)"

say() { echo "install-libtorch: $*"; }

if [[ "$(cat "$marker" 2>/dev/null || true)" == "$TORCH_VERSION" ]]; then
    say "libtorch $TORCH_VERSION ($flavour) already at $dir"
    echo "$dir"
    exit 0
fi

if [[ "$(uname -s)" != "Linux" ]]; then
    echo "error: install-libtorch.sh handles Linux only; elsewhere see the tch README" >&2
    exit 1
fi

mkdir -p "$cache"
# Everything is staged next to the final folder (same filesystem, not a small /tmp) and
# moved into place at the end, so an interrupted run never leaves a half-installed libtorch.
tmp="$(mktemp -d "$cache/.libtorch-$TORCH_VERSION-$flavour.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
stage="$tmp/libtorch"
mkdir -p "$stage/lib" "$tmp/wheels"

# --- patchelf ------------------------------------------------------------------
patchelf="$(command -v patchelf || true)"
if [[ -z "$patchelf" ]] && command -v apt-get >/dev/null 2>&1 \
    && { [[ "$(id -u)" -eq 0 ]] || command -v sudo >/dev/null 2>&1; }; then
    say "installing patchelf with apt-get"
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    # apt's chatter goes to stderr so stdout stays the script's own lines.
    $sudo apt-get update >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y patchelf >&2
    patchelf="$(command -v patchelf || true)"
fi
if [[ -z "$patchelf" ]]; then
    say "patchelf not installed; taking it from its PyPI wheel"
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary :all: patchelf -d "$tmp/patchelf"
    "$python" - "$tmp/patchelf" <<'PY'
import glob, os, sys, zipfile
folder = sys.argv[1]
with zipfile.ZipFile(glob.glob(os.path.join(folder, "patchelf-*.whl"))[0]) as zf:
    member = next(n for n in zf.namelist() if n.endswith(".data/scripts/patchelf"))
    with zf.open(member) as src, open(os.path.join(folder, "patchelf"), "wb") as out:
        out.write(src.read())
PY
    patchelf="$tmp/patchelf/patchelf"
    chmod 0755 "$patchelf"
fi

# --- --gpu: the wheel and every CUDA library its dependencies pin -----------------------
gpu_install() {
    say "downloading torch==$TORCH_VERSION with its dependencies from PyPI (~3.5 GB: the nvidia-* CUDA 13 wheels)"
    # pip takes --platform tags literally: list every manylinux a glibc 2.28 machine runs.
    local platforms="--platform manylinux2014_$arch --platform any"
    for minor in $(seq 17 28); do platforms+=" --platform manylinux_2_${minor}_$arch"; done
    "$python" -m pip download --quiet --disable-pip-version-check --no-cache-dir \
        --only-binary :all: --implementation cp --python-version "$TORCH_WHEEL_PYTHON" \
        --abi "$py_tag" --abi none --abi abi3 $platforms \
        "torch==$TORCH_VERSION" -d "$tmp/wheels"
    say "downloaded in $((SECONDS - start))s; extracting"
    "$python" - "$tmp/wheels" "$stage" "$TORCH_VERSION" <<'PY'
import glob, os, re, shutil, sys, zipfile
wheels, stage, version = sys.argv[1:]
def copy(zf, name, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with zf.open(name) as i, open(target, "wb") as o:
        shutil.copyfileobj(i, o, 1 << 20)
    if re.search(r"\.so(\.|$)", target):
        os.chmod(target, 0o755)
torch = glob.glob(os.path.join(wheels, f"torch-{version}-*.whl"))[0]
with zipfile.ZipFile(torch) as zf:
    for name in zf.namelist():
        if name.endswith("/"):
            continue
        if name.startswith("torch/include/"):
            copy(zf, name, os.path.join(stage, "include", name[len("torch/include/"):]))
        elif name.startswith("torch/lib/"):
            copy(zf, name, os.path.join(stage, "lib", os.path.basename(name)))
        elif name == "torch/version.py":
            copy(zf, name, os.path.join(stage, "version.py"))
# Every shared library of the nvidia-* wheels (and triton's none: libtorch does not need it).
for wheel in sorted(glob.glob(os.path.join(wheels, "nvidia_*.whl"))):
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if re.match(r"nvidia/.+/lib/[^/]+\.so(\.[0-9]+)*$", name):
                copy(zf, name, os.path.join(stage, "lib", os.path.basename(name)))
PY
    rm -rf "$tmp/wheels"
    "$python" - "$stage/version.py" >"$stage/build-version" <<'PY'
import sys
scope = {}
exec(open(sys.argv[1]).read(), scope)
print(scope["__version__"])
PY
    rm -f "$stage/version.py"
    ln -sfn libgomp.so.1 "$stage/lib/libgomp.so"
    say "build-version: $(cat "$stage/build-version"); setting every library's RUNPATH to \$ORIGIN"
    for so in "$stage"/lib/*.so*; do
        [[ -L "$so" ]] || "$patchelf" --set-rpath '$ORIGIN' "$so"
    done
    # What libtorch loads (ldd follows every NEEDED edge): only the driver's own libraries may
    # be missing here, as a GPU machine has them. (The wheels' optional plugins, such as
    # nvshmem's MPI bootstraps and cuFile's RDMA, are opened only when asked for.)
    missing="$(cd "$stage/lib" && for so in libtorch.so libtorch_cuda.so libc10_cuda.so; do
        ldd "$so" | sed -n "s|^|$so: |; /not found/p"; done | grep -v -E 'libcuda\.so\.1|libnvidia-ml\.so\.1' || true)"
    if [[ -n "$missing" ]]; then
        echo "error: unresolved libraries in $stage/lib:" >&2
        echo "$missing" >&2
        exit 1
    fi
    say "ldd: libtorch and its CUDA libraries resolve in lib/, but for the driver's (libcuda.so.1, libnvidia-ml.so.1)"
    echo "$TORCH_VERSION" >"$stage/.nexus-installed"
    rm -rf "$dir"
    mv "$stage" "$dir"
    say "installed libtorch $TORCH_VERSION (CUDA) in $((SECONDS - start))s, $(du -sh "$dir" | cut -f1)"
    say "build the plugin with scripts/install-torch-backend.sh --gpu"
    echo "$dir"
}

# --- download -------------------------------------------------------------------
start=$SECONDS
py_tag="cp${TORCH_WHEEL_PYTHON/./}"
if [[ $gpu -eq 1 ]]; then
    gpu_install
    exit 0
fi
say "downloading torch==$TORCH_VERSION from PyPI (~530 MB), plus nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION and nvidia-cuda-cupti==$CUDA_CUPTI_VERSION"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --no-cache-dir \
    --only-binary :all: --implementation cp --python-version "$TORCH_WHEEL_PYTHON" \
    --abi "$py_tag" --platform "manylinux_2_28_$arch" \
    "torch==$TORCH_VERSION" -d "$tmp/wheels"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary :all: \
    "nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION" "nvidia-cuda-cupti==$CUDA_CUPTI_VERSION" \
    -d "$tmp/wheels"
say "downloaded in $((SECONDS - start))s"

# --- extract only what a CPU build needs (Python's zipfile: no unzip needed) -----------
# Arguments: wheel, destination, then SRC=DST pairs; a SRC ending in / is a folder.
extract() {
    "$python" - "$@" <<'PY'
import os, shutil, sys, zipfile
wheel, dest, *pairs = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    names = zf.namelist()
    for pair in pairs:
        src, dst = pair.split("=", 1)
        members = [n for n in names if n.startswith(src) and not n.endswith("/")] \
            if src.endswith("/") else [n for n in names if n == src]
        if not members:
            sys.exit(f"error: {src} is not in {wheel}")
        for name in members:
            target = os.path.join(dest, dst + name[len(src):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(name) as i, open(target, "wb") as o:
                shutil.copyfileobj(i, o, 1 << 20)
            if target.endswith(".so") or ".so." in target:
                os.chmod(target, 0o755)
PY
}

wheel() {
    local found
    found="$(ls "$tmp/wheels"/"$1"-*.whl 2>/dev/null | head -n 1 || true)"
    if [[ -z "$found" ]]; then
        echo "error: pip did not produce a $1 wheel in $tmp/wheels" >&2
        exit 1
    fi
    echo "$found"
}

torch_whl="$(wheel "torch-$TORCH_VERSION")"
say "extracting headers and CPU libraries from $(basename "$torch_whl")"
extract "$torch_whl" "$stage" \
    torch/include/=include/ \
    torch/lib/libc10.so=lib/libc10.so \
    torch/lib/libtorch.so=lib/libtorch.so \
    torch/lib/libtorch_cpu.so=lib/libtorch_cpu.so \
    torch/lib/libgomp.so.1=lib/libgomp.so.1 \
    torch/version.py=version.py
extract "$(wheel "nvidia_cuda_runtime-$CUDA_RUNTIME_VERSION")" "$stage" \
    nvidia/cu13/lib/libcudart.so.13=lib/libcudart.so.13
extract "$(wheel "nvidia_cuda_cupti-$CUDA_CUPTI_VERSION")" "$stage" \
    nvidia/cu13/lib/libcupti.so.13=lib/libcupti.so.13
rm -rf "$tmp/wheels"   # frees the ~530 MB now rather than at exit

# torch-sys checks <dir>/build-version against the version it expects (the +cu130 suffix
# is ignored); write the wheel's own version string, e.g. 2.13.0+cu130.
"$python" - "$stage/version.py" >"$stage/build-version" <<'PY'
import sys
scope = {}
exec(open(sys.argv[1]).read(), scope)
print(scope["__version__"])
PY
rm -f "$stage/version.py"
say "build-version: $(cat "$stage/build-version")"

# --- patch the CUDA edges away -------------------------------------------------------
say "removing libtorch_cuda.so from libtorch.so's dependencies (patchelf $("$patchelf" --version | awk '{print $2}'))"
"$patchelf" --remove-needed libtorch_cuda.so "$stage/lib/libtorch.so"
for lib in libc10.so libtorch.so libtorch_cpu.so libgomp.so.1; do
    # Shorter than the wheel's rpath, so patchelf rewrites it in place.
    "$patchelf" --force-rpath --set-rpath '$ORIGIN' "$stage/lib/$lib"
done
ln -sfn libgomp.so.1 "$stage/lib/libgomp.so"

# --- check: every library resolves, and libtorch loads and initialises -----------------
missing="$(cd "$stage/lib" && for so in *.so*; do ldd "$so" | sed -n "s|^|$so: |; /not found/p"; done)"
if [[ -n "$missing" ]]; then
    echo "error: unresolved libraries in $stage/lib:" >&2
    echo "$missing" >&2
    exit 1
fi
say "ldd: every library in lib/ resolves"
"$python" -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$stage/lib/libtorch.so"
say "libtorch.so loads (CPU only, no libtorch_cuda.so)"

# --- install -----------------------------------------------------------------------------
echo "$TORCH_VERSION" >"$stage/.nexus-installed"   # the marker, written last
rm -rf "$dir"
mv "$stage" "$dir"
say "installed libtorch $TORCH_VERSION (CPU) in $((SECONDS - start))s, $(du -sh "$dir" | cut -f1): $(cd "$dir/lib" && echo *)"
say "build with LIBTORCH=$dir; run with LD_LIBRARY_PATH=$dir/lib"
echo "$dir"
