import pytest
import torch

from model_defs.windows import (
    ShiftMasks,
    biased_attention,
    last_window_masks,
    pad_to_multiple,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)


def original_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """The mask as the official SwinIR computes it (torch, slice assignment)."""
    img_mask = torch.zeros((1, h, w, 1))
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    count = 0
    for hs in slices:
        for ws in slices:
            img_mask[:, hs, ws, :] = count
            count += 1
    windows = img_mask.view(1, h // window, window, w // window, window, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


@pytest.mark.parametrize("h,w,window", [(16, 16, 8), (24, 40, 8), (14, 28, 7), (64, 48, 16)])
def test_shifted_window_mask_matches_original(h, w, window):
    assert torch.equal(shifted_window_mask(h, w, window, window // 2), original_mask(h, w, window, window // 2))


@pytest.mark.parametrize("h,w,window", [(8, 8, 8), (16, 24, 8), (64, 48, 16)])
def test_the_window_mask_masks_what_the_original_masks_in_every_image(h, w, window):
    """Built from the last row's and the last column's masks, for a batch of two images: -100
    or -200 exactly where the original's mask is -100 (softmax gives both the same zero weight)."""
    mask = ShiftMasks(*last_window_masks(window)).window_mask(2, h // window, w // window)
    expected = original_mask(h, w, window, window // 2).repeat(2, 1, 1)
    assert mask.shape == (expected.shape[0], 1, *expected.shape[1:])
    assert torch.equal(mask[:, 0] < -50, expected != 0)
    assert set(mask.unique().tolist()) <= {0.0, -100.0, -200.0}


def test_masked_attention_is_the_originals():
    """The original adds the position bias, then views the scores per image to add its
    (windows, tokens, tokens) mask; the window mask is added to the 4-D scores directly."""
    images, heads, window, (h, w) = 2, 3, 4, (8, 12)
    windows, tokens = images * (h // window) * (w // window), window * window
    q, k, v = (torch.randn(windows, heads, tokens, 5) for _ in range(3))
    bias = torch.randn(heads, tokens, tokens)
    mask = ShiftMasks(*last_window_masks(window)).window_mask(images, h // window, w // window)
    scores = (q * 0.5) @ k.transpose(-2, -1) + bias.unsqueeze(0)
    scores = scores.view(images, windows // images, heads, tokens, tokens) + original_mask(h, w, window, window // 2)[None, :, None]
    expected = scores.view(windows, heads, tokens, tokens).softmax(dim=-1) @ v
    torch.testing.assert_close(biased_attention(q, k, v, 0.5, bias, mask), expected, rtol=0, atol=1e-6)


def test_partition_and_reverse_round_trip():
    x = torch.randn(2, 24, 16, 5)
    windows = window_partition(x, 8)
    assert windows.shape == (2 * 3 * 2, 64, 5)
    assert torch.equal(windows[1].reshape(8, 8, 5), x[0, 0:8, 8:16])
    assert torch.equal(window_reverse(windows, 8, 24, 16), x)


def test_relative_position_index_is_symmetric_around_the_centre():
    index = relative_position_index(3)
    assert index.shape == (9, 9)
    assert index.diagonal().unique().tolist() == [12]  # the centre of the 5x5 table
    assert index.max() == 24 and index.min() == 0


def test_pad_to_multiple_is_a_no_op_when_aligned():
    x = torch.randn(1, 3, 16, 24)
    assert pad_to_multiple(x, 8) is x
    assert pad_to_multiple(torch.randn(1, 3, 17, 20), 8).shape == (1, 3, 24, 24)
