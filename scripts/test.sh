#!/usr/bin/env bash
# Set up (if needed), lint (ruff) and run the whole test suite, slow full-size tests included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# lint and format first: a red lint fails in seconds, not after the suite
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# one pytest-xdist worker per core, at most 4: most test time is single-threaded Python (torch.export's
# tracing), and every worker makes its own tiny exports and may hold a full-size one (GBs) at once.
# loadgroup runs each xdist_group (the C++ build, one id's full-size export) on one worker where
# pytest keeps the groups (9.2 drops them: pytest-xdist issue 1386; file locks share both either way)
workers=$(nproc)
if ((workers > 4)); then workers=4; fi
# the slowest tests in the log: where CI's time goes, without another run
exec .venv/bin/python -m pytest -q -ra --durations=30 -n "$workers" --dist loadgroup "$@"
