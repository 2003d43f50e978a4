"""Window helpers shared by the Swin-style families (SwinIR, HAT).

Everything here works on Python ints: the exported graph then holds constant reshape targets
and precomputed masks instead of the Shape/Gather/ScatterND arithmetic of the originals.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from model_defs.layers import static_shape


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * H/window * W/window, window * window, C)."""
    b, h, w, c = static_shape(x)
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b * (h // window) * (w // window), window * window, c)


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """(B * H/window * W/window, window * window, C) -> (B, H, W, C)."""
    num_windows, _, c = static_shape(windows)
    b = num_windows // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def relative_position_index(window: int) -> Tensor:
    """Index into a (2*window-1)^2 bias table for every pair of positions in a window (Swin)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


@functools.lru_cache(maxsize=32)
def _shifted_window_mask_array(h: int, w: int, window: int, shift: int) -> np.ndarray:
    region = np.zeros((h, w), dtype=np.float32)
    bounds = ((0, -window), (-window, -shift), (-shift, None))
    label = 0
    for top, bottom in bounds:
        for left, right in bounds:
            region[slice(top, bottom), slice(left, right)] = label
            label += 1
    windows = region.reshape(h // window, window, w // window, window).transpose(0, 2, 1, 3)
    windows = windows.reshape(-1, window * window)
    different = windows[:, None, :] != windows[:, :, None]
    # -100, not -inf: the originals use it, and it stays finite in FP16 softmax inputs.
    return np.where(different, -100.0, 0.0).astype(np.float32)


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> Tensor:
    """Attention mask (num_windows, window^2, window^2) of shifted windows on an h x w map.

    Built with numpy, so a traced graph receives it as one constant, computed once per shape.
    """
    return torch.from_numpy(_shifted_window_mask_array(h, w, window, shift))


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "reflect") -> Tensor:
    """Pad NCHW bottom/right to a multiple of `multiple`; a no-op (no graph node) when aligned."""
    _, _, h, w = static_shape(x)
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
