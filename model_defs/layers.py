"""Building blocks shared by several families (no window logic: that is in windows.py)."""

from __future__ import annotations

import math

from typing import Callable

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
