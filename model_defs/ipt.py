"""IPT: Pre-Trained Image Processing Transformer.

Hanting Chen, Yunhe Wang, Tianyu Guo, Chang Xu, Yiping Deng, Zhenhua Liu, Siwei Ma, Chunjing Xu,
Chao Xu, Wen Gao. CVPR 2021. https://arxiv.org/abs/2012.00364 — official PyTorch code:
https://github.com/huawei-noah/Pretrained-IPT (inference only). That repository has no LICENSE
file; its "THIRD PARTY OPEN SOURCE SOFTWARE NOTICE" lists EDSR-PyTorch (MIT) and DETR
(Apache-2.0), from which its code derives, and the official MindSpore implementation
(mindspore-ai/models, research/cv/IPT) is Apache-2.0. Check before redistributing weights.

An export-friendly re-implementation (our own code). A model holds ONE task: one head, one tail
and one row of the task queries, with the keys, order and shapes of the original built for a
single scale, so single-task files load with strict=True; `select_task` cuts a multi-task file
(e.g. the pre-training one) down to that layout. What changes for deployment:
- the body's F.unfold / F.fold with kernel = stride = patch_dim (Im2Col / Col2Im in ONNX, which
  TensorRT cannot run) become reshape + permute: the same tokens in the same order, exactly;
- nn.MultiheadAttention becomes explicit matmuls over the same parameters (`in_proj_weight`,
  `out_proj.weight`; IPT builds its attention without biases), on batch-first tokens instead of
  the original's sequence-first layout; equal up to float rounding;
- the task is fixed at construction: the original picks head, tail and query row at run time
  (`set_scale(idx)`), which would be dynamic indexing in a graph;
- input and output are in [0, 1]: the scaling to [0, rgb_range] that the official test feeds the
  model (images as 0..255 floats) and the division back happen inside forward;
- dropout layers are gone (inference only), as is the body's `con=True` output (the tokens before
  folding, for the pre-training contrastive loss);
- shapes are Python ints, so a traced graph has no shape arithmetic.
The network only accepts patch_size x patch_size inputs (48 for every official file): the
position and query embeddings and the fold are sized for that one tile. The official test runs
whole images through `forward_chop` (48-px tiles at a stride of 12, overlaps averaged) and then
clamps and rounds; that tiling is outside this graph, and the output here is unclamped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model_defs.family import EntryLike, Family, Original, spandrel_original
from model_defs.layers import PixelShuffleUpsample, static_shape

RGB_MEAN = (0.4488, 0.4371, 0.4040)
QUERY_KEY = "body.query_embed.weight"
# Task layout of the multi-task pre-training file (scale 2+3+4+1+1+1, num_queries 6). The order of
# the three x1 tasks is the one of the official MindSpore training code (its task_id / data
# generator: 3 derain, 4 noise sigma 30, 5 noise sigma 50); the PyTorch repository does not say.
PRETRAIN_TASKS = ("sr x2", "sr x3", "sr x4", "derain", "denoise sigma 30", "denoise sigma 50")


class MeanShift(nn.Conv2d):
    """1x1 conv adding sign * rgb_range * mean per channel (`weight`, `bias` as in the original)."""

    def __init__(self, rgb_range: float, sign: int = -1):
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(RGB_MEAN))
        self.requires_grad_(False)


class ResBlock(nn.Module):
    """conv, ReLU, conv (`body.0`, `body.2`) plus the input."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        padding = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, padding=padding),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size, padding=padding),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention(bias=False) on batch-first tokens, as plain matmuls.

    `in_proj_weight` stacks the query, key and value projections (3*dim, dim), as in torch.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        b, n, dim = static_shape(query)
        m = static_shape(key)[1]
        head_dim = dim // self.num_heads
        w_q, w_k, w_v = self.in_proj_weight[:dim], self.in_proj_weight[dim : 2 * dim], self.in_proj_weight[2 * dim :]
        q = F.linear(query, w_q).reshape(b, n, self.num_heads, head_dim).transpose(1, 2)
        k = F.linear(key, w_k).reshape(b, m, self.num_heads, head_dim).transpose(1, 2)
        v = F.linear(value, w_v).reshape(b, m, self.num_heads, head_dim).transpose(1, 2)
        # the same scaling as torch's multi_head_attention_forward: q * sqrt(1 / head_dim)
        attn = (q * math.sqrt(1.0 / head_dim)) @ k.transpose(-2, -1)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, dim)
        return self.out_proj(out)


def _norm(dim: int, no_norm: bool) -> nn.Module:
    return nn.Identity() if no_norm else nn.LayerNorm(dim)


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    """Pre-norm self-attention and feed-forward (DETR style); `pos` is added to queries and keys."""

    def __init__(self, dim: int, num_heads: int, hidden: int, no_norm: bool):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = _norm(dim, no_norm)
        self.norm2 = _norm(dim, no_norm)

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        normed = self.norm1(x)
        query_key = _with_pos(normed, pos)
        x = x + self.self_attn(query_key, query_key, normed)
        return x + self.linear2(F.relu(self.linear1(self.norm2(x))))


class TransformerDecoderLayer(nn.Module):
    """Pre-norm self-attention, cross-attention to the encoder output, feed-forward.

    The task query embedding (`query_pos`) is added to the queries (and self-attention keys).
    """

    def __init__(self, dim: int, num_heads: int, hidden: int, no_norm: bool):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads)
        self.multihead_attn = MultiheadAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = _norm(dim, no_norm)
        self.norm2 = _norm(dim, no_norm)
        self.norm3 = _norm(dim, no_norm)

    def forward(self, x: Tensor, memory: Tensor, pos: Tensor | None, query_pos: Tensor | None) -> Tensor:
        normed = self.norm1(x)
        query_key = _with_pos(normed, query_pos)
        x = x + self.self_attn(query_key, query_key, normed)
        normed = self.norm2(x)
        x = x + self.multihead_attn(_with_pos(normed, query_pos), _with_pos(memory, pos), memory)
        return x + self.linear2(F.relu(self.linear1(self.norm3(x))))


class TransformerEncoder(nn.Module):
    def __init__(self, num_layers: int, dim: int, num_heads: int, hidden: int, no_norm: bool):
        super().__init__()
        self.layers = nn.ModuleList(TransformerEncoderLayer(dim, num_heads, hidden, no_norm) for _ in range(num_layers))

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, pos)
        return x


class TransformerDecoder(nn.Module):
    def __init__(self, num_layers: int, dim: int, num_heads: int, hidden: int, no_norm: bool):
        super().__init__()
        self.layers = nn.ModuleList(TransformerDecoderLayer(dim, num_heads, hidden, no_norm) for _ in range(num_layers))

    def forward(self, x: Tensor, memory: Tensor, pos: Tensor | None = None, query_pos: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, memory, pos, query_pos)
        return x


class LearnedPositionalEncoding(nn.Module):
    """One learned embedding per token position (`pe`); `position_ids` is arange(seq_length)."""

    def __init__(self, seq_length: int, dim: int):
        super().__init__()
        self.pe = nn.Embedding(seq_length, dim)
        self.register_buffer("position_ids", torch.arange(seq_length).unsqueeze(0))

    def forward(self) -> Tensor:
        # looking up arange(seq_length) returns the table itself: no Gather in the graph. The
        # buffer stays for checkpoint compatibility (and a loaded one can be compared with ours).
        return self.pe.weight.unsqueeze(0)


def patches_to_tokens(x: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, (H/p)*(W/p), C*p*p): F.unfold(kernel = stride = p) transposed, exactly."""
    b, c, h, w = static_shape(x)
    rows, cols = h // patch, w // patch
    x = x.reshape(b, c, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, rows * cols, c * patch * patch)


def tokens_to_patches(tokens: Tensor, patch: int, size: tuple[int, int]) -> Tensor:
    """The inverse: F.fold(kernel = stride = p) of the transposed tokens (no overlaps, no sums)."""
    b, _, dim = static_shape(tokens)
    c = dim // (patch * patch)
    rows, cols = size[0] // patch, size[1] // patch
    x = tokens.reshape(b, rows, cols, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, size[0], size[1])


class VisionTransformer(nn.Module):
    """The body: patch_dim x patch_dim patches as tokens, an encoder, a task-queried decoder."""

    def __init__(
        self,
        *,
        img_dim: int,
        patch_dim: int,
        num_channels: int,
        num_heads: int,
        num_layers: int,
        num_queries: int,
        mlp: bool,
        pos_every: bool,
        no_pos: bool,
        no_norm: bool,
    ):
        super().__init__()
        dim = num_channels * patch_dim * patch_dim  # the token width is also the embedding width
        if dim % num_heads:
            raise ValueError(f"n_feats * patch_dim**2 = {dim} is not divisible by num_heads = {num_heads}")
        if img_dim % patch_dim:
            raise ValueError(f"patch_size {img_dim} is not a multiple of patch_dim {patch_dim}")
        self.img_dim = img_dim
        self.patch_dim = patch_dim
        self.dim = dim
        self.seq_length = (img_dim // patch_dim) ** 2
        self.mlp = mlp
        self.pos_every = pos_every
        self.no_pos = no_pos
        hidden = 4 * dim
        if mlp:
            self.linear_encoding = nn.Linear(dim, dim)
            # Identity where the original has Dropout, so the second Linear keeps the key mlp_head.3
            self.mlp_head = nn.Sequential(nn.Linear(dim, hidden), nn.Identity(), nn.ReLU(), nn.Linear(hidden, dim))
            self.query_embed = nn.Embedding(num_queries, dim * self.seq_length)
        self.encoder = TransformerEncoder(num_layers, dim, num_heads, hidden, no_norm)
        self.decoder = TransformerDecoder(num_layers, dim, num_heads, hidden, no_norm)
        if not no_pos:
            self.position_encoding = LearnedPositionalEncoding(self.seq_length, dim)

    def forward(self, x: Tensor) -> Tensor:
        size = static_shape(x)[2:]
        if size != (self.img_dim, self.img_dim):
            raise ValueError(f"IPT takes {self.img_dim}x{self.img_dim} tiles (its patch_size), got {size[0]}x{size[1]}")
        tokens = patches_to_tokens(x, self.patch_dim)
        query_pos = None
        if self.mlp:
            tokens = self.linear_encoding(tokens) + tokens
            # row 0: the original indexes the rows with the task index, which is 0 for one task
            query_pos = self.query_embed.weight[:1].reshape(1, self.seq_length, self.dim)
        pos = None if self.no_pos else self.position_encoding()
        if pos is None or self.pos_every:
            memory = self.encoder(tokens, pos)
            tokens = self.decoder(memory, memory, pos, query_pos)
        else:
            memory = self.encoder(tokens + pos)
            tokens = self.decoder(memory, memory, None, query_pos)
        if self.mlp:
            tokens = self.mlp_head(tokens) + tokens
        return tokens_to_patches(tokens, self.patch_dim, size)


def _single_scale(scale: int | Sequence[int]) -> int:
    if isinstance(scale, int):
        return scale
    scales = list(scale)
    if len(scales) != 1:
        raise ValueError(f"this IPT holds one task, got scale={scales}; pick one with select_task()")
    return int(scales[0])


class IPT(nn.Module):
    """IPT for one task: x2/x3/x4 super-resolution, or (scale 1) denoising or deraining.

    Keyword names follow the original constructor (spandrel's port) so one hyperparameter table
    serves both; `scale` is one int or a one-element list. The official files all use the
    defaults except `scale` (and num_queries=6 in the pre-training file, which select_task
    reduces to 1). `dropout_rate` is accepted and ignored (inference only). num_heads and
    pos_every show nowhere in a checkpoint: they must come from the table (12, False).
    Input NCHW RGB in [0, 1], exactly patch_size x patch_size; output `scale` times larger, in
    [0, 1] scale, unclamped.
    """

    def __init__(
        self,
        *,
        patch_size: int = 48,
        patch_dim: int = 3,
        n_feats: int = 64,
        rgb_range: float = 255,
        n_colors: int = 3,
        scale: int | Sequence[int] = 1,
        num_heads: int = 12,
        num_layers: int = 12,
        num_queries: int = 1,
        dropout_rate: float = 0.0,
        mlp: bool = True,
        pos_every: bool = False,
        no_pos: bool = False,
        no_norm: bool = False,
    ):
        super().__init__()
        if n_colors != 3:
            raise ValueError(f"IPT's mean shift is RGB only (n_colors=3), got n_colors={n_colors}")
        upscale = _single_scale(scale)
        self.scale = upscale
        self.rgb_range = rgb_range
        self.patch_size = patch_size
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        # one-element ModuleLists: the official keys are head.<task>.*, tail.<task>.*
        self.head = nn.ModuleList([nn.Sequential(nn.Conv2d(n_colors, n_feats, 3, padding=1), ResBlock(n_feats, 5), ResBlock(n_feats, 5))])
        self.body = VisionTransformer(
            img_dim=patch_size,
            patch_dim=patch_dim,
            num_channels=n_feats,
            num_heads=num_heads,
            num_layers=num_layers,
            num_queries=num_queries,
            mlp=mlp,
            pos_every=pos_every,
            no_pos=no_pos,
            no_norm=no_norm,
        )
        # scale 1 gives an empty upsampler: the tail is then just the last conv (key tail.0.1)
        self.tail = nn.ModuleList([nn.Sequential(PixelShuffleUpsample(upscale, n_feats), nn.Conv2d(n_feats, n_colors, 3, padding=1))])

    def forward(self, x: Tensor) -> Tensor:
        x = self.sub_mean(x * self.rgb_range)
        x = self.head[0](x)
        x = self.tail[0](self.body(x) + x)
        return self.add_mean(x) / self.rgb_range


def _tail_scale(state_dict: dict[str, Tensor], task: int) -> int:
    """A tail's upscale, from its pixel-shuffle convs (out = r*r*in channels); 1 when it has none."""
    scale = 1
    pattern = re.compile(rf"tail\.{task}\.0\.(\d+)\.weight$")
    for key, value in state_dict.items():
        if pattern.match(key):
            scale *= math.isqrt(value.shape[0] // value.shape[1])
    return scale


def _task_numbers(state_dict: dict[str, Tensor], part: str) -> set[int]:
    pattern = re.compile(rf"{part}\.(\d+)\.")
    return {int(match.group(1)) for key in state_dict if (match := pattern.match(key))}


def select_task(state_dict: dict[str, Tensor], task_index: int, num_tasks: int | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """One task of an official IPT state dict, in our single-task layout, and what was left out.

    Official files hold one head (`head.<i>.*`), one tail (`tail.<i>.*`) and one row of
    `body.query_embed.weight` per task; the original runs task i with head i, tail i and query
    row i (its `set_scale(i)`: the same index `idx_scale` for all three, the position of the
    task in the `--scale` list). The pre-training file has six tasks, scales [2, 3, 4, 1, 1, 1]
    (see PRETRAIN_TASKS); the fine-tuned files have one, so their task is 0.

    Returns (state dict with head.0.*, tail.0.*, the query row `task_index` as the only row and
    every other key unchanged, in the input order; {left-out input key: reason}). The other query
    rows go with the tensor they are part of, which is kept, so they are not listed.
    `num_tasks`, when given, is checked against the number of heads and tails in the file.
    """
    heads, tails = _task_numbers(state_dict, "head"), _task_numbers(state_dict, "tail")
    count = len(heads)
    if not heads or heads != tails or heads != set(range(count)):
        raise ValueError(f"not an IPT state dict with matching heads and tails: heads {sorted(heads)}, tails {sorted(tails)}")
    if num_tasks is not None and num_tasks != count:
        raise ValueError(f"expected {num_tasks} tasks, the state dict has {count}")
    if not 0 <= task_index < count:
        raise ValueError(f"task_index {task_index} is out of range: the state dict has {count} task(s)")
    query = state_dict.get(QUERY_KEY)
    if query is not None and task_index >= query.shape[0]:
        raise ValueError(f"task_index {task_index} has no query row: {QUERY_KEY} has {query.shape[0]} row(s)")

    scales = {task: _tail_scale(state_dict, task) for task in heads}
    task_key = re.compile(r"(head|tail)\.(\d+)\.(.+)$")
    selected: dict[str, Tensor] = {}
    unused: dict[str, str] = {}
    for key, value in state_dict.items():
        match = task_key.match(key)
        if match:
            part, task, rest = match.group(1), int(match.group(2)), match.group(3)
            if task == task_index:
                selected[f"{part}.0.{rest}"] = value
            else:
                unused[key] = f"{part} of task {task} (x{scales[task]}); this export is task {task_index}"
        elif key == QUERY_KEY:
            # a copy, so that saving the result does not save the other rows' storage with it
            selected[key] = value[task_index : task_index + 1].clone()
        else:
            selected[key] = value
    return selected, unused


def reconcile_arch(arch: dict[str, Any], state_dict: dict[str, Tensor]) -> dict[str, Any]:
    # rgb_range scales the input inside forward but shows in a checkpoint only as the values (not
    # the shapes) of the mean-shift biases, which strict loading cannot check: read it from them,
    # as spandrel does. num_queries: a single-task file may keep several query rows; row 0 is used.
    bias = state_dict.get("sub_mean.bias")
    if bias is not None:
        arch["rgb_range"] = round(float((-bias / torch.tensor(RGB_MEAN, dtype=bias.dtype)).mean()))
    query = state_dict.get(QUERY_KEY)
    if query is not None:
        arch["num_queries"] = int(query.shape[0])
    return arch


def select_task_weights(state_dict: dict[str, Tensor], task_index: int) -> tuple[dict[str, Tensor], dict[str, str]]:
    """What the pipeline loads: a single-task file as it is (its task is 0), a multi-task file
    (the pre-training one) cut to `task_index` (this model id's place in PRETRAIN_TASKS).

    The unused report also names the other tasks' rows of the query embedding, by row.
    """
    tasks = len(_task_numbers(state_dict, "head"))
    if tasks <= 1:
        return select_task(state_dict, 0)
    selected, unused = select_task(state_dict, task_index)
    query = state_dict.get(QUERY_KEY)
    names = PRETRAIN_TASKS if tasks == len(PRETRAIN_TASKS) else None
    for row in range(query.shape[0] if query is not None else 0):
        if row != task_index:
            task = f" ({names[row]})" if names else ""
            unused[f"{QUERY_KEY}[{row}]"] = f"query of task {row}{task}; this export is task {task_index}"
    return selected, unused


class IptReference(torch.nn.Module):
    """spandrel's IPT called as spandrel calls it: on [0, rgb_range] values, whole images through
    the official forward_chop (48 px tiles at a stride of 12, the central parts averaged).

    Unclamped, unlike spandrel's call and the official test, so that every backend is compared
    on the same unclamped output.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb_range, patch = self.model.rgb_range, self.model.patch_size
        if tuple(x.shape[-2:]) == (patch, patch):
            return self.model(x * rgb_range) / rgb_range
        from spandrel.architectures.IPT import Model

        if x.shape[0] != 1 or min(x.shape[-2:]) < patch:
            raise ValueError(f"IPT's forward_chop takes one image of at least {patch}x{patch} px, got {tuple(x.shape)}")
        self.model.set_scale(0)
        return Model(self.model).forward_chop(x * rgb_range) / rgb_range


def as_official_test(model: nn.Module, entry: EntryLike) -> nn.Module:
    return IptReference(model)


def tiny_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """The real 48 px tile (256 tokens of 3x3 patches), narrower (8 * 9 = 72 wide) and 2 layers deep."""
    return {**arch, "n_feats": 8, "num_heads": 4, "num_layers": 2}


FAMILY = Family(
    name="ipt",
    display_name="IPT",
    model=IPT,
    original=Original("spandrel IPT (whole images through its forward_chop)", spandrel_original("IPT"), as_official_test),
    reconcile_arch=reconcile_arch,
    select_task_weights=select_task_weights,
    tiny_arch=tiny_arch,
)
