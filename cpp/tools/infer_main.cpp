// deploytool-infer EXPORT_DIR IMAGE [IMAGE ...] -o OUTPUT.png [--backend NAME]: an export run by a
// backend of the registry (the TensorRT engine for this GPU, or the FP32 graph on OpenVINO) over
// one image (one per view for multi-view models), tiled as `deploytool run` tiles.
#include <iostream>

#include "deploytool/cli.hpp"

int main(int argc, char** argv) { return deploytool::run_cli(argc, argv, deploytool::builtin_backends(), std::cout, std::cerr); }
