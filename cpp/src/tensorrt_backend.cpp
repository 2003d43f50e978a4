// The TensorRT backend (TensorRT 10.x / 11.x C++ API, CUDA runtime). Compiled only when CMake
// finds TensorRT; everything it decides without a GPU (which engine, the messages) lives in
// export.cpp and is tested everywhere.
#include <NvInfer.h>
#include <NvInferVersion.h>
#include <cuda_runtime_api.h>

#include <iostream>
#include <memory>
#include <type_traits>
#include <vector>

#include "deploytool/backend.hpp"
#include "deploytool/errors.hpp"
#include "deploytool/export.hpp"

namespace deploytool {
namespace {

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(std::string("CUDA failed to ") + what + ": " + cudaGetErrorString(status));
}

class WarningLogger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << message << "\n";
  }
};

// "10.13.0.35", as Python's tensorrt.__version__ spells it in engine file names.
std::string tensorrt_version() {
  return std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." + std::to_string(NV_TENSORRT_PATCH) + "." +
         std::to_string(NV_TENSORRT_BUILD);
}

// Owners of CUDA objects, so that a constructor that throws half-way releases what it made.
struct StreamDestroyer {
  void operator()(cudaStream_t stream) const {
    cudaStreamSynchronize(stream);  // nothing may still use the buffers freed next to it
    cudaStreamDestroy(stream);
  }
};
struct DeviceFreer {
  void operator()(void* pointer) const { cudaFree(pointer); }
};
struct GraphDestroyer {
  void operator()(cudaGraph_t graph) const { cudaGraphDestroy(graph); }
};
struct GraphExecDestroyer {
  void operator()(cudaGraphExec_t exec) const { cudaGraphExecDestroy(exec); }
};
using Stream = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, StreamDestroyer>;
using DeviceBuffer = std::unique_ptr<void, DeviceFreer>;
using Graph = std::unique_ptr<std::remove_pointer_t<cudaGraph_t>, GraphDestroyer>;
using GraphExec = std::unique_ptr<std::remove_pointer_t<cudaGraphExec_t>, GraphExecDestroyer>;

DeviceBuffer device_buffer(std::size_t bytes, const char* what) {
  void* pointer = nullptr;
  check_cuda(cudaMalloc(&pointer, bytes), what);
  return DeviceBuffer(pointer);
}

BatchShape shape_of(const nvinfer1::Dims& dims) {
  if (dims.nbDims != 4) return {};
  return {int(dims.d[0]), int(dims.d[1]), int(dims.d[2]), int(dims.d[3])};
}

class TensorRtBackend : public Backend {
 public:
  TensorRtBackend(const Export& exported, const TensorRtOptions& options) {
    check_cuda(cudaSetDevice(options.device), "select the GPU");
    cudaDeviceProp properties{};
    check_cuda(cudaGetDeviceProperties(&properties, options.device), "query the GPU");
    check_library_version();
    load_engine(exported, matching_engine(exported.manifest(), properties.major, properties.minor, tensorrt_version()));
    find_tensors();
    cudaStream_t stream = nullptr;
    check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "create a stream");
    stream_.reset(stream);
    bind_buffers();
    if (options.cuda_graph) capture();
  }

  std::string name() const override { return "trt"; }
  BatchShape input_shape() const override { return input_shape_; }
  BatchShape output_shape() const override { return output_shape_; }

  void infer(const float* input, float* output) override {
    cudaStream_t stream = stream_.get();
    check_cuda(cudaMemcpyAsync(device_input_.get(), input, input_shape_.elements() * sizeof(float), cudaMemcpyHostToDevice, stream),
               "copy the input");
    if (graph_exec_) {
      check_cuda(cudaGraphLaunch(graph_exec_.get(), stream), "launch the CUDA graph");
    } else {
      launch();
    }
    check_cuda(cudaMemcpyAsync(output, device_output_.get(), output_shape_.elements() * sizeof(float), cudaMemcpyDeviceToHost, stream),
               "copy the output");
    check_cuda(cudaStreamSynchronize(stream), "run the engine");
  }

 private:
  // The headers and the loaded library must be one TensorRT: the engine name uses the version.
  static void check_library_version() {
    const int library = getInferLibVersion();
    const int headers = NV_TENSORRT_MAJOR * 10000 + NV_TENSORRT_MINOR * 100 + NV_TENSORRT_PATCH;
    if (library != headers) {
      throw BackendUnavailable("the TensorRT library loaded (" + std::to_string(library) + ") is not the one this runtime was built with (" +
                               std::to_string(headers) + "); rebuild deploytool_runtime against it");
    }
  }

  void load_engine(const Export& exported, const std::string& name) {
    path_ = (exported.dir() / name).string();
    const std::vector<char> plan = exported.read_checked(name);  // hashed and deserialised: the same bytes
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw BackendUnavailable("TensorRT could not create a runtime");
    engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine_) throw Error("TensorRT could not load " + path_ + ": built for another GPU or TensorRT version?");
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw Error("TensorRT could not create an execution context for " + path_);
  }

  // The engine's one float32 NCHW input and output, by name and shape.
  void find_tensors() {
    for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* tensor = engine_->getIOTensorName(i);
      if (engine_->getTensorDataType(tensor) != nvinfer1::DataType::kFLOAT) {
        throw Error(path_ + ": tensor " + tensor + " is not float32, the export's contract");
      }
      if (engine_->getTensorIOMode(tensor) == nvinfer1::TensorIOMode::kINPUT) {
        input_name_ = tensor;
        input_shape_ = shape_of(engine_->getTensorShape(tensor));
      } else {
        output_name_ = tensor;
        output_shape_ = shape_of(engine_->getTensorShape(tensor));
      }
    }
    if (input_name_.empty() || output_name_.empty() || input_shape_.elements() == 0 || output_shape_.elements() == 0) {
      throw Error(path_ + ": expected one static NCHW input and output");
    }
  }

  void bind_buffers() {
    device_input_ = device_buffer(input_shape_.elements() * sizeof(float), "allocate the input buffer");
    device_output_ = device_buffer(output_shape_.elements() * sizeof(float), "allocate the output buffer");
    if (!context_->setTensorAddress(input_name_.c_str(), device_input_.get()) ||
        !context_->setTensorAddress(output_name_.c_str(), device_output_.get())) {
      throw Error("TensorRT refused the buffers of " + path_);
    }
  }

  void launch() {
    if (!context_->enqueueV3(stream_.get())) throw Error("TensorRT failed to run " + path_);
  }

  void capture() {
    cudaStream_t stream = stream_.get();
    launch();  // the first launch allocates; capture only a steady-state one
    check_cuda(cudaStreamSynchronize(stream), "run the engine");
    check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "start capturing a CUDA graph");
    cudaGraph_t graph = nullptr;
    try {
      launch();
    } catch (...) {
      // A stream left capturing refuses all later work (its destructor's synchronise included).
      cudaStreamEndCapture(stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    check_cuda(cudaStreamEndCapture(stream, &graph), "capture a CUDA graph");
    graph_.reset(graph);
    cudaGraphExec_t exec = nullptr;
#if CUDART_VERSION >= 12000
    check_cuda(cudaGraphInstantiate(&exec, graph_.get(), 0), "instantiate the CUDA graph");
#else
    check_cuda(cudaGraphInstantiate(&exec, graph_.get(), nullptr, nullptr, 0), "instantiate the CUDA graph");
#endif
    graph_exec_.reset(exec);
  }

  // Members are destroyed in reverse order, also when the constructor throws half-way: the stream
  // first (synchronised, so nothing runs on what follows), the CUDA graph, the buffers, then
  // TensorRT's objects, context before engine before runtime, and last the logger, which TensorRT
  // uses until its runtime is gone.
  WarningLogger logger_;
  std::string path_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::string input_name_, output_name_;
  BatchShape input_shape_, output_shape_;
  DeviceBuffer device_input_, device_output_;
  Graph graph_;
  GraphExec graph_exec_;
  Stream stream_;
};

}  // namespace

bool tensorrt_available() { return true; }

std::unique_ptr<Backend> tensorrt_backend(const Export& exported, TensorRtOptions options) {
  return std::make_unique<TensorRtBackend>(exported, options);
}

}  // namespace deploytool
