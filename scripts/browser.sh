#!/usr/bin/env bash
# Makes sure a headless browser is installed for the console's browser test (Debian's
# `chromium` package; nothing is downloaded outside the package manager) and prints its path
# on the last line.
set -euo pipefail

BROWSER=/usr/bin/chromium
if [[ ! -x "$BROWSER" ]]; then
    if [[ $(id -u) -eq 0 ]]; then
        SUDO=""
    else
        SUDO="sudo"
    fi
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >&2
fi
"$BROWSER" --version >&2
echo "$BROWSER"
