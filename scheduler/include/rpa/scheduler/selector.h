#pragma once
// KernelSelector: the distribution-aware kernel selector of shared/SPEC.md
// section 6. Given a batch (its distribution, q and kv lengths, heads,
// head_dim, page size, storage type) and a target (the host CPU or a
// simulated device), it picks the kernel for each range of the distribution
// and its block sizes.
//
// Kernel rule: range 0 (decode) -> decode, range 1 (prefill) -> prefill,
// range 2 (mixed) -> mixed, except that a mixed range whose sequences all
// have q_len 1 runs the decode kernel (the specialised kernel whenever the
// shape allows it). An empty range gets no kernel (Choice::used false).
//
// Block sizes: from the tuning table entry that covers the range (see
// tuning_table.h); otherwise the fallback rule, documented in
// scheduler/README.md:
//   host:   0 everywhere (attention/'s cache-sized defaults);
//   device: decode  q = the sequences 512 KiB of f32 queries hold, kv
//                   blocks of max(page, 1024 tokens / page rounded), compute
//                   sub-tile 512 keys (or the block if smaller);
//           prefill/mixed q 256, kv 512 tokens (page multiple), compute
//                   sub-tile 256 keys;
// then, on a device, a Q block is capped at what the range holds (decode:
// its sequences; flash: its longest q_len rounded up to 8), and the range whose
// buffers are largest is shrunk (kv halved in page multiples, else q halved,
// else the compute sub-tile) until the buffers all used ranges share fit the
// device's VMEM, measured with attention::DeviceVmemBytes, the model
// RunOnDevice checks: a selection never exceeds VMEM unless even one page, one
// token and one key do not fit. RunOnDevice takes one set of blocks per kernel,
// so on a device a mixed range that runs the decode kernel gets range 0's
// decode blocks (both ranges report the same, shrunk together).
//
// Thread-safety: immutable after Create; Select from any number of threads.
// Memory ordering: none.
//
// Example:
//   RPA_ASSIGN_OR_RETURN(auto selector, KernelSelector::Create("tpu7x"));
//   Selection s = selector.Select(metadata, cache_view);
//   auto plan = attention::AttentionPlan::Create(metadata, cache_view,
//                                                params, s.plan_options);
//   auto report = attention::RunOnDevice(*plan, tensors, *selector.device(),
//                                        s.device_options);
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "rpa/attention/batch.h"
#include "rpa/attention/device_run.h"
#include "rpa/attention/plan.h"
#include "rpa/device/device_spec.h"
#include "rpa/memory/kv_cache.h"
#include "rpa/runtime/status.h"
#include "rpa/scheduler/tuning_table.h"

namespace rpa::scheduler {

// One range's decision.
struct KernelChoice {
  bool used = false;  // the range has sequences
  attention::KernelKind kernel = attention::KernelKind::kDecode;
  TuningKey key;            // what the table was asked
  bool from_table = false;  // false: the fallback rule
  std::uint32_t q_tokens_per_block = 0;
  std::uint32_t kv_tokens_per_block = 0;
  std::uint32_t compute_kv_tokens = 0;  // device only
};

struct Selection {
  std::array<KernelChoice, 3> ranges{};
  // Ready to pass on: kernel routing + host block sizes.
  attention::PlanOptions plan_options;
  // Device block sizes per kernel kind (device targets).
  attention::DeviceRunOptions device_options;
};

class KernelSelector {
 public:
  // target: "host", a device preset name, or a device JSON file. The table
  // defaults to TuningTable::Shipped(target name). InvalidArgument /
  // NotFound from the device spec.
  static StatusOr<KernelSelector> Create(std::string_view target);
  static StatusOr<KernelSelector> Create(std::string_view target,
                                         TuningTable table);

  // Precondition: metadata passed AttentionPlan's validation (the selector
  // reads it without re-checking). parallelism is copied into plan_options.
  Selection Select(const attention::BatchMetadata& metadata,
                   const memory::KvLayerView& cache, int parallelism = 1) const;

  bool is_host() const { return !device_.has_value(); }
  const std::optional<device::DeviceSpec>& device() const { return device_; }
  const TuningTable& table() const { return table_; }
  const std::string& target() const { return target_; }

 private:
  KernelSelector(std::string target, std::optional<device::DeviceSpec> device,
                 TuningTable table);
  std::string target_;
  std::optional<device::DeviceSpec> device_;
  TuningTable table_;
};

}  // namespace rpa::scheduler
