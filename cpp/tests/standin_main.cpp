// deploytool-standin: deploytool-infer with the stand-in model instead of an engine (the export's
// model.onnx is still checked against its sha256, as a real backend checks the file it loads).
//   deploytool-standin EXPORT_DIR IMAGE [IMAGE ...] -o OUT.png [--overlap N]
//   deploytool-standin --bench EXPORT_DIR IMAGE
//     prints {"restore_s", "model_s", "restore_cpu_s", "model_cpu_s", "tiles", "output"} as JSON (wall and CPU seconds)
//   deploytool-standin --manifest EXPORT_DIR [SM_MAJOR SM_MINOR TRT_VERSION]
//     checks every recorded file, prints what the runtime read as JSON (and the engine it would pick)
//   deploytool-standin --encode-png SAMPLES.u16 HEIGHT WIDTH CHANNELS BIT_DEPTH MAX_IDAT_BYTES OUT.png
//     encode_png over native-endian uint16 samples (HWC), to compare with deploytool/runtime/png.py
//   deploytool-standin --tiler-pieces CASES.json OUT_DIR
//     the tiler's pieces on each case (see tiler_pieces below), to compare with deploytool/runtime/tiling.py
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "deploytool/cli.hpp"
#include "deploytool/errors.hpp"
#include "deploytool/image.hpp"
#include "deploytool/runtime.hpp"
#include "deploytool/tiler.hpp"
#include "standin.hpp"

namespace {

using deploytool::BatchShape;
using deploytool::Export;

// Seconds of wall time and of this process's CPU time.
struct Seconds {
  double wall = 0.0, cpu = 0.0;
};

class Stopwatch {
 public:
  Stopwatch() : wall_(std::chrono::steady_clock::now()), cpu_(std::clock()) {}
  Seconds elapsed() const {
    return {std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_).count(), double(std::clock() - cpu_) / CLOCKS_PER_SEC};
  }

 private:
  std::chrono::steady_clock::time_point wall_;
  std::clock_t cpu_;
};

std::unique_ptr<deploytool::Backend> standin_backend(const Export& exported, Seconds* model_seconds) {
  exported.check_file("model.onnx");
  const auto& in = exported.manifest().input_shape;
  const auto& out = exported.manifest().output_shape;
  deploytool::testing::StandinModel model({in[0], in[1], in[2], in[3]}, {out[0], out[1], out[2], out[3]});
  return deploytool::function_backend(
      exported,
      [model, model_seconds](const float* input, float* output) mutable {
        Stopwatch stopwatch;
        model(input, output);
        if (!model_seconds) return;
        const Seconds took = stopwatch.elapsed();
        model_seconds->wall += took.wall;
        model_seconds->cpu += took.cpu;
      },
      "stand-in");
}

int bench(const char* export_dir, const char* image_path) {
  try {
    Export exported = Export::open(export_dir);
    deploytool::Image image = deploytool::read_image(image_path);
    Seconds model_seconds;
    deploytool::Restorer restorer(exported, standin_backend(exported, &model_seconds));
    Stopwatch stopwatch;
    deploytool::Image restored = restorer.restore(image);
    const Seconds took = stopwatch.elapsed();
    nlohmann::json timings = {{"restore_s", took.wall},
                              {"model_s", model_seconds.wall},
                              {"restore_cpu_s", took.cpu},
                              {"model_cpu_s", model_seconds.cpu},
                              {"tiles", restorer.tiles_for(image.pixels.height, image.pixels.width)},
                              {"output", {restored.pixels.height, restored.pixels.width}}};
    std::cout << timings.dump() << "\n";
    return 0;
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
}

int check_manifest(int argc, char** argv) {
  try {
    Export exported = Export::open(argv[2]);
    const deploytool::Manifest& manifest = exported.manifest();
    nlohmann::json files = nlohmann::json::array();
    for (const auto& [name, record] : manifest.files) files.push_back(exported.check_file(name).filename().string());
    for (const auto& [name, record] : manifest.engines) files.push_back(exported.check_file(name).filename().string());
    nlohmann::json views = nlohmann::json::array();
    for (const auto& view : manifest.views) views.push_back({view.name, view.channels, view.color});
    const auto& grid = manifest.tiling;
    nlohmann::json read = {
        {"schema_version", manifest.schema_version},
        {"model_id", manifest.model_id},
        {"scale", manifest.scale},
        {"input_shape", manifest.input_shape},
        {"output_shape", manifest.output_shape},
        {"views", views},
        {"tiling",
         {{"tile", {grid.tile_h, grid.tile_w}},
          {"tile_multiple", grid.tile_multiple},
          {"fixed_tile", grid.fixed_tile},
          {"batch", grid.batch},
          {"overlap", grid.overlap},
          {"padding", grid.padding},
          {"blend", {{"mode", grid.blend.mode == deploytool::BlendMode::ramp ? "ramp" : "centre"}, {"width", grid.blend.width}, {"trim", grid.blend.trim}}}}},
        {"checked_files", files}};
    if (argc == 6) read["engine"] = deploytool::matching_engine(manifest, std::stoi(argv[3]), std::stoi(argv[4]), argv[5]);
    std::cout << read.dump() << "\n";
    return 0;
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
}

int encode(char** argv) {
  try {
    const int height = std::stoi(argv[3]), width = std::stoi(argv[4]), channels = std::stoi(argv[5]), depth = std::stoi(argv[6]);
    std::ifstream in(argv[2], std::ios::binary);
    std::vector<unsigned short> samples(std::size_t(height) * width * channels);
    in.read(reinterpret_cast<char*>(samples.data()), std::streamsize(samples.size() * sizeof(unsigned short)));
    if (!in || in.peek() != EOF) throw deploytool::Error(std::string(argv[2]) + " does not hold exactly the samples of its shape");
    const std::vector<unsigned char> png = deploytool::encode_png(samples, height, width, channels, depth, std::stoul(argv[7]));
    std::ofstream(argv[8], std::ios::binary).write(reinterpret_cast<const char*>(png.data()), std::streamsize(png.size()));
    return 0;
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
}

std::vector<float> read_floats(const std::string& path, std::size_t count) {
  std::ifstream in(path, std::ios::binary);
  std::vector<float> values(count);
  in.read(reinterpret_cast<char*>(values.data()), std::streamsize(count * sizeof(float)));
  if (!in || in.peek() != EOF) throw deploytool::Error(path + " does not hold exactly " + std::to_string(count) + " float32 values");
  return values;
}

void write_floats(const std::filesystem::path& path, const std::vector<float>& values) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(values.data()), std::streamsize(values.size() * sizeof(float)));
}

// One case: {"height", "width", "channels", "tile": [h, w], "overlap", "scale", "trim", "out_channels",
// "crop": [h, w], "image": HWC float32 file, "outputs": the tiles' output float32 file, "ramp",
// "blend_trim": BlendWeights' arguments}. Writes NAME.tiles (every input tile, CHW), NAME.weights
// (BlendWeights::tile for the 16 edge combinations, top bit first) and NAME.result (a TiledImage
// given every output tile in order) as float32 into `out_dir`; returns the grid as JSON.
nlohmann::json tiler_case(const nlohmann::json& spec, const std::filesystem::path& out_dir, const std::string& name) {
  const int height = spec["height"], width = spec["width"], channels = spec["channels"], scale = spec["scale"];
  const deploytool::TileOptions options{spec["tile"][0], spec["tile"][1], scale, 1, spec["overlap"], spec["trim"]};
  deploytool::Pixels image(height, width, channels);
  image.values = read_floats(spec["image"], image.values.size());
  const deploytool::TileGrid grid(height, width, options.tile_h, options.tile_w, options.overlap);
  nlohmann::json edges = nlohmann::json::array();
  std::vector<float> tiles(std::size_t(grid.count()) * channels * options.tile_h * options.tile_w);
  for (int index = 0; index < grid.count(); ++index) {
    const deploytool::TileEdges e = grid.edges(index);
    edges.push_back({e.top, e.bottom, e.left, e.right});
    grid.cut(image, index, &tiles[tiles.size() / grid.count() * index]);
  }
  write_floats(out_dir / (name + ".tiles"), tiles);
  const int out_th = options.tile_h * scale, out_tw = options.tile_w * scale;
  const deploytool::BlendWeights weights(out_th, out_tw, spec["ramp"], spec["blend_trim"]);
  std::vector<float> all_weights;
  for (int bits = 0; bits < 16; ++bits) {
    const std::vector<float> tile = weights.tile({bool(bits & 8), bool(bits & 4), bool(bits & 2), bool(bits & 1)});
    all_weights.insert(all_weights.end(), tile.begin(), tile.end());
  }
  write_floats(out_dir / (name + ".weights"), all_weights);
  const int out_channels = spec["out_channels"];
  const std::size_t out_tile = std::size_t(out_channels) * out_th * out_tw;
  const std::vector<float> outputs = read_floats(spec["outputs"], out_tile * grid.count());
  deploytool::TiledImage tiled(image, options, out_channels, spec["crop"][0], spec["crop"][1]);
  for (int index = 0; index < grid.count(); ++index) tiled.add(index, &outputs[out_tile * index]);
  write_floats(out_dir / (name + ".result"), tiled.result().values);
  return {{"ys", grid.ys()}, {"xs", grid.xs()}, {"count", grid.count()}, {"edges", edges}};
}

int tiler_pieces(const char* cases_path, const char* out_dir) {
  try {
    std::ifstream in(cases_path);
    const nlohmann::json cases = nlohmann::json::parse(in);
    nlohmann::json grids = nlohmann::json::array();
    for (std::size_t i = 0; i < cases.size(); ++i) grids.push_back(tiler_case(cases[i], out_dir, std::to_string(i)));
    std::cout << grids.dump() << "\n";
    return 0;
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::strcmp(argv[1], "--bench") == 0) return bench(argv[2], argv[3]);
  if ((argc == 3 || argc == 6) && std::strcmp(argv[1], "--manifest") == 0) return check_manifest(argc, argv);
  if (argc == 9 && std::strcmp(argv[1], "--encode-png") == 0) return encode(argv);
  if (argc == 4 && std::strcmp(argv[1], "--tiler-pieces") == 0) return tiler_pieces(argv[2], argv[3]);
  auto factory = [](const Export& exported, const deploytool::CliOptions&) { return standin_backend(exported, nullptr); };
  return deploytool::run_cli(argc, argv, factory, std::cout, std::cerr);
}
