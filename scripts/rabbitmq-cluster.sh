#!/usr/bin/env bash
# A local three-node RabbitMQ cluster beside the default broker (rabbit@localhost on 5672, left
# alone), for the failover tests and for trying the transport against a cluster.
#
#   bash scripts/rabbitmq-cluster.sh start      starts rpc-cluster-1..3@localhost on AMQP ports
#                                               5681-5683 (distribution ports 25681-25683),
#                                               fresh data, joins 2 and 3 to 1; prints the
#                                               three URLs as one comma-separated line, last
#   stop                                        stops the three nodes and removes their data
#   kill N                                      SIGKILLs node N (1-3); its data stays
#   restart N                                   starts node N again on its data: it rejoins
#                                               the cluster by itself
#   status                                      one line per node; exit 0 if all three run
#
# Each node is a private node of scripts/rabbitmq-node.sh (its own name, data, logs and config
# file). The Erlang VMs are kept small for a 2-core machine: one scheduler thread each and a
# low file-handle count; RPC_CLUSTER_ERL_ARGS replaces those flags.
# Needs root (or the rabbitmq user), as scripts/rabbitmq-node.sh.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
NODE_SCRIPT=$HERE/rabbitmq-node.sh
PREFIX=${RPC_CLUSTER_PREFIX:-rpc-cluster}
BASE_PORT=${RPC_CLUSTER_BASE_PORT:-5680}
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=${RPC_CLUSTER_ERL_ARGS:-+S 1:1 +SDio 2 +A 4}

log() { echo "rabbitmq-cluster: $*" >&2; }
usage() {
    echo "usage: $0 start | stop | kill N | restart N | status" >&2
    exit 2
}

name() { echo "$PREFIX-$1"; }
port() { echo $((BASE_PORT + $1)); }
url() { echo "amqp://guest:guest@127.0.0.1:$(port "$1")/%2f"; }
ctl() {
    local n=$1
    shift
    rabbitmqctl -q -n "$(name "$n")@localhost" "$@"
}
check_n() { [[ ${1:-} =~ ^[123]$ ]] || { log "N must be 1, 2 or 3"; usage; }; }

cmd=${1:-}
case $cmd in
start)
    started=$SECONDS
    # The three boot at once: on 2 cores that is faster than one after the other.
    pids=()
    for n in 1 2 3; do
        bash "$NODE_SCRIPT" start "$(name "$n")" "$(port "$n")" >/dev/null &
        pids+=($!)
    done
    failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    if ((failed)); then
        log "a node did not start; stopping the others"
        for n in 1 2 3; do bash "$NODE_SCRIPT" stop "$(name "$n")" >/dev/null 2>&1 || true; done
        exit 1
    fi
    # The CLI's chatter while a node joins (tracking tables of a node still starting) goes to
    # a file, shown only when the join fails.
    joinlog=$(mktemp /tmp/rabbitmq-cluster-join.XXXXXX)
    for n in 2 3; do
        if ! { ctl "$n" stop_app && ctl "$n" join_cluster "$(name 1)@localhost" && ctl "$n" start_app; } >>"$joinlog" 2>&1; then
            cat "$joinlog" >&2
            rm -f "$joinlog"
            log "node $n did not join; stopping the cluster"
            for m in 1 2 3; do bash "$NODE_SCRIPT" stop "$(name "$m")" >/dev/null 2>&1 || true; done
            exit 1
        fi
    done
    rm -f "$joinlog"
    ctl 1 await_startup
    members=$(ctl 1 eval 'length(rabbit_nodes:all_running()).' 2>/dev/null || echo '?')
    rss=0
    for n in 1 2 3; do
        pid=$(cat "${RPC_RABBITMQ_NODES:-/tmp/rpc-rabbitmq-nodes}/$(name "$n")/db/$(name "$n")@localhost.pid")
        rss=$((rss + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status")))
    done
    log "up after $((SECONDS - started)) s, $members nodes running, $((rss / 1024)) MB resident in all"
    echo "$(url 1),$(url 2),$(url 3)"
    ;;
stop)
    for n in 1 2 3; do bash "$NODE_SCRIPT" stop "$(name "$n")" || true; done
    ;;
kill)
    check_n "${2:-}"
    bash "$NODE_SCRIPT" kill "$(name "$2")"
    ;;
restart)
    check_n "${2:-}"
    bash "$NODE_SCRIPT" restart "$(name "$2")" >/dev/null
    ctl "$2" await_startup
    log "node $2 back in the cluster"
    ;;
status)
    all=0
    for n in 1 2 3; do bash "$NODE_SCRIPT" status "$(name "$n")" || all=3; done
    exit $all
    ;;
*) usage ;;
esac
