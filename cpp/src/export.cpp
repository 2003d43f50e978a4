#include "deploytool/export.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "deploytool/errors.hpp"
#include "deploytool/sha256.hpp"

namespace deploytool {
namespace {

using json = nlohmann::json;

// How Python's str() shows a JSON value in the messages shared with deploytool/runtime/manifest.py.
std::string python_str(const json& value) { return value.is_string() ? value.get<std::string>() : value.dump(); }

std::string python_repr(const json& value) { return value.is_string() ? "'" + value.get<std::string>() + "'" : value.dump(); }

std::pair<int, int> parse_version(const json& value) {
  std::string text = python_str(value);
  auto dot = text.find('.');
  auto digits = [](const std::string& part) {
    return !part.empty() && part.size() < 9 && std::all_of(part.begin(), part.end(), [](unsigned char c) { return std::isdigit(c); });
  };
  if (dot == std::string::npos || text.find('.', dot + 1) != std::string::npos || !digits(text.substr(0, dot)) || !digits(text.substr(dot + 1))) {
    throw Error("schema_version " + python_repr(value) + " is not MAJOR.MINOR");
  }
  return {std::stoi(text.substr(0, dot)), std::stoi(text.substr(dot + 1))};
}

void check_version(const json& data, const std::string& where) {
  if (!data.contains("schema_version")) {
    if (data.contains("format")) {
      throw Error(where + " was written by an older deploytool (manifest format " + python_str(data["format"]) + ", before schema " +
                  kSchemaVersion + "); re-export it");
    }
    throw Error(where + " has no schema_version: not a deploytool manifest");
  }
  int major = parse_version(data["schema_version"]).first;
  int ours = parse_version(kSchemaVersion).first;
  if (major != ours) {
    bool newer = major > ours;
    throw Error(where + " has manifest schema " + python_str(data["schema_version"]) + ", " + (newer ? "a newer" : "an older") +
                " major version than this deploytool reads (" + kSchemaVersion + "); " + (newer ? "upgrade deploytool" : "re-export it"));
  }
}

bool is_ascii_alnum(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

bool is_model_id_char(unsigned char c) { return is_ascii_alnum(c) || c == '.' || c == '_' || c == '-'; }

bool is_plain_model_id(const std::string& id) {
  if (id.empty() || id.size() > 64 || !is_ascii_alnum(static_cast<unsigned char>(id[0]))) return false;
  return std::all_of(id.begin(), id.end(), [](unsigned char c) { return is_model_id_char(c); });
}

bool is_printable_ascii(const std::string& text) {
  return std::all_of(text.begin(), text.end(), [](unsigned char c) { return c >= ' ' && c <= '~'; });
}

// deploytool/runtime/manifest.py's check_model_id, with its message: a model id names folders and files
// (Triton models, output folders), so it is one plain name, never a path.
void check_model_id(const json& data, const std::string& where) {
  auto found = data.find("model_id");
  if (found == data.end() || !found->is_string()) return;  // the schema check's to refuse
  const std::string id = found->get<std::string>();
  if (is_plain_model_id(id)) return;
  bool printable = id.size() <= 64 && is_printable_ascii(id);
  throw Error(where + ": model_id" + (printable ? " " + json(id).dump() : std::string()) +
              " is not a model id (1 to 64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit)");
}

// Typed access with the schema's wording (jsonschema's messages) for what a runtime relies on.
class Reader {
 public:
  explicit Reader(std::string where) : where_(std::move(where)) {}

  const json& field(const json& object, const std::string& location, const char* key) const {
    if (!object.is_object()) fail(location, object.dump() + " is not of type 'object'");
    auto it = object.find(key);
    if (it == object.end()) fail(location, "'" + std::string(key) + "' is a required property");
    return *it;
  }
  static std::string join(const std::string& location, const std::string& key) { return location.empty() ? key : location + "/" + key; }

  int integer(const json& object, const std::string& location, const char* key, int minimum) const {
    const json& value = field(object, location, key);
    std::string here = join(location, key);
    if (!value.is_number_integer()) fail(here, value.dump() + " is not of type 'integer'");
    long long number = value.get<long long>();
    if (number < minimum) fail(here, value.dump() + " is less than the minimum of " + std::to_string(minimum));
    if (number > 1 << 30) fail(here, value.dump() + " is too large for this runtime");
    return int(number);
  }
  std::string string(const json& object, const std::string& location, const char* key) const {
    const json& value = field(object, location, key);
    if (!value.is_string()) fail(join(location, key), value.dump() + " is not of type 'string'");
    return value.get<std::string>();
  }
  bool boolean(const json& object, const std::string& location, const char* key) const {
    const json& value = field(object, location, key);
    if (!value.is_boolean()) fail(join(location, key), value.dump() + " is not of type 'boolean'");
    return value.get<bool>();
  }
  const json& object(const json& parent, const std::string& location, const char* key) const {
    const json& value = field(parent, location, key);
    if (!value.is_object()) fail(join(location, key), value.dump() + " is not of type 'object'");
    return value;
  }
  std::vector<int> integers(const json& parent, const std::string& location, const char* key, std::size_t count, int minimum) const {
    const json& value = field(parent, location, key);
    std::string here = join(location, key);
    if (!value.is_array()) fail(here, value.dump() + " is not of type 'array'");
    if (value.size() != count) fail(here, value.dump() + " should have " + std::to_string(count) + " items");
    std::vector<int> numbers;
    for (std::size_t i = 0; i < count; ++i) {
      const json& item = value[i];
      std::string at = here + "/" + std::to_string(i);
      if (!item.is_number_integer()) fail(at, item.dump() + " is not of type 'integer'");
      if (item.get<long long>() < minimum) fail(at, item.dump() + " is less than the minimum of " + std::to_string(minimum));
      if (item.get<long long>() > 1 << 30) fail(at, item.dump() + " is too large for this runtime");
      numbers.push_back(item.get<int>());
    }
    return numbers;
  }
  [[noreturn]] void fail(const std::string& location, const std::string& message) const {
    throw Error(where_ + " does not follow the manifest schema " + kSchemaVersion + ": at " + (location.empty() ? "(top level)" : location) +
                ": " + message);
  }

 private:
  std::string where_;
};

bool is_sha256(const std::string& text) {
  return text.size() == 64 && std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c) || (c >= 'a' && c <= 'f'); });
}

json parse_json(const std::string& json_text, const std::string& where) {
  try {
    return json::parse(json_text);
  } catch (const json::parse_error& error) {
    std::string reason = error.what();
    std::replace(reason.begin(), reason.end(), '\n', ' ');
    std::replace(reason.begin(), reason.end(), '\r', ' ');
    throw Error("cannot read " + where + ": " + reason);
  }
}

void read_views(const Reader& read, const json& input, Manifest& manifest) {
  const json& views = read.field(input, "input", "views");
  if (!views.is_array() || views.empty()) read.fail("input/views", views.dump() + " should be a non-empty array");
  for (std::size_t i = 0; i < views.size(); ++i) {
    std::string at = "input/views/" + std::to_string(i);
    manifest.views.push_back(View{read.string(views[i], at, "name"), read.integer(views[i], at, "channels", 1), read.string(views[i], at, "color")});
  }
}

void read_input(const Reader& read, const json& data, Manifest& manifest) {
  const json& input = read.object(data, "", "input");
  manifest.input_name = read.string(input, "input", "name");
  auto shape = read.integers(input, "input", "shape", 4, 1);
  std::copy(shape.begin(), shape.end(), manifest.input_shape.begin());
  read_views(read, input, manifest);
  if (read.string(input, "input", "dtype") != "float32") read.fail("input/dtype", "'float32' was expected");
  if (read.string(input, "input", "layout") != "NCHW") read.fail("input/layout", "'NCHW' was expected");
}

void read_output(const Reader& read, const json& data, Manifest& manifest) {
  const json& output = read.object(data, "", "output");
  manifest.output_name = read.string(output, "output", "name");
  auto shape = read.integers(output, "output", "shape", 4, 1);
  std::copy(shape.begin(), shape.end(), manifest.output_shape.begin());
  manifest.output_clamped = read.boolean(output, "output", "clamped");
  if (read.string(output, "output", "dtype") != "float32") read.fail("output/dtype", "'float32' was expected");
  if (read.string(output, "output", "layout") != "NCHW") read.fail("output/layout", "'NCHW' was expected");
}

Blend read_blend(const Reader& read, const json& tiling) {
  const json& blend = read.object(tiling, "tiling", "blend");
  std::string mode = read.string(blend, "tiling/blend", "mode");
  if (mode != "ramp" && mode != "centre") read.fail("tiling/blend/mode", "'" + mode + "' is not one of ['ramp', 'centre']");
  return {mode == "ramp" ? BlendMode::ramp : BlendMode::centre, read.integer(blend, "tiling/blend", "width", 0), read.integer(blend, "tiling/blend", "trim", 0)};
}

Tiling read_tiling(const Reader& read, const json& data) {
  const json& tiling = read.object(data, "", "tiling");
  Tiling grid;
  auto tile = read.integers(tiling, "tiling", "tile", 2, 1);
  grid.tile_h = tile[0];
  grid.tile_w = tile[1];
  grid.tile_multiple = read.integer(tiling, "tiling", "tile_multiple", 1);
  grid.fixed_tile = read.boolean(tiling, "tiling", "fixed_tile");
  grid.batch = read.integer(tiling, "tiling", "batch", 1);
  grid.overlap = read.integer(tiling, "tiling", "overlap", 0);
  grid.padding = read.string(tiling, "tiling", "padding");
  if (grid.padding != "reflect") read.fail("tiling/padding", "'" + grid.padding + "' is not one of ['reflect']");
  grid.blend = read_blend(read, tiling);
  return grid;
}

std::map<std::string, FileRecord> read_files(const Reader& read, const json& data) {
  const json& files = read.object(data, "", "files");
  if (!files.contains("model.onnx")) read.fail("files", "'model.onnx' is a required property");
  std::map<std::string, FileRecord> records;
  for (auto it = files.begin(); it != files.end(); ++it) {
    std::string at = "files/" + it.key();
    FileRecord record{read.string(it.value(), at, "sha256"), std::uint64_t(read.integer(it.value(), at, "bytes", 0))};
    if (!is_sha256(record.sha256)) read.fail(at + "/sha256", "'" + record.sha256 + "' is not a sha256 hex digest");
    records[it.key()] = record;
  }
  return records;
}

std::map<std::string, EngineRecord> read_engines(const Reader& read, const json& data) {
  const json& engines = read.object(data, "", "engines");
  std::map<std::string, EngineRecord> records;
  for (auto it = engines.begin(); it != engines.end(); ++it) {
    std::string at = "engines/" + it.key();
    EngineRecord record;
    record.sha256 = read.string(it.value(), at, "sha256");
    if (!is_sha256(record.sha256)) read.fail(at + "/sha256", "'" + record.sha256 + "' is not a sha256 hex digest");
    record.bytes = std::uint64_t(read.integer(it.value(), at, "bytes", 0));
    record.gpu = read.string(it.value(), at, "gpu");
    auto capability = read.integers(it.value(), at, "compute_capability", 2, 0);
    record.compute_major = capability[0];
    record.compute_minor = capability[1];
    record.tensorrt = read.string(it.value(), at, "tensorrt");
    records[it.key()] = record;
  }
  return records;
}

// What the tiler relies on beyond single fields: the graph shapes agree with the tiling.
void check_shapes(const Reader& read, const Manifest& manifest) {
  const Tiling& grid = manifest.tiling;
  int view_channels = 0;
  for (const View& view : manifest.views) view_channels += view.channels;
  if (view_channels != manifest.channels()) {
    read.fail("input/views", "the views hold " + std::to_string(view_channels) + " channels, input/shape " + std::to_string(manifest.channels()));
  }
  if (manifest.input_shape[0] != grid.batch || manifest.output_shape[0] != grid.batch) read.fail("tiling/batch", "differs from the graph shapes' batch");
  if (manifest.input_shape[2] != grid.tile_h || manifest.input_shape[3] != grid.tile_w) read.fail("input/shape", "differs from tiling/tile");
  if (manifest.output_shape[2] != grid.tile_h * manifest.scale || manifest.output_shape[3] != grid.tile_w * manifest.scale) {
    read.fail("output/shape", "is not the tile times the scale");
  }
}

}  // namespace

const std::vector<std::string>& manifest_fields_read() {
  static const std::vector<std::string> fields = {
      // manifest-fields-read:begin
      "schema_version", "model_id", "scale",
      "input/name", "input/shape", "input/views/*/name", "input/views/*/channels", "input/views/*/color", "input/dtype", "input/layout",
      "output/name", "output/shape", "output/clamped", "output/dtype", "output/layout",
      "tiling/tile", "tiling/tile_multiple", "tiling/fixed_tile", "tiling/batch", "tiling/overlap", "tiling/padding",
      "tiling/blend/mode", "tiling/blend/width", "tiling/blend/trim",
      "files/*/sha256", "files/*/bytes",
      "engines/*/sha256", "engines/*/bytes", "engines/*/gpu", "engines/*/compute_capability", "engines/*/tensorrt",
      // manifest-fields-read:end
  };
  return fields;
}

const std::vector<std::string>& manifest_fields_not_read() {
  static const std::vector<std::string> fields = {
      // manifest-fields-not-read:begin
      "input/range", "output/range",  // the tiler maps samples to [0, 1] as every export does
      "output/color",  // the output's channels (output/shape) decide how pixels are written
      "model", "opset", "exporter", "versions", "source", "graph", "tolerances", "export_seconds", "unused_weights", "export_stages",  // provenance
      "fp16", "bf16",  // how model_fp16.onnx and model_bf16.onnx were planned: the graph file is what runs
      "engines/*/plan", "engines/*/workspace_bytes", "engines/*/opt_level", "engines/*/timing_cache", "engines/*/build_seconds",  // how it was built
      // manifest-fields-not-read:end
  };
  return fields;
}

Manifest parse_manifest(const std::string& json_text, const std::string& where) {
  json data = parse_json(json_text, where);
  if (!data.is_object()) throw Error(where + " is not a JSON object");
  check_version(data, where);
  check_model_id(data, where);

  Reader read(where);
  Manifest manifest;
  manifest.schema_version = read.string(data, "", "schema_version");
  manifest.model_id = read.string(data, "", "model_id");
  manifest.scale = read.integer(data, "", "scale", 1);
  read_input(read, data, manifest);
  read_output(read, data, manifest);
  manifest.tiling = read_tiling(read, data);
  manifest.files = read_files(read, data);
  manifest.engines = read_engines(read, data);
  check_shapes(read, manifest);
  return manifest;
}

Export Export::open(const std::filesystem::path& dir) {
  std::filesystem::path path = dir / kManifestFile;
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    throw Error(dir.string() + " is not a finished export (no " + kManifestFile + "); run `deploytool export` first");
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) throw Error("cannot read " + path.string() + ": " + std::strerror(errno));
  return Export(dir, parse_manifest(text.str(), path.string()));
}

std::string Export::recorded_sha256(const std::string& name) const {
  std::string recorded;
  if (auto it = manifest_.files.find(name); it != manifest_.files.end()) recorded = it->second.sha256;
  if (auto it = manifest_.engines.find(name); recorded.empty() && it != manifest_.engines.end()) recorded = it->second.sha256;
  std::error_code error;
  if (recorded.empty() || !std::filesystem::is_regular_file(dir_ / name, error)) throw Error((dir_ / name).string() + " is missing from the export");
  return recorded;
}

std::filesystem::path Export::check_file(const std::string& name) const {
  const std::string recorded = recorded_sha256(name);
  const std::filesystem::path path = dir_ / name;
  if (sha256_file(path) != recorded) {
    throw Error(path.string() + " changed since export (sha256 differs from " + kManifestFile + "); re-export");
  }
  return path;
}

std::vector<char> Export::read_checked(const std::string& name) const {
  const std::string recorded = recorded_sha256(name);
  const std::filesystem::path path = dir_ / name;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path.string() + ": " + std::strerror(errno));
  std::vector<char> bytes;
  std::vector<char> chunk(1 << 20);
  Sha256 hash;
  // to the end of the file, however many reads that takes: a file cut short meanwhile fails the hash
  while (in.read(chunk.data(), std::streamsize(chunk.size())) || in.gcount() > 0) {
    bytes.insert(bytes.end(), chunk.data(), chunk.data() + in.gcount());
    hash.update(chunk.data(), std::size_t(in.gcount()));
  }
  if (in.bad()) throw Error("cannot read " + path.string() + ": I/O error");
  if (hash.hex_digest() != recorded) {
    throw Error(path.string() + " changed since export (sha256 differs from " + kManifestFile + "); re-export");
  }
  return bytes;
}

std::string engine_filename(int compute_major, int compute_minor, const std::string& tensorrt_version) {
  return "model.sm" + std::to_string(compute_major) + std::to_string(compute_minor) + "-trt" + tensorrt_version + ".engine";
}

std::string matching_engine(const Manifest& manifest, int compute_major, int compute_minor, const std::string& tensorrt_version) {
  std::string wanted = engine_filename(compute_major, compute_minor, tensorrt_version);
  if (manifest.engines.count(wanted)) return wanted;
  std::string built;
  for (const auto& [name, record] : manifest.engines) built += (built.empty() ? "" : ", ") + name;  // std::map: sorted, as Python's
  throw Error("no engine for this GPU (sm" + std::to_string(compute_major) + std::to_string(compute_minor) + ") and TensorRT " +
              tensorrt_version + " in this export (engines: " + (built.empty() ? "none" : built) + "); run `deploytool build` here");
}

}  // namespace deploytool
