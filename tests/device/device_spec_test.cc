// DeviceSpec: presets (SPEC section 7), derived rates, validation, the JSON
// format and its every error path.

#include "rpa/device/device_spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace rpa::device {
namespace {

using ::testing::HasSubstr;

DeviceSpec Preset(std::string_view name) {
  auto spec = DevicePreset(name);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return *spec;
}

// A temporary directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "rpa_device_spec_XXXXXX")
            .string();
    char* made = mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr);
    path_ = pattern;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::filesystem::path Write(const std::string& name,
                              const std::string& text) const {
    const auto file = path_ / name;
    std::ofstream(file, std::ios::binary) << text;
    return file;
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

TEST(DeviceSpecTest, PresetsHaveTheSpecFigures) {
  const DeviceSpec v5e = Preset("v5e");
  EXPECT_EQ(v5e.name, "v5e");
  EXPECT_EQ(v5e.vmem_bytes, 128ull << 20);
  EXPECT_EQ(v5e.hbm_bytes_per_s, 0.82e12);
  EXPECT_EQ(v5e.matrix_peak_flops, 197e12);
  EXPECT_EQ(v5e.num_mxus, 4u);
  EXPECT_EQ(v5e.mxu_tile, 128u);

  const DeviceSpec v6e = Preset("v6e");
  EXPECT_EQ(v6e.vmem_bytes, 128ull << 20);
  EXPECT_EQ(v6e.hbm_bytes_per_s, 1.64e12);
  EXPECT_EQ(v6e.matrix_peak_flops, 920e12);
  EXPECT_EQ(v6e.num_mxus, 2u);
  EXPECT_EQ(v6e.mxu_tile, 256u);

  const DeviceSpec tpu7x = Preset("tpu7x");
  EXPECT_EQ(tpu7x.vmem_bytes, 64ull << 20);
  EXPECT_EQ(tpu7x.hbm_bytes_per_s, 3.7e12);
  EXPECT_EQ(tpu7x.matrix_peak_flops, 1155e12);
  EXPECT_EQ(tpu7x.num_mxus, 2u);
  EXPECT_EQ(tpu7x.mxu_tile, 256u);

  for (const std::string& name : DevicePresetNames()) {
    const DeviceSpec spec = Preset(name);
    // The stated defaults.
    EXPECT_EQ(spec.num_dma_engines, 4u) << name;
    EXPECT_EQ(spec.dma_issue_latency_ns, 1000.0) << name;
    EXPECT_EQ(spec.dma_descriptor_ns, 20.0) << name;
    EXPECT_EQ(spec.vector_lanes, 1024u) << name;
    EXPECT_EQ(spec.vector_slots, 4u) << name;
    EXPECT_TRUE(ValidateDeviceSpec(spec).ok()) << name;
  }
  EXPECT_EQ(DevicePresetNames(),
            (std::vector<std::string>{"v5e", "v6e", "tpu7x"}));
}

TEST(DeviceSpecTest, DerivedClockAndVectorRate) {
  // clock = peak / (mxus * tile^2 * 2); vector = lanes * slots * clock.
  const DeviceSpec v5e = Preset("v5e");
  EXPECT_DOUBLE_EQ(v5e.clock_hz(), 197e12 / (4.0 * 128 * 128 * 2));
  EXPECT_DOUBLE_EQ(v5e.vector_ops_per_s(), 1024.0 * 4 * v5e.clock_hz());
  const DeviceSpec tpu7x = Preset("tpu7x");
  EXPECT_DOUBLE_EQ(tpu7x.clock_hz(), 1155e12 / (2.0 * 256 * 256 * 2));
  EXPECT_NEAR(tpu7x.clock_hz(), 4.406e9, 1e6);
  EXPECT_DOUBLE_EQ(tpu7x.vector_ops_per_s(), 4096 * tpu7x.clock_hz());
}

TEST(DeviceSpecTest, UnknownPresetIsNotFoundAndListsTheKnownOnes) {
  auto spec = DevicePreset("h100");
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(spec.status().message(), HasSubstr("h100"));
  EXPECT_THAT(spec.status().message(), HasSubstr("v5e, v6e, tpu7x"));
}

TEST(DeviceSpecTest, ValidationNamesTheFieldAndTheValue) {
  struct Case {
    const char* field;
    void (*mutate)(DeviceSpec&);
    const char* value_text;
  };
  const Case cases[] = {
      {"name", [](DeviceSpec& s) { s.name.clear(); }, "0 bytes"},
      {"hbm_bytes_per_s", [](DeviceSpec& s) { s.hbm_bytes_per_s = 0; }, "= 0"},
      {"hbm_bytes_per_s", [](DeviceSpec& s) { s.hbm_bytes_per_s = -5; },
       "= -5"},
      {"vmem_bytes", [](DeviceSpec& s) { s.vmem_bytes = 0; }, "= 0"},
      {"num_dma_engines", [](DeviceSpec& s) { s.num_dma_engines = 0; }, "= 0"},
      {"dma_issue_latency_ns",
       [](DeviceSpec& s) { s.dma_issue_latency_ns = -1; }, "= -1"},
      {"dma_descriptor_ns",
       [](DeviceSpec& s) {
         s.dma_descriptor_ns = std::numeric_limits<double>::quiet_NaN();
       },
       "= nan"},
      {"num_mxus", [](DeviceSpec& s) { s.num_mxus = 0; }, "= 0"},
      {"mxu_tile", [](DeviceSpec& s) { s.mxu_tile = 64; }, "= 64"},
      {"matrix_peak_flops",
       [](DeviceSpec& s) {
         s.matrix_peak_flops = std::numeric_limits<double>::infinity();
       },
       "= inf"},
      {"vector_lanes", [](DeviceSpec& s) { s.vector_lanes = 0; }, "= 0"},
      {"vector_slots", [](DeviceSpec& s) { s.vector_slots = 0; }, "= 0"},
  };
  for (const Case& c : cases) {
    DeviceSpec spec = Preset("v6e");
    c.mutate(spec);
    const Status status = ValidateDeviceSpec(spec);
    ASSERT_FALSE(status.ok()) << c.field;
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(status.message(), HasSubstr(c.field));
    EXPECT_THAT(status.message(), HasSubstr(c.value_text)) << status;
  }
}

TEST(DeviceSpecTest, ValidationRejectsAnImplausibleImpliedClock) {
  DeviceSpec spec = Preset("v6e");
  spec.num_mxus = 1024;  // 920 TFLOP/s over 1024 MXUs: 3.4 MHz is fine
  EXPECT_TRUE(ValidateDeviceSpec(spec).ok());
  spec.matrix_peak_flops = 1e9;  // ... but 1 GFLOP/s is 3.7 Hz
  const Status status = ValidateDeviceSpec(spec);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("clock"));
}

TEST(DeviceSpecTest, ParseBaseWithOverrides) {
  auto spec = ParseDeviceSpec(R"({"base": "tpu7x", "num_dma_engines": 8,
      "dma_issue_latency_ns": 500, "vmem_bytes": 3.2e7, "name": "what-if"})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  DeviceSpec expected = Preset("tpu7x");
  expected.name = "what-if";
  expected.num_dma_engines = 8;
  expected.dma_issue_latency_ns = 500;
  expected.vmem_bytes = 32000000;
  EXPECT_EQ(*spec, expected);
}

TEST(DeviceSpecTest, ParseBaseAloneIsThePresetAndKeepsItsName) {
  auto spec = ParseDeviceSpec(R"({"base": "v5e"})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(*spec, Preset("v5e"));
}

TEST(DeviceSpecTest, ParseFullSpecWithoutBase) {
  auto spec = ParseDeviceSpec(R"({
    "hbm_bytes_per_s": 1e9, "vmem_bytes": 1048576, "num_mxus": 1,
    "mxu_tile": 128, "matrix_peak_flops": 1e12})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name, "custom");
  EXPECT_EQ(spec->hbm_bytes_per_s, 1e9);
  EXPECT_EQ(spec->vmem_bytes, 1048576u);
  EXPECT_EQ(spec->num_dma_engines, 4u);  // stated default
}

TEST(DeviceSpecTest, ParseErrorsNameTheKey) {
  struct Case {
    const char* json;
    const char* expect;  // in the message
  };
  const Case cases[] = {
      {R"({"base": "v6e", "hbm_bandwidth": 1e12})",
       "unknown key \"hbm_bandwidth\""},
      {R"({"base": "v6e", "num_mxus": "two"})", "\"num_mxus\" must be"},
      {R"({"base": "v6e", "num_mxus": 2.5})", "\"num_mxus\" must be"},
      {R"({"base": "v6e", "num_mxus": true})", "\"num_mxus\" must be"},
      {R"({"base": "v6e", "num_dma_engines": -1})",
       "\"num_dma_engines\" must be"},
      {R"({"base": "v6e", "num_dma_engines": 5000000000})",
       "\"num_dma_engines\" = 5000000000 is out of range"},
      {R"({"base": "v6e", "hbm_bytes_per_s": "fast"})",
       "\"hbm_bytes_per_s\" must be a number"},
      {R"({"base": "v6e", "hbm_bytes_per_s": null})",
       "\"hbm_bytes_per_s\" must be a number"},
      {R"({"base": "v6e", "name": 7})", "\"name\" must be a string"},
      {R"({"base": 7})", "\"base\" must be"},
      {R"({"base": "h100"})", "\"base\" = \"h100\" is not a preset"},
      // Bad values: validation names the field.
      {R"({"base": "v6e", "mxu_tile": 200})", "mxu_tile = 200"},
      {R"({"base": "v6e", "hbm_bytes_per_s": -1})", "hbm_bytes_per_s = -1"},
      {R"({"base": "v6e", "dma_descriptor_ns": -3})", "dma_descriptor_ns = -3"},
      {R"({"base": "v6e", "vmem_bytes": 0})", "vmem_bytes = 0"},
      {R"({"name": "x", "hbm_bytes_per_s": 1e9})", "vmem_bytes = 0"},
      // Not an object / corrupt JSON.
      {R"([1, 2])", "must be a JSON object, got array"},
      {R"("tpu7x")", "must be a JSON object, got string"},
      {R"({"base": "tpu7x", "vmem_bytes": 12)", "invalid JSON"},
      {"", "invalid JSON"},
      {"\xff\xfe{}", "invalid JSON"},
      {R"({"base": "tpu7x",})", "invalid JSON"},
  };
  for (const Case& c : cases) {
    auto spec = ParseDeviceSpec(c.json);
    ASSERT_FALSE(spec.ok()) << c.json;
    EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument) << c.json;
    EXPECT_THAT(spec.status().message(), HasSubstr(c.expect)) << c.json;
    EXPECT_EQ(spec.status().message().rfind("device spec:", 0), 0u)
        << spec.status();
  }
}

TEST(DeviceSpecTest, JsonRoundTripIsExact) {
  for (const std::string& name : DevicePresetNames()) {
    DeviceSpec spec = Preset(name);
    spec.dma_issue_latency_ns = 1234.5678901234567;
    spec.hbm_bytes_per_s = 1.0 / 3.0 * 1e12;
    auto again = ParseDeviceSpec(DeviceSpecToJson(spec));
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(*again, spec);
  }
}

TEST(DeviceSpecTest, LoadFromFile) {
  TempDir dir;
  const auto file =
      dir.Write("spec.json", R"({"base": "v6e", "num_dma_engines": 2})");
  auto spec = LoadDeviceSpec(file);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->num_dma_engines, 2u);
  EXPECT_EQ(spec->mxu_tile, 256u);
}

TEST(DeviceSpecTest, LoadErrors) {
  TempDir dir;
  auto missing = LoadDeviceSpec(dir.path() / "nope.json");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("nope.json"));

  auto directory = LoadDeviceSpec(dir.path());
  EXPECT_EQ(directory.status().code(), StatusCode::kUnavailable);

  // A corrupt file is an error naming the file, never a crash.
  const auto corrupt =
      dir.Write("corrupt.json", "{\"base\": \"v5e\", \x01\x02");
  auto bad = LoadDeviceSpec(corrupt);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("corrupt.json"));
  EXPECT_THAT(bad.status().message(), HasSubstr("invalid JSON"));

  const auto unknown = dir.Write("unknown.json", R"({"base": "v5e", "x": 1})");
  auto bad_key = LoadDeviceSpec(unknown);
  EXPECT_EQ(bad_key.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_key.status().message(), HasSubstr("unknown key \"x\""));
}

TEST(DeviceSpecTest, ResolvePresetOrPath) {
  TempDir dir;
  auto preset = ResolveDeviceSpec("v6e");
  ASSERT_TRUE(preset.ok());
  EXPECT_EQ(preset->name, "v6e");

  const auto file = dir.Write("custom.json", R"({"base": "v5e", "name": "c"})");
  auto from_file = ResolveDeviceSpec(file.string());
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ(from_file->name, "c");

  // "x.json" without a '/' is still a path (relative), not a preset.
  auto relative = ResolveDeviceSpec("no_such_spec_file.json");
  EXPECT_EQ(relative.status().code(), StatusCode::kNotFound);
  auto unknown = ResolveDeviceSpec("v9");
  EXPECT_EQ(unknown.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr("unknown device preset"));
}

}  // namespace
}  // namespace rpa::device
