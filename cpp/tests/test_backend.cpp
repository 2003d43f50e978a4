// The backend registry: backends by name, one-line refusals listing the known names, options
// checked against what each backend takes, availability with the reason, and deploytool-infer's
// command line looking --backend up in it.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "deploytool/cli.hpp"
#include "deploytool/runtime.hpp"
#include "fixtures.hpp"

namespace dt = deploytool;
using dt::testing::ExportFolder;
using dt::testing::minimal_manifest;

namespace {

// A backend of the export's shapes whose every output value is twice an input value.
dt::BackendEntry doubling(const std::string& name, std::string unavailable = "") {
  dt::BackendEntry entry;
  entry.name = name;
  entry.open = [name](const dt::Export& exported, const dt::BackendOptions&) {
    const auto& in = exported.manifest().input_shape;
    const auto& out = exported.manifest().output_shape;
    const std::size_t inputs = dt::BatchShape{in[0], in[1], in[2], in[3]}.elements();
    const std::size_t outputs = dt::BatchShape{out[0], out[1], out[2], out[3]}.elements();
    return dt::function_backend(exported, [inputs, outputs](const float* input, float* output) {
      for (std::size_t i = 0; i < outputs; ++i) output[i] = 2 * input[i % inputs];
    }, name);
  };
  entry.unavailable_reason = [unavailable] { return unavailable; };
  return entry;
}

std::string message_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const dt::Error& error) {
    return error.what();
  }
  return "(nothing thrown)";
}

struct CliRun {
  int code;
  std::string err;
};

CliRun cli(const dt::BackendRegistry& registry, std::vector<std::string> args) {
  args.insert(args.begin(), "deploytool-infer");
  std::vector<const char*> argv;
  for (const auto& arg : args) argv.push_back(arg.c_str());
  std::ostringstream out, err;
  int code = dt::run_cli(int(argv.size()), argv.data(), registry, out, err);
  return {code, err.str()};
}

}  // namespace

TEST(BackendRegistry, BuiltinBackendsAreTrtThenOpenVino) {
  EXPECT_EQ(dt::builtin_backends().names(), (std::vector<std::string>{"trt", "openvino", "openvino-bf16"}));
  EXPECT_TRUE(dt::builtin_backends().get("openvino").takes_device);
  EXPECT_TRUE(dt::builtin_backends().get("openvino-bf16").takes_device);
  EXPECT_TRUE(dt::builtin_backends().get("trt").takes_cuda_graph);
  // each is available exactly when this library was built with it, else says why
  EXPECT_EQ(dt::builtin_backends().get("trt").unavailable_reason().empty(), dt::tensorrt_available());
  EXPECT_EQ(dt::builtin_backends().get("openvino").unavailable_reason().empty(), dt::openvino_available());
  EXPECT_EQ(dt::builtin_backends().get("openvino-bf16").unavailable_reason().empty(), dt::openvino_available());
}

TEST(BackendRegistry, UnknownNamesAreRefusedListingTheKnownOnes) {
  EXPECT_EQ(message_of([] { dt::builtin_backends().get("onnx"); }), "unknown backend 'onnx'; choose from trt, openvino, openvino-bf16");
  EXPECT_FALSE(dt::builtin_backends().contains("onnx"));
}

TEST(BackendRegistry, ANameIsRegisteredOnce) {
  dt::BackendRegistry registry;
  registry.add(doubling("double"));
  EXPECT_EQ(message_of([&] { registry.add(doubling("double")); }), "backend 'double' is registered twice");
  EXPECT_THROW(registry.add(dt::BackendEntry{"nothing", {}, {}, false, false}), dt::Error);
}

TEST(BackendRegistry, OpensARegisteredBackendByName) {
  ExportFolder folder("registry_open");
  folder.write(minimal_manifest(dt::sha256_hex("graph")));
  dt::Export exported = dt::Export::open(folder.dir);
  dt::BackendRegistry registry;
  registry.add(doubling("double"));
  auto backend = registry.open("double", exported);
  ASSERT_EQ(backend->name(), "double");
  std::vector<float> input(backend->input_shape().elements(), 1.5f), output(backend->output_shape().elements(), 0.0f);
  backend->infer(input.data(), output.data());
  EXPECT_EQ(output[0], 3.0f);
}

TEST(BackendRegistry, RefusesOptionsTheBackendDoesNotTakeAndUnavailableBackends) {
  ExportFolder folder("registry_refusals");
  folder.write(minimal_manifest(dt::sha256_hex("graph")));
  dt::Export exported = dt::Export::open(folder.dir);
  dt::BackendRegistry registry;
  auto device_taking = doubling("on-device");
  device_taking.takes_device = true;
  device_taking.takes_cuda_graph = true;
  registry.add(device_taking);
  registry.add(doubling("plain"));
  registry.add(doubling("absent", "built without the absent library"));
  EXPECT_EQ(message_of([&] { registry.open("plain", exported, {"GPU", false}); }), "--device applies to the on-device backend, not plain");
  EXPECT_EQ(message_of([&] { registry.open("plain", exported, {"", true}); }), "--cuda-graph applies to the on-device backend");
  EXPECT_NO_THROW(registry.open("on-device", exported, {"GPU", true}));
  EXPECT_THROW(registry.open("absent", exported), dt::BackendUnavailable);
  EXPECT_EQ(message_of([&] { registry.open("absent", exported); }), "built without the absent library");
}

TEST(BackendRegistry, TheCommandLineLooksBackendsUpInItsRegistry) {
  ExportFolder folder("registry_cli");
  folder.write(minimal_manifest(dt::sha256_hex("graph")));
  dt::Image image;
  image.pixels = dt::Pixels(16, 16, 3);
  const std::string input = (folder.dir / "in.png").string(), output = (folder.dir / "out.png").string();
  dt::write_image(input, image);
  dt::BackendRegistry registry;
  registry.add(doubling("double"));
  registry.add(doubling("absent", "built without the absent library"));

  CliRun unknown = cli(registry, {folder.dir.string(), input, "-o", output, "--backend", "trt"});
  EXPECT_EQ(unknown.code, 2);
  EXPECT_NE(unknown.err.find("[--backend double|absent]"), std::string::npos) << unknown.err;
  EXPECT_EQ(unknown.err.rfind("error: --backend takes double or absent, not 'trt' (usage: ", 0), 0u) << unknown.err;
  EXPECT_EQ(std::count(unknown.err.begin(), unknown.err.end(), '\n'), 1) << unknown.err;

  CliRun absent = cli(registry, {folder.dir.string(), input, "-o", output, "--backend", "absent"});
  EXPECT_EQ(absent.code, 1);
  EXPECT_EQ(absent.err, "error: built without the absent library\n");
  EXPECT_FALSE(std::filesystem::exists(output));

  CliRun ran = cli(registry, {folder.dir.string(), input, "-o", output, "--backend", "double"});
  EXPECT_EQ(ran.code, 0) << ran.err;
  EXPECT_EQ(dt::read_image(output).pixels.width, 32);
}
