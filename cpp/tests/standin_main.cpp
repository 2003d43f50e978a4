// deploytool-standin: deploytool-infer with the stand-in model instead of an engine (the export's
// model.onnx is still checked against its sha256, as a real backend checks the file it loads).
//   deploytool-standin EXPORT_DIR IMAGE [IMAGE ...] -o OUT.png [--overlap N]
//   deploytool-standin --bench EXPORT_DIR IMAGE   (prints {"restore_s", "model_s", "tiles"} as JSON)
//   deploytool-standin --manifest EXPORT_DIR [SM_MAJOR SM_MINOR TRT_VERSION]
//     checks every recorded file, prints what the runtime read as JSON (and the engine it would pick)
//   deploytool-standin --encode-png SAMPLES.u16 HEIGHT WIDTH CHANNELS BIT_DEPTH MAX_IDAT_BYTES OUT.png
//     encode_png over native-endian uint16 samples (HWC), to compare with deploytool/runtime/png.py
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "deploytool/cli.hpp"
#include "deploytool/errors.hpp"
#include "deploytool/image.hpp"
#include "deploytool/runtime.hpp"
#include "standin.hpp"

namespace {

using deploytool::BatchShape;
using deploytool::Export;

std::unique_ptr<deploytool::Backend> standin_backend(const Export& exported, double* model_seconds) {
  exported.check_file("model.onnx");
  const auto& in = exported.manifest().input_shape;
  const auto& out = exported.manifest().output_shape;
  deploytool::testing::StandinModel model({in[0], in[1], in[2], in[3]}, {out[0], out[1], out[2], out[3]});
  return deploytool::function_backend(
      exported,
      [model, model_seconds](const float* input, float* output) mutable {
        auto start = std::chrono::steady_clock::now();
        model(input, output);
        if (model_seconds) *model_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      },
      "stand-in");
}

int bench(const char* export_dir, const char* image_path) {
  try {
    Export exported = Export::open(export_dir);
    deploytool::Image image = deploytool::read_image(image_path);
    double model_seconds = 0.0;
    deploytool::Restorer restorer(exported, standin_backend(exported, &model_seconds));
    auto start = std::chrono::steady_clock::now();
    deploytool::Image restored = restorer.restore(image);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "{\"restore_s\": " << seconds << ", \"model_s\": " << model_seconds << ", \"tiles\": "
              << restorer.tiles_for(image.pixels.height, image.pixels.width) << ", \"output\": [" << restored.pixels.height << ", "
              << restored.pixels.width << "]}\n";
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

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::strcmp(argv[1], "--bench") == 0) return bench(argv[2], argv[3]);
  if ((argc == 3 || argc == 6) && std::strcmp(argv[1], "--manifest") == 0) return check_manifest(argc, argv);
  if (argc == 9 && std::strcmp(argv[1], "--encode-png") == 0) return encode(argv);
  auto factory = [](const Export& exported, const deploytool::CliOptions&) { return standin_backend(exported, nullptr); };
  return deploytool::run_cli(argc, argv, factory, std::cout, std::cerr);
}
