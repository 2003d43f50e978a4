// deploytool-infer EXPORT_DIR IMAGE [IMAGE ...] -o OUTPUT.png: an export's TensorRT engine for
// this GPU over one image (one per view for multi-view models), tiled as `deploytool run` tiles.
#include <iostream>

#include "deploytool/cli.hpp"

int main(int argc, char** argv) {
  auto tensorrt = [](const deploytool::Export& exported, const deploytool::CliOptions& options) {
    deploytool::TensorRtOptions trt;
    trt.cuda_graph = options.cuda_graph;
    return deploytool::tensorrt_backend(exported, trt);
  };
  return deploytool::run_cli(argc, argv, tensorrt, std::cout, std::cerr);
}
