// CheckCall: runs Attend on a (possibly mutated) case and holds the outcome
// to the double-precision oracle: a rejected call must be InvalidArgument and
// leave cache and out untouched; an accepted one must write the cache byte for
// byte as the oracle does, nothing past the planned cache, and out within the
// SPEC section 4 bound (or the oracle's f32 rounding bound where the scales
// amplify).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <span>
#include <string>

#include "attention/oracle.h"
#include "attention_fuzz.h"

#include "rpa/attention/plan.h"

namespace rpa::attention::fuzz {

void CheckCall(TestBatch* batch, const Case& input, runtime::Executor* executor,
               bool must_succeed) {
  BatchTensors tensors = batch->tensors();
  tensors.cache = input.cache;
  const Status status =
      Attend(input.metadata, tensors, input.params, input.options, executor);
  Trace("status: " + status.ToString());
  if (!status.ok()) {
    if (must_succeed) Fail("a valid batch was rejected: " + status.ToString());
    if (status.code() != StatusCode::kInvalidArgument) {
      Fail("rejected with " + status.ToString() + ", not INVALID_ARGUMENT");
    }
    if (std::memcmp(batch->cache_bytes().data(), batch->original_cache.data(),
                    batch->original_cache.size()) != 0) {
      Fail("a rejected call changed the cache");
    }
    for (float value : batch->out) {
      if (!std::isnan(value)) Fail("a rejected call wrote out");
    }
    return;
  }
  testutil::OracleInput oracle = batch->original_oracle_input();
  oracle.metadata = input.metadata;
  oracle.params = input.params;
  const std::byte* original = oracle.cache.data;
  oracle.cache = input.cache;
  oracle.cache.data = const_cast<std::byte*>(original);
  const testutil::OracleOutput expected = testutil::RunOracle(oracle);
  // The cache: the oracle's view may cover fewer pages than the buffer; the
  // rest must be untouched.
  const std::size_t covered = expected.cache.size();
  const std::string cache_difference = testutil::DescribeCacheDifference(
      input.cache, batch->cache_bytes().first(covered), expected.cache);
  if (!cache_difference.empty()) Fail(cache_difference);
  if (std::memcmp(batch->cache_bytes().data() + covered,
                  batch->original_cache.data() + covered,
                  batch->original_cache.size() - covered) != 0) {
    Fail("the call wrote past the planned cache");
  }
  // A mutated batch may legitimately attend to cached NaNs (the builder's
  // fill for slots that were not cached); then only the writes are checked.
  const bool expected_nan =
      std::any_of(expected.out.begin(), expected.out.end(),
                  [](double value) { return std::isnan(value); });
  if (expected_nan) {
    if (must_succeed) Fail("the oracle saw a NaN in a valid batch");
    return;
  }
  if (tensors.out.size() != expected.out.size()) {
    Fail("out has " + std::to_string(tensors.out.size()) + " floats, oracle " +
         std::to_string(expected.out.size()));
  }
  // The SPEC 4 bound holds for inputs in its domain (uniform or standard
  // normal) with parameters that do not scale scores or values up. The
  // fuzzer also draws sm_scale, k_scale and v_scale up to ~4; where they
  // amplify, the scores reach a few hundred and f32 itself cannot meet that
  // bound, so out is held to the oracle's f32 rounding bound there.
  const AttentionParams& params = input.params;
  const bool amplified =
      std::fabs(params.sm_scale) * params.k_scale.value_or(1.0F) > 1.0F ||
      params.v_scale.value_or(1.0F) > 1.0F;
  const testutil::Comparison comparison = testutil::CompareOutputs(
      tensors.out, expected.out, input.metadata.shape.num_q_heads,
      input.metadata.shape.head_dim, /*tolerance=*/1e-4,
      amplified ? std::span<const double>(expected.f32_rounding_bound)
                : std::span<const double>());
  if (!comparison.ok) {
    Fail(std::to_string(comparison.num_bad) + " outputs off, first " +
         comparison.first_bad);
  }
}

}  // namespace rpa::attention::fuzz
