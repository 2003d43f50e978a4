// PNG output with exactly deploytool/runtime/png.py's layout (IHDR, the zlib level 6 stream of rows that
// all use the Up filter cut into IDAT chunks of max_idat_bytes, IEND), so both runtimes write the
// same bytes.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <string>

#include "deploytool/errors.hpp"
#include "deploytool/image.hpp"

namespace deploytool {
namespace {

constexpr int kCompressionLevel = 6;
constexpr unsigned char kFilterUp = 2;

void put_u32(std::vector<unsigned char>& out, std::uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<unsigned char>(value >> shift));
}

void put_chunk(std::vector<unsigned char>& out, const char* kind, const unsigned char* data, std::size_t size) {
  put_u32(out, static_cast<std::uint32_t>(size));
  std::size_t start = out.size();
  out.insert(out.end(), kind, kind + 4);
  out.insert(out.end(), data, data + size);
  uLong crc = crc32(0L, Z_NULL, 0);
  // crc32 takes uInt lengths: feed large chunks in pieces
  for (std::size_t at = start; at < out.size();) {
    std::size_t piece = std::min<std::size_t>(out.size() - at, 1u << 30);
    crc = crc32(crc, out.data() + at, static_cast<uInt>(piece));
    at += piece;
  }
  put_u32(out, static_cast<std::uint32_t>(crc));
}

// A deflate stream that is always ended, whichever way encode_png leaves.
class Deflater {
 public:
  explicit Deflater(int level) {
    if (deflateInit(&stream_, level) != Z_OK) throw Error("zlib could not start compressing");
  }
  Deflater(const Deflater&) = delete;
  Deflater& operator=(const Deflater&) = delete;
  ~Deflater() { deflateEnd(&stream_); }
  z_stream* get() { return &stream_; }

 private:
  z_stream stream_{};
};

// A new file beside `path` for its bytes, named uniquely (pid and a counter; O_EXCL retries) and
// created with mode 0666 so that the kernel applies the process umask: reading the umask would
// mean changing it, which races with every other thread creating files.
int create_temporary(const std::filesystem::path& path, std::string& temp) {
  static std::atomic<unsigned long> counter{0};
  const std::string stem = (path.parent_path() / ("." + path.filename().string() + "." + std::to_string(::getpid()) + ".")).string();
  for (int attempt = 0; attempt < 100; ++attempt) {
    temp = stem + std::to_string(counter.fetch_add(1)) + ".part.png";
    int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0 || errno != EEXIST) return fd;
  }
  errno = EEXIST;
  return -1;
}

int png_color_type(int channels) {
  switch (channels) {
    case 1: return 0;
    case 2: return 4;
    case 3: return 2;
    case 4: return 6;
  }
  throw Error("PNG samples must have 1-4 channels, got " + std::to_string(channels));
}

void check_png_arguments(const std::vector<unsigned short>& samples, int height, int width, int channels, int bit_depth, std::size_t max_idat_bytes) {
  if (bit_depth != 8 && bit_depth != 16) throw Error("PNG bit depth must be 8 or 16, not " + std::to_string(bit_depth));
  if (height <= 0 || width <= 0 || samples.size() != std::size_t(height) * width * channels) throw Error("PNG samples do not match their shape");
  if (max_idat_bytes < 1 || max_idat_bytes > kMaxIdatBytes) {
    throw Error("max_idat_bytes must be in [1, " + std::to_string(kMaxIdatBytes) + "], got " + std::to_string(max_idat_bytes));
  }
}

// One row's samples as PNG stores them: bytes, or big-endian pairs of bytes at 16 bits.
void row_bytes_of(const unsigned short* row, std::size_t row_samples, int bit_depth, std::vector<unsigned char>& out) {
  if (bit_depth == 8) {
    for (std::size_t i = 0; i < row_samples; ++i) out[i] = static_cast<unsigned char>(row[i]);
    return;
  }
  for (std::size_t i = 0; i < row_samples; ++i) {
    out[2 * i] = static_cast<unsigned char>(row[i] >> 8);
    out[2 * i + 1] = static_cast<unsigned char>(row[i] & 0xff);
  }
}

// What deflate has made of the input so far (with `flush`), appended to `compressed`.
void pump(z_stream& stream, int flush, std::vector<unsigned char>& compressed) {
  unsigned char buffer[1 << 16];
  do {
    stream.next_out = buffer;
    stream.avail_out = sizeof buffer;
    if (deflate(&stream, flush) == Z_STREAM_ERROR) throw Error("zlib failed while compressing the PNG");
    compressed.insert(compressed.end(), buffer, buffer + (sizeof buffer - stream.avail_out));
  } while (stream.avail_out == 0 || (flush == Z_FINISH && stream.avail_in > 0));
}

void finish(z_stream& stream, std::vector<unsigned char>& compressed) {
  unsigned char buffer[1 << 16];
  stream.next_in = nullptr;
  stream.avail_in = 0;
  int status;
  do {
    stream.next_out = buffer;
    stream.avail_out = sizeof buffer;
    status = deflate(&stream, Z_FINISH);
    compressed.insert(compressed.end(), buffer, buffer + (sizeof buffer - stream.avail_out));
  } while (status == Z_OK);
  if (status != Z_STREAM_END) throw Error("zlib failed while finishing the PNG");
}

// The zlib stream of the rows, each with the Up filter.
std::vector<unsigned char> compress_rows(const std::vector<unsigned short>& samples, int height, int width, int channels, int bit_depth) {
  const std::size_t row_samples = std::size_t(width) * channels;
  const std::size_t row_bytes = row_samples * (bit_depth / 8);
  Deflater deflater(kCompressionLevel);
  z_stream& stream = *deflater.get();
  std::vector<unsigned char> compressed;
  std::vector<unsigned char> previous(row_bytes, 0), current(row_bytes), filtered(row_bytes + 1);
  for (int y = 0; y < height; ++y) {
    row_bytes_of(&samples[std::size_t(y) * row_samples], row_samples, bit_depth, current);
    filtered[0] = kFilterUp;
    for (std::size_t i = 0; i < row_bytes; ++i) filtered[i + 1] = static_cast<unsigned char>(current[i] - previous[i]);
    std::swap(previous, current);
    stream.next_in = filtered.data();
    stream.avail_in = static_cast<uInt>(filtered.size());
    pump(stream, Z_NO_FLUSH, compressed);
  }
  finish(stream, compressed);
  return compressed;
}

std::vector<unsigned char> png_chunks(const std::vector<unsigned char>& compressed, int height, int width, int bit_depth, int color_type,
                                      std::size_t max_idat_bytes) {
  std::vector<unsigned char> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<unsigned char> header;
  put_u32(header, static_cast<std::uint32_t>(width));
  put_u32(header, static_cast<std::uint32_t>(height));
  header.insert(header.end(), {static_cast<unsigned char>(bit_depth), static_cast<unsigned char>(color_type), 0, 0, 0});
  put_chunk(png, "IHDR", header.data(), header.size());
  for (std::size_t at = 0; at < compressed.size(); at += max_idat_bytes) {
    put_chunk(png, "IDAT", compressed.data() + at, std::min(max_idat_bytes, compressed.size() - at));
  }
  put_chunk(png, "IEND", nullptr, 0);
  return png;
}

void check_png_name(const std::filesystem::path& path, int bit_depth) {
  const std::string name = path.string();
  if (bit_depth != 8 && bit_depth != 16) throw ImageError(name + ": bit depth must be 8 or 16, not " + std::to_string(bit_depth));
  std::string suffix = path.extension().string();
  std::transform(suffix.begin(), suffix.end(), suffix.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (suffix.empty()) throw ImageError(name + ": no file extension, so no image format to write");
  if (suffix != ".png") throw ImageError(name + ": the C++ runtime writes PNG only; name the output .png");
}

std::size_t count_non_finite(const Pixels& pixels, const Pixels* alpha) {
  std::size_t bad = 0;
  for (float v : pixels.values) bad += !std::isfinite(v);
  if (alpha) {
    for (float v : alpha->values) bad += !std::isfinite(v);
  }
  return bad;
}

void check_pixels(const std::string& name, const Pixels& pixels, const Pixels* alpha) {
  if (pixels.channels != 1 && pixels.channels != 3) throw Error("pixels must have 1 or 3 channels, got " + std::to_string(pixels.channels));
  if (alpha && (alpha->height != pixels.height || alpha->width != pixels.width || alpha->channels != 1)) {
    throw Error("alpha shape does not match the pixels");
  }
  std::size_t bad = count_non_finite(pixels, alpha);
  if (bad) throw ImageError(name + ": refusing to write " + std::to_string(bad) + " non-finite (NaN/inf) sample(s)");
}

// With alpha, gray is stored as RGBA with equal colour channels (as the Python CLI, after cv2).
std::vector<unsigned short> quantized_samples(const Pixels& pixels, const Pixels* alpha, int bit_depth) {
  const float top = bit_depth == 16 ? 65535.0f : 255.0f;
  auto quantize = [top](float value) { return static_cast<unsigned short>(std::nearbyint(std::min(std::max(value, 0.0f), 1.0f) * top)); };
  const int colour = alpha ? 3 : pixels.channels;
  const int channels = alpha ? 4 : pixels.channels;
  const std::size_t count = std::size_t(pixels.height) * pixels.width;
  std::vector<unsigned short> samples(count * channels);
  for (std::size_t i = 0; i < count; ++i) {
    for (int c = 0; c < colour; ++c) samples[i * channels + c] = quantize(pixels.values[i * pixels.channels + (pixels.channels == 1 ? 0 : c)]);
    if (alpha) samples[i * channels + 3] = quantize(alpha->values[i]);
  }
  return samples;
}

// 0 once all of `data` is written to `fd`, else the errno of the write that failed.
int write_all(int fd, const std::vector<unsigned char>& data) {
  std::size_t written = 0;
  while (written < data.size()) {
    ssize_t n = ::write(fd, data.data() + written, data.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    written += std::size_t(n);
  }
  return 0;
}

[[noreturn]] void fail_to_write(const std::string& name, int code) { throw ImageError(name + ": cannot write the PNG file: " + std::strerror(code)); }

// `data` as the file `path`: written under a temporary name beside it, then renamed.
void write_file_atomically(const std::filesystem::path& path, const std::vector<unsigned char>& data) {
  const std::string name = path.string();
  std::filesystem::path folder = path.parent_path();
  std::error_code error;
  if (!folder.empty()) {
    std::filesystem::create_directories(folder, error);
    if (error) fail_to_write(name, error.value());
  }
  std::string temp;
  int fd = create_temporary(path, temp);
  if (fd < 0) fail_to_write(name, errno);
  if (int code = write_all(fd, data)) {
    ::close(fd);
    ::unlink(temp.c_str());
    fail_to_write(name, code);
  }
  if (::close(fd) != 0 || std::rename(temp.c_str(), name.c_str()) != 0) {
    int code = errno;
    ::unlink(temp.c_str());
    fail_to_write(name, code);
  }
}

}  // namespace

std::vector<unsigned char> encode_png(const std::vector<unsigned short>& samples, int height, int width, int channels, int bit_depth,
                                      std::size_t max_idat_bytes) {
  check_png_arguments(samples, height, width, channels, bit_depth, max_idat_bytes);
  const int color_type = png_color_type(channels);
  return png_chunks(compress_rows(samples, height, width, channels, bit_depth), height, width, bit_depth, color_type, max_idat_bytes);
}

void write_image(const std::filesystem::path& path, const Pixels& pixels, const Pixels* alpha, int bit_depth) {
  check_png_name(path, bit_depth);
  check_pixels(path.string(), pixels, alpha);
  const int channels = alpha ? 4 : pixels.channels;
  write_file_atomically(path, encode_png(quantized_samples(pixels, alpha, bit_depth), pixels.height, pixels.width, channels, bit_depth));
}

}  // namespace deploytool
