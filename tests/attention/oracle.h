#pragma once

// The naive double-precision oracle of SPEC section 2, written independently
// of the kernels (it shares nothing with attention/src but the storage
// conversions, which have their own exhaustive tests). Every attention kernel,
// the sweeps and the differential fuzzer compare against it.
//
// Thread-safety: pure functions of their inputs.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "rpa/attention/batch.h"
#include "rpa/attention/params.h"
#include "rpa/memory/kv_cache.h"

namespace rpa::attention::testutil {

struct OracleInput {
  BatchMetadata metadata;
  AttentionParams params;
  // Geometry and the bytes before the call (read only).
  memory::KvLayerView cache;
  std::span<const float> q;  // [T, Hq, D]
  std::span<const float> k;  // [T, Hkv, D]
  std::span<const float> v;  // [T, Hkv, D]
};

struct OracleOutput {
  std::vector<double> out;       // [T_used, Hq, D]
  std::vector<std::byte> cache;  // the whole cache after the fused write
  // [T_used, Hq, D]: a first-order worst-case bound on the error of any
  // evaluation of SPEC section 2 in f32 arithmetic (rounded dot products,
  // scaling, exp, sums; SPEC 4: "all arithmetic is f32"). It grows with the
  // scores' terms, sum_d |q_d k_d| * |sm_scale * k_scale|, and with
  // |v| * v_scale. Being worst case it is loose (some 100x above the errors
  // the kernels make), so it is for inputs scaled past SPEC 4's domain: with
  // standard-normal q, k, D = 64 and sm_scale * k_scale = 10 the scores reach
  // a few hundred, and their f32 rounding alone can move out by more than the
  // SPEC bound. 0 for rows whose expected value is NaN. Where the
  // first-order analysis breaks down (a relative weight error >= 1: scores
  // so large that f32 rounding decides which weights survive, e.g. a soft
  // cap whose tanh rounds to exactly 1 for several keys), any softmax of the
  // visible keys is a possible f32 result: the bound is then the distance
  // from the expected value to the farthest visible value.
  std::vector<double> f32_rounding_bound;
};

// Evaluates SPEC section 2 in double precision. Precondition: the batch is
// valid (SPEC section 3); index errors are RPA_CHECK failures, never UB.
// Keys and values at positions < gap are read from the cache (after this
// step's writes), those >= gap from the new k / v rounded to the cache type.
OracleOutput RunOracle(const OracleInput& input);

// The SPEC section 4 comparison: |actual - expected| <= tolerance * (1 +
// |expected|) for every element (a NaN actual never passes). With
// `rounding_bound` (one per element, e.g. OracleOutput::f32_rounding_bound),
// an element may instead be off by up to its bound, for inputs scaled past
// SPEC 4's domain where f32 itself cannot reach the SPEC bound.
struct Comparison {
  bool ok = true;
  std::size_t num_bad = 0;
  double max_abs_error = 0;
  double max_scaled_error = 0;  // max |err| / (1 + |expected|)
  std::string first_bad;        // "out[12] (token 1, head 2, d 3) = ..."
};
Comparison CompareOutputs(std::span<const float> actual,
                          std::span<const double> expected,
                          std::uint32_t num_q_heads, std::uint32_t head_dim,
                          double tolerance = 1e-4,
                          std::span<const double> rounding_bound = {});

// Byte equality of two caches of geometry `cache` ("" when equal), else
// names the first differing element: "page 3 slot 5 combined head 2 d 7".
std::string DescribeCacheDifference(const memory::KvLayerView& cache,
                                    std::span<const std::byte> actual,
                                    std::span<const std::byte> expected);

// Bytes of the cache tensor a view describes.
inline std::size_t CacheBytes(const memory::KvLayerView& cache) {
  return static_cast<std::size_t>(cache.num_pages) * cache.page_bytes;
}

}  // namespace rpa::attention::testutil
