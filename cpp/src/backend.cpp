#include "deploytool/backend.hpp"

#include <algorithm>

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

constexpr const char* kBuiltWithoutTensorRt =
    "this deploytool runtime was built without TensorRT (CMake did not find it); reconfigure with -DTensorRT_ROOT=<TensorRT prefix> on a "
    "machine with TensorRT 10 or 11 and CUDA";

std::string joined(const std::vector<std::string>& names, const std::string& separator) {
  std::string text;
  for (const std::string& name : names) text += (text.empty() ? "" : separator) + name;
  return text;
}

// "openvino backend", "a and b backends"
std::string backends_phrase(const std::vector<std::string>& names) { return joined(names, " and ") + (names.size() > 1 ? " backends" : " backend"); }

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

std::unique_ptr<Backend> tensorrt_backend(const Export&, TensorRtOptions) { throw BackendUnavailable(kBuiltWithoutTensorRt); }
#endif

BackendEntry tensorrt_entry() {
  BackendEntry entry;
  entry.name = "trt";
  entry.open = [](const Export& exported, const BackendOptions& options) {
    TensorRtOptions trt;
    trt.cuda_graph = options.cuda_graph;
    return tensorrt_backend(exported, trt);
  };
  entry.unavailable_reason = [] { return tensorrt_available() ? std::string() : std::string(kBuiltWithoutTensorRt); };
  entry.takes_cuda_graph = true;
  return entry;
}

// -- the registry

void BackendRegistry::add(BackendEntry entry) {
  if (entry.name.empty() || !entry.open) throw Error("a backend needs a name and a way to open it");
  if (contains(entry.name)) throw Error("backend '" + entry.name + "' is registered twice");
  entries_.push_back(std::move(entry));
}

bool BackendRegistry::contains(const std::string& name) const {
  return std::any_of(entries_.begin(), entries_.end(), [&](const BackendEntry& entry) { return entry.name == name; });
}

const BackendEntry& BackendRegistry::get(const std::string& name) const {
  for (const BackendEntry& entry : entries_) {
    if (entry.name == name) return entry;
  }
  throw Error("unknown backend '" + name + "'; choose from " + joined(names(), ", "));
}

std::vector<std::string> BackendRegistry::names() const {
  std::vector<std::string> found;
  for (const BackendEntry& entry : entries_) found.push_back(entry.name);
  return found;
}

std::vector<std::string> BackendRegistry::device_backends() const {
  std::vector<std::string> found;
  for (const BackendEntry& entry : entries_) {
    if (entry.takes_device) found.push_back(entry.name);
  }
  return found;
}

std::vector<std::string> BackendRegistry::cuda_graph_backends() const {
  std::vector<std::string> found;
  for (const BackendEntry& entry : entries_) {
    if (entry.takes_cuda_graph) found.push_back(entry.name);
  }
  return found;
}

std::string BackendRegistry::refused_option(const std::string& name, const BackendOptions& options) const {
  const BackendEntry& entry = get(name);
  if (!options.device.empty() && !entry.takes_device) return "--device applies to the " + backends_phrase(device_backends()) + ", not " + name;
  if (options.cuda_graph && !entry.takes_cuda_graph) return "--cuda-graph applies to the " + backends_phrase(cuda_graph_backends());
  return "";
}

std::unique_ptr<Backend> BackendRegistry::open(const std::string& name, const Export& exported, const BackendOptions& options) const {
  const BackendEntry& entry = get(name);
  const std::string refused = refused_option(name, options);
  if (!refused.empty()) throw Error(refused);
  const std::string reason = entry.unavailable_reason ? entry.unavailable_reason() : std::string();
  if (!reason.empty()) throw BackendUnavailable(reason);
  return entry.open(exported, options);
}

const BackendRegistry& builtin_backends() {
  static const BackendRegistry registry = [] {
    BackendRegistry built;
    built.add(tensorrt_entry());
    built.add(openvino_entry());
    built.add(openvino_bf16_entry());
    return built;
  }();
  return registry;
}

}  // namespace deploytool
