"""HAT: Activating More Pixels in Image Super-Resolution Transformer.

Xiangyu Chen, Xintao Wang, Jiantao Zhou, Yu Qiao, Chao Dong. CVPR 2023.
https://arxiv.org/abs/2205.04437 — official code: https://github.com/XPixelGroup/HAT (Apache-2.0).

An export-friendly re-implementation (our own code, same parameter and buffer names, so the
official checkpoints load with strict=True). Differences from the original that matter for
deployment, none of them numerical:
- shapes are Python ints, so a traced graph has static reshapes and no shape arithmetic;
- the shifted-window mask is built once per forward from the last row's and the last column's
  masks (`windows.ShiftMasks`) and shared by every shifted block, as the original's one
  (windows, 256, 256) mask per forward;
- the overlapping cross-attention (OCAB) forms its grown key/value windows with one Pad and
  static slices instead of `nn.Unfold`, whose export is a large Gather graph;
- relative-position biases are gathered from each block's small table through one shared index,
  so an export that keeps them unfolded stays as small as the weights. The OCA index of the
  official files holds negative entries (it relies on Python-style wrap-around); the graph uses
  the equivalent non-negative index, since not every runtime wraps negative Gather indices;
- the `relative_position_index_SA/OCA` buffers of the official files are kept so checkpoints load
  strictly, and checked against our own computation on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from model_defs.family import Family, Original, spandrel_original, two_windows
from model_defs.layers import (
    Mlp,
    PatchNorm,
    PixelShuffleUpsample,
    init_transformer_weights,
    map_to_tokens,
    static_shape,
    tokens_to_map,
)
from model_defs.windows import (
    WindowAttention,
    biased_attention,
    gather_relative_bias,
    merge_heads,
    overlapping_windows,
    pad_to_multiple,
    relative_position_index,
    shared_shift_mask,
    split_heads,
    window_partition,
    window_reverse,
)

RGB_MEAN = (0.4488, 0.4371, 0.4040)


class ChannelAttention(nn.Module):
    """RCAN channel attention: global average, squeeze, excite, rescale (keys `attention.1/3`)."""

    def __init__(self, num_feat: int, squeeze_factor: int):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, num_feat // squeeze_factor, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel attention block: the convolution branch that runs beside window attention."""

    def __init__(self, num_feat: int, compress_ratio: int, squeeze_factor: int):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.cab(x)


class HAB(nn.Module):
    """Hybrid attention block: (shifted) window attention plus a scaled channel-attention conv branch."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        shift_size: int,
        compress_ratio: int,
        squeeze_factor: int,
        conv_scale: float,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
    ):
        super().__init__()
        if min(input_resolution) <= window_size:
            # as in the original: a training patch no larger than one window is not partitioned
            shift_size, window_size = 0, min(input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        self.conv_scale = conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, size: tuple[int, int], bias_index: Tensor, mask: Tensor | None) -> Tensor:
        h, w = size
        b, _, c = static_shape(x)
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        conv_x = self.conv_block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, h * w, c)
        shift = self.shift_size
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = self.attn(window_partition(x, self.window_size), bias_index, mask if shift else None)
        x = window_reverse(windows, self.window_size, h, w)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = shortcut + x.reshape(b, h * w, c) + conv_x * self.conv_scale
        return x + self.mlp(self.norm2(x))


class OCAB(nn.Module):
    """Overlapping cross-attention: window queries attend to keys/values of a grown window."""

    def __init__(
        self,
        dim: int,
        window_size: int,
        overlap_ratio: float,
        num_heads: int,
        qkv_bias: bool,
        qk_scale: float | None,
        mlp_ratio: float,
    ):
        super().__init__()
        self.window_size = window_size
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((window_size + self.overlap_win_size - 1) ** 2, num_heads))
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, size: tuple[int, int], bias_index: Tensor) -> Tensor:
        h, w = size
        b, _, c = static_shape(x)
        shortcut = x
        qkv = self.qkv(self.norm1(x)).view(b, h, w, 3 * c)
        q = window_partition(qkv[..., :c], self.window_size)
        kv = overlapping_windows(qkv[..., c:], self.window_size, self.overlap_win_size)
        k, v = kv[..., :c], kv[..., c:]
        heads = self.num_heads
        bias = gather_relative_bias(self.relative_position_bias_table, bias_index)
        out = biased_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), self.scale, bias)
        x = window_reverse(merge_heads(out), self.window_size, h, w).reshape(b, h * w, c)
        x = self.proj(x) + shortcut
        return x + self.mlp(self.norm2(x))


class AttenBlocks(nn.Module):
    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int, overlap_ratio: float, **block_kwargs):
        super().__init__()
        self.blocks = nn.ModuleList(
            HAB(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, **block_kwargs) for i in range(depth)
        )
        self.overlap_attn = OCAB(
            dim,
            window_size,
            overlap_ratio,
            num_heads,
            block_kwargs["qkv_bias"],
            block_kwargs["qk_scale"],
            block_kwargs["mlp_ratio"],
        )

    def forward(self, x: Tensor, size: tuple[int, int], context: AttentionContext) -> Tensor:
        for block in self.blocks:
            x = block(x, size, context.sa_index, context.mask)
        return self.overlap_attn(x, size, context.oca_index)


class RHAG(nn.Module):
    """Residual hybrid attention group: attention blocks, a conv, and a long skip."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        overlap_ratio: float,
        resi_connection: str,
        **block_kwargs,
    ):
        super().__init__()
        self.residual_group = AttenBlocks(dim, input_resolution, depth, num_heads, window_size, overlap_ratio, **block_kwargs)
        if resi_connection == "1conv":
            self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        elif resi_connection == "identity":
            self.conv = nn.Identity()
        else:
            raise ValueError(f"resi_connection must be '1conv' or 'identity', not {resi_connection!r}")

    def forward(self, x: Tensor, size: tuple[int, int], context: AttentionContext) -> Tensor:
        return map_to_tokens(self.conv(tokens_to_map(self.residual_group(x, size, context), size))) + x


class AttentionContext(NamedTuple):
    """What every block of one forward shares: the bias indices and the shifted-window mask."""

    sa_index: Tensor
    oca_index: Tensor
    mask: Tensor | None


def overlap_relative_position_index(window: int, overlap_window: int) -> Tensor:
    """Official OCA index (window^2, overlap_window^2); entries may be negative (wrap-around)."""

    def coords(size: int) -> Tensor:
        return torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")).flatten(1)

    relative = (coords(overlap_window)[:, None, :] - coords(window)[:, :, None]).permute(1, 2, 0)
    relative = relative + (window - overlap_window + 1)
    return relative[:, :, 0] * (window + overlap_window - 1) + relative[:, :, 1]


class HAT(nn.Module):
    """Hybrid Attention Transformer for super-resolution (HAT-S, HAT, HAT-L, Real-HAT-GAN).

    Keyword names follow the official constructor so one hyperparameter table serves both.
    Input NCHW in [0, 1]; any size (reflect-padded to a window multiple); output `upscale`
    times larger, unclamped.
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
        compress_ratio: int = 3,
        squeeze_factor: int = 30,
        conv_scale: float = 0.01,
        overlap_ratio: float = 0.5,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        upscale: int = 1,
        img_range: float = 1.0,
        upsampler: str = "pixelshuffle",
        resi_connection: str = "1conv",
        num_feat: int = 64,
    ):
        super().__init__()
        if upsampler != "pixelshuffle":
            raise ValueError(f"HAT's released models all use upsampler 'pixelshuffle', not {upsampler!r}")
        self.window_size = window_size
        self.img_range = img_range
        self.upscale = upscale
        mean = RGB_MEAN if in_chans == 3 else (0.0,)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        overlap_window = int(window_size * overlap_ratio) + window_size
        self.register_buffer("relative_position_index_SA", relative_position_index(window_size))
        self.register_buffer("relative_position_index_OCA", overlap_relative_position_index(window_size, overlap_window))
        # What the graph gathers with: int32 (half the bytes) and, for OCA, without negative entries.
        oca_entries = (window_size + overlap_window - 1) ** 2
        self.register_buffer("sa_gather_index", self.relative_position_index_SA.int(), persistent=False)
        self.register_buffer("oca_gather_index", (self.relative_position_index_OCA % oca_entries).int(), persistent=False)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchNorm(embed_dim)
        self.layers = nn.ModuleList(
            RHAG(
                embed_dim,
                (img_size, img_size),
                depth,
                heads,
                window_size,
                overlap_ratio,
                resi_connection,
                compress_ratio=compress_ratio,
                squeeze_factor=squeeze_factor,
                conv_scale=conv_scale,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
            )
            for depth, heads in zip(depths, num_heads)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_connection == "1conv" else nn.Identity()
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = PixelShuffleUpsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        self.apply(init_transformer_weights)

    def attention_context(self, h: int, w: int, x: Tensor) -> AttentionContext:
        blocks = (block for layer in self.layers for block in layer.residual_group.blocks)
        mask = shared_shift_mask(blocks, x, self.window_size)
        return AttentionContext(self.sa_gather_index, self.oca_gather_index, mask)

    def forward_features(self, x: Tensor) -> Tensor:
        _, _, h, w = static_shape(x)
        context = self.attention_context(h, w, x)
        tokens = self.patch_embed.norm(map_to_tokens(x))
        for layer in self.layers:
            tokens = layer(tokens, (h, w), context)
        return tokens_to_map(self.norm(tokens), (h, w))

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = static_shape(x)
        x = pad_to_multiple(x, self.window_size)
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        x = x / self.img_range + self.mean
        return x[:, :, : h * self.upscale, : w * self.upscale]


def tiny_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """The id's structure at toy size; the channel-attention branch divides the width by both
    ratios, so each quotient stays at least 2."""
    width = 2 * max(arch["compress_ratio"], arch["squeeze_factor"])
    return {**arch, "embed_dim": width, "depths": [2, 2], "num_heads": [2, 2], "img_size": 2 * arch["window_size"]}


FAMILY = Family(
    name="hat",
    display_name="HAT",
    model=HAT,
    original=Original("spandrel HAT", spandrel_original("HAT")),
    tiny_arch=tiny_arch,
    tiny_tile=two_windows,
)
