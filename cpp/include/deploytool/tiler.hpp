#pragma once
// Running a static-shape backend over images of any size, tile by tile, exactly as
// deploytool/tiling.py and deploytool/inference.py do (same grid, padding, weights and float32
// arithmetic, so the same pixels). Memory is bounded by one row of tiles, never the image's tiles.
#include <functional>
#include <vector>

#include "deploytool/backend.hpp"
#include "deploytool/image.hpp"

namespace deploytool {

struct TileOptions {
  int tile_h = 0, tile_w = 0;
  int scale = 1;
  int batch = 1;
  int overlap = 0;  // input pixels, in [0, min(tile))
  int trim = 0;     // > 0: centre-trim blend (capped at overlap / 2); 0: linear ramps over the overlap
};

int round_up(int value, int multiple);
// Start offsets of tiles of length `tile` covering [0, size), the last ending at `size`.
std::vector<int> tile_starts(int size, int tile, int overlap);
int count_tiles(int height, int width, int tile_h, int tile_w, int overlap);
// The overlap rounded up to a window multiple, and kept below the tile.
int aligned_overlap(int overlap, int multiple, int tile_h, int tile_w);
// `pixels` padded bottom/right to a multiple (reflect; edge where the image is too small).
Pixels window_aligned(const Pixels& pixels, int multiple);
// 1-D blend weights of a tile edge-to-edge (the output tile's length), as tiling.py's windows.
std::vector<float> ramp_window(int length, int ramp, bool before, bool after);
std::vector<float> centre_window(int length, int trim, bool before, bool after);

// `image` through `backend` in tiles; returns the top-left `crop_h` x `crop_w` of the upscaled
// result (0: all of it), HWC with the backend's output channels. `on_tiles(n)` follows each batch.
Pixels run_tiled(const Pixels& image, Backend& backend, const TileOptions& options, int crop_h = 0, int crop_w = 0,
                 const std::function<void(int)>& on_tiles = {});

}  // namespace deploytool
