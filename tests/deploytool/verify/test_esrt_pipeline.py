"""ESRT through the pipeline: static export without Col2Im, parity, the real checkpoint."""

from pathlib import Path

import onnx
import pytest

from deploytool.build import export, registry
from deploytool.build.checkpoints import load_state_dict_file
from deploytool.build.networks import WeightsSource
from deploytool.runtime.manifest import FP16_FILE, FP32_FILE
from deploytool.verify import parity
from tests.helpers import run_trace_cache

WEIGHTS = Path(__file__).resolve().parents[4] / "shared" / "weights"


def export_esrt(tmp_path, model_id, source, tile=(16, 16)):
    entry = registry.get(model_id)
    out = tmp_path / model_id
    manifest = export.export(export.ExportRequest(entry, source, out, tile, 1, calibration_count=2, trace_cache=run_trace_cache()))
    return out, manifest


def test_unfold_and_fold_become_static_slices(tmp_path):
    model_id = "esrt-x3"
    out, manifest = export_esrt(tmp_path, model_id, WeightsSource(kind="random-init", seed=1))
    for name in (FP32_FILE, FP16_FILE):
        model = onnx.load(str(out / name))
        assert not {n.op_type for n in model.graph.node} & {"Col2Im", "Shape", "ScatterND"}
        assert export.static_graph_violations(model) == []
    report = parity.verify(out, backends=["torch", "ort", "ort-fp16"], synthetic_batches=1)
    assert report["passed"], parity.markdown(report)


def test_tile_must_be_a_multiple_of_four(tmp_path):
    from deploytool.errors import DeployError

    with pytest.raises(DeployError, match="multiple of 4"):
        export_esrt(tmp_path, "esrt-x2", WeightsSource(kind="random-init", seed=0), tile=(18, 16))


@pytest.mark.parametrize("epoch", [10, 20])
def test_real_checkpoints_export_and_verify(tmp_path, epoch):
    path = WEIGHTS / f"esrt_x2_partial_epoch{epoch}.pth"
    if not path.is_file():
        pytest.skip("../shared/weights is not present")
    loaded = load_state_dict_file(path)
    source = WeightsSource(kind="checkpoint", path=str(path), sha256=loaded.sha256, wrapper_key=loaded.wrapper_key)
    out, manifest = export_esrt(tmp_path, "esrt-x2", source, tile=(32, 32))
    assert manifest.source.sha256 == loaded.sha256
    report = parity.verify(out, backends=["torch", "ort", "ort-fp16"], synthetic_batches=1)
    assert report["passed"], parity.markdown(report)
