#pragma once

// The work of a batch as SPEC section 7 counts it, for roofline and MBU / MFU
// figures: bytes moved between memory and the compute units, and FLOPs.
//   bytes = q read + new k/v read + cache write-back of the new tokens
//         + cached KV read (positions < gap that some query of the sequence
//           can see) + output written
//   flops = 4 * Hq * D * visible query-key pairs (QK^T and PV, 2 FLOPs per
//           multiply-add; causal and window masks count only visible pairs)

#include <cstdint>

namespace rpa::attention {

struct BatchCost {
  std::uint64_t q_bytes = 0;
  std::uint64_t new_kv_read_bytes = 0;
  std::uint64_t cache_write_bytes = 0;
  std::uint64_t cached_kv_read_bytes = 0;
  std::uint64_t out_bytes = 0;
  std::uint64_t visible_pairs = 0;  // (query token, key) pairs, per q head
  double flops = 0;                 // 4 * Hq * D * visible_pairs

  std::uint64_t bytes() const {
    return q_bytes + new_kv_read_bytes + cache_write_bytes +
           cached_kv_read_bytes + out_bytes;
  }
  BatchCost& operator+=(const BatchCost& other) {
    q_bytes += other.q_bytes;
    new_kv_read_bytes += other.new_kv_read_bytes;
    cache_write_bytes += other.cache_write_bytes;
    cached_kv_read_bytes += other.cached_kv_read_bytes;
    out_bytes += other.out_bytes;
    visible_pairs += other.visible_pairs;
    flops += other.flops;
    return *this;
  }
};

}  // namespace rpa::attention
