#pragma once
// An export folder as `deploytool export` writes it: manifest.json (schema 1.x, see the README's
// "The export folder contract") and the files it records with their sha256.
#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace deploytool {

inline constexpr const char* kSchemaVersion = "1.4";  // the newest schema this runtime reads
inline constexpr const char* kManifestFile = "manifest.json";

struct View {
  std::string name;  // "image", or "left" / "right" for dual-pixel models
  int channels = 0;  // 1 (gray) or 3 (RGB)
  std::string color;
};

enum class BlendMode { ramp, centre };

struct Blend {
  BlendMode mode = BlendMode::ramp;
  int width = 0;  // ramp: the overlap in use
  int trim = 0;   // centre: input pixels dropped at inner tile edges
};

struct Tiling {
  int tile_h = 0, tile_w = 0;
  int tile_multiple = 1;  // images are padded bottom/right to this multiple before tiling
  bool fixed_tile = false;
  int batch = 1;    // tiles per graph call (static)
  int overlap = 0;  // default overlap, input pixels, rounded up to tile_multiple at run time
  std::string padding;
  Blend blend;
};

struct FileRecord {
  std::string sha256;
  std::uint64_t bytes = 0;
};

struct EngineRecord {
  std::string sha256;
  std::uint64_t bytes = 0;
  std::string gpu;
  int compute_major = 0, compute_minor = 0;
  std::string tensorrt;
};

struct Manifest {
  std::string schema_version;
  std::string model_id;
  int scale = 1;
  std::string input_name, output_name;
  std::array<int, 4> input_shape{};   // [batch, C, tile_h, tile_w]
  std::array<int, 4> output_shape{};  // [batch, C_out, tile_h * scale, tile_w * scale]
  std::vector<View> views;
  bool output_clamped = false;
  Tiling tiling;
  std::map<std::string, FileRecord> files;
  std::map<std::string, EngineRecord> engines;

  int channels() const { return input_shape[1]; }
  int out_channels() const { return output_shape[1]; }
};

// The manifest in `json_text`: version-checked, then checked for the fields and types a runtime
// relies on. `where` names the file in messages.
Manifest parse_manifest(const std::string& json_text, const std::string& where);

class Export {
 public:
  // Reads and checks `dir`/manifest.json; files are checked against their sha256 when used.
  static Export open(const std::filesystem::path& dir);

  const Manifest& manifest() const { return manifest_; }
  const std::filesystem::path& dir() const { return dir_; }
  // The path of a recorded file (graph or engine), refusing one that is missing or changed.
  std::filesystem::path check_file(const std::string& name) const;
  // The bytes of a recorded file, read once and checked against its sha256: what is used is what
  // was checked (an engine is deserialised from these bytes, not from a second read).
  std::vector<char> read_checked(const std::string& name) const;

 private:
  std::string recorded_sha256(const std::string& name) const;  // refuses a name the manifest does not record or a missing file
  Export(std::filesystem::path dir, Manifest manifest) : dir_(std::move(dir)), manifest_(std::move(manifest)) {}
  std::filesystem::path dir_;
  Manifest manifest_;
};

// `model.sm90-trt10.13.0.35.engine`: the GPU architecture and TensorRT version it was built for.
std::string engine_filename(int compute_major, int compute_minor, const std::string& tensorrt_version);
// The engine of `manifest` built for this GPU and TensorRT, or a one-line refusal.
std::string matching_engine(const Manifest& manifest, int compute_major, int compute_minor, const std::string& tensorrt_version);

}  // namespace deploytool
