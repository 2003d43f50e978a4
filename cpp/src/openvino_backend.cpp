// The OpenVINO backends: the export's FP32 graph (model.onnx, `openvino`) or its BF16 plan
// (model_bf16.onnx, `openvino-bf16`) compiled by OpenVINO for a device (CPU by default) with f32
// inference precision, which runs every node in the type the graph gives it: the plan's bfloat16
// nodes on BF16 kernels, its FP32 islands in FP32 (deploytool.runtime.backends.openvino_bf16 says
// why not bf16 precision). Without OpenVINO (CMake did not find it) only the refusals are compiled.
#include "deploytool/backend.hpp"
#include "deploytool/errors.hpp"
#include "deploytool/export.hpp"

#ifdef DEPLOYTOOL_HAVE_OPENVINO
#include <algorithm>
#include <filesystem>
#include <openvino/openvino.hpp>
#include <vector>

#include "deploytool/sha256.hpp"
#endif

namespace deploytool {
namespace {

constexpr const char* kBuiltWithoutOpenVino =
    "this deploytool runtime was built without OpenVINO (CMake did not find it); pip install openvino and reconfigure, or pass "
    "-DOpenVINO_DIR=<OpenVINO prefix>/cmake";

}  // namespace

#ifdef DEPLOYTOOL_HAVE_OPENVINO
namespace {

constexpr const char* kPrecision = "f32";
constexpr const char* kCacheFolder = "openvino-cache";

BatchShape shape_of(const ov::Shape& shape, const std::string& where) {
  if (shape.size() != 4) throw Error(where + ": expected one static NCHW input and output");
  return {int(shape[0]), int(shape[1]), int(shape[2]), int(shape[3])};
}

// The words of deploytool.runtime.backends.openvino.check_device.
void check_device(const std::string& device, const std::vector<std::string>& available) {
  for (const std::string& seen : available) {
    if (seen == device || seen.substr(0, seen.find('.')) == device) return;
  }
  std::string listed;
  for (const std::string& seen : available) listed += (listed.empty() ? "" : ", ") + seen;
  throw BackendUnavailable("OpenVINO sees no " + device + " device on this machine; it sees: " + (listed.empty() ? "none" : listed));
}

// What a backend runs: its name, the export's graph, and whether the device needs BF16 arithmetic.
struct Plan {
  const char* name;
  const char* graph;
  bool needs_bf16;
};
constexpr Plan kFp32{"openvino", "model.onnx", false};
constexpr Plan kBf16{"openvino-bf16", "model_bf16.onnx", true};

// The words of deploytool.runtime.backends.openvino_bf16.bf16_refusal.
void check_bf16(ov::Core& core, const std::string& device) {
  const std::vector<std::string> offered = core.get_property(device, ov::device::capabilities);
  if (std::find(offered.begin(), offered.end(), ov::device::capability::BF16) != offered.end()) return;
  std::string listed;
  for (const std::string& capability : offered) listed += (listed.empty() ? "" : ", ") + capability;
  throw BackendUnavailable(std::string(kBf16.name) + " needs BF16 arithmetic (on a CPU: AVX-512 BF16 or AMX); OpenVINO's " + device + " offers " +
                           (listed.empty() ? "no optimization capabilities" : listed) + ", without BF16");
}

class OpenVinoBackend : public Backend {
 public:
  OpenVinoBackend(const Export& exported, const OpenVinoOptions& options, const Plan& plan) : name_(plan.name) {
    const std::string graph = exported.check_file(plan.graph).string();
    ov::Core core;
    check_device(options.device, core.get_available_devices());
    if (plan.needs_bf16) check_bf16(core, options.device);
    // The cache folder's key is deploytool.runtime.backends.openvino.cache_key's: both runtimes share blobs.
    const std::string build = ov::get_openvino_version().buildNumber;
    const std::string key =
        sha256_hex(exported.manifest().files.at(plan.graph).sha256 + "\n" + build + "\n" + options.device + "\n" + kPrecision).substr(0, 16);
    const std::filesystem::path cache = exported.dir() / kCacheFolder / key;
    std::error_code failed;
    std::filesystem::create_directories(cache, failed);
    if (failed) throw Error("cannot create the OpenVINO cache folder " + cache.string() + ": " + failed.message());
    try {
      compiled_ = core.compile_model(graph, options.device, ov::hint::inference_precision(ov::element::f32),
                                     ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY), ov::cache_dir(cache.string()));
      request_ = compiled_.create_infer_request();
    } catch (const ov::Exception& error) {
      std::string message = error.what();
      message = message.substr(0, message.find('\n'));
      throw Error("OpenVINO could not compile " + graph + " for " + options.device + ": " + message);
    }
    if (compiled_.inputs().size() != 1 || compiled_.outputs().size() != 1 || compiled_.input().get_partial_shape().is_dynamic() ||
        compiled_.output().get_partial_shape().is_dynamic()) {
      throw Error(graph + ": expected one static NCHW input and output");
    }
    input_shape_ = shape_of(compiled_.input().get_shape(), graph);
    output_shape_ = shape_of(compiled_.output().get_shape(), graph);
    if (compiled_.input().get_element_type() != ov::element::f32 || compiled_.output().get_element_type() != ov::element::f32) {
      throw Error(graph + ": input and output must be float32, the export's contract");
    }
    device_ = options.device;
  }

  std::string name() const override { return name_; }
  BatchShape input_shape() const override { return input_shape_; }
  BatchShape output_shape() const override { return output_shape_; }

  void infer(const float* input, float* output) override {
    // The caller's buffers are used in place: no copy in or out.
    request_.set_input_tensor(ov::Tensor(ov::element::f32, compiled_.input().get_shape(), const_cast<float*>(input)));
    request_.set_output_tensor(ov::Tensor(ov::element::f32, compiled_.output().get_shape(), output));
    try {
      request_.infer();
    } catch (const ov::Exception& error) {
      std::string message = error.what();
      throw Error("OpenVINO failed to run the model on " + device_ + ": " + message.substr(0, message.find('\n')));
    }
  }

 private:
  ov::CompiledModel compiled_;
  ov::InferRequest request_;
  BatchShape input_shape_, output_shape_;
  std::string device_;
  std::string name_;
};

}  // namespace

bool openvino_available() { return true; }

std::unique_ptr<Backend> openvino_backend(const Export& exported, OpenVinoOptions options) {
  return std::make_unique<OpenVinoBackend>(exported, options, kFp32);
}

std::unique_ptr<Backend> openvino_bf16_backend(const Export& exported, OpenVinoOptions options) {
  return std::make_unique<OpenVinoBackend>(exported, options, kBf16);
}

#else

bool openvino_available() { return false; }

std::unique_ptr<Backend> openvino_backend(const Export&, OpenVinoOptions) { throw BackendUnavailable(kBuiltWithoutOpenVino); }

std::unique_ptr<Backend> openvino_bf16_backend(const Export& exported, OpenVinoOptions options) { return openvino_backend(exported, options); }

#endif

BackendEntry openvino_entry() {
  BackendEntry entry;
  entry.name = "openvino";
  entry.open = [](const Export& exported, const BackendOptions& options) {
    OpenVinoOptions openvino;
    if (!options.device.empty()) openvino.device = options.device;
    return openvino_backend(exported, openvino);
  };
  entry.unavailable_reason = [] { return openvino_available() ? std::string() : std::string(kBuiltWithoutOpenVino); };
  entry.takes_device = true;
  return entry;
}

BackendEntry openvino_bf16_entry() {
  BackendEntry entry = openvino_entry();
  entry.name = "openvino-bf16";
  entry.open = [](const Export& exported, const BackendOptions& options) {
    OpenVinoOptions openvino;
    if (!options.device.empty()) openvino.device = options.device;
    return openvino_bf16_backend(exported, openvino);
  };
  return entry;
}

}  // namespace deploytool
