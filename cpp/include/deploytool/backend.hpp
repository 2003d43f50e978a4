#pragma once
// What runs the model: a static batch of float32 NCHW tiles in, a static batch out.
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace deploytool {

class Export;

struct BatchShape {
  int batch = 0, channels = 0, height = 0, width = 0;
  std::size_t elements() const { return std::size_t(batch) * channels * height * width; }
  bool operator==(const BatchShape& other) const {
    return batch == other.batch && channels == other.channels && height == other.height && width == other.width;
  }
  std::string str() const;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual BatchShape input_shape() const = 0;
  virtual BatchShape output_shape() const = 0;
  // `input` holds input_shape().elements() floats; fill output_shape().elements() floats of `output`.
  virtual void infer(const float* input, float* output) = 0;
};

// An application's own runtime as a backend: `run(input, output)` with the export's graph shapes.
using BatchFunction = std::function<void(const float* input, float* output)>;
std::unique_ptr<Backend> function_backend(const Export& exported, BatchFunction run, std::string name = "function");
std::unique_ptr<Backend> function_backend(BatchShape input, BatchShape output, BatchFunction run, std::string name = "function");

struct TensorRtOptions {
  bool cuda_graph = false;  // capture one launch and replay it for every batch
  int device = 0;
};

// True when this library was built with TensorRT (CMake found it).
bool tensorrt_available();
// The export's engine built for this GPU and TensorRT version (sha256-checked), deserialised and
// ready; throws BackendUnavailable in a build without TensorRT, Error when no engine fits.
std::unique_ptr<Backend> tensorrt_backend(const Export& exported, TensorRtOptions options = {});

struct OpenVinoOptions {
  std::string device = "CPU";  // as OpenVINO names it: CPU, GPU, GPU.1, NPU
};

// True when this library was built with OpenVINO (CMake found it).
bool openvino_available();
// The export's model.onnx (sha256-checked) compiled by OpenVINO for `options.device` with f32
// inference precision, cached under the export's openvino-cache/ (shared with the Python tool);
// throws BackendUnavailable in a build without OpenVINO or for a device OpenVINO does not see.
std::unique_ptr<Backend> openvino_backend(const Export& exported, OpenVinoOptions options = {});
// The export's BF16 plan (model_bf16.onnx) likewise, on a device whose OpenVINO capabilities
// include BF16 (CPUs with AVX-512 BF16 or AMX); throws BackendUnavailable elsewhere.
std::unique_ptr<Backend> openvino_bf16_backend(const Export& exported, OpenVinoOptions options = {});

// -- the registry: backends by name (`deploytool-infer --backend NAME`)

// What a backend may be asked for when it is opened; each option applies to the backends whose
// registry entry says it takes it, and is refused for the others.
struct BackendOptions {
  std::string device;       // takes_device backends (openvino): empty means the backend's default
  bool cuda_graph = false;  // takes_cuda_graph backends (trt)
};

struct BackendEntry {
  std::string name;
  // Opens the backend on an export; throws BackendUnavailable or Error, in one line.
  std::function<std::unique_ptr<Backend>(const Export&, const BackendOptions&)> open;
  // Why this build or machine cannot run it; empty when it can.
  std::function<std::string()> unavailable_reason;
  bool takes_device = false;
  bool takes_cuda_graph = false;
};

class BackendRegistry {
 public:
  // Throws Error when the name is already registered or the entry cannot open anything.
  void add(BackendEntry entry);
  // The entry called `name`; throws Error "unknown backend 'NAME'; choose from A, B".
  const BackendEntry& get(const std::string& name) const;
  bool contains(const std::string& name) const;
  // In registration order.
  std::vector<std::string> names() const;
  // The backends that take a device (for the refusal "--device applies to the ... backend").
  std::vector<std::string> device_backends() const;
  std::vector<std::string> cuda_graph_backends() const;
  // Why `options` do not apply to backend `name` ("--device applies to the openvino backend, not
  // trt"); empty when they do.
  std::string refused_option(const std::string& name, const BackendOptions& options) const;
  // get(name), refused with BackendUnavailable(reason) when unavailable, options checked, opened.
  std::unique_ptr<Backend> open(const std::string& name, const Export& exported, const BackendOptions& options = {}) const;

 private:
  std::vector<BackendEntry> entries_;
};

// The backends this library was built with a registration for: trt, openvino, openvino-bf16 (each
// present whether or not CMake found its library; without it, it is unavailable with the reason).
const BackendRegistry& builtin_backends();

// Each backend's registry entry (defined beside the backend).
BackendEntry tensorrt_entry();
BackendEntry openvino_entry();
BackendEntry openvino_bf16_entry();

}  // namespace deploytool
