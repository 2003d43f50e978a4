"""scripts/gpu_baseline.py: its measurements, smoke-tested on CPU (its real run needs a CUDA GPU)."""

import pytest
import torch

from deploytool.build.networks import build_def
from tests.helpers import load_script, tiny_entry, tiny_state_dict


@pytest.fixture(scope="module")
def baseline():
    return load_script("gpu_baseline")


def test_half_precision_drift_and_latencies_are_measured(baseline):
    entry = tiny_entry("hat-s-x2")
    model = build_def(entry, tiny_state_dict(entry))
    batch = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = baseline.measure(model, batch, runs=1, compile_fp16=False)
    assert set(result["parity"]) == {"FP16", "BF16"}
    fp16, bf16 = result["parity"]["FP16"], result["parity"]["BF16"]
    assert fp16["finite"] and 0 < fp16["max_abs"] < bf16["max_abs"] < 0.5  # BF16 keeps 8 mantissa bits, FP16 11
    assert set(result["latency_s"]) == {"eager FP32", "eager FP16", "eager BF16"}
    assert result["speed_vs_eager_fp32"]["eager FP32"] == 1.0
    assert next(model.parameters()).dtype == torch.float32  # handed back in FP32


def test_drift_reports_overflow_instead_of_a_number(baseline):
    reference = torch.zeros(1, 3, 4, 4)
    broken = torch.full((1, 3, 4, 4), float("inf"), dtype=torch.float16)
    assert baseline.drift(reference, broken) == {"max_abs": float("inf"), "mean_abs": float("inf"), "psnr": float("-inf"), "finite": False}


def test_without_a_gpu_it_says_so_in_one_line(baseline, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    assert baseline.main(["--ids", "hat-s-x2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: no CUDA GPU visible to torch; this script measures what a GPU offers (use --device cpu only to smoke-test it)"
    )
