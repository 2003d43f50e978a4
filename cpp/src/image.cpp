#include "deploytool/image.hpp"

// clang-format off
#include <cstdio>
#include <jpeglib.h>
// clang-format on
#include <png.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <memory>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "deploytool/errors.hpp"

namespace deploytool {
namespace {

// Decoded samples as OpenCV's imread(IMREAD_UNCHANGED) returns them, but in RGB(A) order.
struct Decoded {
  int width = 0, height = 0, channels = 0, bit_depth = 8;
  unsigned char* samples = nullptr;  // malloc'ed; uint8 or native-endian uint16
  char message[200] = {0};
};

// The decoders are plain C over libpng/libjpeg, whose errors longjmp: no C++ object may live in
// a frame they jump across.
struct PngError {
  jmp_buf jump;
  char* message;
};

void png_error_to_jump(png_structp png, png_const_charp text) {
  auto* error = static_cast<PngError*>(png_get_error_ptr(png));
  std::snprintf(error->message, 200, "%s", text);
  longjmp(error->jump, 1);
}

void png_ignore_warning(png_structp, png_const_charp) {}

// OpenCV's choice of channels: palette/RGB with tRNS and anything with alpha -> 4, RGB -> 3, gray -> 1.
int opencv_png_channels(int color, bool transparency) {
  if (color == PNG_COLOR_TYPE_GRAY_ALPHA || color == PNG_COLOR_TYPE_RGB_ALPHA) return 4;
  if (color == PNG_COLOR_TYPE_RGB || color == PNG_COLOR_TYPE_PALETTE) return transparency ? 4 : 3;
  return 1;
}

// libpng's transforms to 8- or 16-bit samples in `channels` channels, RGB(A) order, host byte order.
void set_png_transforms(png_structp png, png_infop info, int channels) {
  int depth = png_get_bit_depth(png, info), color = png_get_color_type(png, info);
  if (channels < 4) {
    png_set_strip_alpha(png);
  } else {
    png_set_tRNS_to_alpha(png);
  }
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if ((color & PNG_COLOR_MASK_COLOR) == 0 && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (channels == 4 && (color & PNG_COLOR_MASK_COLOR) == 0) png_set_gray_to_rgb(png);
  if (depth == 16) png_set_swap(png);  // to the host's (little-endian) order
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
}

void read_png_rows(png_structp png, unsigned char* samples, png_bytep* rows, png_uint_32 height, std::size_t row_bytes) {
  for (png_uint_32 y = 0; y < height; ++y) rows[y] = samples + row_bytes * y;
  png_read_image(png, rows);
  png_read_end(png, nullptr);
}

bool decode_png(std::FILE* file, Decoded* out) {
  PngError error;
  error.message = out->message;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &error, png_error_to_jump, png_ignore_warning);
  if (!png) return false;
  png_infop info = png_create_info_struct(png);
  // Assigned after setjmp and read after longjmp: only a volatile local keeps its value.
  png_bytep* volatile rows = nullptr;
  if (!info || setjmp(error.jump)) {
    std::free(rows);
    std::free(out->samples);
    out->samples = nullptr;
    png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
    return false;
  }
  png_init_io(png, file);
  png_set_user_limits(png, 1u << 30, 1u << 30);
  png_read_info(png, info);
  png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
  int bytes_per_sample = png_get_bit_depth(png, info) == 16 ? 2 : 1;
  int channels = opencv_png_channels(png_get_color_type(png, info), png_get_valid(png, info, PNG_INFO_tRNS) != 0);
  set_png_transforms(png, info, channels);
  std::size_t row_bytes = std::size_t(width) * channels * bytes_per_sample;
  if (png_get_rowbytes(png, info) != row_bytes) png_error(png, "unexpected row layout");
  out->samples = static_cast<unsigned char*>(std::malloc(row_bytes * height));
  rows = static_cast<png_bytep*>(std::malloc(sizeof(png_bytep) * height));
  if (!out->samples || !rows) png_error(png, "out of memory");
  read_png_rows(png, out->samples, rows, height, row_bytes);
  std::free(rows);
  png_destroy_read_struct(&png, &info, nullptr);
  out->width = int(width);
  out->height = int(height);
  out->channels = channels;
  out->bit_depth = bytes_per_sample * 8;
  return true;
}

struct JpegError {
  jpeg_error_mgr manager;
  jmp_buf jump;
  char* message;
};

void jpeg_error_to_jump(j_common_ptr info) {
  auto* error = reinterpret_cast<JpegError*>(info->err);
  char text[JMSG_LENGTH_MAX];
  info->err->format_message(info, text);
  std::snprintf(error->message, 200, "%s", text);
  longjmp(error->jump, 1);
}

void jpeg_ignore_message(j_common_ptr) {}

// 0: decoded; 1: corrupt; 2: a colour space the Python CLI converts differently (CMYK/YCCK).
int decode_jpeg(std::FILE* file, Decoded* out) {
  jpeg_decompress_struct info;
  JpegError error;
  error.message = out->message;
  info.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = jpeg_error_to_jump;
  error.manager.output_message = jpeg_ignore_message;
  if (setjmp(error.jump)) {
    jpeg_destroy_decompress(&info);
    std::free(out->samples);
    out->samples = nullptr;
    return 1;
  }
  jpeg_create_decompress(&info);
  jpeg_stdio_src(&info, file);
  jpeg_read_header(&info, TRUE);
  if (info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&info);
    return 2;
  }
  int channels = info.num_components == 1 ? 1 : 3;
  info.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&info);
  std::size_t row_bytes = std::size_t(info.output_width) * channels;
  out->samples = static_cast<unsigned char*>(std::malloc(row_bytes * info.output_height));
  if (!out->samples) {
    std::snprintf(out->message, 200, "out of memory");
    jpeg_destroy_decompress(&info);
    return 1;
  }
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = out->samples + row_bytes * info.output_scanline;
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  out->width = int(info.output_width);
  out->height = int(info.output_height);
  out->channels = channels;
  out->bit_depth = 8;
  jpeg_destroy_decompress(&info);
  return 0;
}

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

}  // namespace

std::string Image::mode() const {
  std::string base = pixels.channels == 1 ? "gray" : "rgb";
  if (!has_alpha()) return base;
  return base == "rgb" ? "rgba" : "gray+alpha";
}

namespace {

void check_readable_file(const std::filesystem::path& path, const std::string& name) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) throw ImageError(name + ": no such file");
  if (!std::filesystem::is_regular_file(path, error)) throw ImageError(name + ": not a file");
  if (std::filesystem::file_size(path, error) == 0) throw ImageError(name + ": file is empty");
}

bool is_png(const unsigned char* magic, std::size_t got) { return got == 8 && png_sig_cmp(magic, 0, 8) == 0; }

bool is_jpeg(const unsigned char* magic, std::size_t got) { return got >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF; }

// The file's samples (malloc'ed, the caller frees them), or an ImageError saying why not.
Decoded decode_file(std::FILE* file, const std::string& name) {
  unsigned char magic[8] = {0};
  std::size_t got = std::fread(magic, 1, sizeof magic, file);
  std::rewind(file);
  Decoded decoded;
  bool ok = false;
  if (is_png(magic, got)) {
    ok = decode_png(file, &decoded);
  } else if (is_jpeg(magic, got)) {
    int status = decode_jpeg(file, &decoded);
    if (status == 2) throw ImageError(name + ": CMYK JPEG images are not supported by the C++ runtime; convert it to RGB");
    ok = status == 0;
  } else {
    throw ImageError(name + ": not a PNG or JPEG image (the C++ runtime reads only those)");
  }
  if (!ok) {
    if (!decoded.message[0]) throw ImageError(name + ": not a readable image (unknown format or corrupt file)");
    throw ImageError(name + ": not a readable image (corrupt file: " + decoded.message + ")");
  }
  return decoded;
}

// Samples as floats in [0, 1]: colour into `pixels`, a fourth channel into `alpha`.
Image to_image(const Decoded& decoded, const unsigned char* samples, const std::string& name) {
  Image image;
  image.path = name;
  image.bit_depth = decoded.bit_depth;
  int colour = decoded.channels == 4 ? 3 : decoded.channels;
  image.pixels = Pixels(decoded.height, decoded.width, colour);
  if (decoded.channels == 4) image.alpha = Pixels(decoded.height, decoded.width, 1);
  const float top = decoded.bit_depth == 16 ? 65535.0f : 255.0f;
  const std::size_t count = std::size_t(decoded.width) * decoded.height;
  const auto* wide = reinterpret_cast<const unsigned short*>(samples);
  for (std::size_t i = 0; i < count; ++i) {
    for (int c = 0; c < decoded.channels; ++c) {
      std::size_t at = i * decoded.channels + c;
      float value = float(decoded.bit_depth == 16 ? wide[at] : samples[at]) / top;
      if (c < colour) {
        image.pixels.values[i * colour + c] = value;
      } else {
        image.alpha.values[i] = value;
      }
    }
  }
  return image;
}

}  // namespace

Image read_image(const std::filesystem::path& path) {
  const std::string name = path.string();
  check_readable_file(path, name);
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(name.c_str(), "rb"));
  if (!file) throw ImageError(name + ": cannot open: " + std::strerror(errno));
  Decoded decoded = decode_file(file.get(), name);
  std::unique_ptr<unsigned char, decltype(&std::free)> samples(decoded.samples, &std::free);
  if (decoded.width <= 0 || decoded.height <= 0) throw ImageError(name + ": image has zero size");
  return to_image(decoded, samples.get(), name);
}

Pixels fit_channels(const Pixels& pixels, int channels, const std::string& model_id, const std::string& path) {
  if (pixels.channels == channels) return pixels;
  if (channels == 3 && pixels.channels == 1) return restore_channels(pixels, 3);
  if (channels == 1 && pixels.channels == 3) {
    throw ImageError(model_id + " takes 1-channel (grayscale) images; " + path + " is RGB: convert it to grayscale first");
  }
  throw ImageError(model_id + " takes " + std::to_string(channels) + "-channel images; " + path + " has " + std::to_string(pixels.channels) +
                   " channels");
}

Pixels restore_channels(const Pixels& pixels, int channels) {
  if (pixels.channels == channels) return pixels;
  Pixels out(pixels.height, pixels.width, channels);
  const std::size_t count = std::size_t(pixels.height) * pixels.width;
  if (channels == 1 && pixels.channels == 3) {
    for (std::size_t i = 0; i < count; ++i) {
      const float* rgb = &pixels.values[i * 3];
      out.values[i] = ((rgb[0] + rgb[1]) + rgb[2]) / 3.0f;  // numpy's float32 mean over 3 values
    }
    return out;
  }
  if (channels == 3 && pixels.channels == 1) {
    for (std::size_t i = 0; i < count; ++i) out.values[i * 3] = out.values[i * 3 + 1] = out.values[i * 3 + 2] = pixels.values[i];
    return out;
  }
  throw Error("cannot turn " + std::to_string(pixels.channels) + "-channel pixels into " + std::to_string(channels) + " channels");
}

Pixels resize_alpha(const Pixels& alpha, int scale) {
  if (scale < 1) throw Error("scale must be a positive integer, got " + std::to_string(scale));
  if (scale == 1) return alpha;
  // The weights of deploytool.runtime.images.cubic_weights, computed in the same order in double.
  const double a = -0.75;
  std::vector<std::array<float, 4>> weights;
  for (int phase = 0; phase < scale; ++phase) {
    double position = (phase + 0.5) / scale - 0.5;
    double t = position - std::floor(position);
    double w0 = ((a * (t + 1.0) - 5.0 * a) * (t + 1.0) + 8.0 * a) * (t + 1.0) - 4.0 * a;
    double w1 = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0;
    double w2 = ((a + 2.0) * (1.0 - t) - (a + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0;
    double w3 = 1.0 - w0 - w1 - w2;
    weights.push_back({float(w0), float(w1), float(w2), float(w3)});
  }
  auto source = [scale](int out_index, int k, int size) {
    int index = floor_div(2 * out_index + 1 - scale, 2 * scale) - 1 + k;
    return std::min(std::max(index, 0), size - 1);
  };
  const int height = alpha.height, width = alpha.width;
  Pixels wide(height, width * scale, 1);
  for (int x = 0; x < width * scale; ++x) {
    const auto& w = weights[x % scale];
    int s0 = source(x, 0, width), s1 = source(x, 1, width), s2 = source(x, 2, width), s3 = source(x, 3, width);
    for (int y = 0; y < height; ++y) {
      const float* row = &alpha.values[std::size_t(y) * width];
      float p0 = row[s0] * w[0], p1 = row[s1] * w[1], p2 = row[s2] * w[2], p3 = row[s3] * w[3];
      wide.values[std::size_t(y) * width * scale + x] = ((p0 + p1) + p2) + p3;
    }
  }
  Pixels out(height * scale, width * scale, 1);
  const std::size_t out_width = std::size_t(width) * scale;
  for (int y = 0; y < height * scale; ++y) {
    const auto& w = weights[y % scale];
    const float* r0 = &wide.values[source(y, 0, height) * out_width];
    const float* r1 = &wide.values[source(y, 1, height) * out_width];
    const float* r2 = &wide.values[source(y, 2, height) * out_width];
    const float* r3 = &wide.values[source(y, 3, height) * out_width];
    float* dst = &out.values[y * out_width];
    for (std::size_t x = 0; x < out_width; ++x) {
      float p0 = r0[x] * w[0], p1 = r1[x] * w[1], p2 = r2[x] * w[2], p3 = r3[x] * w[3];
      float sum = ((p0 + p1) + p2) + p3;
      dst[x] = std::min(std::max(sum, 0.0f), 1.0f);
    }
  }
  return out;
}

}  // namespace deploytool
