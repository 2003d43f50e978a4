"""DAT: Dual Aggregation Transformer for Image Super-Resolution.

Zheng Chen, Yulun Zhang, Jinjin Gu, Linghe Kong, Xiaokang Yang, Fisher Yu. ICCV 2023.
https://arxiv.org/abs/2308.03364 — official code: https://github.com/zhengchen1999/DAT
(Apache-2.0), `basicsr/archs/dat_arch.py`.

An export-friendly re-implementation (our own code, same parameter and buffer names, so the
official checkpoints load with strict=True). The model alternates two kinds of block in each
residual group: spatial window attention (even blocks) and channel attention over the whole
input (odd blocks), each with a depthwise-conv branch mixed in by the "adaptive interaction
module", and a spatial-gate feed-forward network. Differences from the original that matter for
deployment, none of them numerical:
- shapes are Python ints, so a traced graph has static reshapes and no shape arithmetic;
- spatial attention splits the channels in two halves with transposed rectangular windows
  (split_size [8, 32]: 8 rows x 32 columns for the first half, 32 x 8 for the second), and some
  blocks shift them by half a window. The shifted-window mask is the row-band plus column-band
  geometry of `windows.ShiftMasks`, for rectangular windows: since only the last row (column) of
  windows mixes bands, the graph holds that one row (column) mask, (tokens, tokens), and spreads
  it over the windows with a Where on a small boolean flag, at run time, once per forward; as in
  the original, each window's mask is added to the scores after the position bias;
- the masks are computed once per input size and shared by every shifted block; the per-block
  `attn_mask_0/1` buffers of the official files (the mask at the training img_size) are kept so
  checkpoints load strictly, and checked against our own computation on load;
- the position-bias MLP runs on its constant `rpe_biases` (folded into a small table by the
  exporter) and the table is gathered once per block through the block's index;
- channel attention runs on the (B, C, H, W) map, its qkv projection a 1x1 convolution with the
  Linear's weights, where the original permutes the projected tokens (see ChannelAttention).
The original pads the projected q, k, v inside spatial attention with zeros to a multiple of
max(split_size) (the other layers see the unpadded input); this definition does the same, with
static pads, so it matches the original at any input size. An exported tile that is a multiple of
max(split_size) needs no padding at all: that is the configs' `tile_multiple`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model_defs.family import Family, Original, spandrel_original
from model_defs.layers import (
    PixelShuffleUpsample,
    init_transformer_weights,
    map_to_tokens,
    residual_conv,
    static_shape,
    tokens_to_map,
)
from model_defs.windows import (
    ShiftMasks,
    biased_attention,
    gather_relative_bias,
    last_window_masks,
    relative_position_index,
    shifted_window_mask,
)

RGB_MEAN = (0.4488, 0.4371, 0.4040)
NUM_FEAT = 64  # the original's fixed width before pixel-shuffle upsampling
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect")


def shifts_windows(group: int, block: int) -> bool:
    """The original's schedule of shifted spatial blocks: blocks 2, 6, 10, ... of even residual
    groups and 0, 4, 8, ... of odd ones (spatial blocks are the even ones)."""
    return (group % 2 == 0 and block > 0 and (block - 2) % 4 == 0) or (group % 2 == 1 and block % 4 == 0)


def position_offsets(window_h: int, window_w: int) -> Tensor:
    """DAT's `rpe_biases`: every (dy, dx) offset within a window, ((2h-1)(2w-1), 2) float, row-major."""
    dy = torch.arange(1 - window_h, window_h)
    dx = torch.arange(1 - window_w, window_w)
    return torch.stack(torch.meshgrid(dy, dx, indexing="ij")).flatten(1).t().float()


class AttentionContext(NamedTuple):
    """What every spatial block of one forward shares: the padded map size and the two branches'
    shifted-window masks (None when no block shifts)."""

    padded: tuple[int, int]
    masks: tuple[Tensor, Tensor] | None


class DynamicPosBias(nn.Module):
    """The position-bias MLP (CrossFormer's): (dy, dx) offsets -> one bias per head (no residuals,
    as DAT builds it). Keys `pos_proj`, `pos1/2/3` (LayerNorm, ReLU, Linear)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        pos_dim = dim // 4
        self.pos_proj = nn.Linear(2, pos_dim)

        def step(out: int) -> nn.Sequential:
            return nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(inplace=True), nn.Linear(pos_dim, out))

        self.pos1, self.pos2, self.pos3 = step(pos_dim), step(pos_dim), step(num_heads)

    def forward(self, offsets: Tensor) -> Tensor:
        return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))


class WindowBranch(nn.Module):
    """Attention inside `window` (rows x columns) windows over one half of the channels
    (the original's `Spatial_Attention`; keys `rpe_biases`, `relative_position_index`, `pos`)."""

    def __init__(self, dim: int, window: tuple[int, int], num_heads: int, qk_scale: float | None):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.pos = DynamicPosBias(dim // 4, num_heads)
        self.register_buffer("rpe_biases", position_offsets(*window))
        self.register_buffer("relative_position_index", relative_position_index(*window))
        # what the graph gathers with: int32, half the bytes (the gathered bias then stays a
        # run-time Gather under the exporter's fold limit instead of a folded per-block constant)
        self.register_buffer("gather_index", self.relative_position_index.int(), persistent=False)

    def forward(self, qkv: Tensor, shift: bool, mask: Tensor | None) -> Tensor:
        """qkv (B, H, W, 3, C), H and W window multiples -> attention output (B, H, W, C)."""
        b, h, w, _, c = static_shape(qkv)
        wh, ww = self.window
        shifts = (wh // 2, ww // 2) if shift else (0, 0)
        if shift:
            qkv = torch.roll(qkv, shifts=(-shifts[0], -shifts[1]), dims=(1, 2))
        rows, cols, heads = h // wh, w // ww, self.num_heads
        qkv = qkv.reshape(b, rows, wh, cols, ww, 3, heads, c // heads)
        qkv = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, b * rows * cols, heads, wh * ww, c // heads)
        bias = gather_relative_bias(self.pos(self.rpe_biases), self.gather_index)
        out = biased_attention(qkv[0], qkv[1], qkv[2], self.scale, bias, mask if shift else None)
        out = out.view(b, rows, cols, heads, wh, ww, c // heads).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, h, w, c)
        if shift:
            out = torch.roll(out, shifts=shifts, dims=(1, 2))
        return out


def conv_branch(dim: int) -> nn.Sequential:
    """Depthwise 3x3 conv, BatchNorm, GELU (keys `0`, `1`)."""
    return nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.BatchNorm2d(dim), nn.GELU())


def channel_interaction(dim: int) -> nn.Sequential:
    """Global average, squeeze by 8, expand: a per-channel gate before its sigmoid (keys `1`, `2`, `4`)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim // 8, 1), nn.BatchNorm2d(dim // 8), nn.GELU(), nn.Conv2d(dim // 8, dim, 1))


def spatial_interaction(dim: int) -> nn.Sequential:
    """1x1 convs down to one map: a per-pixel gate before its sigmoid (keys `0`, `1`, `3`)."""
    return nn.Sequential(nn.Conv2d(dim, dim // 16, 1), nn.BatchNorm2d(dim // 16), nn.GELU(), nn.Conv2d(dim // 16, 1, 1))


class SpatialAttention(nn.Module):
    """Dual spatial window attention plus a conv branch, mixed by the adaptive interaction module
    (the original's `Adaptive_Spatial_Attention`)."""

    def __init__(self, dim: int, num_heads: int, img_size: int, split_size: Sequence[int], shift: bool, qkv_bias: bool, qk_scale: float | None):
        super().__init__()
        s0, s1 = split_size
        self.shift = shift
        if shift:
            # the training-resolution masks of the official files: loaded, checked, unused
            self.register_buffer("attn_mask_0", shifted_window_mask(img_size, img_size, s0, s0 // 2, s1, s1 // 2))
            self.register_buffer("attn_mask_1", shifted_window_mask(img_size, img_size, s1, s1 // 2, s0, s0 // 2))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attns = nn.ModuleList(WindowBranch(dim // 2, window, num_heads // 2, qk_scale) for window in ((s0, s1), (s1, s0)))
        self.dwconv = conv_branch(dim)
        self.channel_interaction = channel_interaction(dim)
        self.spatial_interaction = spatial_interaction(dim)

    def forward(self, x: Tensor, size: tuple[int, int], context: AttentionContext) -> Tensor:
        h, w = size
        b, n, c = static_shape(x)
        qkv = self.qkv(x).view(b, h, w, 3, c)
        v = qkv[:, :, :, 2].permute(0, 3, 1, 2)
        hp, wp = context.padded
        if (hp, wp) != (h, w):
            # as the original: q, k, v padded with zeros (not masked) to the window grid
            qkv = F.pad(qkv, (0, 0, 0, 0, 0, wp - w, 0, hp - h))
        masks = context.masks or (None, None)
        halves = (qkv[..., : c // 2], qkv[..., c // 2 :])
        attended = torch.cat([branch(half, self.shift, mask) for branch, half, mask in zip(self.attns, halves, masks)], dim=-1)
        attended = attended[:, :h, :w].reshape(b, n, c)
        conv_x = self.dwconv(v)
        channel_gate = self.channel_interaction(conv_x).view(b, 1, c)
        spatial_gate = self.spatial_interaction(tokens_to_map(attended, size))
        x = attended * torch.sigmoid(channel_gate) + map_to_tokens(torch.sigmoid(spatial_gate) * conv_x)
        return self.proj(x)


class ChannelAttention(nn.Module):
    """Attention across channels (per head, over every token of the input) plus a conv branch,
    mixed by the adaptive interaction module (the original's `Adaptive_Channel_Attention`)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.dwconv = conv_branch(dim)
        self.channel_interaction = channel_interaction(dim)
        self.spatial_interaction = spatial_interaction(dim)

    def forward(self, x: Tensor, size: tuple[int, int], context: AttentionContext) -> Tensor:
        h, w = size
        b, n, c = static_shape(x)
        heads = self.num_heads
        # The attention runs on feature maps: q, k and v are each head's (head_dim, tokens), the
        # layout the original permutes its tokens into (a 5-D Transpose moving every token
        # innermost: 9% of DAT's OpenVINO time), so the qkv projection is applied to the map (the
        # same weights, as a 1x1 convolution) and each head's view is a reshape. The attended map
        # is the layout the gates and the depthwise branch use too: one Transpose in, one out.
        weight = self.qkv.weight.view(3 * c, c, 1, 1)
        qkv = F.conv2d(tokens_to_map(x, size), weight, self.qkv.bias).view(b, 3, heads, c // heads, n)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        # F.normalize without its expand_as. The sums of squares run over every token of the
        # input (65536 at 256 px): in FP16 they overflow long before q or k do, so the FP16
        # deploy graph keeps them in FP32 (precision/plan.py judges a ReduceL2 by its accumulator)
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        attended = (attn @ v).reshape(b, c, h, w)
        conv_x = self.dwconv(v.reshape(b, c, h, w))
        channel_gate = self.channel_interaction(attended)
        spatial_gate = self.spatial_interaction(conv_x)
        x = attended * torch.sigmoid(spatial_gate) + conv_x * torch.sigmoid(channel_gate)
        return self.proj(map_to_tokens(x))


class SpatialGate(nn.Module):
    """Half the hidden channels gate the other half after a LayerNorm and a depthwise conv."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        half = static_shape(x)[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return x1 * map_to_tokens(self.conv(tokens_to_map(self.norm(x2), size)))


class SGFN(nn.Module):
    """Spatial-gate feed-forward network (keys `fc1`, `sg`, `fc2`)."""

    def __init__(self, dim: int, hidden: int, act_layer: Callable[[], nn.Module]):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.sg = SpatialGate(hidden // 2)
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.fc2(self.sg(self.act(self.fc1(x)), size))


class DATB(nn.Module):
    """Dual aggregation Transformer block: spatial (even blocks) or channel (odd) attention, then SGFN."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        img_size: int,
        split_size: Sequence[int],
        expansion_factor: float,
        qkv_bias: bool,
        qk_scale: float | None,
        act_layer,
        norm_layer,
        group: int,
        block: int,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if block % 2 == 0:
            self.attn: nn.Module = SpatialAttention(dim, num_heads, img_size, split_size, shifts_windows(group, block), qkv_bias, qk_scale)
        else:
            self.attn = ChannelAttention(dim, num_heads, qkv_bias)
        self.ffn = SGFN(dim, int(dim * expansion_factor), act_layer)
        self.norm2 = norm_layer(dim)

    def forward(self, x: Tensor, size: tuple[int, int], context: AttentionContext) -> Tensor:
        x = x + self.attn(self.norm1(x), size, context)
        return x + self.ffn(self.norm2(x), size)


class ResidualGroup(nn.Module):
    def __init__(self, dim: int, depth: int, resi_connection: str, group: int, **block_kwargs):
        super().__init__()
        self.blocks = nn.ModuleList(DATB(dim, group=group, block=i, **block_kwargs) for i in range(depth))
        self.conv = residual_conv(dim, resi_connection)

    def forward(self, x: Tensor, size: tuple[int, int], context: AttentionContext) -> Tensor:
        shortcut = x
        for block in self.blocks:
            x = block(x, size, context)
        return map_to_tokens(self.conv(tokens_to_map(x, size))) + shortcut


class DAT(nn.Module):
    """Dual Aggregation Transformer for super-resolution (DAT-S, DAT, DAT-2, DAT-light).

    Keyword names follow the official constructor (and spandrel's) so one hyperparameter table
    serves both; the training-only ones (dropout, drop path, checkpointing) are accepted and have
    no effect at inference. Input NCHW in [0, 1], any size; output `upscale` times larger, unclamped.
    """

    def __init__(
        self,
        *,
        img_size: int = 64,
        in_chans: int = 3,
        embed_dim: int = 180,
        split_size: Sequence[int] = (2, 4),
        depth: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (2, 2, 2, 2),
        expansion_factor: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        use_chk: bool = False,
        upscale: int = 2,
        img_range: float = 1.0,
        resi_connection: str = "1conv",
        upsampler: str = "pixelshuffle",
    ):
        super().__init__()
        split_size = tuple(int(s) for s in split_size)
        if len(split_size) != 2 or max(split_size) % min(split_size):
            # the original pads to a multiple of the larger side only: the smaller must divide it
            raise ValueError(f"split_size must be two window sides, one dividing the other, not {list(split_size)}")
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, not {upsampler!r}")
        if len(depth) != len(num_heads):
            raise ValueError(f"depth {list(depth)} and num_heads {list(num_heads)} must have one entry per residual group")
        self.split_size = split_size
        self.img_range = img_range
        self.upscale = upscale
        self.upsampler = upsampler
        mean = RGB_MEAN if in_chans == 3 else (0.0,)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        s0, s1 = split_size
        for branch, window in enumerate(((s0, s1), (s1, s0))):
            last_row, last_col = last_window_masks(*window)
            self.register_buffer(f"shift_mask_{branch}_last_row", last_row, persistent=False)
            self.register_buffer(f"shift_mask_{branch}_last_col", last_col, persistent=False)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        # the original's Sequential(Rearrange, LayerNorm): the norm under its key `before_RG.1`
        self.before_RG = nn.Sequential(nn.Identity(), nn.LayerNorm(embed_dim))
        self.layers = nn.ModuleList(
            ResidualGroup(
                embed_dim,
                blocks,
                resi_connection,
                group,
                num_heads=heads,
                img_size=img_size,
                split_size=split_size,
                expansion_factor=expansion_factor,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                act_layer=act_layer,
                norm_layer=norm_layer,
            )
            for group, (blocks, heads) in enumerate(zip(depth, num_heads))
        )
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, NUM_FEAT, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample = PixelShuffleUpsample(upscale, NUM_FEAT)
            self.conv_last = nn.Conv2d(NUM_FEAT, in_chans, 3, 1, 1)
        else:
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, upscale**2 * in_chans, 3, 1, 1), nn.PixelShuffle(upscale))
        self.apply(init_transformer_weights)

    def attention_context(self, images: int, h: int, w: int) -> AttentionContext:
        grid = max(self.split_size)
        hp, wp = -(-h // grid) * grid, -(-w // grid) * grid
        blocks = (block for layer in self.layers for block in layer.blocks)
        if not any(isinstance(block.attn, SpatialAttention) and block.attn.shift for block in blocks):
            return AttentionContext((hp, wp), None)
        s0, s1 = self.split_size
        masks = tuple(
            ShiftMasks(self.get_buffer(f"shift_mask_{branch}_last_row"), self.get_buffer(f"shift_mask_{branch}_last_col")).window_mask(images, *grid)
            for branch, grid in enumerate(((hp // s0, wp // s1), (hp // s1, wp // s0)))
        )
        return AttentionContext((hp, wp), masks)

    def forward_features(self, x: Tensor) -> Tensor:
        images, _, h, w = static_shape(x)
        context = self.attention_context(images, h, w)
        tokens = self.before_RG(map_to_tokens(x))
        for layer in self.layers:
            tokens = layer(tokens, (h, w), context)
        return tokens_to_map(self.norm(tokens), (h, w))

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        if self.upsampler == "pixelshuffle":
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        else:
            x = self.upsample(x)
        return x / self.img_range + self.mean


def _seq_len(state_dict: dict[str, Tensor], prefix: str) -> int:
    """How many numbered children `prefix.0`, `prefix.1`, ... a state dict holds."""
    indices = {
        int(key[len(prefix) + 1 :].split(".", 1)[0]) for key in state_dict if key.startswith(prefix + ".") and key[len(prefix) + 1 :].split(".", 1)[0].isdigit()
    }
    return max(indices) + 1 if indices else 0


def reconcile_arch(arch: dict[str, Any], state_dict: dict[str, Tensor]) -> dict[str, Any]:
    """Hyperparameters a DAT checkpoint fixes by its shapes, read from it (as spandrel does), so a
    community file with another width, depth, window or FFN width exports under a DAT id.

    Read: embed_dim, depth, num_heads, split_size, expansion_factor, qkv_bias, resi_connection,
    upsampler, img_size (the training patch, from the stored masks). Not in the shapes: img_range
    and qk_scale stay the config's. Refused (ValueError): a checkpoint whose scale or channels
    differ from the id's, or whose windows do not divide the id's window grid (its tiles would no
    longer start on the window grid), or that still does not fit once read.
    """
    if "conv_first.weight" not in state_dict or "layers.0.blocks.0.attn.attns.0.rpe_biases" not in state_dict:
        return arch  # not a DAT checkpoint: strict loading explains the key differences
    read, scale, in_chans = _read_arch(state_dict, list(arch.get("num_heads", ())))
    _check_fits_id(arch, read, scale, in_chans)
    arch = {**arch, **read}
    _check_loads(arch, state_dict)
    return arch


def _read_arch(state_dict: dict[str, Tensor], configured_heads: list[int]) -> tuple[dict[str, Any], int, int]:
    """The hyperparameters a DAT state dict's shapes fix, with its scale and input channels."""
    read: dict[str, Any] = {}
    first = state_dict["conv_first.weight"]
    embed_dim, in_chans = int(first.shape[0]), int(first.shape[1])
    read["embed_dim"] = embed_dim
    groups = _seq_len(state_dict, "layers")
    read["depth"] = [_seq_len(state_dict, f"layers.{i}.blocks") for i in range(groups)]
    read["num_heads"] = _read_heads(state_dict, len(read["depth"]), configured_heads)
    read["split_size"] = [round(s) + 1 for s in state_dict["layers.0.blocks.0.attn.attns.0.rpe_biases"][-1].tolist()]
    read["expansion_factor"] = float(state_dict["layers.0.blocks.0.ffn.fc1.weight"].shape[0]) / embed_dim
    read["qkv_bias"] = "layers.0.blocks.0.attn.qkv.bias" in state_dict
    read["resi_connection"] = "1conv" if "conv_after_body.weight" in state_dict else "3conv"
    read["upsampler"], scale = _read_upsampler(state_dict, in_chans)
    mask = next((v for k, v in state_dict.items() if k.endswith("attn.attn_mask_0")), None)
    if mask is not None:
        read["img_size"] = round(math.sqrt(int(mask.shape[0]) * int(mask.shape[1])))
    return read, scale, in_chans


def _read_heads(state_dict: dict[str, Tensor], groups: int, configured_heads: list[int]) -> list[int]:
    heads = []
    for i in range(groups):
        temperature = state_dict.get(f"layers.{i}.blocks.1.attn.temperature")
        if temperature is not None:
            heads.append(int(temperature.shape[0]))
            continue
        # a group of one block shows only each branch's heads (num_heads // 2)
        half = int(state_dict[f"layers.{i}.blocks.0.attn.attns.0.pos.pos3.2.weight"].shape[0])
        configured = configured_heads[i] if i < len(configured_heads) else None
        heads.append(configured if configured is not None and configured // 2 == half else 2 * half)
    return heads


def _read_upsampler(state_dict: dict[str, Tensor], in_chans: int) -> tuple[str, int]:
    """The upsampler's name and the scale it upscales by."""
    if "conv_last.weight" in state_dict:
        convs = [k for k in state_dict if k.startswith("upsample.") and k.endswith(".weight")]
        out = int(state_dict[convs[0]].shape[0]) // NUM_FEAT if convs else 0
        return "pixelshuffle", 3 if out == 9 else 2 ** len(convs)
    return "pixelshuffledirect", round(math.sqrt(int(state_dict["upsample.0.weight"].shape[0]) // in_chans))


def _check_fits_id(arch: dict[str, Any], read: dict[str, Any], scale: int, in_chans: int) -> None:
    problems = []
    if scale != arch.get("upscale", 2):
        problems.append(f"it upscales x{scale}, this id x{arch.get('upscale', 2)}")
    if in_chans != arch.get("in_chans", 3):
        problems.append(f"it takes {in_chans} channels, this id {arch.get('in_chans', 3)}")
    grid = max(arch.get("split_size", read["split_size"]))
    if grid % max(read["split_size"]):
        problems.append(f"its {read['split_size'][0]}x{read['split_size'][1]} windows do not divide this id's window grid of {grid} px")
    if problems:
        raise ValueError(f"a DAT checkpoint that does not fit this model id: {'; '.join(problems)}")


def _check_loads(arch: dict[str, Any], state_dict: dict[str, Tensor]) -> None:
    """ValueError unless a DAT built from `arch` has exactly the state dict's keys and shapes."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in DAT(**arch).state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(s)}" for k, s in expected.items() if k in state_dict and tuple(state_dict[k].shape) != s
    ]
    if missing or unexpected or shapes:
        listed = [
            f"{len(v)} {name} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
            for name, v in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes))
            if v
        ]
        raise ValueError(f"a DAT checkpoint whose hyperparameters cannot all be read from it: {'; '.join(listed)}")


def tiny_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """The real (rectangular) windows, 64 wide (its position-bias MLP is embed_dim / 32 wide),
    3 blocks a group: both shift schedules run (block 2 of even groups, block 0 of odd ones)."""
    groups = min(len(arch["depth"]), 2)
    return {**arch, "embed_dim": 64, "depth": [3] * groups, "num_heads": [4] * groups, "img_size": max(arch["split_size"])}


FAMILY = Family(
    name="dat",
    display_name="DAT",
    model=DAT,
    original=Original("spandrel DAT", spandrel_original("DAT")),
    reconcile_arch=reconcile_arch,
    tiny_arch=tiny_arch,
    tiny_tile=lambda arch: (2 * max(arch["split_size"]),) * 2,
)
