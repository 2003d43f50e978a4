"""Error measures shared by parity, the FP16 planner and evaluation."""

from __future__ import annotations

import math

import numpy as np


def psnr(reference: np.ndarray, candidate: np.ndarray, *, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over whole arrays: inf when identical, -inf when not finite."""
    mse = float(np.mean((np.asarray(reference, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)) ** 2))
    if mse == 0:
        return math.inf
    if not math.isfinite(mse):
        return -math.inf
    return 10 * math.log10(peak * peak / mse)
