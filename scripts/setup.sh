#!/usr/bin/env bash
# Create .venv (once) and install deploytool with its test extras into it. Sourced by the
# other scripts; safe to run again (pip skips what is already there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Headless Chromium renders parity.html in the HTML-report browser test (required in CI).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    else
        echo "setup: the HTML-report browser test needs chromium (not on PATH; install it as root, e.g. apt-get install chromium)"
    fi
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test,client]"
# the Triton server's models run in their own environment (numpy 1.x): .venv-serve
bash scripts/setup_serve.sh
