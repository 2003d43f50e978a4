"""SwinIR: Image Restoration Using Swin Transformer.

Jingyun Liang, Jiezhang Cao, Guolei Sun, Kai Zhang, Luc Van Gool, Radu Timofte. ICCV Workshops 2021.
https://arxiv.org/abs/2108.10257 — official code: https://github.com/JingyunLiang/SwinIR (Apache-2.0).

An export-friendly re-implementation (our own code, same parameter and buffer names, so the
official checkpoints load with strict=True). Differences from the original that matter for
deployment, none of them numerical:
- shapes are Python ints, so a traced graph has static reshapes and no shape arithmetic;
- the shifted-window mask is computed once per input size, outside the blocks, and shared by
  all of them (the original recomputes it in every block when the size differs from img_size),
  from the last row's and the last column's masks (`windows.ShiftMasks`: the same softmax
  weights, two (tokens, tokens) constants);
- the per-block `attn_mask` buffers of the official files are kept only so checkpoints load;
  they describe the training resolution and are checked against our own computation on load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model_defs.family import Family, Original, spandrel_original, two_windows
from model_defs.layers import (
    Mlp,
    PatchNorm,
    PixelShuffleUpsample,
    init_transformer_weights,
    map_to_tokens,
    residual_conv,
    static_shape,
    tokens_to_map,
)
from model_defs.windows import (
    WindowAttention,
    pad_to_multiple,
    relative_position_index,
    shared_shift_mask,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

RGB_MEAN = (0.4488, 0.4371, 0.4040)
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")


class SwinWindowAttention(WindowAttention):
    """Window attention holding its own position index (the `relative_position_index` key)."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True, qk_scale: float | None = None):
        super().__init__(dim, window_size, num_heads, qkv_bias, qk_scale)
        self.register_buffer("relative_position_index", relative_position_index(window_size))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:  # type: ignore[override]
        return super().forward(x, self.relative_position_index, mask)


class SwinTransformerBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
    ):
        super().__init__()
        if min(input_resolution) <= window_size:
            # as in the original: a training patch no larger than one window is not partitioned
            shift_size, window_size = 0, min(input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SwinWindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if shift_size > 0:
            # Training-resolution mask kept for checkpoint compatibility; forward() uses the
            # mask for the actual input size, passed in by the model.
            h, w = input_resolution
            self.register_buffer("attn_mask", shifted_window_mask(h, w, window_size, shift_size).clone())
        else:
            self.attn_mask = None

    def forward(self, x: Tensor, size: tuple[int, int], mask: Tensor | None) -> Tensor:
        h, w = size
        b, _, c = static_shape(x)
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = window_partition(x, self.window_size)
        windows = self.attn(windows, mask if self.shift_size > 0 else None)
        x = window_reverse(windows, self.window_size, h, w)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + x.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class BasicLayer(nn.Module):
    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int, **block_kwargs):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                input_resolution,
                num_heads,
                window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                **block_kwargs,
            )
            for i in range(depth)
        )

    def forward(self, x: Tensor, size: tuple[int, int], mask: Tensor | None) -> Tensor:
        for block in self.blocks:
            x = block(x, size, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer Block: a group of Swin blocks, a conv, and a long skip."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int, resi_connection: str, **block_kwargs):
        super().__init__()
        self.residual_group = BasicLayer(dim, input_resolution, depth, num_heads, window_size, **block_kwargs)
        self.conv = residual_conv(dim, resi_connection)

    def forward(self, x: Tensor, size: tuple[int, int], mask: Tensor | None) -> Tensor:
        return map_to_tokens(self.conv(tokens_to_map(self.residual_group(x, size, mask), size))) + x


class SwinIR(nn.Module):
    """SwinIR for super-resolution (classical, lightweight, real-world), denoising and JPEG artifacts.

    Keyword names follow the official constructor so one hyperparameter table serves both.
    Input NCHW in [0, 1]; any size (reflect-padded to a window multiple, as the original does);
    output `upscale` times larger, unclamped.
    """

    def __init__(
        self,
        *,
        img_size: int = 64,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        upscale: int = 1,
        img_range: float = 1.0,
        upsampler: str = "",
        resi_connection: str = "1conv",
        num_feat: int = 64,
    ):
        super().__init__()
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, not {upsampler!r}")
        if upsampler == "nearest+conv" and upscale not in (2, 4, 8):
            raise ValueError(f"nearest+conv upsampling supports upscale 2, 4 or 8, not {upscale}")
        self.img_range = img_range
        self.upscale = upscale
        self.upsampler = upsampler
        self.window_size = window_size
        mean = RGB_MEAN if in_chans == 3 else (0.0,) * in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchNorm(embed_dim)
        resolution = (img_size, img_size)
        self.layers = nn.ModuleList(
            RSTB(
                embed_dim,
                resolution,
                depth,
                heads,
                window_size,
                resi_connection,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
            )
            for depth, heads in zip(depths, num_heads)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)

        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample = PixelShuffleUpsample(upscale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, upscale**2 * in_chans, 3, 1, 1), nn.PixelShuffle(upscale))
        elif upsampler == "nearest+conv":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            if upscale >= 4:
                self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            if upscale == 8:
                self.conv_up3 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        else:
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)
        self.apply(init_transformer_weights)

    def forward_features(self, x: Tensor) -> Tensor:
        _, _, h, w = static_shape(x)
        blocks = (block for layer in self.layers for block in layer.residual_group.blocks)
        mask = shared_shift_mask(blocks, x, self.window_size)
        tokens = self.patch_embed.norm(map_to_tokens(x))
        for layer in self.layers:
            tokens = layer(tokens, (h, w), mask)
        return tokens_to_map(self.norm(tokens), (h, w))

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = static_shape(x)
        x = pad_to_multiple(x, self.window_size)
        x = (x - self.mean) * self.img_range
        if self.upsampler == "":
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.forward_features(first)) + first)
        else:
            x = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(x)) + x
            x = self.reconstruct(x)
        x = x / self.img_range + self.mean
        return x[:, :, : h * self.upscale, : w * self.upscale]

    def reconstruct(self, x: Tensor) -> Tensor:
        if self.upsampler == "pixelshuffle":
            return self.conv_last(self.upsample(self.conv_before_upsample(x)))
        if self.upsampler == "pixelshuffledirect":
            return self.upsample(x)
        x = self.conv_before_upsample(x)
        for conv in (self.conv_up1, getattr(self, "conv_up2", None), getattr(self, "conv_up3", None)):
            if conv is not None:
                x = self.lrelu(conv(F.interpolate(x, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(x)))


def reconcile_arch(arch: dict[str, Any], state_dict: dict[str, Tensor]) -> dict[str, Any]:
    # cannot be deduced from the weights alone: the training patch size (img_size) only shows in
    # the shape of the stored masks, e.g. 48 for the DIV2K files and 64 for the DF2K ones.
    mask = state_dict.get("layers.0.residual_group.blocks.1.attn_mask")
    if mask is not None:
        window = arch.get("window_size", 7)
        arch["img_size"] = round(math.sqrt(mask.shape[0])) * window
    return arch


def tiny_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """The id's structure (upsampler, residual conv, window, range, channels, scale) at toy size."""
    return {**arch, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 2], "img_size": 2 * arch["window_size"]}


FAMILY = Family(
    name="swinir",
    display_name="SwinIR",
    model=SwinIR,
    original=Original("spandrel SwinIR", spandrel_original("SwinIR")),
    reconcile_arch=reconcile_arch,
    tiny_arch=tiny_arch,
    tiny_tile=two_windows,
)
