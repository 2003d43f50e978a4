#pragma once
// deploytool-infer's command line, with the backend left to the caller (the command uses
// TensorRT or OpenVINO; tests use a stand-in model through the same code path).
#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "deploytool/backend.hpp"
#include "deploytool/export.hpp"

namespace deploytool {

struct CliOptions {
  std::string backend = "trt";  // --backend: trt or openvino
  std::string device;           // --device (openvino): empty means CPU
  bool cuda_graph = false;
};

using BackendFactory = std::function<std::unique_ptr<Backend>(const Export&, const CliOptions&)>;

// `PROGRAM EXPORT_DIR IMAGE [IMAGE ...] -o OUT.png [--overlap N] [--backend trt|openvino] [--device D] [--cuda-graph]`: 0 on success;
// otherwise prints "error: <one line>" to `err` and returns non-zero, leaving no output file.
int run_cli(int argc, const char* const* argv, const BackendFactory& make_backend, std::ostream& out, std::ostream& err);

}  // namespace deploytool
