// DeviceSpec: presets, validation and the JSON format.
//
// nlohmann::json throws; every call into it is inside a try block here so no
// exception crosses the API (a corrupt file is an error, never a crash).

#include "rpa/device/device_spec.h"

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>

#include "fmt/format.h"
#include <nlohmann/json.hpp>

namespace rpa::device {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// Validation ranges. They are wide (what-ifs must fit) but keep every
// simulated duration of a plausible workload far from int64 nanoseconds'
// limit; device/README.md states them.
constexpr double kMinBandwidth = 1e6;  // bytes/s
constexpr double kMaxBandwidth = 1e16;
constexpr std::uint64_t kMinVmemBytes = 64;  // one allocation granule
constexpr std::uint64_t kMaxVmemBytes = std::uint64_t{1} << 36;  // 64 GiB
constexpr std::uint32_t kMaxDmaEngines = 1024;
constexpr double kMaxIssueLatencyNs = 1e9;  // 1 s
constexpr double kMaxDescriptorNs = 1e6;    // 1 ms
constexpr std::uint32_t kMaxMxus = 1024;
constexpr double kMinPeakFlops = 1e9;
constexpr double kMaxPeakFlops = 1e18;
constexpr double kMinClockHz = 1e6;
constexpr double kMaxClockHz = 1e11;
constexpr std::uint32_t kMaxVectorLanes = 1u << 20;
constexpr std::uint32_t kMaxVectorSlots = 1024;
constexpr std::size_t kMaxNameBytes = 256;

DeviceSpec MakePreset(std::string name, double hbm_bytes_per_s,
                      std::uint64_t vmem_mib, double peak_flops,
                      std::uint32_t num_mxus, std::uint32_t mxu_tile) {
  DeviceSpec spec;
  spec.name = std::move(name);
  spec.hbm_bytes_per_s = hbm_bytes_per_s;
  spec.vmem_bytes = vmem_mib << 20;
  spec.matrix_peak_flops = peak_flops;
  spec.num_mxus = num_mxus;
  spec.mxu_tile = mxu_tile;
  return spec;  // everything else at the stated defaults of DeviceSpec
}

// SPEC section 7 table, per TensorCore.
std::vector<DeviceSpec> Presets() {
  return {MakePreset("v5e", 0.82e12, 128, 197e12, 4, 128),
          MakePreset("v6e", 1.64e12, 128, 920e12, 2, 256),
          MakePreset("tpu7x", 3.7e12, 64, 1155e12, 2, 256)};
}

std::string JoinNames() {
  std::string out;
  for (const std::string& name : DevicePresetNames()) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out;
}

// dump() throws on invalid UTF-8 with the default handler; replace instead.
std::string Dump(const Json& value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}
std::string QuoteKey(const std::string& key) { return Dump(Json(key)); }

Status OutOfRange(std::string_view field, const std::string& value,
                  const std::string& range) {
  return InvalidArgumentError(fmt::format(
      "device spec: {} = {} is out of range {}", field, value, range));
}

Status CheckDouble(std::string_view field, double value, double lo, double hi) {
  if (!std::isfinite(value) || value < lo || value > hi) {
    return OutOfRange(field, fmt::format("{}", value),
                      fmt::format("[{}, {}]", lo, hi));
  }
  return OkStatus();
}

template <typename T>
Status CheckInteger(std::string_view field, T value, T lo, T hi) {
  if (value < lo || value > hi) {
    return OutOfRange(field, fmt::format("{}", value),
                      fmt::format("[{}, {}]", lo, hi));
  }
  return OkStatus();
}

StatusOr<double> JsonDouble(const Json& value, const std::string& key) {
  if (!value.is_number()) {
    return InvalidArgumentError(
        fmt::format("device spec: {} must be a number, got {}", QuoteKey(key),
                    Dump(value)));
  }
  return value.get<double>();
}

// Accepts JSON integers and floats with an integral value (1.5e9 is a fine
// way to write a byte count), both within [0, max].
StatusOr<std::uint64_t> JsonUnsigned(const Json& value, const std::string& key,
                                     std::uint64_t max) {
  std::uint64_t out = 0;
  bool ok = false;
  if (value.is_number_unsigned()) {
    out = value.get<std::uint64_t>();
    ok = true;
  } else if (value.is_number_float()) {
    const double d = value.get<double>();
    // 2^64 is exactly representable; anything below it converts exactly when
    // integral.
    if (std::isfinite(d) && d >= 0 && d < 18446744073709551616.0 &&
        std::floor(d) == d) {
      out = static_cast<std::uint64_t>(d);
      ok = true;
    }
  }
  if (!ok) {
    return InvalidArgumentError(
        fmt::format("device spec: {} must be a non-negative integer, got {}",
                    QuoteKey(key), Dump(value)));
  }
  if (out > max) {
    return InvalidArgumentError(
        fmt::format("device spec: {} = {} is out of range [0, {}]",
                    QuoteKey(key), out, max));
  }
  return out;
}

StatusOr<std::uint32_t> JsonUint32(const Json& value, const std::string& key) {
  RPA_ASSIGN_OR_RETURN(
      std::uint64_t out,
      JsonUnsigned(value, key, std::numeric_limits<std::uint32_t>::max()));
  return static_cast<std::uint32_t>(out);
}

Status ApplyKey(const std::string& key, const Json& value, DeviceSpec& spec) {
  if (key == "name") {
    if (!value.is_string()) {
      return InvalidArgumentError(fmt::format(
          "device spec: \"name\" must be a string, got {}", Dump(value)));
    }
    spec.name = value.get<std::string>();
  } else if (key == "hbm_bytes_per_s") {
    RPA_ASSIGN_OR_RETURN(spec.hbm_bytes_per_s, JsonDouble(value, key));
  } else if (key == "vmem_bytes") {
    RPA_ASSIGN_OR_RETURN(
        spec.vmem_bytes,
        JsonUnsigned(value, key, std::numeric_limits<std::uint64_t>::max()));
  } else if (key == "num_dma_engines") {
    RPA_ASSIGN_OR_RETURN(spec.num_dma_engines, JsonUint32(value, key));
  } else if (key == "dma_issue_latency_ns") {
    RPA_ASSIGN_OR_RETURN(spec.dma_issue_latency_ns, JsonDouble(value, key));
  } else if (key == "dma_descriptor_ns") {
    RPA_ASSIGN_OR_RETURN(spec.dma_descriptor_ns, JsonDouble(value, key));
  } else if (key == "num_mxus") {
    RPA_ASSIGN_OR_RETURN(spec.num_mxus, JsonUint32(value, key));
  } else if (key == "mxu_tile") {
    RPA_ASSIGN_OR_RETURN(spec.mxu_tile, JsonUint32(value, key));
  } else if (key == "matrix_peak_flops") {
    RPA_ASSIGN_OR_RETURN(spec.matrix_peak_flops, JsonDouble(value, key));
  } else if (key == "vector_lanes") {
    RPA_ASSIGN_OR_RETURN(spec.vector_lanes, JsonUint32(value, key));
  } else if (key == "vector_slots") {
    RPA_ASSIGN_OR_RETURN(spec.vector_slots, JsonUint32(value, key));
  } else {
    return InvalidArgumentError(fmt::format(
        "device spec: unknown key {} (known: base, name, hbm_bytes_per_s, "
        "vmem_bytes, num_dma_engines, dma_issue_latency_ns, "
        "dma_descriptor_ns, num_mxus, mxu_tile, matrix_peak_flops, "
        "vector_lanes, vector_slots)",
        QuoteKey(key)));
  }
  return OkStatus();
}

StatusOr<DeviceSpec> SpecFromJson(const Json& root) {
  if (!root.is_object()) {
    return InvalidArgumentError(
        fmt::format("device spec: must be a JSON object, got {}",
                    std::string(root.type_name())));
  }
  DeviceSpec spec;
  const auto base = root.find("base");
  if (base != root.end()) {
    if (!base->is_string()) {
      return InvalidArgumentError(fmt::format(
          "device spec: \"base\" must be a preset name string, got {}",
          Dump(*base)));
    }
    auto preset = DevicePreset(base->get<std::string>());
    if (!preset.ok()) {
      return InvalidArgumentError(
          fmt::format("device spec: \"base\" = {} is not a preset (known: {})",
                      Dump(*base), JoinNames()));
    }
    spec = *std::move(preset);
  } else {
    spec.name = "custom";
  }
  for (const auto& [key, value] : root.items()) {
    if (key == "base") continue;
    RPA_RETURN_IF_ERROR(ApplyKey(key, value, spec));
  }
  RPA_RETURN_IF_ERROR(ValidateDeviceSpec(spec));
  return spec;
}

std::string WithPath(const std::filesystem::path& path,
                     std::string_view message) {
  return fmt::format("{}: {}", path.string(), message);
}

}  // namespace

double DeviceSpec::clock_hz() const {
  const double macs_per_cycle = static_cast<double>(num_mxus) *
                                static_cast<double>(mxu_tile) *
                                static_cast<double>(mxu_tile);
  if (macs_per_cycle <= 0) return 0;
  return matrix_peak_flops / (macs_per_cycle * 2.0);
}

double DeviceSpec::vector_ops_per_s() const {
  return static_cast<double>(vector_lanes) * static_cast<double>(vector_slots) *
         clock_hz();
}

StatusOr<DeviceSpec> DevicePreset(std::string_view name) {
  for (DeviceSpec& spec : Presets()) {
    if (spec.name == name) return std::move(spec);
  }
  return NotFoundError(fmt::format("unknown device preset \"{}\" (known: {})",
                                   name, JoinNames()));
}

std::vector<std::string> DevicePresetNames() {
  std::vector<std::string> names;
  for (const DeviceSpec& spec : Presets()) names.push_back(spec.name);
  return names;
}

Status ValidateDeviceSpec(const DeviceSpec& spec) {
  if (spec.name.empty() || spec.name.size() > kMaxNameBytes) {
    return InvalidArgumentError(
        fmt::format("device spec: name must be 1 to {} bytes, got {} bytes",
                    kMaxNameBytes, spec.name.size()));
  }
  RPA_RETURN_IF_ERROR(CheckDouble("hbm_bytes_per_s", spec.hbm_bytes_per_s,
                                  kMinBandwidth, kMaxBandwidth));
  RPA_RETURN_IF_ERROR(CheckInteger<std::uint64_t>(
      "vmem_bytes", spec.vmem_bytes, kMinVmemBytes, kMaxVmemBytes));
  RPA_RETURN_IF_ERROR(CheckInteger<std::uint32_t>(
      "num_dma_engines", spec.num_dma_engines, 1, kMaxDmaEngines));
  RPA_RETURN_IF_ERROR(CheckDouble("dma_issue_latency_ns",
                                  spec.dma_issue_latency_ns, 0,
                                  kMaxIssueLatencyNs));
  RPA_RETURN_IF_ERROR(CheckDouble("dma_descriptor_ns", spec.dma_descriptor_ns,
                                  0, kMaxDescriptorNs));
  RPA_RETURN_IF_ERROR(
      CheckInteger<std::uint32_t>("num_mxus", spec.num_mxus, 1, kMaxMxus));
  if (spec.mxu_tile != 128 && spec.mxu_tile != 256) {
    return InvalidArgumentError(fmt::format(
        "device spec: mxu_tile = {} must be 128 or 256", spec.mxu_tile));
  }
  RPA_RETURN_IF_ERROR(CheckDouble("matrix_peak_flops", spec.matrix_peak_flops,
                                  kMinPeakFlops, kMaxPeakFlops));
  RPA_RETURN_IF_ERROR(CheckInteger<std::uint32_t>(
      "vector_lanes", spec.vector_lanes, 1, kMaxVectorLanes));
  RPA_RETURN_IF_ERROR(CheckInteger<std::uint32_t>(
      "vector_slots", spec.vector_slots, 1, kMaxVectorSlots));
  const double clock_hz = spec.clock_hz();
  if (!(clock_hz >= kMinClockHz && clock_hz <= kMaxClockHz)) {
    return InvalidArgumentError(fmt::format(
        "device spec: the clock implied by matrix_peak_flops / (num_mxus * "
        "mxu_tile^2 * 2) = {} / ({} * {}^2 * 2) = {} Hz is out of range "
        "[{}, {}]",
        spec.matrix_peak_flops, spec.num_mxus, spec.mxu_tile, clock_hz,
        kMinClockHz, kMaxClockHz));
  }
  return OkStatus();
}

StatusOr<DeviceSpec> ParseDeviceSpec(std::string_view json_text) {
  try {
    Json root;
    try {
      root = Json::parse(json_text);
    } catch (const Json::parse_error& e) {
      return InvalidArgumentError(
          fmt::format("device spec: invalid JSON: {}", e.what()));
    }
    return SpecFromJson(root);
  } catch (const std::exception& e) {
    // Not expected (every access above is type-checked first), but nothing
    // may escape: report it instead.
    return InvalidArgumentError(
        fmt::format("device spec: rejected: {}", e.what()));
  }
}

StatusOr<DeviceSpec> LoadDeviceSpec(const std::filesystem::path& json_file) {
  std::error_code ec;
  const auto status = std::filesystem::status(json_file, ec);
  if (status.type() == std::filesystem::file_type::not_found) {
    return NotFoundError(WithPath(json_file, "device spec file not found"));
  }
  if (ec) {
    return UnavailableError(WithPath(json_file, ec.message()));
  }
  if (!std::filesystem::is_regular_file(status)) {
    return UnavailableError(WithPath(json_file, "not a regular file"));
  }
  std::ifstream in(json_file, std::ios::binary);
  if (!in) {
    return UnavailableError(WithPath(
        json_file, fmt::format("cannot open: {}", std::strerror(errno))));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return UnavailableError(WithPath(json_file, "read error"));
  }
  auto spec = ParseDeviceSpec(text.str());
  if (!spec.ok()) {
    return Status(spec.status().code(),
                  WithPath(json_file, spec.status().message()));
  }
  return spec;
}

std::string DeviceSpecToJson(const DeviceSpec& spec) {
  OrderedJson out;
  out["name"] = spec.name;
  out["hbm_bytes_per_s"] = spec.hbm_bytes_per_s;
  out["vmem_bytes"] = spec.vmem_bytes;
  out["num_dma_engines"] = spec.num_dma_engines;
  out["dma_issue_latency_ns"] = spec.dma_issue_latency_ns;
  out["dma_descriptor_ns"] = spec.dma_descriptor_ns;
  out["num_mxus"] = spec.num_mxus;
  out["mxu_tile"] = spec.mxu_tile;
  out["matrix_peak_flops"] = spec.matrix_peak_flops;
  out["vector_lanes"] = spec.vector_lanes;
  out["vector_slots"] = spec.vector_slots;
  return out.dump(2, ' ', false, OrderedJson::error_handler_t::replace) + "\n";
}

StatusOr<DeviceSpec> ResolveDeviceSpec(std::string_view preset_or_path) {
  const bool is_path =
      preset_or_path.find('/') != std::string_view::npos ||
      (preset_or_path.size() >= 5 &&
       preset_or_path.substr(preset_or_path.size() - 5) == ".json");
  if (is_path) return LoadDeviceSpec(std::filesystem::path(preset_or_path));
  return DevicePreset(preset_or_path);
}

}  // namespace rpa::device
