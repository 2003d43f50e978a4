"""Full-size models end to end (slow: tens of seconds each on 2 CPU cores; CI runs them)."""

import pytest

from deploytool.build import export, registry
from deploytool.build.networks import WeightsSource
from deploytool.verify import parity

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model_id", ["swinir-m-x4", "swinir-s-x2", "hat-x4", "ipt-sr-x4", "dat-x4"])
def test_full_size_export_verifies(tmp_path, model_id):
    entry = registry.get(model_id)
    out = tmp_path / model_id
    manifest = export.export(
        export.ExportRequest(
            entry, WeightsSource(kind="random-init", seed=0), out, entry.tiling.tile if entry.tiling.fixed_tile else (64, 64), 1, calibration_count=2
        )
    )
    assert manifest.graph.nodes < manifest.graph.traced_nodes
    assert manifest.fp16.fp16_flop_share > 0.9
    report = parity.verify(out, backends=["torch", "ort", "ort-fp16"], synthetic_batches=1)
    assert report["passed"], parity.markdown(report)
