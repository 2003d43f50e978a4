#!/usr/bin/env bash
# Create .venv (once) and install deploytool with its test extras into it. Sourced by the
# other scripts; safe to run again (pip skips what is already there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Debian packages the tests need, installed in one apt-get run when root: headless Chromium renders
# parity.html in the HTML-report browser test; the C++ runtime (cpp/) needs a compiler, CMake, its
# JSON/PNG/JPEG/zlib headers and GoogleTest. All are required in CI.
CPP_PACKAGES=(cmake make g++ nlohmann-json3-dev libpng-dev libjpeg-dev zlib1g-dev libgtest-dev)
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if command -v dpkg-query >/dev/null 2>&1; then
    for package in "${CPP_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "setup: missing ${missing[*]} (the HTML-report browser test and the C++ runtime's tests need them; install as root, e.g. apt-get install ${missing[*]})"
    fi
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test,client]"
# the Triton server's models run in their own environment (numpy 1.x): .venv-serve
bash scripts/setup_serve.sh
