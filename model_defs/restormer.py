"""Restormer: Efficient Transformer for High-Resolution Image Restoration.

Syed Waqas Zamir, Aditya Arora, Salman Khan, Munawar Hayat, Fahad Shahbaz Khan, Ming-Hsuan Yang.
CVPR 2022. https://arxiv.org/abs/2111.09881 — official code: https://github.com/swz30/Restormer
(Academic Public License: non-commercial use only, for the code and the released weights).

An export-friendly re-implementation (our own code, same parameter names, so the official
`params` checkpoints load with strict=True). What changes for deployment, not numerics:
- the 'WithBias' LayerNorm over channels becomes one LayerNormalization node (opset >= 17) on an
  NHWC view; the 'BiasFree' one (no mean subtraction in the numerator) stays explicit;
- q/k normalisation is written as x / max(||x||, eps) over the tile's H*W tokens, so the sum of
  squares is one ReduceL2 whose range the FP16 planner measures (it overflows FP16 at large tiles);
- reshapes use Python ints: the graph is static for its tile.
Attention is across channels over all H*W pixels of the input, so the tile changes the result.
Input NCHW in [0, 1] (3 or 1 channels; 6 for dual-pixel: left view RGB then right view RGB);
output the restored image (3 or 1 channels), unclamped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model_defs.family import EntryLike, Family, Original, spandrel_extra_original
from model_defs.layers import static_shape

LAYER_NORM_TYPES = ("WithBias", "BiasFree")
EPS = 1e-5


class WithBiasNorm(nn.Module):
    """LayerNorm across channels at every pixel, with weight and bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        nhwc = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, EPS)
        return nhwc.permute(0, 3, 1, 2)


class BiasFreeNorm(nn.Module):
    """x / std(x) * weight across channels: the variance is centred, the numerator is not."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        variance = (x - x.mean(dim=1, keepdim=True)).pow(2).mean(dim=1, keepdim=True)
        return x / torch.sqrt(variance + EPS) * self.weight.view(1, -1, 1, 1)


class ChannelNorm(nn.Module):
    """Holds the norm under the official `body` key."""

    def __init__(self, channels: int, kind: str):
        super().__init__()
        if kind not in LAYER_NORM_TYPES:
            raise ValueError(f"LayerNorm_type must be one of {LAYER_NORM_TYPES}, not {kind!r}")
        self.body = WithBiasNorm(channels) if kind == "WithBias" else BiasFreeNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class GatedFeedForward(nn.Module):
    """GDFN: 1x1 expand, 3x3 depthwise, GELU gate, 1x1 project."""

    def __init__(self, dim: int, expansion: float, bias: bool):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, 1, 1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


def l2_normalize(x: Tensor) -> Tensor:
    # F.normalize's definition; ReduceL2 keeps the sum of squares inside one node
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)


class TransposedAttention(nn.Module):
    """MDTA: attention across channels (C/heads x C/heads per head) over all pixels."""

    def __init__(self, dim: int, num_heads: int, bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, 1, 1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = static_shape(x)
        q, k, v = (t.reshape(b, self.num_heads, c // self.num_heads, h * w) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        attn = (l2_normalize(q) @ l2_normalize(k).transpose(-2, -1)) * self.temperature
        out = attn.softmax(dim=-1) @ v
        return self.project_out(out.reshape(b, c, h, w))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, expansion: float, bias: bool, norm: str):
        super().__init__()
        self.norm1 = ChannelNorm(dim, norm)
        self.attn = TransposedAttention(dim, num_heads, bias)
        self.norm2 = ChannelNorm(dim, norm)
        self.ffn = GatedFeedForward(dim, expansion, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, bias: bool):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, 1, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Resample(nn.Module):
    """Conv then PixelUnshuffle (down: half the size, twice the channels) or PixelShuffle (up)."""

    def __init__(self, dim: int, down: bool):
        super().__init__()
        out = dim // 2 if down else dim * 2
        shuffle = nn.PixelUnshuffle(2) if down else nn.PixelShuffle(2)
        self.body = nn.Sequential(nn.Conv2d(dim, out, 3, 1, 1, bias=False), shuffle)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Restormer(nn.Module):
    """Four-level encoder-decoder of transformer blocks; keyword names follow the official one."""

    def __init__(
        self,
        *,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",  # noqa: N803 - the official keyword
        dual_pixel_task: bool = False,
    ):
        super().__init__()

        def stage(width: int, count: int, num_heads: int) -> nn.Sequential:
            return nn.Sequential(*(TransformerBlock(width, num_heads, ffn_expansion_factor, bias, LayerNorm_type) for _ in range(count)))

        self.patch_embed = PatchEmbed(inp_channels, dim, bias)
        self.encoder_level1 = stage(dim, num_blocks[0], heads[0])
        self.down1_2 = Resample(dim, down=True)
        self.encoder_level2 = stage(dim * 2, num_blocks[1], heads[1])
        self.down2_3 = Resample(dim * 2, down=True)
        self.encoder_level3 = stage(dim * 4, num_blocks[2], heads[2])
        self.down3_4 = Resample(dim * 4, down=True)
        self.latent = stage(dim * 8, num_blocks[3], heads[3])
        self.up4_3 = Resample(dim * 8, down=False)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)
        self.decoder_level3 = stage(dim * 4, num_blocks[2], heads[2])
        self.up3_2 = Resample(dim * 4, down=False)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)
        self.decoder_level2 = stage(dim * 2, num_blocks[1], heads[1])
        self.up2_1 = Resample(dim * 2, down=False)
        # level 1 decodes at twice the width: no 1x1 reduction after the skip (as the original)
        self.decoder_level1 = stage(dim * 2, num_blocks[0], heads[0])
        self.refinement = stage(dim * 2, num_refinement_blocks, heads[0])
        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, 1, 1, bias=bias)

    def forward(self, image: Tensor) -> Tensor:
        embedded = self.patch_embed(image)
        level1 = self.encoder_level1(embedded)
        level2 = self.encoder_level2(self.down1_2(level1))
        level3 = self.encoder_level3(self.down2_3(level2))
        latent = self.latent(self.down3_4(level3))
        x = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(latent), level3], 1)))
        x = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(x), level2], 1)))
        x = self.refinement(self.decoder_level1(torch.cat([self.up2_1(x), level1], 1)))
        if self.dual_pixel_task:
            return self.output(x + self.skip_conv(embedded))
        return self.output(x) + image


class PaddedAsOfficialTest(nn.Module):
    """The original as the official test scripts run it: a whole image reflect-padded at the
    bottom/right to a multiple of 8 (three 2x downsamplings), the output cropped back."""

    multiple = 8

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return self.model(x)[..., :height, :width]


def as_official_test(model: nn.Module, entry: EntryLike) -> nn.Module:
    return PaddedAsOfficialTest(model)


def tiny_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """Every level and the refinement stage, 8 channels wide."""
    return {**arch, "dim": 8, "num_blocks": [1, 1, 1, 2], "num_refinement_blocks": 1, "heads": [1, 2, 2, 4]}


FAMILY = Family(
    name="restormer",
    display_name="Restormer",
    model=Restormer,
    original=Original("spandrel_extra_arches Restormer", spandrel_extra_original("Restormer"), as_official_test),
    tiny_arch=tiny_arch,
    tiny_tile=lambda arch: (32, 32),
)
