"""The trace's set-up (the graph it makes is tested in test_export.py and, for every id, in
tests/model_defs/test_family.py)."""

import json
import subprocess
import sys

from deploytool.build import tracing


def test_the_exporter_modules_imported_before_the_traces_exist_and_are_what_a_trace_imports():
    """`load_exporter` leaves out a module it cannot import (a release moved it: the trace then
    imports what it needs itself), so this says when one went: each must import, and a trace in
    a fresh process must have imported each (else importing it first saves the children nothing)."""
    script = (
        "import json, sys, torch\n"
        "from deploytool.build import tracing\n"
        "before = set(sys.modules)\n"
        "tracing.trace(torch.nn.Conv2d(3, 3, 3, padding=1).eval(), torch.zeros(1, 3, 8, 8))\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    imported_by_a_trace = set(json.loads(done.stdout.splitlines()[-1]))
    assert set(tracing.EXPORTER_MODULES) <= imported_by_a_trace
