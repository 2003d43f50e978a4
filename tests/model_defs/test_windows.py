import pytest
import torch

from model_defs.windows import (
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
