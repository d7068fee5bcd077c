#!/usr/bin/env bash
# Installs the `tansu` broker (an Apache Kafka-compatible broker written in Rust, from
# crates.io) that the event tests start on their own ports. No Kafka runs on these
# machines and Docker is not available, so the tests bring their own broker.
#
# A cold build takes 10-16 minutes on 2 cores, so it goes into a cache folder outside the
# checkout, shared by every clone on this machine:
#   ${NEXUS_CACHE:-$HOME/.cache/nexus}/tansu/bin/tansu
# Idempotent: does nothing when that version is already there. The tests find it there
# (or at $NEXUS_TANSU); NEXUS_TEST_KAFKA_BROKERS points them at an external broker instead.
set -euo pipefail

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
root="${NEXUS_CACHE:-$HOME/.cache/nexus}/tansu"
bin="$root/bin/tansu"

if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    echo "tansu $TANSU_VERSION: already at $bin"
    exit 0
fi

echo "tansu $TANSU_VERSION: building from crates.io into $root (10-16 minutes the first time)"
mkdir -p "$root"
# The in-memory storage engine the tests use needs the dynostore feature.
cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore --root "$root"
"$bin" --version
