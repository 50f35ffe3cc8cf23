#pragma once

// Tile counters of the flash kernel, for tests that check that tiles hidden
// by the causal mask or the sliding window are really skipped. Private to
// attention/ (tests include it through attention/src).
//
// A "tile" is (query block of an item, kv block of kv_tokens_per_block keys).
// Per query block the kernel walks kv blocks from the first key some row of
// the block can see to one past the last such key; `grid_tiles` counts the
// tiles of a kernel that would walk the sequence's whole KV,
// ceil(kv_len / kv block) per query block, so skipped = grid - full - masked.
//
// Thread-safety: the counters are process-wide relaxed atomics, updated once
// per query block; Reset and Get may run concurrently with kernels (the
// numbers are then merely a snapshot).

#include <cstdint>

namespace rpa::attention::internal {

struct FlashTileCounts {
  std::uint64_t query_blocks = 0;
  std::uint64_t grid_tiles = 0;    // tiles without any skipping
  std::uint64_t full_tiles = 0;    // computed, no mask needed
  std::uint64_t masked_tiles = 0;  // computed, straddle a mask edge
  std::uint64_t skipped_tiles() const {
    return grid_tiles - full_tiles - masked_tiles;
  }
};

FlashTileCounts GetFlashTileCounts();
void ResetFlashTileCounts();

}  // namespace rpa::attention::internal
