"""The ESRT parity reference (model_defs/reference/esrt.py): keys, checkpoints, shapes, helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from model_defs.reference.esrt import (
    ESRT,
    EffAttention,
    extract_image_patches,
    reverse_patches,
    same_padding,
)

SHARED = Path(__file__).resolve().parents[3] / "shared"
WEIGHTS = SHARED / "weights"
X2_PARAMETERS = 677_783


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions are far slower with 2 threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_checkpoint(name: str) -> dict[str, torch.Tensor]:
    path = WEIGHTS / name
    if not path.is_file():
        pytest.skip("../shared/weights is not present")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


@pytest.mark.parametrize("epoch", [10, 20])
def test_real_x2_checkpoint_loads_strictly(epoch):
    state = load_checkpoint(f"esrt_x2_partial_epoch{epoch}.pth")
    model = ESRT(upscale=2)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert list(model.state_dict()) == list(state)  # same key order as the official module tree
    assert sum(v.numel() for v in state.values()) == X2_PARAMETERS


def test_x2_parameter_count():
    model = ESRT(upscale=2)
    assert sum(p.numel() for p in model.parameters()) == X2_PARAMETERS
    assert not list(model.buffers())
    keys = list(model.state_dict())
    assert keys[0] == "up.0.0.weight" and keys[-1] == "reduce.bias"
    assert "body.0.attention.atten.reduce.weight" in keys and "body.0.encoder1.decoder_low.weight1.scale" in keys


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_forward_shapes_and_finite(scale):
    torch.manual_seed(0)
    model = ESRT(upscale=scale).eval()
    generator = torch.Generator().manual_seed(scale)
    for shape in [(1, 3, 24, 24), (1, 3, 13, 10)]:  # 13*10 % 4 != 0: a fifth, shorter attention chunk
        x = torch.rand(shape, generator=generator)  # official range [0, 1]
        with torch.no_grad():
            y = model(x)
        assert y.shape == (1, 3, shape[2] * scale, shape[3] * scale)
        assert torch.isfinite(y).all()


def test_real_x2_checkpoint_beats_bicubic_on_a_zero_one_input():
    """The checkpoint expects [0, 1] RGB with no mean shift: it then clearly beats bicubic."""
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    state = load_checkpoint("esrt_x2_partial_epoch20.pth")
    lr_path = SHARED / "testsets" / "Set5" / "LR_bicubic" / "X2" / "butterflyx2.png"
    hr_path = SHARED / "testsets" / "Set5" / "HR" / "butterfly.png"
    if not (lr_path.is_file() and hr_path.is_file()):
        pytest.skip("../shared/testsets/Set5 is not present")
    lr = cv2.imread(str(lr_path), cv2.IMREAD_COLOR)[40:72, 40:72, ::-1] / 255.0
    hr = cv2.imread(str(hr_path), cv2.IMREAD_COLOR)[80:144, 80:144, ::-1] / 255.0
    x = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1)[None].float()
    hr_t = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1)[None].float()
    model = ESRT(upscale=2).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        sr = model(x).clamp(0, 1)
    bicubic = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)

    def psnr(a):
        mse = (a - hr_t)[..., 4:-4, 4:-4].pow(2).mean()
        return (10 * torch.log10(1 / mse)).item()

    assert psnr(sr) > psnr(bicubic) + 2.0  # measured: 33.3 dB against 28.0 dB


def test_same_padding_follows_tensorflow_same():
    x = torch.ones(1, 1, 5, 6)
    # 3x3 stride 1: one pixel everywhere, whatever the size.
    assert same_padding(x, [3, 3], [1, 1], [1, 1]).shape == (1, 1, 7, 8)
    # 3x3 stride 2: rows 5 -> 3 outputs, total 2 -> (1, 1); cols 6 -> 3 outputs, total 1 -> (0, 1).
    padded = same_padding(x, [3, 3], [2, 2], [1, 1])
    assert padded.shape == (1, 1, 7, 7)
    assert padded[0, 0, 0].sum() == 0 and padded[0, 0, -1].sum() == 0  # a zero row above and below
    assert padded[0, 0, :, 0].sum() == 5 and padded[0, 0, :, -1].sum() == 0  # none left, one right


def test_unfold_layout_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    patches = extract_image_patches(x, [3, 3], [1, 1], [1, 1], padding="same")
    assert patches.shape == (1, 9, 4)
    # Column l is the zero-padded 3x3 neighbourhood of pixel l (raster order), row-major.
    expected = torch.tensor(
        [
            [0, 0, 0, 0, 1, 2, 0, 3, 4],  # pixel (0, 0)
            [0, 0, 0, 1, 2, 0, 3, 4, 0],  # pixel (0, 1)
            [0, 1, 2, 0, 3, 4, 0, 0, 0],  # pixel (1, 0)
            [1, 2, 0, 3, 4, 0, 0, 0, 0],  # pixel (1, 1)
        ],
        dtype=torch.float32,
    ).T
    torch.testing.assert_close(patches[0], expected, rtol=0, atol=0)
    # Channel-major feature index: c * 9 + ky * 3 + kx.
    two = torch.cat([x, 10 * x], dim=1)
    p2 = extract_image_patches(two, [3, 3], [1, 1], [1, 1], padding="same")
    torch.testing.assert_close(p2[0, :9], expected, rtol=0, atol=0)
    torch.testing.assert_close(p2[0, 9:], 10 * expected, rtol=0, atol=0)


def test_fold_of_unfold_counts_the_covering_windows():
    """Fold(3x3, stride 1, padding 1) sums overlaps: Fold(Unfold(x)) = x * (#windows covering)."""
    h, w = 5, 7
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    folded = reverse_patches(extract_image_patches(x, [3, 3], [1, 1], [1, 1], "same"), (h, w), (3, 3), 1, 1)

    def covering(n):  # windows of the 1-padded axis containing index i
        return torch.tensor([1 + min(i, 1) + min(n - 1 - i, 1) for i in range(n)], dtype=torch.float32)

    count = covering(h)[:, None] * covering(w)[None, :]
    assert count[0, 0] == 4 and count[0, 3] == 6 and count[2, 3] == 9
    torch.testing.assert_close(folded, x * count, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n_tokens", [12, 10, 7])
def test_attention_is_block_diagonal_over_chunks_of_n_over_4(n_tokens):
    """EMHA equals masked full attention where tokens attend only within their N // 4 chunk."""
    torch.manual_seed(0)
    dim, heads = 32, 8
    attention = EffAttention(dim, num_heads=heads).eval()
    x = torch.randn(2, n_tokens, dim, generator=torch.Generator().manual_seed(n_tokens))
    with torch.no_grad():
        actual = attention(x)
        reduced = attention.reduce(x)
        q, k, v = attention.qkv(reduced).reshape(2, n_tokens, 3, heads, dim // 2 // heads).permute(2, 0, 3, 1, 4)
        chunk_of = torch.arange(n_tokens) // (n_tokens // 4)
        mask = torch.where(chunk_of[:, None] == chunk_of[None, :], 0.0, float("-inf"))
        scale = (dim // heads) ** -0.5  # of the unreduced dim, as officially
        out = F.softmax(q @ k.transpose(-2, -1) * scale + mask, dim=-1) @ v
        expected = attention.proj(out.transpose(1, 2).reshape(2, n_tokens, dim // 2))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
