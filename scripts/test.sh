#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, slow full-size tests included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -ra "$@"
