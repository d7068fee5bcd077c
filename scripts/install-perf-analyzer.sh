#!/usr/bin/env bash
# Installs perf_analyzer, the load generator Triton users measure with, for benches/compare.sh
# and tests/clients/test_perf_analyzer.py. It ships as a prebuilt binary inside the
# tritonclient wheel (built for glibc 2.34, so it runs on Debian 12); it links libb64 (Debian's
# libb64-0d) and libcudart even on CPU-only machines (PyPI's nvidia-cuda-runtime-cu12).
#
# The venv goes into a cache folder outside the checkout, shared by every clone on this machine:
#   ${NEXUS_CACHE:-$HOME/.cache/nexus}/perf-analyzer-2.51.0/venv
# with a wrapper that sets LD_LIBRARY_PATH to that venv's CUDA runtime:
#   ${NEXUS_CACHE:-$HOME/.cache/nexus}/perf-analyzer-2.51.0/bin/perf_analyzer
# Idempotent: when the wrapper runs and reports this version it only prints its path (last line
# of the output, for scripts: `pa="$(bash scripts/install-perf-analyzer.sh | tail -n 1)"`).
set -euo pipefail

PA_VERSION="2.51.0"
CUDART_VERSION="12.9.79"
root="${NEXUS_CACHE:-$HOME/.cache/nexus}/perf-analyzer-$PA_VERSION"
wrapper="$root/bin/perf_analyzer"

# libb64 is a system library (not on PyPI): apt-get, through sudo when not root.
if ! /sbin/ldconfig -p | grep -q 'libb64\.so\.0d'; then
    echo "perf_analyzer: installing libb64-0d (apt-get)" >&2
    sudo=()
    [[ "$(id -u)" == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get install -y libb64-0d >/dev/null 2>&1 ||
        { "${sudo[@]}" apt-get update >/dev/null && "${sudo[@]}" apt-get install -y libb64-0d >/dev/null; }
fi

if [[ -x "$wrapper" ]] && "$wrapper" --version 2>&1 | grep -q "Version $PA_VERSION"; then
    echo "$wrapper"
    exit 0
fi

echo "perf_analyzer $PA_VERSION: installing tritonclient into $root/venv" >&2
rm -rf "$root"
mkdir -p "$root/bin"
"${PYTHON:-python3}" -m venv "$root/venv"
# The binary is in the base wheel; the [http]/[grpc] extras are only for the Python clients.
"$root/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "tritonclient==$PA_VERSION" "nvidia-cuda-runtime-cu12==$CUDART_VERSION" >&2
cudart="$("$root/venv/bin/python" -c 'import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], "lib"))')"
cat >"$wrapper" <<WRAP
#!/usr/bin/env bash
# perf_analyzer $PA_VERSION from the tritonclient wheel, with the CUDA runtime it links.
export LD_LIBRARY_PATH="$cudart\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$root/venv/bin/perf_analyzer" "\$@"
WRAP
chmod +x "$wrapper"
"$wrapper" --version >&2
echo "$wrapper"
