#!/usr/bin/env bash
# The whole test suite, from a fresh machine: `bash scripts/test.sh`.
#
# 1. makes sure a RabbitMQ broker is reachable (starts or installs one; fails loudly if it
#    cannot: the AMQP tests never skip);
# 2. makes a Python venv with aio-pika, the reference peer for the interop tests, and
#    openapi-spec-validator; installs headless Chromium for the console's browser test;
# 3. runs every Rust test in the workspace (unit, wire, API, end to end, trybuild, doctests),
#    all of them even when some fail (`--no-fail-fast`);
# 4. runs the main example exactly as a newcomer does, and the benchmark in smoke mode;
# 5. checks that the run left the broker as it found it: up all along (its uptime grew), no
#    queue or exchange added to `$RABBITMQ_URL`'s vhost, none of this run's test vhosts or
#    private nodes left, no process of this run still running. Any of these fails the script.
#
# Every test process works in a vhost of its own (docs/TESTING.md), so the suite passes while
# other programs use the same broker.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-rabbitmq.sh
RPC_TEST_PYTHON=$(bash scripts/python-env.sh | tail -n 1)
export RPC_TEST_PYTHON
# Headless Chromium for the HTTP console's browser test (tests/http_console.rs).
RPC_TEST_BROWSER=$(bash scripts/browser.sh | tail -n 1)
export RPC_TEST_BROWSER
export RABBITMQ_URL=${RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
# Names this run in its test vhosts (rpc-test.<host>.<run>.<pid>.<start>) and marks its
# processes (their environment), for the checks at the end.
export RPC_TEST_RUN=${RPC_TEST_RUN:-run$$-$(date +%s)}
HOST_LABEL=$(tr -c 'A-Za-z0-9\n-' '-' </proc/sys/kernel/hostname)
RUN_PREFIX="rpc-test.$HOST_LABEL.$RPC_TEST_RUN."
NODES_DIR=${RPC_RABBITMQ_NODES:-/tmp/rpc-rabbitmq-nodes}
NODE_PREFIX=${RPC_TEST_NODE_NAME:-rpc-test-node}-

# The vhost RABBITMQ_URL names (percent-decoded path; `/` when empty).
VHOST=$(python3 -c 'import sys, urllib.parse as u; print(u.unquote(u.urlsplit(sys.argv[1]).path[1:]) or "/")' "$RABBITMQ_URL")
uptime_ms() { rabbitmqctl eval 'element(1, erlang:statistics(wall_clock)).' | tr -d '[:space:]'; }
names() { rabbitmqctl "list_$1" -q --no-table-headers -p "$VHOST" name | grep -v '^amq\.gen-' | sort || true; }
UPTIME_BEFORE=$(uptime_ms)
QUEUES_BEFORE=$(names queues)
EXCHANGES_BEFORE=$(names exchanges)

status=0
cargo test --workspace --all-targets --locked --no-fail-fast || status=1
cargo test --workspace --doc --locked --no-fail-fast || status=1
cargo run --locked --example calculator || status=1
# The benchmark in smoke mode: checks that it runs, never how fast (numbers: BENCHMARKS.md).
cargo run --locked -p rpc-bench -- all --quick || status=1

# What the run left behind.
leftover() {
    echo "test.sh: left behind: $*" >&2
    status=1
}
UPTIME_AFTER=$(uptime_ms)
if ! ((UPTIME_AFTER > UPTIME_BEFORE)); then
    leftover "the default broker restarted during the run (uptime $UPTIME_BEFORE ms before, $UPTIME_AFTER ms after)"
fi
added=$(comm -13 <(echo "$QUEUES_BEFORE") <(names queues) | grep . || true)
[[ -z $added ]] || leftover "queues on vhost $VHOST: $(echo "$added" | tr '\n' ' ')"
added=$(comm -13 <(echo "$EXCHANGES_BEFORE") <(names exchanges) | grep . || true)
[[ -z $added ]] || leftover "exchanges on vhost $VHOST: $(echo "$added" | tr '\n' ' ')"
for vhost in $(rabbitmqctl list_vhosts -q --no-table-headers name | grep -F "$RUN_PREFIX" || true); do
    leftover "vhost $vhost (deleted now)"
    rabbitmqctl delete_vhost "$vhost" >/dev/null || true
done
for dir in "$NODES_DIR/$NODE_PREFIX"*; do
    [[ -e $dir ]] || continue
    leftover "private RabbitMQ node $(basename "$dir") (stopped now)"
    rabbitmqctl -n "$(basename "$dir")@localhost" stop >/dev/null 2>&1 || true
    bash scripts/rabbitmq-node.sh stop "$(basename "$dir")" || true
done
# Processes of this run: everything started below this script carries RPC_TEST_RUN (the
# script itself and its callers may too: they are skipped; the checks' own commands do not).
export -n RPC_TEST_RUN
ours=" "
for ((pid = $$; pid > 1; pid = $(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || echo 1))); do
    ours+="$pid "
done
for environ in /proc/[0-9]*/environ; do
    pid=${environ#/proc/}
    pid=${pid%/environ}
    [[ $ours != *" $pid "* ]] || continue
    if tr '\0' '\n' 2>/dev/null <"$environ" | grep -qx "RPC_TEST_RUN=$RPC_TEST_RUN"; then
        leftover "process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)) (killed now)"
        kill -KILL "$pid" 2>/dev/null || true
    fi
done

if ((status == 0)); then
    echo "test.sh: all passed; the broker is as it was"
else
    echo "test.sh: FAILED (see above)" >&2
fi
exit $status
