#include "deploytool/cli.hpp"

#include <cstdio>
#include <exception>
#include <functional>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "deploytool/errors.hpp"
#include "deploytool/image.hpp"
#include "deploytool/restorer.hpp"

namespace deploytool {
namespace {

constexpr const char* kUsage = "usage: %s EXPORT_DIR IMAGE [IMAGE ...] -o OUTPUT.png [--overlap N] [--backend %s] [--device DEVICE] [--cuda-graph]";

struct Arguments {
  std::string export_dir;
  std::vector<std::string> images;
  std::string output;
  std::optional<int> overlap;
  CliOptions options;
  std::set<std::string> given;  // the options taking a value that were given, by their long name
  bool help = false;
};

class UsageError : public Error {
 public:
  using Error::Error;
};

int parse_int(const std::string& text, const std::string& option) {
  std::size_t used = 0;
  int value = 0;
  try {
    value = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) throw UsageError(option + " takes an integer, not '" + text + "'");
  return value;
}

std::string choices(const std::vector<std::string>& names, const std::string& separator, const std::string& last) {
  std::string text;
  for (std::size_t i = 0; i < names.size(); ++i) text += (i == 0 ? "" : i + 1 == names.size() ? last : separator) + names[i];
  return text;
}

void check_name(const std::string& name, const BackendRegistry& registry) {
  if (!registry.contains(name)) throw UsageError("--backend takes " + choices(registry.names(), ", ", " or ") + ", not '" + name + "'");
}

// The backend options: a known name, and only the options that name takes.
void check_backend(const Arguments& arguments, const BackendRegistry& registry) {
  const std::string& name = arguments.options.backend;
  check_name(name, registry);
  const std::string refused = registry.refused_option(name, {arguments.options.device, arguments.options.cuda_graph});
  if (!refused.empty()) throw UsageError(refused);
}

// The options without a value; false when `arg` is none of them.
bool parse_flag(const std::string& arg, Arguments& arguments) {
  if (arg == "-h" || arg == "--help") {
    arguments.help = true;
  } else if (arg == "--cuda-graph") {
    arguments.options.cuda_graph = true;
  } else {
    return false;
  }
  return true;
}

// The value of option `name` (`next` reads it); an option given twice is refused: which was meant?
std::string take_value(const std::string& name, const std::function<std::string()>& next, Arguments& arguments) {
  if (!arguments.given.insert(name).second) throw UsageError(name + " given twice");
  return next();
}

int parse_overlap(const std::string& text) {
  const int overlap = parse_int(text, "--overlap");
  if (overlap < 0) throw UsageError("--overlap must be >= 0, got " + std::to_string(overlap));
  return overlap;
}

// One option of the command line (`next` reads its value); false when `arg` is not an option.
bool parse_option(const std::string& arg, const std::function<std::string()>& next, Arguments& arguments, const BackendRegistry& registry) {
  if (parse_flag(arg, arguments)) return true;
  const std::string name = arg == "-o" ? "--output" : arg;
  auto value = [&]() { return take_value(name, next, arguments); };
  if (name == "--output") {
    arguments.output = value();
  } else if (name == "--overlap") {
    arguments.overlap = parse_overlap(value());
  } else if (name == "--backend") {
    arguments.options.backend = value();
    check_name(arguments.options.backend, registry);
  } else if (name == "--device") {
    arguments.options.device = value();
  } else if (arg.size() > 1 && arg[0] == '-') {
    throw UsageError("unknown option " + arg);
  } else {
    return false;
  }
  return true;
}

Arguments parse(int argc, const char* const* argv, const BackendRegistry& registry) {
  Arguments arguments;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (!parse_option(arg, value, arguments, registry)) positional.push_back(arg);
  }
  if (arguments.help) return arguments;
  check_backend(arguments, registry);
  if (positional.size() < 2) throw UsageError("give an export folder and at least one image");
  if (arguments.output.empty()) throw UsageError("give the output file with -o OUTPUT.png");
  arguments.export_dir = positional.front();
  arguments.images.assign(positional.begin() + 1, positional.end());
  return arguments;
}

// One image per view of the model, or a one-line refusal.
void check_view_count(const Manifest& manifest, std::size_t given) {
  if (given == manifest.views.size()) return;
  std::string names;
  for (const View& view : manifest.views) names += (names.empty() ? "" : ", ") + view.name;
  throw ImageError(manifest.model_id + " takes " +
                   (manifest.views.size() == 1 ? std::string("one image") : std::to_string(manifest.views.size()) + " images (" + names + ")") + "; " +
                   std::to_string(given) + " given");
}

struct Restored {
  Image image;
  int tiles;
};

// The images read and restored; an allocation that fails on the way names them (Python's
// inference.restore_file does the same), where the bare "out of memory" would not.
Restored restore_images(const Arguments& arguments, const Export& exported, const BackendFactory& make_backend) {
  try {
    std::vector<Image> views;
    for (const std::string& path : arguments.images) views.push_back(read_image(path));
    Restorer restorer(exported, make_backend(exported, arguments.options), arguments.overlap);
    Image image = restorer.restore(views);
    return {std::move(image), restorer.tiles_for(views.front().pixels.height, views.front().pixels.width)};
  } catch (const std::bad_alloc&) {
    std::string names;
    for (const std::string& path : arguments.images) names += (names.empty() ? "" : " + ") + path;
    throw Error("out of memory: " + names);
  }
}

}  // namespace

int run_cli(int argc, const char* const* argv, const BackendRegistry& registry, std::ostream& out, std::ostream& err) {
  auto open = [&registry](const Export& exported, const CliOptions& options) {
    return registry.open(options.backend, exported, {options.device, options.cuda_graph});
  };
  return run_cli(argc, argv, open, out, err, registry);
}

int run_cli(int argc, const char* const* argv, const BackendFactory& make_backend, std::ostream& out, std::ostream& err, const BackendRegistry& registry) {
  const std::string program = argc > 0 ? argv[0] : "deploytool-infer";
  char usage[512];
  std::snprintf(usage, sizeof usage, kUsage, program.c_str(), choices(registry.names(), "|", "|").c_str());
  try {
    Arguments arguments = parse(argc, argv, registry);
    if (arguments.help) {
      out << usage << "\n";
      return 0;
    }
    Export exported = Export::open(arguments.export_dir);
    check_view_count(exported.manifest(), arguments.images.size());
    const Restored restored = restore_images(arguments, exported, make_backend);
    write_image(arguments.output, restored.image);
    out << arguments.output << ": " << restored.image.pixels.width << "x" << restored.image.pixels.height << " " << restored.image.mode() << " "
        << restored.image.bit_depth << "-bit, " << restored.tiles << " tiles\n";
    return 0;
  } catch (const UsageError& error) {
    err << "error: " << error.what() << " (" << usage << ")\n";
    return 2;
  } catch (const std::bad_alloc&) {
    err << "error: out of memory\n";
    return 1;
  } catch (const std::exception& error) {
    err << "error: " << error.what() << "\n";
    return 1;
  }
}

}  // namespace deploytool
