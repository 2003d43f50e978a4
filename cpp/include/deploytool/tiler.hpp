#pragma once
// Running a static-shape backend over images of any size, tile by tile, exactly as
// deploytool/runtime/tiling.py and deploytool/runtime/inference.py do (same grid, padding, weights
// and float32 arithmetic, so the same pixels), in the same pieces: TileGrid, BlendWeights,
// BandAccumulator, TiledImage and run_tiled's batching loop. Memory is bounded by one row of
// tiles, never the image's tiles.
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

// Which edges of a tile have a neighbouring tile, and so blend with it.
struct TileEdges {
  bool top = false, bottom = false, left = false, right = false;
};

// Where the tiles of an image lie (tiling.TileGrid): tile rows start at `ys()`, columns at `xs()`,
// and tiles are numbered row by row. Along an axis where the image is smaller than the tile,
// `cut` pads each tile up to it (reflect, or edge when the image is too small to mirror).
class TileGrid {
 public:
  TileGrid(int height, int width, int tile_h, int tile_w, int overlap);
  int count() const { return int(ys_.size() * xs_.size()); }
  int row(int index) const { return index / int(xs_.size()); }
  int col(int index) const { return index % int(xs_.size()); }
  const std::vector<int>& ys() const { return ys_; }
  const std::vector<int>& xs() const { return xs_; }
  TileEdges edges(int index) const;
  // Tile `index` of `image` (HWC, the grid's size) into `tile` as CHW planes.
  void cut(const Pixels& image, int index, float* tile) const;

 private:
  void cut_row(const float* source_row, int x, int ty, float* tile, int channels) const;

  int height_, width_, tile_h_, tile_w_;
  bool reflect_h_;
  std::vector<int> ys_, xs_;
  std::vector<int> padded_columns_;  // image column of each tile column, when the image is narrower than the tile
};

// The weight of each pixel of an output tile (tiling.BlendWeights): linear ramps over the `ramp`
// output pixels of overlap at edges that have a neighbour, or with `trim` > 0, 1 on the centre
// and 0 on the `trim` pixels at those edges. Pixel (i, j) weighs row_window[i] * col_window[j].
class BlendWeights {
 public:
  BlendWeights(int out_th, int out_tw, int ramp, int trim);
  const std::vector<float>& row_window(TileEdges edges) const { return rows_[edges.top][edges.bottom]; }
  const std::vector<float>& col_window(TileEdges edges) const { return cols_[edges.left][edges.right]; }
  // All out_th x out_tw weights of a tile with these neighbours, row-major.
  std::vector<float> tile(TileEdges edges) const;

 private:
  std::vector<float> rows_[2][2], cols_[2][2];
};

// Blends output tiles into an out_h x out_w output with `channels` channels (tiling.BandAccumulator)
// through a band of `band_h` rows as wide as `band_w`: sums of weight * value and of weights.
// Tiles are added row of tiles by row of tiles; `flush(stop)` divides the rows above output row
// `stop` out into the output (what lies beyond out_h x out_w is dropped) and moves the band down
// the image to start at `stop`.
class BandAccumulator {
 public:
  BandAccumulator(int out_h, int out_w, int band_h, int band_w, int channels);
  // A CHW tile of row_window.size() x col_window.size() pixels at output row `top` (inside the
  // band) and column `left`, pixel (i, j) weighted by row_window[i] * col_window[j].
  void add(int top, int left, const float* tile, const std::vector<float>& row_window, const std::vector<float>& col_window);
  void flush(int stop);
  int band_y() const { return band_y_; }
  // The output; valid once the last row was flushed.
  Pixels take() { return std::move(output_); }

 private:
  // Offset in a plane of the band's row `r` (counted from the band's first row).
  std::size_t row_offset(int r) const { return std::size_t((first_row_ + r) % band_h_) * band_w_; }
  void write_row(int r);
  void clear_row(int r);

  Pixels output_;
  int band_h_, band_w_, band_y_ = 0;
  int first_row_ = 0;  // the band's rows are a ring: where its first row is
  std::vector<float> values_;   // [channels][band_h][band_w]
  std::vector<float> weights_;  // [band_h][band_w]
  std::vector<float> weight_row_;
};

// One image cut into tiles and the blend of their outputs back into one image (tiling.TiledImage):
// `cut(i, tile)` writes input tile i (CHW); `add(i, output)` blends its output tile in, for
// i = 0, 1, ... in order; `result()` is the output once every tile was added.
class TiledImage {
 public:
  // The output is the top-left crop_h x crop_w (at most the image's size times the scale);
  // `image` is read, not copied, and must outlive the TiledImage.
  TiledImage(const Pixels& image, const TileOptions& options, int out_channels, int crop_h, int crop_w);
  int count() const { return grid_.count(); }
  void cut(int index, float* tile) const { grid_.cut(image_, index, tile); }
  void add(int index, const float* output);
  Pixels result();

 private:
  const Pixels& image_;
  int scale_, out_th_;
  TileGrid grid_;
  BlendWeights weights_;
  BandAccumulator band_;
  int current_row_ = 0, added_ = 0;
};

// `image` through `backend` in tiles; returns the top-left `crop_h` x `crop_w` of the upscaled
// result (0: all of it), HWC with the backend's output channels. `on_tiles(n)` follows each batch.
Pixels run_tiled(const Pixels& image, Backend& backend, const TileOptions& options, int crop_h = 0, int crop_w = 0,
                 const std::function<void(int)>& on_tiles = {});

}  // namespace deploytool
