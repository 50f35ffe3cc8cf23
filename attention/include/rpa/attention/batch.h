#pragma once

// The inputs of one ragged paged attention call (shared/SPEC.md section 1),
// split the way the plan/run API uses them:
//   BatchMetadata  - the small integer arrays that describe the batch's
//                    shape (validated and copied once, by AttentionPlan);
//   BatchTensors   - the big float arrays and the cache (read / written by
//                    Run, checked against the plan's shapes in O(1)).
// Nothing here owns memory: every member views the caller's buffers, which
// must stay valid for the duration of the call they are passed to.

#include <cstdint>
#include <span>

#include "rpa/memory/kv_cache.h"

namespace rpa::attention {

// The sizes of the batch's tensors (SPEC section 1 names in comments).
struct BatchShape {
  std::uint32_t num_tokens = 0;    // T: rows of q, k and v
  std::uint32_t num_q_heads = 0;   // Hq
  std::uint32_t num_kv_heads = 0;  // Hkv
  std::uint32_t head_dim = 0;      // D
};

struct BatchMetadata {
  BatchShape shape;
  std::span<const std::int32_t> kv_lens;       // [S]
  std::span<const std::int32_t> page_indices;  // [S * pps], sequence-major
  std::span<const std::int32_t> cu_q_lens;     // [S + 1]
  std::span<const std::int32_t> distribution;  // [3]: d0 <= d1 <= d2 <= S
};

struct BatchTensors {
  std::span<const float> q;  // [T, Hq, D]
  std::span<const float> k;  // [T, Hkv, D], in the stored domain (SPEC 1)
  std::span<const float> v;  // [T, Hkv, D]
  // The layer's cache [P, ps, 2 * Hkv, D]; Run writes the new tokens' K/V
  // into it. memory::KvCache::Layer() gives one; so does a view over a
  // loaded .npy buffer.
  memory::KvLayerView cache;
  std::span<float> out;  // [T_used, Hq, D], T_used = cu_q_lens[d2]
};

}  // namespace rpa::attention
