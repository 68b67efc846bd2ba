#!/usr/bin/env bash
# Creates a Python venv at target/pyenv with aio-pika from PyPI (for the AMQP interop tests)
# and prints the path of its python interpreter on the last line.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/target/pyenv"
PY="$VENV/bin/python"

if [[ ! -x "$PY" ]]; then
    python3 -m venv "$VENV" >&2
fi
if ! "$PY" -c 'import aio_pika' >/dev/null 2>&1; then
    "$PY" -m pip install --quiet 'aio-pika>=9,<11' >&2
fi
"$PY" -c 'import aio_pika; print("python-env: aio-pika", aio_pika.__version__)' >&2
echo "$PY"
