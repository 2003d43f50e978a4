"""scripts/bf16_tolerance.py: every row measured against the definition on a tiny export."""

import math

import onnx
import pytest

from deploytool.build import bf16
from deploytool.build.networks import build_def, export_weights
from deploytool.runtime.manifest import BF16_FILE, FP32_FILE, read_manifest
from tests.helpers import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("bf16_tolerance")


def test_every_row_is_measured_against_the_fp32_definition(script, tiny_exports):
    out = tiny_exports.folder("swinir-s-x2")
    entry, _, state = export_weights(read_manifest(out))
    result = script.measure(out, build_def(entry, state).eval(), batches=2)
    rows = result["rows"]
    assert list(rows) == list(script.ROWS) and result["batches"] == 2
    for row in rows.values():
        assert 0 < row["mean_abs"] <= row["max_abs"] < 0.1 and 30 < row["min_psnr"] < math.inf
    # the plan row is the shipped plan: all BF16 where it keeps no node, else closer to FP32 than none
    islands = bf16.fp32_islands(onnx.load(str(out / BF16_FILE)), onnx.load(str(out / FP32_FILE)))
    assert (rows["plan"] == rows["whole-graph"]) == (not islands)
    assert rows["plan"]["max_abs"] <= result["tolerances"]["bf16_max_abs"]
    text = script.markdown([result])
    assert f"| swinir-s-x2 | {'x'.join(map(str, result['input_shape']))} | plan |" in text and "bf16_flop_share" in text
