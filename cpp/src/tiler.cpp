#include "deploytool/tiler.hpp"

#include <algorithm>

#include "deploytool/errors.hpp"

namespace deploytool {
namespace {

// numpy.pad's index for position `index` of an axis of `size` samples padded at its end.
int padded_index(int index, int size, bool reflect) {
  if (index < size) return index;
  return reflect ? 2 * (size - 1) - index : size - 1;
}

// tiling._pad_mode: reflection needs at least pad + 1 pixels to mirror.
bool reflect_fits(int size, int tile) { return tile - size <= size - 1; }

// One row of HWC pixels into `channels` planes `stride` apart. A channel count known at compile
// time (kChannels > 0) lets the compiler turn the loop into vector shuffles.
template <int kChannels>
void row_to_planes(const float* pixels, int width, int channels, float* planes, std::size_t stride) {
  const int count = kChannels > 0 ? kChannels : channels;
  for (int x = 0; x < width; ++x) {
    for (int c = 0; c < count; ++c) planes[c * stride + x] = pixels[std::size_t(x) * count + c];
  }
}

void row_to_planes(const float* pixels, int width, int channels, float* planes, std::size_t stride) {
  if (channels == 3) return row_to_planes<3>(pixels, width, channels, planes, stride);
  if (channels == 1) return row_to_planes<1>(pixels, width, channels, planes, stride);
  row_to_planes<0>(pixels, width, channels, planes, stride);
}

// One row of HWC pixels from `channels` planes of weighted sums `stride` apart, divided by the weights.
template <int kChannels>
void quotients_to_row(const float* sums, std::size_t stride, const float* weights, int width, int channels, float* pixels) {
  const int count = kChannels > 0 ? kChannels : channels;
  for (int x = 0; x < width; ++x) {
    for (int c = 0; c < count; ++c) pixels[std::size_t(x) * count + c] = sums[c * stride + x] / weights[x];
  }
}

void quotients_to_row(const float* sums, std::size_t stride, const float* weights, int width, int channels, float* pixels) {
  if (channels == 3) return quotients_to_row<3>(sums, stride, weights, width, channels, pixels);
  if (channels == 1) return quotients_to_row<1>(sums, stride, weights, width, channels, pixels);
  quotients_to_row<0>(sums, stride, weights, width, channels, pixels);
}

// One row of a CHW output tile (planes `tile_plane` apart) times `weight`, added into the band's
// planes (`plane` apart), and `weight` into the weights' row.
template <int kChannels>
void add_row(const float* __restrict__ source, std::size_t tile_plane, const float* __restrict__ weight, int width, int channels,
             float* __restrict__ values, std::size_t plane, float* __restrict__ weights) {
  const int count = kChannels > 0 ? kChannels : channels;
  for (int j = 0; j < width; ++j) {
    for (int c = 0; c < count; ++c) values[c * plane + j] += source[c * tile_plane + j] * weight[j];
    weights[j] += weight[j];
  }
}

void add_row(const float* source, std::size_t tile_plane, const float* weight, int width, int channels, float* values, std::size_t plane,
             float* weights) {
  if (channels == 3) return add_row<3>(source, tile_plane, weight, width, channels, values, plane, weights);
  if (channels == 1) return add_row<1>(source, tile_plane, weight, width, channels, values, plane, weights);
  add_row<0>(source, tile_plane, weight, width, channels, values, plane, weights);
}

}  // namespace

int round_up(int value, int multiple) { return (value + multiple - 1) / multiple * multiple; }

std::vector<int> tile_starts(int size, int tile, int overlap) {
  if (tile <= 0) throw Error("tile size must be positive, got " + std::to_string(tile));
  if (overlap < 0 || overlap >= tile) {
    throw Error("overlap must be in [0, tile) = [0, " + std::to_string(tile) + "), got " + std::to_string(overlap));
  }
  if (size <= 0) throw Error("size must be positive, got " + std::to_string(size));
  if (size <= tile) return {0};
  std::vector<int> starts;
  for (int start = 0; start < size - tile; start += tile - overlap) starts.push_back(start);
  starts.push_back(size - tile);
  return starts;
}

int count_tiles(int height, int width, int tile_h, int tile_w, int overlap) {
  return int(tile_starts(height, tile_h, overlap).size() * tile_starts(width, tile_w, overlap).size());
}

int aligned_overlap(int overlap, int multiple, int tile_h, int tile_w) {
  return std::min(round_up(overlap, multiple), (std::min(tile_h, tile_w) - 1) / multiple * multiple);
}

Pixels window_aligned(const Pixels& pixels, int multiple) {
  const int height = pixels.height, width = pixels.width;
  const int padded_h = round_up(height, multiple), padded_w = round_up(width, multiple);
  if (padded_h == height && padded_w == width) return pixels;
  const bool reflect = padded_h - height < height && padded_w - width < width;
  Pixels out(padded_h, padded_w, pixels.channels);
  for (int y = 0; y < padded_h; ++y) {
    const int sy = padded_index(y, height, reflect);
    for (int x = 0; x < padded_w; ++x) {
      const int sx = padded_index(x, width, reflect);
      for (int c = 0; c < pixels.channels; ++c) out.at(y, x, c) = pixels.at(sy, sx, c);
    }
  }
  return out;
}

std::vector<float> ramp_window(int length, int ramp, bool before, bool after) {
  std::vector<float> window(length, 1.0f);
  if (ramp > 0) {
    // Half-pixel offsets keep every weight strictly positive, so the weight sum never vanishes.
    for (int i = 0; i < ramp; ++i) {
      const float rising = (float(i) + 0.5f) / float(ramp);
      if (before) window[i] = std::min(window[i], rising);
      if (after) window[length - 1 - i] = std::min(window[length - 1 - i], rising);
    }
  }
  return window;
}

std::vector<float> centre_window(int length, int trim, bool before, bool after) {
  std::vector<float> window(length, 1.0f);
  if (before) std::fill(window.begin(), window.begin() + std::min(trim, length), 0.0f);
  if (after) std::fill(window.begin() + std::max(length - trim, 0), window.end(), 0.0f);
  return window;
}

TileGrid::TileGrid(int height, int width, int tile_h, int tile_w, int overlap)
    : height_(height),
      width_(width),
      tile_h_(tile_h),
      tile_w_(tile_w),
      reflect_h_(reflect_fits(height, tile_h)),
      ys_(tile_starts(std::max(height, tile_h), tile_h, overlap)),
      xs_(tile_starts(std::max(width, tile_w), tile_w, overlap)) {
  // Narrower than the tile, the image has one column of tiles, at x = 0, and each is padded.
  if (width < tile_w) {
    const bool reflect_w = reflect_fits(width, tile_w);
    for (int tx = 0; tx < tile_w; ++tx) padded_columns_.push_back(padded_index(tx, width, reflect_w));
  }
}

TileEdges TileGrid::edges(int index) const {
  const int row = this->row(index), col = this->col(index);
  return {row > 0, row < int(ys_.size()) - 1, col > 0, col < int(xs_.size()) - 1};
}

void TileGrid::cut(const Pixels& image, int index, float* tile) const {
  const int y = ys_[row(index)], x = xs_[col(index)], channels = image.channels;
  for (int ty = 0; ty < tile_h_; ++ty) {
    const std::size_t source_y = std::size_t(padded_index(y + ty, height_, reflect_h_));
    cut_row(&image.values[source_y * width_ * channels], x, ty, tile, channels);
  }
}

void TileGrid::cut_row(const float* source_row, int x, int ty, float* tile, int channels) const {
  const std::size_t plane = std::size_t(tile_h_) * tile_w_;
  float* destination = tile + std::size_t(ty) * tile_w_;
  if (padded_columns_.empty()) {  // the common case: a contiguous run of pixels
    row_to_planes(source_row + std::size_t(x) * channels, tile_w_, channels, destination, plane);
    return;
  }
  for (int c = 0; c < channels; ++c) {
    float* plane_row = destination + c * plane;
    for (int tx = 0; tx < tile_w_; ++tx) plane_row[tx] = source_row[std::size_t(padded_columns_[tx]) * channels + c];
  }
}

BlendWeights::BlendWeights(int out_th, int out_tw, int ramp, int trim) {
  auto window = [&](int length, bool before, bool after) {
    return trim ? centre_window(length, trim, before, after) : ramp_window(length, ramp, before, after);
  };
  for (int before = 0; before < 2; ++before) {
    for (int after = 0; after < 2; ++after) {
      rows_[before][after] = window(out_th, before, after);
      cols_[before][after] = window(out_tw, before, after);
    }
  }
}

std::vector<float> BlendWeights::tile(TileEdges edges) const {
  const std::vector<float>&rows = row_window(edges), &cols = col_window(edges);
  std::vector<float> weights;
  weights.reserve(rows.size() * cols.size());
  for (float row : rows) {
    for (float col : cols) weights.push_back(row * col);
  }
  return weights;
}

BandAccumulator::BandAccumulator(int out_h, int out_w, int band_h, int band_w, int channels)
    : band_h_(band_h),
      band_w_(band_w),
      values_(std::size_t(channels) * band_h * band_w, 0.0f),
      weights_(std::size_t(band_h) * band_w, 0.0f),
      weight_row_(band_w) {
  // The output grows row by row as rows are flushed, so no pass over all of it zeroes it before it is written.
  output_.height = out_h;
  output_.width = out_w;
  output_.channels = channels;
  output_.values.reserve(std::size_t(out_h) * out_w * channels);
}

void BandAccumulator::add(int top, int left, const float* tile, const std::vector<float>& row_window, const std::vector<float>& col_window) {
  const int tile_h = int(row_window.size()), tile_w = int(col_window.size());
  const std::size_t plane = std::size_t(band_h_) * band_w_, tile_plane = std::size_t(tile_h) * tile_w;
  for (int i = 0; i < tile_h; ++i) {
    const float* weight = col_window.data();  // row_window[i] * col_window[j] is col_window[j] where row_window[i] is 1
    if (row_window[i] != 1.0f) {
      for (int j = 0; j < tile_w; ++j) weight_row_[j] = row_window[i] * col_window[j];
      weight = weight_row_.data();
    }
    const std::size_t at = row_offset(top - band_y_ + i) + left;
    add_row(tile + std::size_t(i) * tile_w, tile_plane, weight, tile_w, output_.channels, &values_[at], plane, &weights_[at]);
  }
}

void BandAccumulator::flush(int stop) {
  const int done = std::min(stop - band_y_, band_h_);
  if (done <= 0) return;
  const int final_rows = std::min(stop, output_.height) - band_y_;
  for (int r = 0; r < done; ++r) {
    if (r < final_rows) write_row(r);
    clear_row(r);
  }
  // The cleared rows become the band's last ones: it moves down the image without moving its data.
  first_row_ = (first_row_ + done) % band_h_;
  band_y_ = stop;
}

void BandAccumulator::write_row(int r) {
  const int channels = output_.channels, width = output_.width;
  const std::size_t plane = std::size_t(band_h_) * band_w_, at = row_offset(r);
  output_.values.resize(std::size_t(band_y_ + r + 1) * width * channels);
  quotients_to_row(&values_[at], plane, &weights_[at], width, channels, &output_.values[std::size_t(band_y_ + r) * width * channels]);
}

void BandAccumulator::clear_row(int r) {
  const std::size_t plane = std::size_t(band_h_) * band_w_, at = row_offset(r);
  for (int c = 0; c < output_.channels; ++c) std::fill_n(&values_[c * plane + at], band_w_, 0.0f);
  std::fill_n(&weights_[at], band_w_, 0.0f);
}

TiledImage::TiledImage(const Pixels& image, const TileOptions& options, int out_channels, int crop_h, int crop_w)
    : image_(image),
      scale_(options.scale),
      out_th_(options.tile_h * options.scale),
      grid_(image.height, image.width, options.tile_h, options.tile_w, options.overlap),
      // neighbours' centres cover a trimmed edge only while the overlap is at least two trims
      weights_(out_th_, options.tile_w * scale_, options.overlap * scale_, std::min(options.trim, options.overlap / 2) * scale_),
      // images smaller than the tile are padded (per tile) up to it; the band spans the padding
      band_(crop_h, crop_w, out_th_, std::max(image.width, options.tile_w) * scale_, out_channels) {}

void TiledImage::add(int index, const float* output) {
  if (index != added_) {
    throw Error("tile outputs must be added in order: expected tile " + std::to_string(added_) + ", got " + std::to_string(index));
  }
  const int row = grid_.row(index), top = grid_.ys()[row] * scale_;
  if (row != current_row_) {
    band_.flush(top);
    current_row_ = row;
  }
  const TileEdges edges = grid_.edges(index);
  band_.add(top, grid_.xs()[grid_.col(index)] * scale_, output, weights_.row_window(edges), weights_.col_window(edges));
  ++added_;
}

Pixels TiledImage::result() {
  if (added_ != count()) throw Error(std::to_string(added_) + " of " + std::to_string(count()) + " tile outputs were added");
  band_.flush(band_.band_y() + out_th_);
  return band_.take();
}

namespace {

void check_options(const Pixels& image, const TileOptions& options) {
  const int tile_h = options.tile_h, tile_w = options.tile_w, overlap = options.overlap;
  if (image.height < 1 || image.width < 1 || image.channels < 1) throw Error("image must have H, W, C >= 1");
  if (tile_h <= 0 || tile_w <= 0) throw Error("tile must be two positive integers");
  if (options.batch < 1) throw Error("batch must be an integer >= 1, got " + std::to_string(options.batch));
  if (options.scale < 1) throw Error("scale must be an integer >= 1, got " + std::to_string(options.scale));
  if (overlap < 0 || overlap >= std::min(tile_h, tile_w)) {
    throw Error("overlap must be an integer in [0, " + std::to_string(std::min(tile_h, tile_w)) + ") for tile " + std::to_string(tile_h) + "x" +
                std::to_string(tile_w) + ", got " + std::to_string(overlap));
  }
}

// The backend's output channels, once its shapes are checked against the tiler's batches.
int checked_out_channels(const Backend& backend, int channels, const TileOptions& options) {
  const int batch = options.batch, tile_h = options.tile_h, tile_w = options.tile_w, scale = options.scale;
  const BatchShape in_shape = backend.input_shape(), out_shape = backend.output_shape();
  if (!(in_shape == BatchShape{batch, channels, tile_h, tile_w})) {
    throw Error(backend.name() + " takes batches of " + in_shape.str() + ", the tiler makes " + BatchShape{batch, channels, tile_h, tile_w}.str());
  }
  const int out_th = tile_h * scale, out_tw = tile_w * scale;
  if (out_shape.batch != batch || out_shape.height != out_th || out_shape.width != out_tw || out_shape.channels < 1) {
    throw Error(backend.name() + " returns " + out_shape.str() + ", expected (" + std::to_string(batch) + ", C_out, " + std::to_string(out_th) +
                ", " + std::to_string(out_tw) + ") for tile " + std::to_string(tile_h) + "x" + std::to_string(tile_w) + " at scale " +
                std::to_string(scale));
  }
  return out_shape.channels;
}

// The requested crop of an axis of `full` output pixels: all of it for 0 or less, else at most all.
int crop(int requested, int full) { return requested <= 0 ? full : std::min(requested, full); }

}  // namespace

Pixels run_tiled(const Pixels& image, Backend& backend, const TileOptions& options, int crop_h, int crop_w,
                 const std::function<void(int)>& on_tiles) {
  check_options(image, options);
  const int out_channels = checked_out_channels(backend, image.channels, options), batch = options.batch, scale = options.scale;
  TiledImage tiled(image, options, out_channels, crop(crop_h, image.height * scale), crop(crop_w, image.width * scale));
  const std::size_t in_tile = std::size_t(image.channels) * options.tile_h * options.tile_w;
  const std::size_t out_tile = std::size_t(out_channels) * options.tile_h * scale * options.tile_w * scale;
  std::vector<float> inputs(batch * in_tile), outputs(batch * out_tile);
  for (int first = 0; first < tiled.count(); first += batch) {
    const int count = std::min(batch, tiled.count() - first);
    for (int slot = 0; slot < count; ++slot) tiled.cut(first + slot, &inputs[slot * in_tile]);
    // Fill the tail of the last batch with a real tile: zeros could upset normalisation layers.
    for (int slot = count; slot < batch; ++slot) {
      std::copy(inputs.begin() + (count - 1) * in_tile, inputs.begin() + count * in_tile, inputs.begin() + slot * in_tile);
    }
    backend.infer(inputs.data(), outputs.data());
    for (int slot = 0; slot < count; ++slot) tiled.add(first + slot, &outputs[slot * out_tile]);
    if (on_tiles) on_tiles(count);
  }
  return tiled.result();
}

}  // namespace deploytool
