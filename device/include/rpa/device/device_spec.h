#pragma once
// DeviceSpec: the figures of one simulated TPU TensorCore (shared/SPEC.md
// section 7) and the modelling parameters the public documents do not give.
//
// Published figures come from SPEC section 7 (VMEM, HBM bandwidth, bf16 peak,
// MXU count and shape). Everything else is a *stated default*, an assumption
// written down here and in device/README.md, never fitted to a result:
//   - num_dma_engines 4, dma_issue_latency_ns 1000 (issue to first byte),
//     dma_descriptor_ns 20 (per contiguous chunk of a transfer);
//   - the vector unit does vector_lanes (8 sublanes x 128 lanes = 1024)
//     element-operations per slot per cycle, vector_slots (4) per cycle, at
//     the clock implied by the matrix peak:
//       clock_hz = matrix_peak_flops / (num_mxus * mxu_tile^2 * 2),
//     so vector_ops_per_s = vector_lanes * vector_slots * clock_hz; exp is one
//     operation (a separate pipelined transcendental unit on TPUs).
//
// A matmul of [m, k] x [k, n] is charged for its padded tile count: k and n
// rounded up to mxu_tile, m rounded up to 8 (sublanes), at matrix_peak_flops
// (all MXUs of the core together: one "matrix unit" resource).
//
// Thread-safety: plain values.
// Memory ordering: none.
//
// Example:
//   RPA_ASSIGN_OR_RETURN(DeviceSpec spec, DevicePreset("tpu7x"));
//   spec.num_dma_engines = 8;                       // a what-if
//   RPA_RETURN_IF_ERROR(ValidateDeviceSpec(spec));
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "rpa/runtime/status.h"

namespace rpa::device {

struct DeviceSpec {
  std::string name;                    // "v5e", "v6e", "tpu7x" or the user's
  double hbm_bytes_per_s = 0;          // HBM <-> VMEM bandwidth, shared by DMAs
  std::uint64_t vmem_bytes = 0;        // VMEM capacity
  std::uint32_t num_dma_engines = 4;   // DMAs that can be in progress at once
  double dma_issue_latency_ns = 1000;  // stated default, see file comment
  double dma_descriptor_ns = 20;       // per contiguous chunk
  std::uint32_t num_mxus = 0;
  std::uint32_t mxu_tile = 0;    // 128 or 256
  double matrix_peak_flops = 0;  // bf16 FLOP/s of all MXUs together
  std::uint32_t vector_lanes = 1024;
  std::uint32_t vector_slots = 4;

  // Derived (see the file comment).
  double clock_hz() const;
  double vector_ops_per_s() const;

  // Field-wise equality (the JSON round trip is exact).
  friend bool operator==(const DeviceSpec&, const DeviceSpec&) = default;
};

// "v5e", "v6e" or "tpu7x" (SPEC section 7 figures + the stated defaults).
// NotFound names the preset and lists the known ones.
StatusOr<DeviceSpec> DevicePreset(std::string_view name);
std::vector<std::string> DevicePresetNames();

// Every field positive / in range, mxu_tile 128 or 256; InvalidArgument names
// the field and the value.
Status ValidateDeviceSpec(const DeviceSpec& spec);

// JSON object with the DeviceSpec field names; "base": "<preset>" starts from
// a preset and overrides the fields given. Unknown keys, wrong types and
// invalid values are InvalidArgument naming the key; a missing file NotFound
// (Unavailable for other I/O errors). The result is validated.
StatusOr<DeviceSpec> ParseDeviceSpec(std::string_view json_text);
StatusOr<DeviceSpec> LoadDeviceSpec(const std::filesystem::path& json_file);
std::string DeviceSpecToJson(const DeviceSpec& spec);

// A preset name or a path to a JSON file (anything containing '/' or ending
// in ".json" is a path).
StatusOr<DeviceSpec> ResolveDeviceSpec(std::string_view preset_or_path);

}  // namespace rpa::device
