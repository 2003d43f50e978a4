#pragma once
// Fixtures of the unit tests: private temporary folders, and a small valid export folder (a
// placeholder model.onnx and a manifest.json).
#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace deploytool::testing {

using json = nlohmann::json;
namespace fs = std::filesystem;

inline json minimal_manifest(const std::string& graph_sha256) {
  return json::parse(R"({
    "schema_version": "1.1", "model_id": "toy-x2", "scale": 2,
    "model": {"family": "toy", "task": "sr", "description": "", "arch": {}, "reference": "", "reference_chop": 0, "task_index": 0},
    "input": {"name": "input", "shape": [2, 3, 16, 16], "views": [{"name": "image", "channels": 3, "color": "RGB"}],
              "dtype": "float32", "layout": "NCHW", "range": [0, 1]},
    "output": {"name": "output", "shape": [2, 3, 32, 32], "color": "RGB", "dtype": "float32", "layout": "NCHW", "range": [0, 1], "clamped": false},
    "tiling": {"tile": [16, 16], "tile_multiple": 8, "fixed_tile": false, "batch": 2, "overlap": 8, "padding": "reflect",
               "blend": {"mode": "ramp", "width": 8, "trim": 0}},
    "opset": 17, "exporter": "", "versions": {}, "source": {"kind": "random-init", "seed": 0},
    "graph": {"traced_nodes": 0, "merged_initializers": 0, "nodes": 0, "initializers": 0, "parameter_bytes": 0},
    "fp16": null, "files": {"model.onnx": {"sha256": "", "bytes": 5}}, "tolerances": {}, "export_seconds": 0,
    "unused_weights": {}, "engines": {}})")
      .patch(json::parse(R"([{"op": "replace", "path": "/files/model.onnx/sha256", "value": ")" + graph_sha256 + R"("}])"));
}

// A fresh folder under the system's temporary directory, unique to this object (mkdtemp), so
// concurrent test runs never share one; removed with everything in it on destruction.
struct TempFolder {
  fs::path dir;
  explicit TempFolder(const std::string& name) {
    std::string pattern = (fs::temp_directory_path() / ("deploytool_" + name + "_XXXXXX")).string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("cannot create a temporary folder " + pattern + ": " + std::strerror(errno));
    dir = pattern;
  }
  TempFolder(const TempFolder&) = delete;
  TempFolder& operator=(const TempFolder&) = delete;
  ~TempFolder() {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
};

struct ExportFolder : TempFolder {
  explicit ExportFolder(const std::string& name) : TempFolder("export_test_" + name) {
    std::ofstream(dir / "model.onnx", std::ios::binary) << "graph";
  }
  void write(const json& manifest) const { std::ofstream(dir / "manifest.json") << manifest.dump(2); }
  std::string where() const { return (dir / "manifest.json").string(); }
};

}  // namespace deploytool::testing
