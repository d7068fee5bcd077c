#!/usr/bin/env bash
# Puts ONNX Runtime's shared library where Nexus looks for it by default:
#   <repo>/.nexus/lib/libonnxruntime.so -> libonnxruntime.so.<version>
# The library comes out of the pinned `onnxruntime` wheel on PyPI (no compiler, no unzip).
# Idempotent: does nothing when the library is already there.
# Nexus also honours ORT_DYLIB_PATH to point at a library elsewhere.
set -euo pipefail

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
