# The one harness of the checks in scripts/checks/ (sourced, not run): the repository as the
# working folder, a scratch folder, fresh secrets, free loopback ports, processes started and
# awaited by an event (the relay's sd_notify READY=1, another server's first accepted
# connection), and at exit every process the check started ended by its PID.
#   source "$(dirname "$0")/../lib/harness.sh"
# Sets: $root (the repository), $work (scratch, removed at exit), $relay_bin (CHECK_RELAY_BINARY, exported), pids (the array of
# PIDs ended at exit; start_* add to it). HARNESS_KILL_SIGNAL (default TERM) is what they get.
set -euo pipefail
harness_lib=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$harness_lib/../.." && pwd)
cd "$root"
check_name=$(basename "$0")
work=$(mktemp -d)
pids=()
# (Not RELAY_*: the relay refuses settings it does not know, and children inherit this.)
export CHECK_RELAY_BINARY=${CHECK_RELAY_BINARY:-$root/.build/debug/relay}
relay_bin=$CHECK_RELAY_BINARY

harness_cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do kill "-${HARNESS_KILL_SIGNAL:-TERM}" "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    # A helper that is not our child (Chromium's) may still be writing here: a failed rm must not
    # turn a passed check into a failed one.
    rm -rf "$work" 2>/dev/null || true
    exit "$status"
}
trap harness_cleanup EXIT

fail() { echo "$check_name: $*" >&2; exit 1; }

# A loopback port nobody listens on now (random picks in the ephemeral range collide).
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# 32 random bytes in hex: a fresh secret for a throwaway relay.
new_secret() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

# The PyPI packages a check uses (quietly; a failure says what pip said).
pip_install() {
    python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}

# Builds a product unless scripts/check built everything already; a failed build prints why.
build_product() {
    [ -n "${CHECK_BUILT:-}" ] && return 0
    local output
    output=$(swift build --product "$1" 2>&1) || { echo "$output" | tail -40 >&2; fail "swift build --product $1 failed"; }
}

# Starts `relay serve` with the settings given (VAR=value ...) on top of the exported ones, its
# log (stderr) in $1, and returns once it listens: the relay says READY=1 on NOTIFY_SOCKET (as to
# systemd) when its server runs. Sets relay_pid. Fails, with the log, if the relay exits first or
# is not ready within 30 s.
start_relay() {
    local log=$1
    shift
    local socket fifo waiter
    socket="$work/notify-$RANDOM$RANDOM"
    fifo="$socket.bound"
    mkfifo "$fifo"
    python3 "$harness_lib/await-ready" "$socket" "$fifo" 30 &
    waiter=$!
    read -r _ <"$fifo"
    env "$@" NOTIFY_SOCKET="$socket" "$relay_bin" serve 2>"$log" &
    relay_pid=$!
    pids+=("$relay_pid")
    local finished status=0
    wait -n -p finished "$waiter" "$relay_pid" || status=$?
    if [ "$finished" != "$waiter" ]; then
        kill "$waiter" 2>/dev/null || true
        tail -40 "$log" >&2
        fail "the relay exited (status $status) before it listened"
    fi
    [ "$status" -eq 0 ] || { tail -40 "$log" >&2; fail "the relay did not say it was ready within 30 s"; }
}

# Starts another server (command and arguments, output to $2) and returns once $1, its port on
# 127.0.0.1, accepts a connection. Sets server_pid. Fails, with the output, if the server exits
# first or does not listen within 30 s.
start_server() {
    local port=$1 log=$2
    shift 2
    "$@" >"$log" 2>&1 &
    server_pid=$!
    pids+=("$server_pid")
    await_port "$port" "$server_pid" "$log"
}

# Returns once 127.0.0.1:$1 accepts a connection (a server gives no other sign of it), failing
# with the log $3 when process $2 exits first or 30 s pass.
await_port() {
    local port=$1 pid=$2 log=$3 deadline=$((SECONDS + 30))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { tail -40 "$log" >&2; fail "$(basename "$log"): the server exited before it listened on $port"; }
        [ "$SECONDS" -lt "$deadline" ] || { tail -40 "$log" >&2; fail "$(basename "$log"): nothing listened on $port within 30 s"; }
        sleep 0.05
    done
}
