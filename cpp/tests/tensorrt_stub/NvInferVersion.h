#pragma once
// The TensorRT version macros of NvInferVersion.h, for the syntax check of tensorrt_backend.cpp.
#define NV_TENSORRT_MAJOR 10
#define NV_TENSORRT_MINOR 13
#define NV_TENSORRT_PATCH 0
#define NV_TENSORRT_BUILD 35
