"""ESRT: Transformer for Single Image Super-Resolution (Efficient Super-Resolution Transformer).

Zhisheng Lu, Juncheng Li, Hong Liu, Chaoyan Huang, Linlin Zhang, Tieyong Zeng. CVPR Workshops 2022.
https://arxiv.org/abs/2108.11084 — official code: https://github.com/luissen/ESRT (MIT license).

An export-friendly re-implementation (our own code; the parity reference is the separate,
structure-faithful `model_defs.reference.esrt`). Same parameter names, so the raw state dicts
that the official train.py saves load with strict=True. What changes for deployment:
- the efficient transformer's `nn.Unfold` (3x3 patches, 'same' zero padding) becomes nine
  static slices of the padded map, and its `nn.Fold` (which exports as Col2Im, which TensorRT
  cannot run) becomes a sum of nine shifted slices: the same sums, in a static graph;
- the attention's token chunks (the original splits N = H*W tokens into chunks of N // 4) run
  as one batched 4-D matmul (heads x chunks, see EfficientAttention) when the chunks are equal,
  which they are for tiles whose H*W is a multiple of 4: each chunk is then a band of H/4 rows
  of the tile, and a token attends only to tokens of its own band. The tile therefore changes
  the result, not just the borders;
- interpolation targets are Python ints (no shape arithmetic in the graph).
Input NCHW RGB in [0, 1] (the official test.py feeds img / 255, no mean shift); output
`upscale` times larger, unclamped.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model_defs.family import EntryLike, Family, Original
from model_defs.layers import Mlp, PixelShuffleUpsample, static_shape

PATCH = 3  # the efficient transformer's patch (kernel) size


class Scale(nn.Module):
    """A learned scalar multiplier (`scale`, one element)."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([value]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class ConvAct(nn.Module):
    """Bias-free conv + ReLU, under the official `conv` key."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, 1, kernel_size // 2, bias=False)
        self.relu = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return self.relu(x) if self.relu is not None else x


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class ResidualUnit(nn.Module):
    """RU: x*a + conv(prelu(conv(x)))*b."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, hidden, 3, 1, 1)
        self.conv1 = nn.Conv2d(hidden, channels, 3, 1, 1)
        self.relu = nn.PReLU(hidden)
        self.weight1 = Scale()
        self.weight2 = Scale()

    def forward(self, x: Tensor) -> Tensor:
        return self.weight1(x) + self.weight2(self.conv1(self.relu(self.conv(x))))


class AdaptiveResidualBlock(nn.Module):
    """ARFB: two residual units, their outputs fused, channel attention, a conv, a weighted skip."""

    def __init__(self, channels: int):
        super().__init__()
        self.layer1 = ResidualUnit(channels, channels // 2)
        self.layer2 = ResidualUnit(channels, channels // 2)
        self.layer4 = ConvAct(channels, channels, 3)
        self.alise = ConvAct(2 * channels, channels, 1)
        self.atten = ChannelAttention(channels)
        # weight1 is unused by the original's forward too; kept so checkpoints load
        self.weight1, self.weight2, self.weight3, self.weight4, self.weight5 = (Scale() for _ in range(5))

    def forward(self, x: Tensor) -> Tensor:
        first = self.layer1(x)
        second = self.layer2(first)
        fused = self.alise(torch.cat([self.weight2(second), self.weight3(first)], dim=1))
        return self.weight4(x) + self.weight5(self.layer4(self.atten(fused)))


class HighPreservingBlock(nn.Module):
    """HPB: a half-resolution branch (5 passes of one shared ARFB) and a high-frequency branch."""

    def __init__(self, channels: int):
        super().__init__()
        self.encoder = AdaptiveResidualBlock(channels)
        self.decoder_low = AdaptiveResidualBlock(channels)
        self.decoder_high = AdaptiveResidualBlock(channels)
        self.alise = AdaptiveResidualBlock(channels)
        self.alise2 = ConvAct(2 * channels, channels, 1)
        self.down = nn.AvgPool2d(kernel_size=2)
        self.att = ChannelAttention(channels)

    def forward(self, x: Tensor) -> Tensor:
        size = static_shape(x)[2:]
        encoded = self.encoder(x)
        low = self.down(encoded)
        high = encoded - F.interpolate(low, size=size, mode="bilinear", align_corners=True)
        for _ in range(5):
            low = self.decoder_low(low)
        low = F.interpolate(low, size=size, mode="bilinear", align_corners=True)
        return self.alise(self.att(self.alise2(torch.cat([low, self.decoder_high(high)], dim=1)))) + x


def patches_3x3(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W, C*9): every pixel's zero-padded 3x3 neighbourhood, channel-major.

    The same values and order as nn.Unfold(3, padding 'same') followed by a transpose.
    """
    b, c, h, w = static_shape(x)
    padded = F.pad(x, (1, 1, 1, 1))
    shifted = [padded[:, :, dy : dy + h, dx : dx + w] for dy in range(PATCH) for dx in range(PATCH)]
    return torch.stack(shifted, dim=2).reshape(b, c * PATCH * PATCH, h * w).transpose(1, 2)


def fold_3x3(tokens: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, H*W, C*9) -> (B, C, H, W): nn.Fold(3, padding 1) as a sum of nine shifted slices.

    Each pixel sums the nine patch entries that cover it, exactly what Fold (Col2Im) computes.
    """
    b, _, channels9 = static_shape(tokens)
    h, w = size
    c = channels9 // (PATCH * PATCH)
    entries = tokens.transpose(1, 2).reshape(b, c, PATCH * PATCH, h, w)
    padded = F.pad(entries, (1, 1, 1, 1))
    total = None
    for index in range(PATCH * PATCH):
        dy, dx = divmod(index, PATCH)
        # patch entry (dy, dx) of the patch centred at (y, x) lands on pixel (y + dy - 1, x + dx - 1)
        part = padded[:, :, index, 2 - dy : 2 - dy + h, 2 - dx : 2 - dx + w]
        total = part if total is None else total + part
    return total


class EfficientAttention(nn.Module):
    """EMHA: reduce the width by half, attend within chunks of N // 4 tokens, project back."""

    def __init__(self, dim: int, num_heads: int = 8):
        super().__init__()
        self.num_heads = num_heads
        # the original scales by the full width's head size, not the reduced one
        self.scale = (dim // num_heads) ** -0.5
        self.reduce = nn.Linear(dim, dim // 2, bias=False)
        self.qkv = nn.Linear(dim // 2, dim // 2 * 3, bias=False)
        self.proj = nn.Linear(dim // 2, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce(x)
        b, n, c = static_shape(x)
        head_dim = c // self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        chunk = n // 4
        if n % chunk == 0:
            chunks = n // chunk
            # 4-D (b, heads * chunks, ...): OpenVINO's CPU plugin fuses MatMul, Softmax, MatMul into
            # one attention kernel only in 4-D (ESRT at 64 px: 29-38 ms instead of 66 ms)
            q, k, v = (t.reshape(b, self.num_heads * chunks, chunk, head_dim) for t in (q, k, v))
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            out = (attn @ v).view(b, self.num_heads, chunks, chunk, head_dim).permute(0, 2, 3, 1, 4).reshape(b, n, c)
        else:  # uneven last chunk (eager use on odd sizes only; exported tiles are even)
            parts = []
            for start in range(0, n, chunk):
                qs, ks, vs = (t[:, :, start : start + chunk] for t in (q, k, v))
                attn = ((qs @ ks.transpose(-2, -1)) * self.scale).softmax(dim=-1)
                parts.append((attn @ vs).transpose(1, 2))
            out = torch.cat(parts, dim=1).reshape(b, n, c)
        return self.proj(out)


class EfficientTransformer(nn.Module):
    """ET: tokens are 3x3 neighbourhoods (C*9 wide); one pre-norm attention + MLP block."""

    def __init__(self, dim: int):
        super().__init__()
        self.atten = EfficientAttention(dim, num_heads=8)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim // 4, act_layer=nn.ReLU)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        tokens = patches_3x3(x)
        tokens = tokens + self.atten(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class Backbone(nn.Module):
    """Three HPBs (the CNN backbone), their fusion, then the transformer backbone."""

    def __init__(self, channels: int):
        super().__init__()
        self.encoder1 = HighPreservingBlock(channels)
        self.encoder2 = HighPreservingBlock(channels)
        self.encoder3 = HighPreservingBlock(channels)
        self.reduce = nn.Conv2d(3 * channels, channels, 3, 1, 1)
        self.weight1 = Scale()
        self.weight2 = Scale()
        self.attention = EfficientTransformer(channels * PATCH * PATCH)
        self.alise = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        first = self.encoder1(x)
        second = self.encoder2(first)
        third = self.encoder3(second)
        tokens = self.attention(self.reduce(torch.cat([first, second, third], dim=1)))
        out = self.alise(fold_3x3(tokens, static_shape(third)[2:]))
        return self.weight1(x) + self.weight2(out)


class ESRT(nn.Module):
    """ESRT for x2/x3/x4 super-resolution; hyperparameters are fixed by the official code."""

    def __init__(self, *, upscale: int = 4, n_feats: int = 32):
        super().__init__()
        self.upscale = upscale
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, 1, 1))
        self.body = nn.Sequential(Backbone(n_feats))
        self.reduce = nn.Conv2d(n_feats, n_feats, 3, 1, 1)
        self.tail = nn.Sequential(PixelShuffleUpsample(upscale, n_feats), nn.Conv2d(n_feats, 3, 3, 1, 1))
        self.up = nn.Sequential(PixelShuffleUpsample(upscale, n_feats), ConvAct(n_feats, 3, 3))

    def forward(self, x: Tensor) -> Tensor:
        shallow = self.head(x)
        deep = self.reduce(self.body(shallow))
        return self.tail(deep) + self.up(shallow)


def build_original(**arch) -> nn.Module:
    from model_defs.reference.esrt import ESRT as OfficialESRT

    return OfficialESRT(**arch)


def as_official_test(model: nn.Module, entry: EntryLike) -> nn.Module:
    """Whole images through the official test.py's forward_chop, whose quadrants stay below
    `reference_chop` pixels (ESRT's attention over N/4 tokens of a whole image does not fit in
    memory beyond about 100x100 px)."""
    from model_defs.reference.esrt import ChoppedReference

    return ChoppedReference(model, scale=entry.scale, min_size=entry.reference_chop) if entry.reference_chop else model


FAMILY = Family(
    name="esrt",
    display_name="ESRT",
    model=ESRT,
    # no third-party port exists: our rewrite of the official structure, sharing no code with ESRT above
    original=Original("model_defs.reference.esrt (official structure)", build_original, as_official_test),
    tiny_arch=dict,  # ESRT is small (0.68 M parameters): the real structure is the test structure
    tiny_tile=lambda arch: (16, 16),
)
