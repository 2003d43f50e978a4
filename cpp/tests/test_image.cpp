#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "deploytool/errors.hpp"
#include "deploytool/image.hpp"
#include "fixtures.hpp"

namespace dt = deploytool;
namespace fs = std::filesystem;

namespace {

dt::Pixels levels(int height, int width, int channels, int depth) {
  dt::Pixels pixels(height, width, channels);
  const int top = depth == 16 ? 65535 : 255;
  for (std::size_t i = 0; i < pixels.values.size(); ++i) pixels.values[i] = float((i * 7919) % (top + 1)) / float(top);
  return pixels;
}

std::string message_of(const fs::path& path) {
  try {
    dt::read_image(path);
  } catch (const dt::ImageError& error) {
    return error.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Image, PngRoundTripKeepsEveryModeAndDepth) {
  dt::testing::TempFolder folder("image_test_roundtrip");
  const fs::path& dir = folder.dir;
  for (int depth : {8, 16}) {
    for (int channels : {1, 3}) {
      for (bool with_alpha : {false, true}) {
        dt::Pixels pixels = levels(7, 5, channels, depth);
        dt::Pixels alpha = levels(7, 5, 1, depth);
        fs::path path = dir / "x.png";
        dt::write_image(path, pixels, with_alpha ? &alpha : nullptr, depth);
        dt::Image image = dt::read_image(path);
        EXPECT_EQ(image.bit_depth, depth);
        // gray+alpha is stored (and so read back) as RGBA with equal colour channels, as the Python CLI does
        EXPECT_EQ(image.pixels.channels, with_alpha ? 3 : channels);
        EXPECT_EQ(image.has_alpha(), with_alpha);
        for (int y = 0; y < 7; ++y)
          for (int x = 0; x < 5; ++x)
            for (int c = 0; c < image.pixels.channels; ++c) ASSERT_EQ(image.pixels.at(y, x, c), pixels.at(y, x, channels == 1 ? 0 : c));
        if (with_alpha) EXPECT_EQ(image.alpha.values, alpha.values);
      }
    }
  }
}

TEST(Image, QuantisesWithClippingAndRoundingToEven) {
  dt::testing::TempFolder folder("image_test_quantise");
  const fs::path& dir = folder.dir;
  dt::Pixels pixels(1, 6, 1);
  pixels.values = {-0.5f, 0.0f, 0.5f, 1.0f, 7.0f, 0.5f / 255.0f};
  dt::write_image(dir / "q.png", pixels, nullptr, 8);
  dt::Image image = dt::read_image(dir / "q.png");
  std::vector<float> expected = {0.0f, 0.0f, 128.0f / 255.0f, 1.0f, 1.0f, 0.0f};  // rint(127.5) = 128, rint(0.5) = 0
  EXPECT_EQ(image.pixels.values, expected);
  pixels.values[0] = std::nanf("");
  try {
    dt::write_image(dir / "nan.png", pixels, nullptr, 8);
    FAIL() << "NaN written";
  } catch (const dt::ImageError& error) {
    EXPECT_EQ(std::string(error.what()), (dir / "nan.png").string() + ": refusing to write 1 non-finite (NaN/inf) sample(s)");
  }
  EXPECT_FALSE(fs::exists(dir / "nan.png"));
}

TEST(Image, BadFilesAreOneLineErrors) {
  dt::testing::TempFolder folder("image_test_bad");
  const fs::path& dir = folder.dir;
  EXPECT_EQ(message_of(dir / "none.png"), (dir / "none.png").string() + ": no such file");
  EXPECT_EQ(message_of(dir), dir.string() + ": not a file");
  std::ofstream(dir / "empty.png").close();
  EXPECT_EQ(message_of(dir / "empty.png"), (dir / "empty.png").string() + ": file is empty");
  dt::write_image(dir / "good.png", levels(9, 9, 3, 8), nullptr, 8);
  fs::resize_file(dir / "good.png", fs::file_size(dir / "good.png") / 2);
  EXPECT_EQ(message_of(dir / "good.png"), (dir / "good.png").string() + ": not a readable image (corrupt file: Read Error)");
  std::ofstream(dir / "text.png") << "not an image";
  EXPECT_EQ(message_of(dir / "text.png"), (dir / "text.png").string() + ": not a PNG or JPEG image (the C++ runtime reads only those)");
  std::ofstream(dir / "cut.jpg", std::ios::binary) << "\xFF\xD8\xFF\xE0 truncated";
  EXPECT_EQ(message_of(dir / "cut.jpg"), (dir / "cut.jpg").string() + ": not a readable image (corrupt file: JPEG datastream contains no image)");
}

TEST(Image, FailedWriteLeavesNoFile) {
  dt::testing::TempFolder folder("image_test_write");
  const fs::path& dir = folder.dir;
  std::ofstream(dir / "a-file") << "x";
  fs::path inside_a_file = dir / "a-file" / "out.png";
  EXPECT_THROW(dt::write_image(inside_a_file, levels(3, 3, 3, 8), nullptr, 8), dt::ImageError);
  EXPECT_THROW(dt::write_image(dir / "out.jpg", levels(3, 3, 3, 8), nullptr, 8), dt::ImageError);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST(Image, ChannelsAndAlpha) {
  dt::Pixels rgb(1, 1, 3);
  rgb.values = {0.1f, 0.2f, 0.6f};
  EXPECT_EQ(dt::restore_channels(rgb, 1).values[0], ((0.1f + 0.2f) + 0.6f) / 3.0f);
  EXPECT_EQ(dt::fit_channels(dt::restore_channels(rgb, 1), 3, "m", "p").values, std::vector<float>(3, ((0.1f + 0.2f) + 0.6f) / 3.0f));
  try {
    dt::fit_channels(rgb, 1, "gray-model", "photo.png");
    FAIL();
  } catch (const dt::ImageError& error) {
    EXPECT_EQ(std::string(error.what()), "gray-model takes 1-channel (grayscale) images; photo.png is RGB: convert it to grayscale first");
  }
  dt::Pixels alpha(4, 6, 1);
  for (int y = 0; y < 4; ++y)
    for (int x = 3; x < 6; ++x) alpha.at(y, x, 0) = 1.0f;
  dt::Pixels resized = dt::resize_alpha(alpha, 4);
  ASSERT_EQ(resized.height, 16);
  ASSERT_EQ(resized.width, 24);
  for (int y = 0; y < 16; ++y) {
    for (int x = 0; x < 4; ++x) EXPECT_EQ(resized.at(y, x, 0), 0.0f);
    for (int x = 20; x < 24; ++x) EXPECT_EQ(resized.at(y, x, 0), 1.0f);
    for (int x = 0; x < 24; ++x) EXPECT_TRUE(resized.at(y, x, 0) >= 0.0f && resized.at(y, x, 0) <= 1.0f);
  }
}

namespace {

struct Chunk {
  std::string kind;
  std::vector<unsigned char> data;
};

std::vector<Chunk> chunks_of(const std::vector<unsigned char>& png) {
  std::vector<Chunk> chunks;
  for (std::size_t at = 8; at + 12 <= png.size();) {
    const std::size_t length = (std::size_t(png[at]) << 24) | (std::size_t(png[at + 1]) << 16) | (std::size_t(png[at + 2]) << 8) | png[at + 3];
    chunks.push_back({std::string(png.begin() + at + 4, png.begin() + at + 8),
                      std::vector<unsigned char>(png.begin() + at + 8, png.begin() + at + 8 + length)});
    at += 12 + length;
  }
  return chunks;
}

}  // namespace

TEST(Image, CompressedStreamIsCutIntoIdatChunksOfTheGivenSize) {
  std::vector<unsigned short> samples(23 * 31 * 3);
  for (std::size_t i = 0; i < samples.size(); ++i) samples[i] = static_cast<unsigned short>((i * i * 7919 + i / 5) % 251);
  const std::vector<Chunk> whole = chunks_of(dt::encode_png(samples, 23, 31, 3, 8));
  const std::vector<unsigned char> cut = dt::encode_png(samples, 23, 31, 3, 8, 100);
  const std::vector<Chunk> pieces = chunks_of(cut);
  ASSERT_EQ(whole.size(), 3u);
  ASSERT_EQ(whole[1].kind, "IDAT");
  ASSERT_GT(whole[1].data.size(), 300u);
  EXPECT_EQ(pieces.size(), 2 + (whole[1].data.size() + 99) / 100);
  EXPECT_EQ(pieces.front().kind, "IHDR");
  EXPECT_EQ(pieces.back().kind, "IEND");
  std::vector<unsigned char> joined;
  for (std::size_t i = 1; i + 1 < pieces.size(); ++i) {
    EXPECT_EQ(pieces[i].kind, "IDAT");
    EXPECT_EQ(pieces[i].data.size(), i + 2 < pieces.size() ? 100u : whole[1].data.size() - 100 * (pieces.size() - 3));
    joined.insert(joined.end(), pieces[i].data.begin(), pieces[i].data.end());
  }
  EXPECT_EQ(joined, whole[1].data);

  dt::testing::TempFolder folder("image_test_idat");
  std::ofstream(folder.dir / "cut.png", std::ios::binary).write(reinterpret_cast<const char*>(cut.data()), std::streamsize(cut.size()));
  dt::Image image = dt::read_image(folder.dir / "cut.png");  // libpng joins the chunks
  ASSERT_EQ(image.pixels.values.size(), samples.size());
  for (std::size_t i = 0; i < samples.size(); ++i) ASSERT_EQ(image.pixels.values[i], float(samples[i]) / 255.0f) << i;
  EXPECT_THROW(dt::encode_png(samples, 23, 31, 3, 8, 0), dt::Error);
}

// Every umask(2) call in this test binary, the library's included, comes here (an executable's
// definition wins over libc's): a race on the umask shows only now and then, a call always.
std::atomic<int> umask_calls{0};
extern "C" mode_t umask(mode_t mask) noexcept {
  ++umask_calls;
  return static_cast<mode_t>(::syscall(SYS_umask, mask));
}

TEST(Image, ConcurrentWritesKeepTheUmaskAndGiveEveryFileItsMode) {
  dt::testing::TempFolder folder("image_test_umask");
  const mode_t before = ::umask(022);
  const int calls = umask_calls.load();
  const dt::Pixels pixels = levels(5, 4, 3, 8);
  std::vector<std::thread> threads;
  std::atomic<int> wrong_modes{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 40; ++i) {
        const fs::path path = folder.dir / (std::to_string(t) + "-" + std::to_string(i) + ".png");
        dt::write_image(path, pixels, nullptr, 8);
        // a file created meanwhile by other code: any moment at another umask shows here
        const fs::path other = folder.dir / (std::to_string(t) + "-" + std::to_string(i) + ".other");
        int fd = ::open(other.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0666);
        if (fd >= 0) ::close(fd);
        struct stat info {};
        if (::stat(other.c_str(), &info) != 0 || (info.st_mode & 0777) != 0644) ++wrong_modes;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(umask_calls.load(), calls) << "write_image changed the process umask";
  const mode_t after = ::umask(before);
  EXPECT_EQ(after, mode_t(022));
  EXPECT_EQ(wrong_modes.load(), 0);
  int pngs = 0;
  for (const auto& entry : fs::directory_iterator(folder.dir)) {
    if (entry.path().extension() != ".png") continue;
    ++pngs;
    struct stat info {};
    ASSERT_EQ(::stat(entry.path().c_str(), &info), 0);
    EXPECT_EQ(info.st_mode & 0777, 0644u) << entry.path();
  }
  EXPECT_EQ(pngs, 8 * 40);  // and no temporary file left behind
}

TEST(Image, CorruptPngErrorSaysWhatLibpngFound) {
  dt::testing::TempFolder folder("image_test_corrupt");
  const fs::path path = folder.dir / "bad-crc.png";
  dt::write_image(path, levels(4, 4, 3, 8), nullptr, 8);
  std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
  file.seekp(8 + 8 + 13);  // the signature, IHDR's length and type, its 13 data bytes: its CRC
  file.put('\0');
  file.close();
  EXPECT_EQ(message_of(path), path.string() + ": not a readable image (corrupt file: IHDR: CRC error)");
}
