"""Full-size models end to end (slow: tens of seconds each on 2 CPU cores; CI runs them)."""

import pytest

from deploytool.verify import parity
from tests.helpers import full_size_id

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model_id", [full_size_id(i) for i in ["swinir-m-x4", "swinir-s-x2", "hat-x4", "ipt-sr-x4", "dat-x4"]])
def test_full_size_export_verifies(tmp_path, full_size_exports, model_id):
    manifest = full_size_exports.manifest(model_id)
    out = full_size_exports.copy(model_id, tmp_path / model_id)  # verify writes its reports into the export
    assert manifest.graph.nodes < manifest.graph.traced_nodes
    assert manifest.fp16.fp16_flop_share > 0.9
    report = parity.verify(out, backends=["torch", "ort", "ort-fp16"], synthetic_batches=1)
    assert report["passed"], parity.markdown(report)
