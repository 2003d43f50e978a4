#include <gtest/gtest.h>

#include <cmath>

#include "deploytool/errors.hpp"
#include "deploytool/tiler.hpp"

namespace dt = deploytool;

TEST(Tiler, TileStartsCoverTheSizeWithTheOverlap) {
  EXPECT_EQ(dt::tile_starts(10, 16, 4), std::vector<int>({0}));
  EXPECT_EQ(dt::tile_starts(16, 16, 4), std::vector<int>({0}));
  EXPECT_EQ(dt::tile_starts(40, 16, 4), std::vector<int>({0, 12, 24}));
  EXPECT_EQ(dt::tile_starts(41, 16, 4), std::vector<int>({0, 12, 24, 25}));
  EXPECT_EQ(dt::count_tiles(41, 10, 16, 16, 4), 4);
  EXPECT_THROW(dt::tile_starts(10, 16, 16), dt::Error);
  EXPECT_THROW(dt::tile_starts(0, 16, 4), dt::Error);
}

TEST(Tiler, AlignedOverlapRoundsUpAndStaysBelowTheTile) {
  EXPECT_EQ(dt::aligned_overlap(16, 8, 128, 128), 16);
  EXPECT_EQ(dt::aligned_overlap(17, 8, 128, 128), 24);
  EXPECT_EQ(dt::aligned_overlap(200, 8, 128, 64), 56);
  EXPECT_EQ(dt::aligned_overlap(36, 1, 48, 48), 36);
  EXPECT_EQ(dt::aligned_overlap(16, 7, 126, 126), 21);
}

TEST(Tiler, Windows) {
  auto ramp = dt::ramp_window(8, 2, true, true);
  EXPECT_EQ(ramp, std::vector<float>({0.25f, 0.75f, 1, 1, 1, 1, 0.75f, 0.25f}));
  EXPECT_EQ(dt::ramp_window(4, 2, false, true), std::vector<float>({1, 1, 0.75f, 0.25f}));
  EXPECT_EQ(dt::centre_window(6, 2, true, false), std::vector<float>({0, 0, 1, 1, 1, 1}));
}

TEST(Tiler, WindowAlignedReflectsAndFallsBackToEdge) {
  dt::Pixels row(1, 3, 1);
  row.values = {1, 2, 3};
  dt::Pixels two(2, 3, 1);
  two.values = {1, 2, 3, 4, 5, 6};
  dt::Pixels padded = dt::window_aligned(two, 4);  // pad 2 rows (>= 2: edge) and 1 column
  ASSERT_EQ(padded.height, 4);
  ASSERT_EQ(padded.width, 4);
  EXPECT_EQ(padded.values, std::vector<float>({1, 2, 3, 3, 4, 5, 6, 6, 4, 5, 6, 6, 4, 5, 6, 6}));
  dt::Pixels three(3, 3, 1);
  three.values = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  padded = dt::window_aligned(three, 4);  // pad 1 < 3: reflect without repeating the edge
  EXPECT_EQ(padded.values, std::vector<float>({1, 2, 3, 2, 4, 5, 6, 5, 7, 8, 9, 8, 4, 5, 6, 5}));
}

namespace {

// Upscales by nearest neighbour and records every batch it is given.
struct Recorder {
  dt::BatchShape in, out;
  std::vector<std::vector<float>> batches;
  void operator()(const float* input, float* output) {
    batches.emplace_back(input, input + in.elements());
    const int scale = out.height / in.height;
    for (int b = 0; b < out.batch; ++b)
      for (int c = 0; c < out.channels; ++c)
        for (int y = 0; y < out.height; ++y)
          for (int x = 0; x < out.width; ++x)
            output[((b * out.channels + c) * out.height + y) * out.width + x] =
                input[((b * in.channels + c) * in.height + y / scale) * in.width + x / scale];
  }
};

dt::Pixels gradient(int height, int width, int channels) {
  dt::Pixels image(height, width, channels);
  for (std::size_t i = 0; i < image.values.size(); ++i) image.values[i] = float(i % 251) / 251.0f;
  return image;
}

}  // namespace

TEST(Tiler, NearestUpscaleSurvivesTilingBlendingAndCropping) {
  for (bool centre : {false, true}) {
    auto recorder = std::make_shared<Recorder>(Recorder{{5, 3, 16, 16}, {5, 3, 32, 32}, {}});
    auto backend = dt::function_backend(recorder->in, recorder->out, [recorder](const float* i, float* o) { (*recorder)(i, o); });
    dt::Pixels image = gradient(37, 29, 3);
    dt::TileOptions options{16, 16, 2, 5, 8, centre ? 4 : 0};
    dt::Pixels out = dt::run_tiled(image, *backend, options);
    ASSERT_EQ(out.height, 74);
    ASSERT_EQ(out.width, 58);
    float worst = 0;
    for (int y = 0; y < out.height; ++y)
      for (int x = 0; x < out.width; ++x)
        for (int c = 0; c < 3; ++c) worst = std::max(worst, std::abs(out.at(y, x, c) - image.at(y / 2, x / 2, c)));
    EXPECT_LT(worst, 1e-6f);
    // 4 x 3 tiles in batches of 5: 3 calls, the last holding 2 real tiles and 3 copies of the second
    ASSERT_EQ(recorder->batches.size(), 3u);
    const auto& last = recorder->batches.back();
    const std::size_t tile = 3 * 16 * 16;
    for (int slot = 2; slot < 5; ++slot) EXPECT_TRUE(std::equal(last.begin() + tile, last.begin() + 2 * tile, last.begin() + slot * tile));
    EXPECT_FALSE(std::equal(last.begin(), last.begin() + tile, last.begin() + tile));
  }
}

TEST(Tiler, RefusesABackendOfAnotherShape) {
  auto backend = dt::function_backend({1, 3, 16, 16}, {1, 3, 16, 16}, [](const float*, float*) {});
  dt::TileOptions options{16, 16, 2, 1, 4, 0};
  EXPECT_THROW(dt::run_tiled(gradient(20, 20, 3), *backend, options), dt::Error);
  options.scale = 1;
  options.batch = 2;
  EXPECT_THROW(dt::run_tiled(gradient(20, 20, 3), *backend, options), dt::Error);
}

TEST(Tiler, GridPlacesTilesRowByRowWithTheirNeighbours) {
  const dt::TileGrid grid(40, 20, 16, 12, 4);
  EXPECT_EQ(grid.ys(), std::vector<int>({0, 12, 24}));
  EXPECT_EQ(grid.xs(), std::vector<int>({0, 8}));
  ASSERT_EQ(grid.count(), 6);
  EXPECT_EQ(grid.row(3), 1);
  EXPECT_EQ(grid.col(3), 1);
  const dt::TileEdges first = grid.edges(0), middle = grid.edges(3);
  EXPECT_TRUE(!first.top && first.bottom && !first.left && first.right);
  EXPECT_TRUE(middle.top && middle.bottom && middle.left && !middle.right);
}

TEST(Tiler, GridCutsPlanarTilesAndPadsAnImageSmallerThanTheTile) {
  dt::Pixels image(2, 3, 2);
  image.values = {1, 10, 2, 20, 3, 30, 4, 40, 5, 50, 6, 60};
  const dt::TileGrid grid(2, 3, 4, 4, 1);  // 2 rows: edge padding below; 3 columns: one reflected column
  std::vector<float> tile(2 * 4 * 4);
  grid.cut(image, 0, tile.data());
  EXPECT_EQ(std::vector<float>(tile.begin(), tile.begin() + 16), std::vector<float>({1, 2, 3, 2, 4, 5, 6, 5, 4, 5, 6, 5, 4, 5, 6, 5}));
  EXPECT_EQ(tile[16], 10);
}

TEST(Tiler, BandAccumulatorWritesRowsOnceTheyAreFlushedAndMovesDown) {
  dt::BandAccumulator band(6, 3, 4, 4, 1);
  const std::vector<float> ones4(4, 1.0f), ones3(3, 1.0f), half_below{1, 1, 0.5f, 0.5f};
  const std::vector<float> twos(16, 2.0f), fives(12, 5.0f), eights(16, 8.0f);
  band.add(0, 0, twos.data(), ones4, ones4);
  band.add(0, 1, fives.data(), ones4, ones3);
  band.flush(2);  // rows 0 and 1 are final
  EXPECT_EQ(band.band_y(), 2);
  band.add(2, 0, eights.data(), half_below, ones4);
  band.flush(6);
  const dt::Pixels out = band.take();
  ASSERT_EQ(out.values.size(), 18u);
  EXPECT_EQ(out.values, std::vector<float>({2, 3.5f, 3.5f, 2, 3.5f, 3.5f, 5, 5, 5, 5, 5, 5, 8, 8, 8, 8, 8, 8}));
}

TEST(Tiler, TiledImageTakesOutputsInOrderOnly) {
  const dt::Pixels image = gradient(20, 20, 3);
  dt::TiledImage tiled(image, dt::TileOptions{16, 16, 1, 1, 4, 0}, 3, 20, 20);
  std::vector<float> output(3 * 16 * 16);
  EXPECT_THROW(tiled.add(1, output.data()), dt::Error);
  EXPECT_THROW(tiled.result(), dt::Error);
  for (int index = 0; index < tiled.count(); ++index) tiled.add(index, output.data());
  EXPECT_EQ(tiled.result().values.size(), 20u * 20 * 3);
}
