#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <nlohmann/json.hpp>

#include "deploytool/errors.hpp"
#include "deploytool/export.hpp"
#include "deploytool/sha256.hpp"
#include "fixtures.hpp"

namespace dt = deploytool;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using deploytool::testing::ExportFolder;
using deploytool::testing::minimal_manifest;

std::string message_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const dt::Error& error) {
    return error.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Export, ReadsTheManifest) {
  ExportFolder folder("reads");
  folder.write(minimal_manifest(dt::sha256_hex("graph")));
  dt::Export exported = dt::Export::open(folder.dir);
  const dt::Manifest& manifest = exported.manifest();
  EXPECT_EQ(manifest.model_id, "toy-x2");
  EXPECT_EQ(manifest.scale, 2);
  EXPECT_EQ(manifest.tiling.tile_h, 16);
  EXPECT_EQ(manifest.tiling.batch, 2);
  EXPECT_EQ(manifest.tiling.blend.mode, dt::BlendMode::ramp);
  EXPECT_EQ(manifest.views.size(), 1u);
  EXPECT_EQ(exported.check_file("model.onnx"), folder.dir / "model.onnx");
}

TEST(Export, OlderMinorAndUnknownFieldsAreRead) {
  ExportFolder folder("minor");
  json data = minimal_manifest(dt::sha256_hex("graph"));
  data["schema_version"] = "1.0";
  data["a_newer_minor_field"] = {{"x", 1}};
  folder.write(data);
  EXPECT_EQ(dt::Export::open(folder.dir).manifest().schema_version, "1.0");
}

TEST(Export, RefusesInOneLineAsPythonDoes) {
  ExportFolder folder("refuses");
  const std::string where = folder.where();
  EXPECT_EQ(message_of([&] { dt::Export::open(folder.dir); }),
            folder.dir.string() + " is not a finished export (no manifest.json); run `deploytool export` first");

  json data = minimal_manifest(dt::sha256_hex("graph"));
  data["schema_version"] = "2.0";
  folder.write(data);
  EXPECT_EQ(message_of([&] { dt::Export::open(folder.dir); }),
            where + " has manifest schema 2.0, a newer major version than this deploytool reads (1.4); upgrade deploytool");
  data["schema_version"] = "0.9";
  folder.write(data);
  EXPECT_EQ(message_of([&] { dt::Export::open(folder.dir); }),
            where + " has manifest schema 0.9, an older major version than this deploytool reads (1.4); re-export it");
  data["schema_version"] = "one";
  folder.write(data);
  EXPECT_EQ(message_of([&] { dt::Export::open(folder.dir); }), "schema_version 'one' is not MAJOR.MINOR");
  data.erase("schema_version");
  folder.write(data);
  EXPECT_EQ(message_of([&] { dt::Export::open(folder.dir); }), where + " has no schema_version: not a deploytool manifest");
  data["format"] = 1;
  folder.write(data);
  EXPECT_EQ(message_of([&] { dt::Export::open(folder.dir); }),
            where + " was written by an older deploytool (manifest format 1, before schema 1.4); re-export it");

  std::ofstream(folder.dir / "manifest.json") << "{\"schema_version\": ";
  std::string bad_json = message_of([&] { dt::Export::open(folder.dir); });
  EXPECT_EQ(bad_json.rfind("cannot read " + where + ": ", 0), 0u) << bad_json;
  EXPECT_EQ(bad_json.find('\n'), std::string::npos);

  data = minimal_manifest(dt::sha256_hex("graph"));
  data["tiling"].erase("batch");
  folder.write(data);
  EXPECT_EQ(message_of([&] { dt::Export::open(folder.dir); }),
            where + " does not follow the manifest schema 1.4: at tiling: 'batch' is a required property");
  data = minimal_manifest(dt::sha256_hex("graph"));
  data["scale"] = "2";
  folder.write(data);
  EXPECT_EQ(message_of([&] { dt::Export::open(folder.dir); }), where + " does not follow the manifest schema 1.4: at scale: \"2\" is not of type 'integer'");
}

TEST(Export, RefusesAModelIdThatIsNotAPlainNameAsPythonDoes) {
  ExportFolder folder("model-id");
  const std::string where = folder.where();
  const std::string rule = " is not a model id (1 to 64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit)";
  json data = minimal_manifest(dt::sha256_hex("graph"));
  for (const std::string& id : {std::string("./../victim"), std::string(".."), std::string("/"), std::string("/tmp/victim"), std::string("a\"b"), std::string("")}) {
    data["model_id"] = id;
    folder.write(data);
    EXPECT_EQ(message_of([&] { dt::Export::open(folder.dir); }), where + ": model_id " + json(id).dump() + rule) << id;
  }
  for (const std::string& id : {std::string("a\0b", 3), std::string(65, 'x'), std::string("caf\xc3\xa9")}) {
    data["model_id"] = id;
    folder.write(data);
    EXPECT_EQ(message_of([&] { dt::Export::open(folder.dir); }), where + ": model_id" + rule) << id.size();
  }
  data["model_id"] = std::string(64, 'x');
  folder.write(data);
  EXPECT_EQ(dt::Export::open(folder.dir).manifest().model_id, std::string(64, 'x'));
}

TEST(Export, RefusesMissingAndChangedFiles) {
  ExportFolder folder("files");
  folder.write(minimal_manifest(dt::sha256_hex("other graph")));
  dt::Export exported = dt::Export::open(folder.dir);
  const std::string graph = (folder.dir / "model.onnx").string();
  EXPECT_EQ(message_of([&] { exported.check_file("model.onnx"); }),
            graph + " changed since export (sha256 differs from manifest.json); re-export");
  fs::remove(folder.dir / "model.onnx");
  EXPECT_EQ(message_of([&] { exported.check_file("model.onnx"); }), graph + " is missing from the export");
  EXPECT_EQ(message_of([&] { exported.check_file("model_fp16.onnx"); }), (folder.dir / "model_fp16.onnx").string() + " is missing from the export");
}

TEST(Export, ReadCheckedGivesTheBytesItHashedOrTheSameRefusals) {
  ExportFolder folder("read_checked");
  folder.write(minimal_manifest(dt::sha256_hex("graph")));
  dt::Export exported = dt::Export::open(folder.dir);
  const std::vector<char> bytes = exported.read_checked("model.onnx");
  EXPECT_EQ(std::string(bytes.begin(), bytes.end()), "graph");
  const std::string graph = (folder.dir / "model.onnx").string();
  std::ofstream(folder.dir / "model.onnx", std::ios::binary) << "grap";  // cut short
  EXPECT_EQ(message_of([&] { exported.read_checked("model.onnx"); }), graph + " changed since export (sha256 differs from manifest.json); re-export");
  fs::remove(folder.dir / "model.onnx");
  EXPECT_EQ(message_of([&] { exported.read_checked("model.onnx"); }), graph + " is missing from the export");
  EXPECT_EQ(message_of([&] { exported.read_checked("notes.txt"); }), (folder.dir / "notes.txt").string() + " is missing from the export");
}

TEST(Export, PicksTheEngineForThisGpuOrRefuses) {
  ExportFolder folder("engines");
  json data = minimal_manifest(dt::sha256_hex("graph"));
  json engine = {{"sha256", dt::sha256_hex("engine")}, {"bytes", 6}, {"gpu", "NVIDIA L4"}, {"compute_capability", {8, 9}}, {"tensorrt", "10.13.0.35"},
                 {"plan", json::object()}, {"workspace_bytes", 0}, {"opt_level", 3}, {"timing_cache", ""}, {"build_seconds", 1.0}};
  data["engines"]["model.sm89-trt10.13.0.35.engine"] = engine;
  data["engines"]["model.sm86-trt10.13.0.35.engine"] = engine;
  folder.write(data);
  dt::Export exported = dt::Export::open(folder.dir);
  EXPECT_EQ(dt::engine_filename(9, 0, "10.13.0.35"), "model.sm90-trt10.13.0.35.engine");
  EXPECT_EQ(dt::matching_engine(exported.manifest(), 8, 9, "10.13.0.35"), "model.sm89-trt10.13.0.35.engine");
  EXPECT_EQ(message_of([&] { dt::matching_engine(exported.manifest(), 9, 0, "10.13.0.35"); }),
            "no engine for this GPU (sm90) and TensorRT 10.13.0.35 in this export (engines: model.sm86-trt10.13.0.35.engine, "
            "model.sm89-trt10.13.0.35.engine); run `deploytool build` here");
  EXPECT_EQ(message_of([&] { dt::matching_engine(exported.manifest(), 8, 9, "10.8.0.43"); }).rfind("no engine for this GPU (sm89) and TensorRT 10.8.0.43", 0), 0u);
}

TEST(Fixtures, FoldersOfOneNameAreDistinct) {
  // Concurrent ctest runs (and two folders of one test) must never share files.
  ExportFolder first("same"), second("same");
  EXPECT_NE(first.dir, second.dir);
  EXPECT_TRUE(fs::is_regular_file(first.dir / "model.onnx"));
  EXPECT_TRUE(fs::is_regular_file(second.dir / "model.onnx"));
}
