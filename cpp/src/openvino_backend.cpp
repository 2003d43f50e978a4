// The OpenVINO backends: the export's FP32 graph (model.onnx, `openvino`) or its BF16 plan
// (model_bf16.onnx, `openvino-bf16`) compiled by OpenVINO for a device (CPU by default) with f32
// inference precision, which runs every node in the type the graph gives it: the plan's bfloat16
// nodes on BF16 kernels, its FP32 islands in FP32 (deploytool.runtime.backends.openvino says
// why not bf16 precision). Without OpenVINO (CMake did not find it) only the refusals are compiled.
#include "deploytool/backend.hpp"
#include "deploytool/errors.hpp"
#include "deploytool/export.hpp"

#ifdef DEPLOYTOOL_HAVE_OPENVINO
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <openvino/op/add.hpp>
#include <openvino/op/constant.hpp>
#include <openvino/op/convolution.hpp>
#include <openvino/op/group_conv.hpp>
#include <openvino/op/slice.hpp>
#include <openvino/op/split.hpp>
#include <openvino/op/variadic_split.hpp>
#include <openvino/openvino.hpp>
#include <openvino/pass/constant_folding.hpp>
#include <openvino/pass/manager.hpp>
#include <sstream>
#include <utility>
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
// deploytool.runtime.backends.openvino.GRAPH_FORM and IR_FILE
constexpr const char* kGraphForm = "channel-split-convolutions-1";
constexpr const char* kIrFile = "graph.xml";
// How many channel-wise nodes may lie between a Split and the Convolution that made its channels
constexpr size_t kChannelWiseDepth = 4;

// deploytool.runtime.backends.openvino.split_channel_convolutions, node for node (see its doc):
// the chunks of a channel Split computed where a Convolution makes them.
using NodePtr = std::shared_ptr<ov::Node>;

// deploytool.runtime.backends.openvino.openvino_reason: the line of an OpenVINO exception that says
// what is wrong, where its first lines name the source location it was raised at.
std::string openvino_reason(const ov::Exception& error) {
  std::istringstream lines(error.what());
  std::string line, first;
  while (std::getline(lines, line)) {
    line.erase(0, line.find_first_not_of(" \t"));
    line.erase(line.find_last_not_of(" \t\r") + 1);
    if (line.empty()) continue;
    if (line.rfind("Exception from ", 0) != 0) return line;
    if (first.empty()) first = line;
  }
  return first.empty() ? std::string("unknown OpenVINO error") : first;
}

void fold_constants(const std::shared_ptr<ov::Model>& model) {
  ov::pass::Manager manager;
  manager.register_pass<ov::pass::ConstantFolding>();
  manager.run_passes(model);
}

std::shared_ptr<ov::op::v0::Constant> constant_input(const NodePtr& node, size_t index) {
  return ov::as_type_ptr<ov::op::v0::Constant>(node->get_input_node_shared_ptr(index));
}

// The [start, stop) channels of each output of a channel Split of a static NCHW tensor (none: not one).
std::vector<std::pair<int64_t, int64_t>> channel_chunks(const NodePtr& split) {
  const ov::PartialShape shape = split->get_input_partial_shape(0);
  const auto axis = constant_input(split, 1);
  if (shape.rank().is_dynamic() || shape.rank().get_length() != 4 || shape[1].is_dynamic() || !axis) return {};
  if ((axis->cast_vector<int64_t>().at(0) % 4 + 4) % 4 != 1) return {};
  const int64_t channels = shape[1].get_length();
  std::vector<int64_t> lengths;
  if (const auto even = ov::as_type_ptr<ov::op::v1::Split>(split)) {
    lengths.assign(even->get_num_splits(), channels / int64_t(even->get_num_splits()));
  } else {
    const auto given = constant_input(split, 2);
    if (!given) return {};
    lengths = given->cast_vector<int64_t>();
    const auto unknown = std::find(lengths.begin(), lengths.end(), int64_t(-1));
    if (unknown != lengths.end()) *unknown = channels - (std::accumulate(lengths.begin(), lengths.end(), int64_t(0)) + 1);
  }
  std::vector<std::pair<int64_t, int64_t>> chunks;
  int64_t start = 0;
  for (const int64_t length : lengths) {
    chunks.emplace_back(start, start + length);
    start += length;
  }
  return chunks;
}

bool is_depthwise(const NodePtr& node) {
  const auto weights = constant_input(node, 1);
  return weights && weights->get_shape().size() == 5 && weights->get_shape()[1] == 1 && weights->get_shape()[2] == 1;
}

// Which input of an Add is a constant of one value per channel (N x C x 1 x 1 or C x 1 x 1); -1: neither.
int per_channel_input(const NodePtr& node) {
  for (const int index : {1, 0}) {
    const auto constant = constant_input(node, size_t(index));
    if (!constant) continue;
    const ov::Shape shape = constant->get_shape();
    if (shape.size() != 3 && shape.size() != 4) continue;
    if (shape[shape.size() - 1] == 1 && shape[shape.size() - 2] == 1 && (shape.size() == 3 || shape[0] == 1)) return index;
  }
  return -1;
}

// The nodes from the Split's input up to the Convolution that made its channels (Split side first).
std::vector<NodePtr> channel_chain(const NodePtr& split) {
  std::vector<NodePtr> chain;
  ov::Output<ov::Node> value = split->input_value(0);
  while (chain.size() <= kChannelWiseDepth && value.get_target_inputs().size() == 1) {
    const NodePtr node = value.get_node_shared_ptr();
    int constant = -1;
    if (ov::is_type<ov::op::v1::Convolution>(node) && constant_input(node, 1)) {
      chain.push_back(node);
      return chain;
    }
    if (ov::is_type<ov::op::v1::GroupConvolution>(node) && is_depthwise(node)) {
      value = node->input_value(0);
    } else if (ov::is_type<ov::op::v1::Add>(node) && (constant = per_channel_input(node)) >= 0) {
      value = node->input_value(size_t(1 - constant));
    } else {
      return {};
    }
    chain.push_back(node);
  }
  return {};
}

ov::Output<ov::Node> sliced(const NodePtr& node, size_t index, int64_t start, int64_t stop, int64_t axis) {
  const auto one = [](int64_t value) { return ov::op::v0::Constant::create(ov::element::i64, ov::Shape{1}, {value}); };
  return std::make_shared<ov::op::v8::Slice>(node->input_value(index), one(start), one(stop), one(1), one(axis));
}

// `node` computing channels [start, stop) of its output from `value`, over its constant's slice.
NodePtr chunk_node(const NodePtr& node, const ov::Output<ov::Node>& value, int64_t start, int64_t stop) {
  NodePtr made;
  if (const auto convolution = ov::as_type_ptr<ov::op::v1::Convolution>(node)) {
    made = std::make_shared<ov::op::v1::Convolution>(value, sliced(node, 1, start, stop, 0), convolution->get_strides(),
                                                     convolution->get_pads_begin(), convolution->get_pads_end(),
                                                     convolution->get_dilations(), convolution->get_auto_pad());
  } else if (const auto grouped = ov::as_type_ptr<ov::op::v1::GroupConvolution>(node)) {
    made = std::make_shared<ov::op::v1::GroupConvolution>(value, sliced(node, 1, start, stop, 0), grouped->get_strides(),
                                                          grouped->get_pads_begin(), grouped->get_pads_end(), grouped->get_dilations(),
                                                          grouped->get_auto_pad());
  } else {
    const int index = per_channel_input(node);
    const ov::Shape shape = node->get_input_shape(size_t(index));
    const int64_t axis = int64_t(shape.size()) - 3;
    made = std::make_shared<ov::op::v1::Add>(value, shape[size_t(axis)] != 1 ? sliced(node, size_t(index), start, stop, axis)
                                                                             : node->input_value(size_t(index)));
  }
  return made;
}

int split_channel_convolutions(const std::shared_ptr<ov::Model>& model) {
  fold_constants(model);
  int rewritten = 0;
  for (const NodePtr& split : model->get_ordered_ops()) {
    if (!ov::is_type<ov::op::v1::Split>(split) && !ov::is_type<ov::op::v1::VariadicSplit>(split)) continue;
    const auto chunks = channel_chunks(split);
    const auto chain = channel_chain(split);
    if (chunks.empty() || chain.empty()) continue;
    for (size_t index = 0; index < chunks.size(); ++index) {
      ov::Output<ov::Node> value = chain.back()->input_value(0);
      for (auto node = chain.rbegin(); node != chain.rend(); ++node) {
        const NodePtr made = chunk_node(*node, value, chunks[index].first, chunks[index].second);
        made->set_friendly_name((*node)->get_friendly_name() + "/chunk" + std::to_string(index));
        value = made->output(0);
      }
      for (ov::Input<ov::Node> target : split->output(index).get_target_inputs()) target.replace_source_output(value);
    }
    ++rewritten;
  }
  if (rewritten) fold_constants(model);
  return rewritten;
}

// deploytool.runtime.backends.openvino.compiled_graph: the graph as OpenVINO compiles it, written
// once into the cache folder as IR (the .bin renamed into place first), and compiled from there.
std::string compiled_graph(ov::Core& core, const std::string& graph, const std::filesystem::path& cache) {
  const std::filesystem::path ir = cache / kIrFile;
  if (std::filesystem::is_regular_file(ir)) return ir.string();
  const std::shared_ptr<ov::Model> model = core.read_model(graph);
  split_channel_convolutions(model);
  const std::filesystem::path staged = cache / ("." + ir.stem().string() + "-" + std::to_string(getpid()) + ".xml");
  std::filesystem::path staged_weights = staged, weights = ir;
  staged_weights.replace_extension(".bin");
  weights.replace_extension(".bin");
  std::string failure;
  try {
    ov::save_model(model, staged.string(), false);
    std::error_code failed;
    std::filesystem::rename(staged_weights, weights, failed);
    if (!failed) std::filesystem::rename(staged, ir, failed);
    if (failed) failure = failed.message();
  } catch (const ov::Exception& error) {  // OpenVINO's own write errors: their last line says what
    failure = error.what();
    failure.erase(failure.find_last_not_of(" \n") + 1);
    failure = failure.substr(failure.find_last_of('\n') + 1);
  }
  if (!failure.empty()) {
    std::error_code ignored;
    std::filesystem::remove(staged, ignored);
    std::filesystem::remove(staged_weights, ignored);
    throw Error("cannot write the OpenVINO graph " + ir.string() + ": " + failure);
  }
  return ir.string();
}

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

// The words of deploytool.runtime.backends.openvino.bf16_refusal.
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
    const std::string key = sha256_hex(exported.manifest().files.at(plan.graph).sha256 + "\n" + build + "\n" + options.device + "\n" +
                                       kPrecision + "\n" + kGraphForm)
                                .substr(0, 16);
    const std::filesystem::path cache = exported.dir() / kCacheFolder / key;
    std::error_code failed;
    std::filesystem::create_directories(cache, failed);
    if (failed) throw Error("cannot create the OpenVINO cache folder " + cache.string() + ": " + failed.message());
    try {
      compiled_ = core.compile_model(compiled_graph(core, graph, cache), options.device, ov::hint::inference_precision(ov::element::f32),
                                     ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY), ov::cache_dir(cache.string()));
      request_ = compiled_.create_infer_request();
    } catch (const ov::Exception& error) {
      throw Error("OpenVINO could not compile " + graph + " for " + options.device + ": " + openvino_reason(error));
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
      throw Error("OpenVINO failed to run the model on " + device_ + ": " + openvino_reason(error));
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
