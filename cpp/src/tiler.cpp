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

Pixels run_tiled(const Pixels& image, Backend& backend, const TileOptions& options, int crop_h, int crop_w,
                 const std::function<void(int)>& on_tiles) {
  const int tile_h = options.tile_h, tile_w = options.tile_w, scale = options.scale, batch = options.batch, overlap = options.overlap;
  if (image.height < 1 || image.width < 1 || image.channels < 1) throw Error("image must have H, W, C >= 1");
  if (tile_h <= 0 || tile_w <= 0) throw Error("tile must be two positive integers");
  if (batch < 1) throw Error("batch must be an integer >= 1, got " + std::to_string(batch));
  if (scale < 1) throw Error("scale must be an integer >= 1, got " + std::to_string(scale));
  if (overlap < 0 || overlap >= std::min(tile_h, tile_w)) {
    throw Error("overlap must be an integer in [0, " + std::to_string(std::min(tile_h, tile_w)) + ") for tile " + std::to_string(tile_h) + "x" +
                std::to_string(tile_w) + ", got " + std::to_string(overlap));
  }
  const int height = image.height, width = image.width, channels = image.channels;
  const BatchShape in_shape = backend.input_shape(), out_shape = backend.output_shape();
  if (!(in_shape == BatchShape{batch, channels, tile_h, tile_w})) {
    throw Error(backend.name() + " takes batches of " + in_shape.str() + ", the tiler makes " + BatchShape{batch, channels, tile_h, tile_w}.str());
  }
  const int out_th = tile_h * scale, out_tw = tile_w * scale, ramp = overlap * scale;
  if (out_shape.batch != batch || out_shape.height != out_th || out_shape.width != out_tw || out_shape.channels < 1) {
    throw Error(backend.name() + " returns " + out_shape.str() + ", expected (" + std::to_string(batch) + ", C_out, " + std::to_string(out_th) +
                ", " + std::to_string(out_tw) + ") for tile " + std::to_string(tile_h) + "x" + std::to_string(tile_w) + " at scale " +
                std::to_string(scale));
  }
  const int out_channels = out_shape.channels;
  if (crop_h <= 0) crop_h = height * scale;
  if (crop_w <= 0) crop_w = width * scale;
  crop_h = std::min(crop_h, height * scale);
  crop_w = std::min(crop_w, width * scale);

  // Images smaller than the tile are padded (per tile, below) up to it; the output is cropped back.
  const int pad_h = std::max(height, tile_h), pad_w = std::max(width, tile_w);
  const std::vector<int> ys = tile_starts(pad_h, tile_h, overlap), xs = tile_starts(pad_w, tile_w, overlap);
  const int rows = int(ys.size()), cols = int(xs.size());
  const bool reflect_h = reflect_fits(height, tile_h), reflect_w = reflect_fits(width, tile_w);
  // neighbours' centres cover a trimmed edge only while the overlap is at least two trims
  const int trim = std::min(options.trim, overlap / 2) * scale;
  auto window = [&](int length, bool before, bool after) {
    return trim ? centre_window(length, trim, before, after) : ramp_window(length, ramp, before, after);
  };
  std::vector<float> row_windows[2][2], col_windows[2][2];
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 2; ++b) {
      row_windows[a][b] = window(out_th, a, b);
      col_windows[a][b] = window(out_tw, a, b);
    }
  }

  Pixels result(crop_h, crop_w, out_channels);
  const std::size_t band_w = std::size_t(pad_w) * scale;
  const std::size_t plane = std::size_t(out_th) * band_w;
  std::vector<float> band_values(out_channels * plane, 0.0f);  // [C_out][out_th][band_w]: sum of weight * value
  std::vector<float> band_weights(plane, 0.0f);
  std::vector<float> weight(std::size_t(out_th) * out_tw);
  int band_y = 0, current_row = 0;

  // Normalise band rows above output row `stop` into the result and shift the band up.
  auto flush = [&](int stop) {
    const int done = stop - band_y;
    if (done <= 0) return;
    const int keep_to = std::min(stop, crop_h);
    for (int r = 0; r < keep_to - band_y; ++r) {
      float* dst = &result.values[std::size_t(band_y + r) * crop_w * out_channels];
      const float* weights_row = &band_weights[r * band_w];
      for (int c = 0; c < out_channels; ++c) {
        const float* values_row = &band_values[c * plane + r * band_w];
        for (int x = 0; x < crop_w; ++x) dst[std::size_t(x) * out_channels + c] = values_row[x] / weights_row[x];
      }
    }
    const int kept = std::max(out_th - done, 0);
    for (int c = 0; c < out_channels; ++c) {
      float* values = &band_values[c * plane];
      std::copy(values + std::size_t(out_th - kept) * band_w, values + plane, values);
      std::fill(values + std::size_t(kept) * band_w, values + plane, 0.0f);
    }
    std::copy(band_weights.begin() + std::size_t(out_th - kept) * band_w, band_weights.end(), band_weights.begin());
    std::fill(band_weights.begin() + std::size_t(kept) * band_w, band_weights.end(), 0.0f);
    band_y = stop;
  };

  std::vector<float> inputs(in_shape.elements()), outputs(out_shape.elements());
  const std::size_t in_tile = std::size_t(channels) * tile_h * tile_w, out_tile = std::size_t(out_channels) * out_th * out_tw;
  const int positions = rows * cols;
  std::vector<int> columns(tile_w);
  for (int first = 0; first < positions; first += batch) {
    const int count = std::min(batch, positions - first);
    for (int slot = 0; slot < count; ++slot) {
      const int y = ys[(first + slot) / cols], x = xs[(first + slot) % cols];
      float* dst = &inputs[slot * in_tile];
      for (int tx = 0; tx < tile_w; ++tx) columns[tx] = padded_index(x + tx, width, reflect_w);
      const bool inside = x + tile_w <= width;
      for (int ty = 0; ty < tile_h; ++ty) {
        const float* source_row = &image.values[std::size_t(padded_index(y + ty, height, reflect_h)) * width * channels];
        if (inside) {  // the common case: a contiguous run of pixels, de-interleaved into planes
          const float* source = source_row + std::size_t(x) * channels;
          for (int tx = 0; tx < tile_w; ++tx) {
            for (int c = 0; c < channels; ++c) dst[(std::size_t(c) * tile_h + ty) * tile_w + tx] = source[std::size_t(tx) * channels + c];
          }
          continue;
        }
        for (int c = 0; c < channels; ++c) {
          float* dst_row = &dst[(std::size_t(c) * tile_h + ty) * tile_w];
          for (int tx = 0; tx < tile_w; ++tx) dst_row[tx] = source_row[std::size_t(columns[tx]) * channels + c];
        }
      }
    }
    // Fill the tail of the last batch with a real tile: zeros could upset normalisation layers.
    for (int slot = count; slot < batch; ++slot) {
      std::copy(inputs.begin() + (count - 1) * in_tile, inputs.begin() + count * in_tile, inputs.begin() + slot * in_tile);
    }
    backend.infer(inputs.data(), outputs.data());

    for (int slot = 0; slot < count; ++slot) {
      const int row = (first + slot) / cols, col = (first + slot) % cols;
      if (row != current_row) {
        flush(ys[row] * scale);
        current_row = row;
      }
      const auto& row_w = row_windows[row > 0][row < rows - 1];
      const auto& col_w = col_windows[col > 0][col < cols - 1];
      for (int i = 0; i < out_th; ++i) {
        for (int j = 0; j < out_tw; ++j) weight[std::size_t(i) * out_tw + j] = row_w[i] * col_w[j];
      }
      const std::size_t top = std::size_t(ys[row] * scale - band_y), left = std::size_t(xs[col]) * scale;
      const float* tile = &outputs[slot * out_tile];
      for (int c = 0; c < out_channels; ++c) {
        for (int i = 0; i < out_th; ++i) {
          float* values = &band_values[c * plane + (top + i) * band_w + left];
          const float* source = &tile[(std::size_t(c) * out_th + i) * out_tw];
          const float* w = &weight[std::size_t(i) * out_tw];
          for (int j = 0; j < out_tw; ++j) values[j] += source[j] * w[j];
        }
      }
      for (int i = 0; i < out_th; ++i) {
        float* weights = &band_weights[(top + i) * band_w + left];
        const float* w = &weight[std::size_t(i) * out_tw];
        for (int j = 0; j < out_tw; ++j) weights[j] += w[j];
      }
    }
    if (on_tiles) on_tiles(count);
  }
  flush(band_y + out_th);
  return result;
}

}  // namespace deploytool
