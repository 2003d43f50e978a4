#pragma once
// Images as float32 HWC samples in [0, 1], RGB order, read and written as the Python CLI does
// (deploytool/images.py): 8- and 16-bit, gray / RGB with an optional alpha channel.
#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

namespace deploytool {

// float32 samples in row-major HWC order.
struct Pixels {
  int height = 0, width = 0, channels = 0;
  std::vector<float> values;

  Pixels() = default;
  Pixels(int h, int w, int c) : height(h), width(w), channels(c), values(std::size_t(h) * w * c, 0.0f) {}
  float& at(int y, int x, int c) { return values[(std::size_t(y) * width + x) * channels + c]; }
  float at(int y, int x, int c) const { return values[(std::size_t(y) * width + x) * channels + c]; }
  bool empty() const { return values.empty(); }
};

struct Image {
  Pixels pixels;  // C is 1 (gray) or 3 (RGB)
  Pixels alpha;   // C is 1; empty when the image has no alpha
  int bit_depth = 8;
  std::string path;

  bool has_alpha() const { return !alpha.empty(); }
  std::string mode() const;  // "gray", "rgb", "gray+alpha", "rgba"
};

// PNG (any bit depth and colour type, as OpenCV's IMREAD_UNCHANGED reads it) or baseline/progressive JPEG.
Image read_image(const std::filesystem::path& path);

// Writes PNG atomically (a temporary file beside `path`, then one rename): samples clipped to
// [0, 1] and rounded to the nearest 8- or 16-bit level; gray+alpha is stored as RGBA, as the
// Python CLI stores it. The bytes equal deploytool/runtime/png.py's for the same samples.
void write_image(const std::filesystem::path& path, const Pixels& pixels, const Pixels* alpha, int bit_depth);
inline void write_image(const std::filesystem::path& path, const Image& image) {
  write_image(path, image.pixels, image.has_alpha() ? &image.alpha : nullptr, image.bit_depth);
}

// The most data one PNG chunk may hold (its length field is 31 bits); deploytool/runtime/png.py's too.
constexpr std::size_t kMaxIdatBytes = 2147483647;
// PNG bytes of integer samples (uint8 or big-endian-agnostic uint16 values), HWC with 1-4
// channels; the compressed stream is cut into IDAT chunks of at most `max_idat_bytes`.
std::vector<unsigned char> encode_png(const std::vector<unsigned short>& samples, int height, int width, int channels, int bit_depth,
                                      std::size_t max_idat_bytes = kMaxIdatBytes);

// `pixels` with exactly `channels` channels for `model_id`: gray is replicated for RGB models,
// RGB is refused by gray models (the conversion is the user's call).
Pixels fit_channels(const Pixels& pixels, int channels, const std::string& model_id, const std::string& path);
// `pixels` with `channels` channels: 3 -> 1 by averaging, 1 -> 3 by replicating.
Pixels restore_channels(const Pixels& pixels, int channels);
// An HW alpha upscaled by an integer `scale` with OpenCV's bicubic, clipped to [0, 1].
Pixels resize_alpha(const Pixels& alpha, int scale);

}  // namespace deploytool
