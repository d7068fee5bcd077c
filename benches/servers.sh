# Shared by the side-by-side benchmarks (compare.sh, torch_compare.sh, gpu.sh): finding the nexus
# binary, running one server at a time and accounting for the CPU other processes take. Sourced;
# expects $python (a python3) and $work (a scratch folder) to be set.
#
log() { printf '\n==> %s\n' "$*"; }
die() { echo "error: $*" >&2; exit 1; }

# find_nexus: sets $nexus to $NEXUS_BIN, else target/release/nexus, else target/debug/nexus
# (with a warning: a debug build's figures are not comparable); run from the repository root.
find_nexus() {
    if [[ -n "${NEXUS_BIN:-}" ]]; then
        nexus="$NEXUS_BIN"
    elif [[ -x target/release/nexus ]]; then
        nexus="$PWD/target/release/nexus"
    elif [[ -x target/debug/nexus ]]; then
        nexus="$PWD/target/debug/nexus"
        echo "warning: no target/release/nexus: using the DEBUG build, whose figures are not comparable" >&2
    else
        die "no nexus binary: cargo build --release --bin nexus (or set NEXUS_BIN)"
    fi
    [[ -x "$nexus" ]] || die "$nexus is not executable"
}

# --- servers: one at a time, always stopped on exit ------------------------------------------
# Servers run in the calling script's session, like the load generators (results/NOTES.md: a setsid'd
# server gets its own CFS autogroup, which skews the split of the 2 cores). TorchServe is three
# processes deep (the `torchserve` Python launcher, the Java frontend, the Python worker), so
# the whole tree is stopped.
server_pid=""
descendants() {
    local child
    for child in $(pgrep -P "$1" || true); do
        echo "$child"
        descendants "$child"
    done
}
stop_server() {
    if [[ -n "$server_pid" ]]; then
        local tree
        tree="$server_pid $(descendants "$server_pid" | tr '\n' ' ')"
        # shellcheck disable=SC2086  # a list of pids
        kill -TERM $tree 2>/dev/null || true
        for _ in $(seq 50); do
            local alive=0 pid
            for pid in $tree; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [[ "$alive" == 0 ]] && break
            sleep 0.1
        done
        # shellcheck disable=SC2086
        kill -KILL $tree 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

port_free() {
    "$python" - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

# start_server NAME LOGFILE WORKDIR PORT... -- COMMAND...
start_server() {
    local name="$1" logfile="$2" dir="$3"
    shift 3
    while [[ "$1" != "--" ]]; do
        port_free "$1" || die "port $1 (for $name) is in use; stop what holds it"
        shift
    done
    shift
    mkdir -p "$dir"
    (cd "$dir" && exec "$@") >"$logfile" 2>&1 &
    server_pid=$!
}

# wait_ready NAME LOGFILE CURL_ARGS...: until the request answers 200, for up to 180 s.
wait_ready() {
    local name="$1" logfile="$2"
    shift 2
    for _ in $(seq 900); do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "error: $name exited while starting; the end of $logfile:" >&2
            tail -n 30 "$logfile" >&2
            exit 1
        fi
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' "$@" || true)" == 200 ]]; then
            return 0
        fi
        sleep 0.2
    done
    echo "error: $name was not ready after 180 s; the end of $logfile:" >&2
    tail -n 30 "$logfile" >&2
    exit 1
}


# CPU seconds the whole machine was busy, and CPU seconds of this script's finished children
# (servers, load generator): the difference over the run is what other processes took.
machine_busy() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { print ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat; }
children_cpu() {  # `times` must run in this shell (not a $(...) subshell) to see its children
    times >"$work/times"
    awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$work/times"
}

# start_measuring: waits up to $QUIET_WAIT seconds for the 1-minute load average to fall below
# 0.5, then notes the machine's busy CPU, this script's children's CPU, the load average and the
# time, as busy0, $work/cpu0, load_before, started and t0.
start_measuring() {
    for _ in $(seq "${QUIET_WAIT:-0}"); do
        awk '{ exit !($1 < 0.5) }' /proc/loadavg && break
        sleep 1
    done
    busy0="$(machine_busy)"
    children_cpu >"$work/cpu0"
    read -r load_before _ </proc/loadavg
    if ! awk '{ exit !($1 < 1.0) }' /proc/loadavg; then
        echo "warning: load average $load_before before measuring: other work is running, figures will be noisy" >&2
    fi
    started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    t0=$SECONDS
}
