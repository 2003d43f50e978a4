import math

import numpy as np
import pytest

from deploytool.build.metrics import psnr


def test_psnr_known_values():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (40, 40))
    assert psnr(a, a, peak=255.0) == math.inf
    assert psnr(a, a + 1.0, peak=255.0) == pytest.approx(20 * np.log10(255.0))
    assert psnr(a / 255, a / 255 + 0.1) == pytest.approx(20.0)


def test_psnr_of_non_finite_outputs_is_minus_infinity():
    a = np.zeros((4, 4), np.float32)
    for bad in (np.inf, np.nan):
        b = a.copy()
        b[1, 2] = bad
        assert psnr(a, b) == -math.inf
