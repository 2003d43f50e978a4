#pragma once
// deploytool-infer's command line: the backend is looked up by name in a registry (the command
// uses builtin_backends(): TensorRT, OpenVINO), or made by the caller (tests use a stand-in model
// through the same code path).
#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "deploytool/backend.hpp"
#include "deploytool/export.hpp"

namespace deploytool {

struct CliOptions {
  std::string backend = "trt";  // --backend: a name of the registry
  std::string device;           // --device (backends that take one): empty means their default
  bool cuda_graph = false;
};

using BackendFactory = std::function<std::unique_ptr<Backend>(const Export&, const CliOptions&)>;

// `PROGRAM EXPORT_DIR IMAGE [IMAGE ...] -o OUT.png [--overlap N] [--backend NAME] [--device D] [--cuda-graph]`: 0 on success;
// otherwise prints "error: <one line>" to `err` and returns non-zero, leaving no output file.
// --backend NAME is looked up in `registry`, which refuses unknown names and options the backend
// does not take.
int run_cli(int argc, const char* const* argv, const BackendRegistry& registry, std::ostream& out, std::ostream& err);
// The same, with `make_backend` opening the backend (the options still checked against `registry`).
int run_cli(int argc, const char* const* argv, const BackendFactory& make_backend, std::ostream& out, std::ostream& err,
            const BackendRegistry& registry = builtin_backends());

}  // namespace deploytool
