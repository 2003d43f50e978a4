#pragma once
// The part of TensorRT 10's C++ API (NvInferRuntime.h) that src/tensorrt_backend.cpp uses, declared
// as the documented API declares it, so that the backend is compiled (syntax only) on machines
// without TensorRT. Nothing is defined: nothing links against this.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

extern "C" int32_t getInferLibVersion() noexcept;

namespace nvinfer1 {

class ILogger {
 public:
  enum class Severity : int32_t { kINTERNAL_ERROR = 0, kERROR = 1, kWARNING = 2, kINFO = 3, kVERBOSE = 4 };
  virtual void log(Severity severity, const char* msg) noexcept = 0;
  virtual ~ILogger() = default;
};

class Dims64 {
 public:
  static constexpr int32_t MAX_DIMS{8};
  int32_t nbDims;
  int64_t d[MAX_DIMS];
};
using Dims = Dims64;

enum class DataType : int32_t { kFLOAT = 0, kHALF = 1, kINT8 = 2, kINT32 = 3, kBOOL = 4 };
enum class TensorIOMode : int32_t { kNONE = 0, kINPUT = 1, kOUTPUT = 2 };

class IExecutionContext {
 public:
  virtual ~IExecutionContext() noexcept = default;
  bool setTensorAddress(const char* tensorName, void* data) noexcept;
  bool enqueueV3(cudaStream_t stream) noexcept;
};

class ICudaEngine {
 public:
  virtual ~ICudaEngine() noexcept = default;
  int32_t getNbIOTensors() const noexcept;
  const char* getIOTensorName(int32_t index) const noexcept;
  DataType getTensorDataType(const char* tensorName) const noexcept;
  TensorIOMode getTensorIOMode(const char* tensorName) const noexcept;
  Dims getTensorShape(const char* tensorName) const noexcept;
  IExecutionContext* createExecutionContext() noexcept;
};

class IRuntime {
 public:
  virtual ~IRuntime() noexcept = default;
  ICudaEngine* deserializeCudaEngine(const void* blob, std::size_t size) noexcept;
};

IRuntime* createInferRuntime(ILogger& logger) noexcept;

}  // namespace nvinfer1
