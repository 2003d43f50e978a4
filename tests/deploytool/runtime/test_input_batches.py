"""Inputs for calibration and parity."""

import numpy as np

from deploytool.runtime.input_batches import PARITY_BATCHES, parity_batch, verify_tiles


def test_verify_tiles_at_the_graphs_tile_are_verifys_batches_tile_by_tile():
    shape = (3, 3, 16, 16)
    tiles = verify_tiles(shape, (16, 16))
    assert len(tiles) == 3 * PARITY_BATCHES and all(tile.shape == (1, 3, 16, 16) for tile in tiles)
    batches = [parity_batch(shape, index) for index in range(PARITY_BATCHES)]
    np.testing.assert_array_equal(np.concatenate(tiles), np.concatenate(batches))
    smaller = verify_tiles(shape, (8, 8))
    assert len(smaller) == 6 and all(tile.shape == (1, 3, 8, 8) for tile in smaller)
