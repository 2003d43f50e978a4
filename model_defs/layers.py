"""Building blocks shared by several families (no window logic: that is in windows.py)."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn


def static_shape(x: Tensor) -> tuple[int, ...]:
    # int() turns traced sizes into constants: the graph is exported for one static shape.
    return tuple(int(size) for size in x.shape)


class PixelShuffleUpsample(nn.Sequential):
    """Conv + PixelShuffle steps (EDSR style) for scales 2^n and 3; keys `0.*`, `2.*`, ..."""

    def __init__(self, scale: int, channels: int):
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(channels, 4 * channels, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(channels, 9 * channels, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"upscale {scale} is not supported: use 2^n or 3")
        super().__init__(*layers)


class Mlp(nn.Module):
    """Transformer feed-forward: Linear, activation, Linear (keys `fc1`, `fc2`)."""

    def __init__(self, dim: int, hidden: int, act_layer: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def tokens_to_map(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) feature map."""
    b, _, c = static_shape(x)
    return x.transpose(1, 2).reshape(b, c, size[0], size[1])


def map_to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) feature map -> (B, H*W, C) tokens."""
    return x.flatten(2).transpose(1, 2)


class PatchNorm(nn.Module):
    """Holds the Swin-style `patch_embed.norm` LayerNorm under its official key."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)


def init_transformer_weights(module: nn.Module) -> None:
    """The Swin-style init (truncated-normal Linear, unit LayerNorm): only random-init exports see it."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def residual_conv(dim: int, kind: str) -> nn.Module:
    """The convolution closing a residual group (and the body) of SwinIR-style models: '1conv', or the parameter-saving '3conv'."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0),
            nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    raise ValueError(f"resi_connection must be '1conv' or '3conv', not {kind!r}")
