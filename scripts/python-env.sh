#!/usr/bin/env bash
# Creates a Python venv at target/pyenv with aio-pika (for the AMQP interop tests) and
# openapi-spec-validator (for the HTTP front's OpenAPI document) from PyPI, and prints the
# path of its python interpreter on the last line.
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
if ! "$PY" -c 'import openapi_spec_validator' >/dev/null 2>&1; then
    "$PY" -m pip install --quiet 'openapi-spec-validator>=0.7,<1' >&2
fi
"$PY" -c 'import aio_pika; print("python-env: aio-pika", aio_pika.__version__)' >&2
echo "$PY"
