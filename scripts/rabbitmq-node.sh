#!/usr/bin/env bash
# A private RabbitMQ node beside the default broker (rabbit@localhost on 5672, left alone).
#
#   bash scripts/rabbitmq-node.sh start NAME PORT [config-line ...]
#       starts node NAME@localhost with AMQP on 127.0.0.1:PORT (distribution port PORT+20000)
#       and fresh data; extra lines go into its rabbitmq.conf (e.g. 'max_message_size = 1048576');
#       waits until it accepts AMQP and prints its URL on the last line
#   stop NAME       stops it and removes its data
#   kill NAME       SIGKILLs it (data kept, for `restart`)
#   restart NAME    starts it again (stopping it first if it runs), same data and config
#   status NAME     prints whether it runs; exit 0 if it does, 3 if not
#
# Needs root (or the rabbitmq user): nodes run as `rabbitmq`, sharing its Erlang cookie, so
# `rabbitmqctl -n NAME@localhost ...` works as for the default node.
# Data and logs: $RPC_RABBITMQ_NODES/NAME (default /tmp/rpc-rabbitmq-nodes/NAME).
set -euo pipefail

usage() {
    echo "usage: $0 start NAME PORT [config-line ...] | stop NAME | kill NAME | restart NAME | status NAME" >&2
    exit 2
}

[[ $# -ge 2 ]] || usage
CMD=$1
NAME=$2
[[ $NAME =~ ^[A-Za-z0-9_-]+$ ]] || { echo "rabbitmq-node: bad node name '$NAME'" >&2; exit 2; }
[[ $NAME != rabbit ]] || { echo "rabbitmq-node: 'rabbit' is the default broker's name" >&2; exit 2; }
NODE=$NAME@localhost
ROOT=${RPC_RABBITMQ_NODES:-/tmp/rpc-rabbitmq-nodes}
DIR=$ROOT/$NAME
WAIT=${RABBITMQ_WAIT_SECONDS:-120}

log() { echo "rabbitmq-node: $NAME: $*" >&2; }

# The node's OS process id (its Erlang VM), if it runs.
pid() {
    local pid
    pid=$(cat "$DIR/db/$NODE.pid" 2>/dev/null) || return 1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && tr '\0' '\n' <"/proc/$pid/environ" | grep -qx "RABBITMQ_NODENAME=$NODE" && echo "$pid"
}

# Whether something answers the AMQP protocol header on the port (a bare TCP accept is not
# enough while a node boots).
answers() {
    timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && printf 'AMQP\x00\x00\x09\x01' >&3 && head -c 4 <&3" 2>/dev/null | grep -q .
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_gone() {
    for ((i = 0; i < 300; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

launch() {
    # shellcheck source=/dev/null
    source "$DIR/ports"
    port_free "$PORT" || { log "port $PORT is taken"; exit 1; }
    port_free "$DIST_PORT" || { log "distribution port $DIST_PORT is taken"; exit 1; }
    if [[ $(id -u) == 0 ]] && id rabbitmq >/dev/null 2>&1; then
        chown -R rabbitmq:rabbitmq "$DIR"
    fi
    # setsid: the node outlives the shell that started it. The Debian wrapper switches to the
    # rabbitmq user and keeps these variables.
    RABBITMQ_NODENAME=$NODE RABBITMQ_NODE_PORT=$PORT RABBITMQ_DIST_PORT=$DIST_PORT \
        RABBITMQ_CONFIG_FILE=$DIR/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$DIR/enabled_plugins \
        RABBITMQ_MNESIA_BASE=$DIR/db RABBITMQ_LOG_BASE=$DIR/log ERL_EPMD_ADDRESS=127.0.0.1 \
        setsid nohup rabbitmq-server >>"$DIR/log/stdout" 2>&1 </dev/null 9>&- &
    local shell=$! started=$SECONDS
    while ((SECONDS - started < WAIT)); do
        if answers "$PORT" && pid >/dev/null; then
            log "up after $((SECONDS - started)) s (pid $(pid))"
            echo "amqp://guest:guest@127.0.0.1:$PORT/%2f"
            return 0
        fi
        if ! kill -0 "$shell" 2>/dev/null; then
            log "the node exited while starting; last lines of $DIR/log/stdout:"
            tail -n 20 "$DIR/log/stdout" >&2
            exit 1
        fi
        sleep 0.1
    done
    log "no AMQP on port $PORT after $WAIT s; stopping it; logs in $DIR/log"
    halt
    exit 1
}

halt() {
    local pid
    if pid=$(pid); then
        kill -TERM "$pid"
        wait_gone "$pid" || { log "still running 30 s after SIGTERM; SIGKILL"; kill -KILL "$pid"; wait_gone "$pid"; }
    fi
}

case $CMD in
start)
    [[ $# -ge 3 && $3 =~ ^[0-9]+$ ]] || usage
    PORT=$3
    shift 3
    [[ $PORT != 5672 ]] || { log "5672 is the default broker's port"; exit 2; }
    # One start of NAME at a time: two processes starting the same name (two tests taking
    # the first port of a range) would otherwise both see the winner's node answer and share
    # it. The loser fails at once and moves on. The lock files stay (empty, in .locks/).
    mkdir -p "$ROOT/.locks"
    exec 9>"$ROOT/.locks/$NAME"
    flock -n 9 || { log "being started by another process"; exit 1; }
    if pid >/dev/null; then
        log "already running; stop or restart it"
        exit 1
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR/db" "$DIR/log"
    chmod 755 "$ROOT" "$DIR"
    printf 'PORT=%s\nDIST_PORT=%s\n' "$PORT" $((PORT + 20000)) >"$DIR/ports"
    {
        echo "listeners.tcp.default = 127.0.0.1:$PORT"
        for line in "$@"; do echo "$line"; done
    } >"$DIR/rabbitmq.conf"
    echo '[].' >"$DIR/enabled_plugins"
    launch
    ;;
restart)
    [[ -f $DIR/ports ]] || { log "no such node (start it first)"; exit 1; }
    halt
    launch
    ;;
stop)
    halt
    rm -rf "$DIR"
    log "stopped and removed"
    ;;
kill)
    pid=$(pid) || { log "not running"; exit 1; }
    kill -KILL "$pid"
    wait_gone "$pid"
    log "killed (pid $pid)"
    ;;
status)
    if pid=$(pid); then
        source "$DIR/ports"
        echo "$NODE running, pid $pid, amqp://guest:guest@127.0.0.1:$PORT/%2f"
    else
        echo "$NODE not running"
        exit 3
    fi
    ;;
*) usage ;;
esac
