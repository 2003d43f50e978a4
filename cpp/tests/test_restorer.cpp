#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>

#include "deploytool/cli.hpp"
#include "deploytool/runtime.hpp"
#include "fixtures.hpp"
#include "standin.hpp"

namespace dt = deploytool;
using dt::testing::ExportFolder;
using dt::testing::minimal_manifest;

namespace {

std::unique_ptr<dt::Backend> standin(const dt::Export& exported, const dt::CliOptions&) {
  exported.check_file("model.onnx");
  const auto& in = exported.manifest().input_shape;
  const auto& out = exported.manifest().output_shape;
  dt::testing::StandinModel model({in[0], in[1], in[2], in[3]}, {out[0], out[1], out[2], out[3]});
  return dt::function_backend(exported, model);
}

struct CliRun {
  int code;
  std::string out, err;
};

CliRun cli(std::vector<std::string> args) {
  args.insert(args.begin(), "deploytool-standin");
  std::vector<const char*> argv;
  for (const auto& arg : args) argv.push_back(arg.c_str());
  std::ostringstream out, err;
  int code = dt::run_cli(int(argv.size()), argv.data(), standin, out, err);
  return {code, out.str(), err.str()};
}

dt::Pixels levels(int height, int width, int channels) {
  dt::Pixels pixels(height, width, channels);
  for (std::size_t i = 0; i < pixels.values.size(); ++i) pixels.values[i] = float((i * 37) % 256) / 255.0f;
  return pixels;
}

}  // namespace

TEST(Restorer, GrayImageThroughAnRgbModelComesBackGrayWithItsAlpha) {
  ExportFolder folder("restorer_gray");
  folder.write(minimal_manifest(dt::sha256_hex("graph")));
  dt::Export exported = dt::Export::open(folder.dir);
  int tiles = 0;
  dt::Restorer restorer(exported, standin(exported, {}));
  restorer.on_tiles = [&tiles](int n) { tiles += n; };
  dt::Image image;
  image.pixels = levels(21, 30, 1);
  image.alpha = levels(21, 30, 1);
  image.bit_depth = 16;
  dt::Image out = restorer.restore(image);
  EXPECT_EQ(out.pixels.channels, 1);
  EXPECT_EQ(out.pixels.height, 42);
  EXPECT_EQ(out.pixels.width, 60);
  EXPECT_EQ(out.alpha.height, 42);
  EXPECT_EQ(out.bit_depth, 16);
  EXPECT_EQ(tiles, restorer.tiles_for(21, 30));
  EXPECT_EQ(tiles, 2 * 3);  // padded to 24 x 32, tiles of 16 with overlap 8
}

TEST(Restorer, RefusesABackendOfAnotherShapeAndTheWrongNumberOfViews) {
  ExportFolder folder("restorer_refuses");
  folder.write(minimal_manifest(dt::sha256_hex("graph")));
  dt::Export exported = dt::Export::open(folder.dir);
  EXPECT_THROW(dt::Restorer(exported, dt::function_backend({1, 3, 16, 16}, {1, 3, 32, 32}, [](const float*, float*) {})), dt::Error);
  dt::Restorer restorer(exported, standin(exported, {}));
  dt::Image image;
  image.pixels = levels(8, 8, 3);
  EXPECT_THROW(restorer.restore(std::vector<dt::Image>{image, image}), dt::ImageError);
}

TEST(Cli, RestoresAndReportsEveryBadInputInOneLine) {
  ExportFolder folder("cli");
  folder.write(minimal_manifest(dt::sha256_hex("graph")));
  const std::string dir = folder.dir.string();
  const std::string input = (folder.dir / "in.png").string(), output = (folder.dir / "out" / "x2.png").string();
  dt::write_image(input, levels(13, 17, 3), nullptr, 8);

  CliRun ok = cli({dir, input, "-o", output});
  ASSERT_EQ(ok.code, 0) << ok.err;
  dt::Image restored = dt::read_image(output);
  EXPECT_EQ(restored.pixels.width, 34);
  EXPECT_EQ(restored.pixels.height, 26);

  auto expect_error = [&](std::vector<std::string> args, const std::string& message) {
    std::filesystem::remove(output);
    CliRun run = cli(args);
    EXPECT_NE(run.code, 0);
    EXPECT_EQ(run.err, "error: " + message + "\n");
    EXPECT_FALSE(std::filesystem::exists(output));
  };
  expect_error({dir, (folder.dir / "none.png").string(), "-o", output}, (folder.dir / "none.png").string() + ": no such file");
  std::ofstream(folder.dir / "corrupt.png") << "\x89PNG\r\n\x1a\n broken";
  expect_error({dir, (folder.dir / "corrupt.png").string(), "-o", output},
               (folder.dir / "corrupt.png").string() + ": not a readable image (corrupt file: Read Error)");
  expect_error({dir, input, input, "-o", output}, "toy-x2 takes one image; 2 given");
  expect_error({(folder.dir / "nowhere").string(), input, "-o", output},
               (folder.dir / "nowhere").string() + " is not a finished export (no manifest.json); run `deploytool export` first");
  std::ofstream(folder.dir / "blocker") << "a file";
  CliRun blocked = cli({dir, input, "-o", (folder.dir / "blocker" / "x.png").string()});
  EXPECT_NE(blocked.code, 0);
  EXPECT_EQ(blocked.err.rfind("error: " + (folder.dir / "blocker" / "x.png").string() + ": cannot write the PNG file: ", 0), 0u) << blocked.err;
  std::ofstream(folder.dir / "model.onnx", std::ios::binary) << "tampered";
  expect_error({dir, input, "-o", output}, (folder.dir / "model.onnx").string() + " changed since export (sha256 differs from manifest.json); re-export");
  std::ofstream(folder.dir / "manifest.json") << "{ not json";
  CliRun unreadable = cli({dir, input, "-o", output});
  EXPECT_EQ(unreadable.code, 1);
  EXPECT_EQ(unreadable.err.rfind("error: cannot read " + (folder.dir / "manifest.json").string() + ": ", 0), 0u) << unreadable.err;
  EXPECT_EQ(std::count(unreadable.err.begin(), unreadable.err.end(), '\n'), 1);
  CliRun usage = cli({dir});
  EXPECT_EQ(usage.code, 2);
  EXPECT_EQ(usage.err.rfind("error: give an export folder and at least one image (usage: ", 0), 0u) << usage.err;
  EXPECT_EQ(std::count(usage.err.begin(), usage.err.end(), '\n'), 1) << usage.err;
  for (const std::string& option : {"-o", "--output"}) {
    CliRun twice = cli({dir, input, "-o", output, option, output + ".2.png"});
    EXPECT_EQ(twice.code, 2);
    EXPECT_EQ(twice.err.rfind("error: --output given twice (usage: ", 0), 0u) << twice.err;
  }
  CliRun overlap_twice = cli({dir, input, "-o", output, "--overlap", "2", "--overlap", "4"});
  EXPECT_EQ(overlap_twice.err.rfind("error: --overlap given twice (usage: ", 0), 0u) << overlap_twice.err;
  EXPECT_FALSE(std::filesystem::exists(output));
  CliRun help = cli({"--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_EQ(help.out.rfind("usage: ", 0), 0u) << help.out;
  EXPECT_EQ(help.err, "");
}

TEST(Cli, AnAllocationThatFailsNamesTheImageAndWritesNothing) {
  ExportFolder folder("cli_memory");
  folder.write(minimal_manifest(dt::sha256_hex("graph")));
  const std::string input = (folder.dir / "in.png").string(), output = (folder.dir / "out.png").string();
  dt::write_image(input, levels(13, 17, 3), nullptr, 8);
  auto exhausted = [](const dt::Export& exported, const dt::CliOptions&) {
    return dt::function_backend(exported, [](const float*, float*) { throw std::bad_alloc(); });
  };
  std::vector<const char*> argv{"deploytool-standin", folder.dir.c_str(), input.c_str(), "-o", output.c_str()};
  std::ostringstream out, err;
  EXPECT_EQ(dt::run_cli(int(argv.size()), argv.data(), exhausted, out, err), 1);
  EXPECT_EQ(err.str(), "error: out of memory: " + input + "\n");
  EXPECT_FALSE(std::filesystem::exists(output));
}

TEST(Restorer, RefusesImagesThatAreNotOneGroupOfTheViewsInOneLine) {
  ExportFolder folder("restorer_views");
  dt::testing::json manifest = minimal_manifest(dt::sha256_hex("graph"));
  manifest["input"]["shape"] = {2, 6, 16, 16};
  manifest["input"]["views"] = dt::testing::json::parse(R"([{"name": "left", "channels": 3, "color": "RGB"}, {"name": "right", "channels": 3, "color": "RGB"}])");
  folder.write(manifest);
  dt::Export exported = dt::Export::open(folder.dir);
  dt::Restorer restorer(exported, standin(exported, {}));
  dt::Image left, right, small;
  left.pixels = levels(20, 24, 3), left.path = "l.png";
  right.pixels = levels(20, 24, 3), right.path = "r.png";
  small.pixels = levels(20, 23, 3), small.path = "s.png";
  auto message = [&restorer](const std::vector<dt::Image>& views) {
    try {
      restorer.restore(views);
    } catch (const dt::ImageError& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message({}), "toy-x2 needs an image");
  EXPECT_EQ(message({left}), "toy-x2 takes 2 views of one scene (left, right); l.png is not such a group");
  EXPECT_EQ(message({left, small}), "l.png and s.png differ in size: the views must match");
  EXPECT_THROW(restorer.restore(left), dt::ImageError);
  const dt::Image restored = restorer.restore(std::vector<dt::Image>{left, right});
  EXPECT_EQ(restored.pixels.height, 40);
  EXPECT_EQ(restored.pixels.channels, 3);
}
