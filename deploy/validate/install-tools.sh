#!/usr/bin/env bash
# Installs the validators of deploy/ that do not come from requirements-dev.txt, and prints
# where they are as KEY=VALUE lines (tests/clients/test_deploy.py runs this once per session):
#
#   NODE_MODULES=<deploy/validate/node_modules>   the npm packages of package-lock.json
#                                                 (npm ci, again only when the lock changes)
#   PROMTOOL=<path>                               Prometheus' promtool: `promtool` from PATH,
#       else the one of Debian's `prometheus` package, unpacked (not installed: no service
#       is set up or started) into ~/.cache/nexus/promtool/ with apt-get download + dpkg-deb.
#
# Idempotent and quick once done. Needs node/npm and, for promtool, apt (Debian/Ubuntu).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# --- npm packages ------------------------------------------------------------------------------
if ! command -v npm >/dev/null 2>&1; then
    echo "error: npm not found (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi
stamp="$here/node_modules/.package-lock.sha256"
want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    echo "install-tools: npm ci in $here" >&2
    (cd "$here" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2)
    echo "$want" >"$stamp"
fi
echo "NODE_MODULES=$here/node_modules"

# --- promtool ----------------------------------------------------------------------------------
if command -v promtool >/dev/null 2>&1; then
    echo "PROMTOOL=$(command -v promtool)"
    exit 0
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/nexus/promtool"
if [[ ! -x "$cache/usr/bin/promtool" ]]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: promtool not found and no apt-get to fetch Debian's prometheus package;" \
            "install Prometheus' promtool and put it on PATH" >&2
        exit 1
    fi
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    echo "install-tools: fetching promtool from Debian's prometheus package" >&2
    if ! (cd "$tmp" && apt-get download -q prometheus) >&2; then
        # No package lists yet (a fresh machine): read them once, then retry.
        sudo=""
        [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
        $sudo apt-get update >&2
        (cd "$tmp" && apt-get download -q prometheus) >&2
    fi
    mkdir -p "$tmp/x"
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    mkdir -p "$cache/usr/bin"
    install -m 0755 "$tmp/x/usr/bin/promtool" "$cache/usr/bin/promtool.partial"
    mv -f "$cache/usr/bin/promtool.partial" "$cache/usr/bin/promtool"
fi
echo "PROMTOOL=$cache/usr/bin/promtool"
