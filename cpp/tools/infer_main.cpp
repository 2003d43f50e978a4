// deploytool-infer EXPORT_DIR IMAGE [IMAGE ...] -o OUTPUT.png [--backend trt|openvino]: an
// export's TensorRT engine for this GPU, or its FP32 graph on OpenVINO, over one image (one per
// view for multi-view models), tiled as `deploytool run` tiles.
#include <iostream>

#include "deploytool/cli.hpp"

int main(int argc, char** argv) {
  auto make_backend = [](const deploytool::Export& exported, const deploytool::CliOptions& options) {
    if (options.backend == "openvino") {
      deploytool::OpenVinoOptions openvino;
      if (!options.device.empty()) openvino.device = options.device;
      return deploytool::openvino_backend(exported, openvino);
    }
    deploytool::TensorRtOptions trt;
    trt.cuda_graph = options.cuda_graph;
    return deploytool::tensorrt_backend(exported, trt);
  };
  return deploytool::run_cli(argc, argv, make_backend, std::cout, std::cerr);
}
