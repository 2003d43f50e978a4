#include "deploytool/backend.hpp"

#include "deploytool/errors.hpp"
#include "deploytool/export.hpp"

namespace deploytool {
namespace {

class FunctionBackend : public Backend {
 public:
  FunctionBackend(BatchShape input, BatchShape output, BatchFunction run, std::string name)
      : input_(input), output_(output), run_(std::move(run)), name_(std::move(name)) {
    if (!run_) throw Error(name_ + ": no function given");
  }
  std::string name() const override { return name_; }
  BatchShape input_shape() const override { return input_; }
  BatchShape output_shape() const override { return output_; }
  void infer(const float* input, float* output) override { run_(input, output); }

 private:
  BatchShape input_, output_;
  BatchFunction run_;
  std::string name_;
};

}  // namespace

std::string BatchShape::str() const {
  return "(" + std::to_string(batch) + ", " + std::to_string(channels) + ", " + std::to_string(height) + ", " + std::to_string(width) + ")";
}

std::unique_ptr<Backend> function_backend(BatchShape input, BatchShape output, BatchFunction run, std::string name) {
  return std::make_unique<FunctionBackend>(input, output, std::move(run), std::move(name));
}

std::unique_ptr<Backend> function_backend(const Export& exported, BatchFunction run, std::string name) {
  const auto& in = exported.manifest().input_shape;
  const auto& out = exported.manifest().output_shape;
  return function_backend({in[0], in[1], in[2], in[3]}, {out[0], out[1], out[2], out[3]}, std::move(run), std::move(name));
}

#ifndef DEPLOYTOOL_HAVE_TENSORRT
bool tensorrt_available() { return false; }

std::unique_ptr<Backend> tensorrt_backend(const Export&, TensorRtOptions) {
  throw BackendUnavailable(
      "this deploytool runtime was built without TensorRT (CMake did not find it); reconfigure with -DTensorRT_ROOT=<TensorRT prefix> on a "
      "machine with TensorRT 10 or 11 and CUDA");
}
#endif

}  // namespace deploytool
