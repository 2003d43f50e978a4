// The TensorRT backend (TensorRT 10.x / 11.x C++ API, CUDA runtime). Compiled only when CMake
// finds TensorRT; everything it decides without a GPU (which engine, the messages) lives in
// export.cpp and is tested everywhere.
#include <NvInfer.h>
#include <NvInferVersion.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <iostream>
#include <iterator>
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
    // The headers and the loaded library must be one TensorRT: the engine name uses the version.
    const int library = getInferLibVersion();
    const int headers = NV_TENSORRT_MAJOR * 10000 + NV_TENSORRT_MINOR * 100 + NV_TENSORRT_PATCH;
    if (library != headers) {
      throw BackendUnavailable("the TensorRT library loaded (" + std::to_string(library) + ") is not the one this runtime was built with (" +
                               std::to_string(headers) + "); rebuild deploytool_runtime against it");
    }
    const std::string name = matching_engine(exported.manifest(), properties.major, properties.minor, tensorrt_version());
    path_ = exported.check_file(name).string();
    std::ifstream in(path_, std::ios::binary);
    std::vector<char> plan((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in && !in.eof()) throw Error("cannot read " + path_);

    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw BackendUnavailable("TensorRT could not create a runtime");
    engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine_) throw Error("TensorRT could not load " + path_ + ": built for another GPU or TensorRT version?");
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw Error("TensorRT could not create an execution context for " + path_);

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
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "create a stream");
    check_cuda(cudaMalloc(&device_input_, input_shape_.elements() * sizeof(float)), "allocate the input buffer");
    check_cuda(cudaMalloc(&device_output_, output_shape_.elements() * sizeof(float)), "allocate the output buffer");
    if (!context_->setTensorAddress(input_name_.c_str(), device_input_) || !context_->setTensorAddress(output_name_.c_str(), device_output_)) {
      throw Error("TensorRT refused the buffers of " + path_);
    }
    if (options.cuda_graph) capture();
  }

  ~TensorRtBackend() override {
    if (stream_) cudaStreamSynchronize(stream_);
    if (graph_exec_) cudaGraphExecDestroy(graph_exec_);
    if (graph_) cudaGraphDestroy(graph_);
    context_.reset();
    engine_.reset();
    runtime_.reset();
    if (device_input_) cudaFree(device_input_);
    if (device_output_) cudaFree(device_output_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "trt"; }
  BatchShape input_shape() const override { return input_shape_; }
  BatchShape output_shape() const override { return output_shape_; }

  void infer(const float* input, float* output) override {
    check_cuda(cudaMemcpyAsync(device_input_, input, input_shape_.elements() * sizeof(float), cudaMemcpyHostToDevice, stream_), "copy the input");
    if (graph_exec_) {
      check_cuda(cudaGraphLaunch(graph_exec_, stream_), "launch the CUDA graph");
    } else {
      launch();
    }
    check_cuda(cudaMemcpyAsync(output, device_output_, output_shape_.elements() * sizeof(float), cudaMemcpyDeviceToHost, stream_),
               "copy the output");
    check_cuda(cudaStreamSynchronize(stream_), "run the engine");
  }

 private:
  void launch() {
    if (!context_->enqueueV3(stream_)) throw Error("TensorRT failed to run " + path_);
  }

  void capture() {
    launch();  // the first launch allocates; capture only a steady-state one
    check_cuda(cudaStreamSynchronize(stream_), "run the engine");
    check_cuda(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "start capturing a CUDA graph");
    launch();
    check_cuda(cudaStreamEndCapture(stream_, &graph_), "capture a CUDA graph");
#if CUDART_VERSION >= 12000
    check_cuda(cudaGraphInstantiate(&graph_exec_, graph_, 0), "instantiate the CUDA graph");
#else
    check_cuda(cudaGraphInstantiate(&graph_exec_, graph_, nullptr, nullptr, 0), "instantiate the CUDA graph");
#endif
  }

  WarningLogger logger_;
  std::string path_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::string input_name_, output_name_;
  BatchShape input_shape_, output_shape_;
  cudaStream_t stream_ = nullptr;
  void* device_input_ = nullptr;
  void* device_output_ = nullptr;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t graph_exec_ = nullptr;
};

}  // namespace

bool tensorrt_available() { return true; }

std::unique_ptr<Backend> tensorrt_backend(const Export& exported, TensorRtOptions options) {
  return std::make_unique<TensorRtBackend>(exported, options);
}

}  // namespace deploytool
