"""Suite-wide fixtures: the session's shared tiny exports; and a check that every manifest.json
any test writes keeps the README's contract.

The writer already validates against the JSON Schema (`deploytool.runtime.manifest.validate`), so
validating again with the same file could not fail. `contract_violations` is written by hand
from the README's table ("The export folder contract") and checks what the schema cannot say:
how the fields relate to each other.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from deploytool.runtime.backends.onnxruntime import THREADS_VARIABLE
from tests.helpers import RUN_TRACE_CACHE, FullSizeExports, TinyExports, contract_violations

_checked: set[Path] = set()
# the shared exports' folders in the run's shared root (`_shared_root`)
TINY_EXPORTS, FULL_SIZE_EXPORTS = "tiny-exports", "full-size-exports"


def pytest_configure(config):
    """Under pytest-xdist (each worker a process), torch's and ONNX Runtime's intra-op threads
    share the cores out between the workers: every worker at their default, one thread per core,
    oversubscribes them (ONNX Runtime's threads spin between ops on the cores the other worker
    computes on: model_defs/test_family.py, two workers on two cores, took 433 s at the default,
    399 s with a thread each, and 388 s with the default's threads kept from spinning; the
    export's ONNX Runtime stages 156 s, 115 s, 115 s). The variable reaches the processes the
    tests start too (the CLI's, a server's)."""
    _own_trace_cache()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        share = max(1, len(os.sched_getaffinity(0)) // workers)
        torch.set_num_threads(share)
        os.environ.setdefault(THREADS_VARIABLE, str(share))


def _own_trace_cache() -> None:
    """The exports in the tests (the CLI's, the processes they start, and the helpers' through
    `tests.helpers.run_trace_cache`) use a trace cache of this run's own, never the one in the
    user's home, whose entries an earlier tree made. Under pytest-xdist the workers share the
    controller's: its configure runs before it starts them, and they inherit its environment."""
    folder = os.environ.get(RUN_TRACE_CACHE) or tempfile.mkdtemp(prefix="deploytool-test-traces-")
    os.environ[RUN_TRACE_CACHE] = os.environ["DEPLOYTOOL_TRACE_CACHE"] = folder


def pytest_unconfigure(config):
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller's, which its workers used
        shutil.rmtree(os.environ.pop(RUN_TRACE_CACHE, ""), ignore_errors=True)


def _shared_root(tmp_path_factory) -> Path:
    """A folder the pytest-xdist workers of one run share (the parent of their own base
    temporaries); without xdist, this session's base temporary."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _manifests_under(folder: Path) -> list[Path]:
    """Every manifest.json below `folder`, except in hidden folders: an export is staged in one
    (`.export-*`) that another pytest-xdist worker's export empties and removes while this walks
    (rglob raised on the vanished folder; os.walk skips what vanishes)."""
    found = []
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(root) / name for name in files if name == "manifest.json"]
    return found


def _new_manifests(tmp_path_factory) -> list[Path]:
    folders = [tmp_path_factory.getbasetemp(), *(_shared_root(tmp_path_factory) / name for name in (TINY_EXPORTS, FULL_SIZE_EXPORTS))]
    # without xdist the shared folders lie inside the base temporary: each manifest once
    return list(dict.fromkeys(path for folder in folders for path in _manifests_under(folder) if path not in _checked))


def _check(paths: list[Path]) -> None:
    for path in paths:
        _checked.add(path)
        problems = contract_violations(json.loads(path.read_text()))
        assert not problems, f"{path} breaks the export folder contract: {problems[:3]}"


@pytest.fixture(autouse=True)
def manifests_keep_the_contract(request, tmp_path_factory):
    """Before each test, check the manifests its wider-scoped fixtures wrote (they run before
    this fixture, and are never tampered with); after it, the manifests the test wrote, except
    in a test that tampers with them on purpose."""
    _check(_new_manifests(tmp_path_factory))
    yield
    written = _new_manifests(tmp_path_factory)
    if request.node.get_closest_marker("tampered_manifests") is not None:
        _checked.update(written)
    else:
        _check(written)


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory):
    """Every test that only needs "the tiny export of ID" shares one per run (see TinyExports):
    under pytest-xdist in the folder all workers share."""
    exports = TinyExports(_shared_root(tmp_path_factory) / TINY_EXPORTS)
    yield exports
    changed = exports.changed()
    assert not changed, f"a test wrote into the shared tiny exports of {changed}: write into tiny_exports.copy(...) instead"


@pytest.fixture(scope="session")
def full_size_exports(tmp_path_factory):
    """The full-size exports (see FullSizeExports), one per id, made once per run: under
    pytest-xdist in the folder all workers share."""
    exports = FullSizeExports(_shared_root(tmp_path_factory) / FULL_SIZE_EXPORTS)
    yield exports
    changed = exports.changed()
    assert not changed, f"a test wrote into the shared full-size exports of {changed}: write into full_size_exports.copy(...) instead"
