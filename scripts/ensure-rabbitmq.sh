#!/usr/bin/env bash
# Makes sure a RabbitMQ broker accepts AMQP connections on 127.0.0.1:5672.
#
# Order: already listening -> done; `rabbitmq-server` installed -> start it detached;
# otherwise apt-get install rabbitmq-server, then start it. Waits up to ~60 s for the AMQP
# port, and exits non-zero, loudly, if no broker can be had (the AMQP tests must fail, never
# skip, in that case).
set -euo pipefail

HOST=127.0.0.1
PORT=${RABBITMQ_PORT:-5672}
WAIT=${RABBITMQ_WAIT_SECONDS:-60}

listening() {
    # An AMQP broker answers the protocol header with its own; a bare TCP accept is not enough
    # while the node is still booting, so read the reply.
    timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$PORT && printf 'AMQP\x00\x00\x09\x01' >&3 && head -c 4 <&3" 2>/dev/null | grep -q .
}

if listening; then
    echo "ensure-rabbitmq: broker already accepting AMQP connections on $HOST:$PORT"
    exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "ensure-rabbitmq: rabbitmq-server not installed; installing it with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rabbitmq-server >/dev/null
fi

echo "ensure-rabbitmq: starting rabbitmq-server -detached"
# Debian's package may try to start it through the init system; starting a node that is
# already booting fails harmlessly, and the wait below decides.
rabbitmq-server -detached || true

for ((i = 0; i < WAIT; i++)); do
    if listening; then
        echo "ensure-rabbitmq: broker up after ${i}s"
        exit 0
    fi
    sleep 1
done

echo "ensure-rabbitmq: ERROR: no RabbitMQ broker accepts AMQP connections on $HOST:$PORT after ${WAIT}s" >&2
exit 1
