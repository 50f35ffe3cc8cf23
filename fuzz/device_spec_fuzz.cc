// Invariant fuzzer of the device spec JSON parser
// (device/include/rpa/device/device_spec.h), the parser of untrusted
// --device files.
//   - ParseDeviceSpec never throws or crashes on any bytes (no exception
//     crosses the API), and a rejection is InvalidArgument starting with
//     "device spec:".
//   - An accepted spec validates, and round-trips exactly: DeviceSpecToJson
//     parses back to an equal spec, and serialising that gives the same text.
// Seeds: fuzz/corpus/device_spec/ (presets, overrides, a full spec without
// "base", and near misses: unknown key, wrong type, bad value, corrupt JSON).

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "rpa/device/device_spec.h"

namespace {

void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "device_spec_fuzz: invariant violated: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto spec = rpa::device::ParseDeviceSpec(text);
  if (!spec.ok()) {
    Require(spec.status().code() == rpa::StatusCode::kInvalidArgument,
            "a rejected spec is not InvalidArgument");
    Require(spec.status().message().rfind("device spec:", 0) == 0,
            "a rejection does not start with \"device spec:\"");
    return 0;
  }
  Require(rpa::device::ValidateDeviceSpec(*spec).ok(),
          "an accepted spec does not validate");
  const std::string json = rpa::device::DeviceSpecToJson(*spec);
  auto again = rpa::device::ParseDeviceSpec(json);
  Require(again.ok(), "a serialised spec does not parse");
  Require(*again == *spec, "the spec changed in the JSON round trip");
  Require(rpa::device::DeviceSpecToJson(*again) == json,
          "serialising the round-tripped spec gives different text");
  Require(spec->clock_hz() > 0 && spec->vector_ops_per_s() > 0,
          "an accepted spec has a non-positive derived rate");
  return 0;
}
