#!/usr/bin/env bash
# Set up (if needed), lint (ruff) and run the whole test suite, slow full-size tests included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# lint and format first: a red lint fails in seconds, not after the suite
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# one pytest-xdist worker per core, at most 4: most test time is single-threaded Python (torch.export's
# tracing), and each worker makes its own session exports (a full-size one holds GBs while it runs);
# loadgroup keeps the tests of one xdist_group (the C++ build, one id's full-size export) on one worker
workers=$(nproc)
if ((workers > 4)); then workers=4; fi
# the slowest tests in the log: where CI's time goes, without another run
exec .venv/bin/python -m pytest -q -ra --durations=30 -n "$workers" --dist loadgroup "$@"
