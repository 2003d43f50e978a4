"""Window helpers shared by the Swin-style families (SwinIR, HAT; DAT attends with
`biased_attention` and masks with `ShiftMasks`).

Everything here works on Python ints: the exported graph then holds constant reshape targets
and precomputed masks instead of the Shape/Gather/ScatterND arithmetic of the originals.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
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


def relative_position_index(window: int, window_w: int | None = None) -> Tensor:
    """Index into a (2*window-1)^2 bias table for every pair of positions in a window (Swin).

    With `window_w`, the window is `window` rows by `window_w` columns and the table
    (2*window-1) x (2*window_w-1), row-major (DAT's rectangular windows).
    """
    window_w = window if window_w is None else window_w
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window_w), indexing="ij"))
    coords = coords.flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (relative[:, :, 0] + window - 1) * (2 * window_w - 1) + relative[:, :, 1] + window_w - 1


def shifted_window_mask(h: int, w: int, window: int, shift: int, window_w: int | None = None, shift_w: int | None = None) -> Tensor:
    """The originals' attention mask (num_windows, window^2, window^2) of shifted windows on h x w.

    Kept for the per-block `attn_mask` buffers of official checkpoints; graphs use `ShiftMasks`.
    With `window_w`/`shift_w`, windows are `window` x `window_w` and shifted by `shift` rows and
    `shift_w` columns (DAT's rectangular windows).
    """
    window_w, shift_w = (window, shift) if window_w is None else (window_w, shift_w)
    rows, cols = _axis_mask(h, window, shift, axis=0, across=window_w), _axis_mask(w, window_w, shift_w, axis=1, across=window)
    different = (rows[:, None] + cols[None, :]) < 0
    tokens = window * window_w
    return torch.from_numpy(np.where(different, -100.0, 0.0).astype(np.float32).reshape(-1, tokens, tokens))


def _bands(size: int, window: int, shift: int) -> np.ndarray:
    """(windows along an axis, window): which of the three regions the cyclic shift glued
    together each position of the shifted map comes from."""
    band = np.zeros(size, dtype=np.int64)
    band[size - window :] = 1
    band[size - shift :] = 2
    return band.reshape(size // window, window)


@functools.lru_cache(maxsize=64)
def _axis_mask(size: int, window: int, shift: int, axis: int, across: int | None = None) -> np.ndarray:
    """(windows along `axis`, tokens, tokens) for windows `window` long on that axis and `across`
    (default: `window`) on the other; tokens in row-major order."""
    band = _bands(size, window, shift)
    across = window if across is None else across
    token_band = np.repeat(band, across, axis=1) if axis == 0 else np.tile(band, (1, across))
    different = token_band[:, None, :] != token_band[:, :, None]
    return np.where(different, -100.0, 0.0).astype(np.float32)


def last_window_masks(window: int, window_w: int | None = None) -> tuple[Tensor, Tensor]:
    """(row mask, column mask), each (tokens, tokens): the masks of the last row and of the last
    column of shifted windows, the only windows that span two bands (`_bands`); the same at any map
    size. Windows `window` rows by `window_w` columns (default: square), shifted by half a window."""
    window_w = window if window_w is None else window_w
    rows = _axis_mask(window, window, window // 2, axis=0, across=window_w)[0]
    cols = _axis_mask(window_w, window_w, window_w // 2, axis=1, across=window)[0]
    return torch.from_numpy(rows.copy()), torch.from_numpy(cols.copy())


class ShiftMasks(NamedTuple):
    """The shifted-window mask as two (tokens, tokens) masks (`last_window_masks`).

    Two tokens of a shifted window may not attend to each other when the cyclic shift brought
    them from different row bands or different column bands, and only the last row (column) of
    windows mixes row (column) bands. The original adds one -100 mask (windows, tokens, tokens);
    where both bands differ these give -200, which softmax turns into the same zero weight
    (exp(-100) is already below FP32 resolution next to an unmasked logit).
    """

    last_row: Tensor
    last_col: Tensor

    def to(self, like: Tensor) -> ShiftMasks:
        return ShiftMasks(*(mask.to(device=like.device, dtype=like.dtype) for mask in self))

    def window_mask(self, images: int, rows: int, cols: int) -> Tensor:
        """(images * rows * cols, 1, tokens, tokens): each window's mask on a grid of rows x cols
        windows per image, windows in row-major order, for `biased_attention`. Two Where nodes
        on small boolean flags make it from the two masks, so the exporter's fold limit keeps it
        computed (ONNX shape inference sizes their broadcast): one per model, shared by every
        shifted block, the same nodes at any batch (the flags' shape follows it), as the FP16
        planner's batch-1 calibration graph needs."""
        tokens = static_shape(self.last_row)[-1]
        row_flags, col_flags = np.zeros((images, rows, 1, 1, 1), dtype=bool), np.zeros((1, 1, cols, 1, 1), dtype=bool)
        row_flags[:, -1], col_flags[:, :, -1] = True, True
        in_last_row, in_last_col = (torch.from_numpy(flags).to(self.last_row.device) for flags in (row_flags, col_flags))
        mask = torch.where(in_last_row, self.last_row, 0.0) + torch.where(in_last_col, self.last_col, 0.0)
        return mask.reshape(images * rows * cols, 1, tokens, tokens)


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "reflect") -> Tensor:
    """Pad NCHW bottom/right to a multiple of `multiple`; a no-op (no graph node) when aligned."""
    _, _, h, w = static_shape(x)
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def qkv_heads(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Fused (windows, tokens, 3C) projections -> q, k, v, each (windows, heads, tokens, C / heads).

    One reshape and one transpose for all three (the originals' layout of the fused weight).
    """
    windows, tokens, channels = static_shape(qkv)
    qkv = qkv.view(windows, tokens, 3, heads, channels // (3 * heads)).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(windows, tokens, C) -> (windows, heads, tokens, C / heads)."""
    windows, tokens, channels = static_shape(x)
    return x.view(windows, tokens, heads, channels // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(windows, heads, tokens, d) -> (windows, tokens, heads * d)."""
    windows, heads, tokens, d = static_shape(x)
    return x.transpose(1, 2).reshape(windows, tokens, heads * d)


def biased_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T * scale + bias [+ shifted-window mask]) v over (windows, heads, tokens, d).

    `bias` is (heads, queries, keys), shared by all windows; `mask` (windows, 1, queries, keys)
    gives each window its own (`ShiftMasks.window_mask`), shared by every head and every shifted
    block. Both are added to the 4-D scores by a broadcast: OpenVINO's CPU plugin runs MatMul,
    the Adds, Softmax and MatMul as one attention kernel, its scores never written out, only when
    nothing reshapes the scores between the products (README: Attention in one kernel), and no
    constant is the size of every window's bias for every head of every block."""
    attn = (q * scale) @ k.transpose(-2, -1) + bias.unsqueeze(0)
    if mask is not None:
        attn = attn + mask
    return attn.softmax(dim=-1) @ v


def overlapping_windows(x: Tensor, window: int, overlap_window: int) -> Tensor:
    """(B, H, W, C) -> (B * H/window * W/window, overlap_window^2, C), windows grown by zeros.

    The same windows as `nn.Unfold(overlap_window, stride=window, padding=margin)` (HAT's OCAB),
    built from one Pad, static slices and reshapes: the unfold traces into a large Gather graph.
    Each grown window is its own window plus `overlap_window - window` rows/columns borrowed
    from the next one, once the map is shifted by the margin.
    """
    b, h, w, c = static_shape(x)
    extra = overlap_window - window
    margin = extra // 2
    if extra % 2 or not 0 <= extra <= window:
        raise ValueError(f"overlap window {overlap_window} must exceed window {window} by an even amount up to {window}")
    rows, cols = h // window, w // window
    x = F.pad(x, (0, 0, margin, window - margin, margin, window - margin))
    x = x.view(b, rows + 1, window, w + window, c)
    x = torch.cat((x[:, :rows], x[:, 1:, :extra]), dim=2)
    x = x.view(b, rows, overlap_window, cols + 1, window, c)
    x = torch.cat((x[:, :, :, :cols], x[:, :, :, 1:, :extra]), dim=4)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b * rows * cols, overlap_window * overlap_window, c)


def shared_shift_mask(blocks: Iterable[nn.Module], x: Tensor, window: int) -> Tensor | None:
    """The one window mask every shifted block of a model adds on the (B, C, H, W) map `x`
    (`ShiftMasks.window_mask`); None if no block shifts."""
    if not any(block.shift_size for block in blocks):
        return None
    images, _, h, w = static_shape(x)
    return ShiftMasks(*last_window_masks(window)).to(x).window_mask(images, h // window, w // window)


def gather_relative_bias(table: Tensor, index: Tensor) -> Tensor:
    """(heads, *index.shape) bias from a (entries, heads) table: one Gather on the head-major table."""
    heads = int(table.shape[1])
    return table.t()[:, index.reshape(-1)].reshape(heads, *static_shape(index))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias (Swin).

    Keys as the originals: `relative_position_bias_table`, `qkv`, `proj`. The position index
    is passed in: HAT shares one for the whole model, SwinIR keeps one per block.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True, qk_scale: float | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, bias_index: Tensor, mask: Tensor | None) -> Tensor:
        """x: (windows, tokens, C), windows in row-major order per image."""
        q, k, v = qkv_heads(self.qkv(x), self.num_heads)
        bias = gather_relative_bias(self.relative_position_bias_table, bias_index)
        return self.proj(merge_heads(biased_attention(q, k, v, self.scale, bias, mask)))
