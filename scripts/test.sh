#!/usr/bin/env bash
# Set up (if needed), lint (ruff) and run the whole test suite, slow full-size tests included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# lint and format first: a red lint fails in seconds, not after the suite
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# the slowest tests in the log: where CI's time goes, without another run
exec .venv/bin/python -m pytest -q -ra --durations=30 "$@"
