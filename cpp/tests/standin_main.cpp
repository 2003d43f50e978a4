// deploytool-standin: deploytool-infer with the stand-in model instead of an engine (the export's
// model.onnx is still checked against its sha256, as a real backend checks the file it loads).
//   deploytool-standin EXPORT_DIR IMAGE [IMAGE ...] -o OUT.png [--overlap N]
//   deploytool-standin --bench EXPORT_DIR IMAGE   (prints {"restore_s", "model_s", "tiles"} as JSON)
#include <chrono>
#include <cstring>
#include <iostream>

#include "deploytool/cli.hpp"
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

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::strcmp(argv[1], "--bench") == 0) return bench(argv[2], argv[3]);
  auto factory = [](const Export& exported, const deploytool::CliOptions&) { return standin_backend(exported, nullptr); };
  return deploytool::run_cli(argc, argv, factory, std::cout, std::cerr);
}
