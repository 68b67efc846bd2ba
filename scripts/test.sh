#!/usr/bin/env bash
# The whole test suite, from a fresh machine: `bash scripts/test.sh`.
#
# 1. makes sure a RabbitMQ broker is reachable (starts or installs one; fails loudly if it
#    cannot: the AMQP tests never skip);
# 2. makes a Python venv with aio-pika, the reference peer for the interop tests, and
#    openapi-spec-validator; installs headless Chromium for the console's browser test;
# 3. runs every Rust test in the workspace (unit, wire, API, end to end, trybuild, doctests),
#    then the broker-restart reliability test alone;
# 4. runs the main example exactly as a newcomer does, and the benchmark in smoke mode.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-rabbitmq.sh
RPC_TEST_PYTHON=$(bash scripts/python-env.sh | tail -n 1)
export RPC_TEST_PYTHON
# Headless Chromium for the HTTP console's browser test (tests/http_console.rs).
RPC_TEST_BROWSER=$(bash scripts/browser.sh | tail -n 1)
export RPC_TEST_BROWSER
export RABBITMQ_URL=${RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
# Restarts the broker under load, so it runs alone, after everything else that uses it
# (it is `test = false` in Cargo.toml, so the line above does not run it).
cargo test --locked --test reliability_broker_restart -- --test-threads=1
cargo run --locked --example calculator
# The benchmark in smoke mode: checks that it runs, never how fast (numbers: BENCHMARKS.md).
cargo run --locked -p rpc-bench -- all --quick
