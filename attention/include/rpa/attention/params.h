#pragma once

// The parameters of one ragged paged attention call (shared/SPEC.md
// section 1). Missing optional values mean "none" exactly as in the SPEC:
// no window, no soft cap, scales of 1, no prefill range.

#include <cstdint>
#include <optional>

namespace rpa::attention {

struct AttentionParams {
  float sm_scale = 1.0F;                       // finite
  std::optional<std::int32_t> sliding_window;  // > 0 (tokens)
  std::optional<float> soft_cap;               // != 0, finite
  std::optional<float> k_scale;                // > 0, finite
  std::optional<float> v_scale;                // > 0, finite
  bool causal = true;
  std::optional<std::int32_t> chunk_prefill_size;  // > 0 (tokens)
};

}  // namespace rpa::attention
