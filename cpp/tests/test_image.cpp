#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "deploytool/errors.hpp"
#include "deploytool/image.hpp"

namespace dt = deploytool;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("deploytool_image_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

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
  fs::path dir = temp_dir("roundtrip");
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
  fs::remove_all(dir);
}

TEST(Image, QuantisesWithClippingAndRoundingToEven) {
  fs::path dir = temp_dir("quantise");
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
  fs::remove_all(dir);
}

TEST(Image, BadFilesAreOneLineErrors) {
  fs::path dir = temp_dir("bad");
  EXPECT_EQ(message_of(dir / "none.png"), (dir / "none.png").string() + ": no such file");
  EXPECT_EQ(message_of(dir), dir.string() + ": not a file");
  std::ofstream(dir / "empty.png").close();
  EXPECT_EQ(message_of(dir / "empty.png"), (dir / "empty.png").string() + ": file is empty");
  dt::write_image(dir / "good.png", levels(9, 9, 3, 8), nullptr, 8);
  fs::resize_file(dir / "good.png", fs::file_size(dir / "good.png") / 2);
  EXPECT_EQ(message_of(dir / "good.png"), (dir / "good.png").string() + ": not a readable image (unknown format or corrupt file)");
  std::ofstream(dir / "text.png") << "not an image";
  EXPECT_EQ(message_of(dir / "text.png"), (dir / "text.png").string() + ": not a PNG or JPEG image (the C++ runtime reads only those)");
  std::ofstream(dir / "cut.jpg", std::ios::binary) << "\xFF\xD8\xFF\xE0 truncated";
  EXPECT_EQ(message_of(dir / "cut.jpg"), (dir / "cut.jpg").string() + ": not a readable image (unknown format or corrupt file)");
  fs::remove_all(dir);
}

TEST(Image, FailedWriteLeavesNoFile) {
  fs::path dir = temp_dir("write");
  std::ofstream(dir / "a-file") << "x";
  fs::path inside_a_file = dir / "a-file" / "out.png";
  EXPECT_THROW(dt::write_image(inside_a_file, levels(3, 3, 3, 8), nullptr, 8), dt::ImageError);
  EXPECT_THROW(dt::write_image(dir / "out.jpg", levels(3, 3, 3, 8), nullptr, 8), dt::ImageError);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
  fs::remove_all(dir);
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
