// Built with -mavx2 -mfma when RPA_SCHEDULER_AVX2 is defined (see
// scheduler/CMakeLists.txt); the functions are only called after
// HaveAvx2Fma() checked the CPU.

#include "roofline_kernels.h"

#if RPA_SCHEDULER_AVX2
#include <immintrin.h>
#endif

#include "rpa/runtime/check.h"

namespace rpa::scheduler::internal {

#if RPA_SCHEDULER_AVX2

bool HaveAvx2Fma() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

std::uint64_t ReadSumAvx2(const std::uint64_t* data, std::size_t count) {
  // Four independent accumulators, 8 loads (256 bytes) per iteration: the
  // adds have 1-cycle latency, so the loop waits only for memory.
  __m256i a0 = _mm256_setzero_si256();
  __m256i a1 = _mm256_setzero_si256();
  __m256i a2 = _mm256_setzero_si256();
  __m256i a3 = _mm256_setzero_si256();
  for (std::size_t i = 0; i < count; i += 32) {
    const auto* p = reinterpret_cast<const __m256i*>(data + i);
    a0 = _mm256_add_epi64(a0, _mm256_load_si256(p + 0));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256(p + 1));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256(p + 2));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256(p + 3));
    a0 = _mm256_add_epi64(a0, _mm256_load_si256(p + 4));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256(p + 5));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256(p + 6));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256(p + 7));
  }
  __m256i sum =
      _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  alignas(32) std::uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

float FmaChainsAvx2(std::uint64_t iterations, float seed) {
  // 12 chains: Zen 3 and recent Intel cores issue 2 FMAs per cycle with a
  // 4-cycle latency, so at least 8 independent chains are needed to keep
  // both ports busy; 12 leaves headroom and fits in 16 ymm registers with
  // the two constants.
  const __m256 mul = _mm256_set1_ps(0.999999F);
  const __m256 add = _mm256_set1_ps(1e-7F);
  __m256 c0 = _mm256_set1_ps(seed + 0.0F);
  __m256 c1 = _mm256_set1_ps(seed + 0.1F);
  __m256 c2 = _mm256_set1_ps(seed + 0.2F);
  __m256 c3 = _mm256_set1_ps(seed + 0.3F);
  __m256 c4 = _mm256_set1_ps(seed + 0.4F);
  __m256 c5 = _mm256_set1_ps(seed + 0.5F);
  __m256 c6 = _mm256_set1_ps(seed + 0.6F);
  __m256 c7 = _mm256_set1_ps(seed + 0.7F);
  __m256 c8 = _mm256_set1_ps(seed + 0.8F);
  __m256 c9 = _mm256_set1_ps(seed + 0.9F);
  __m256 c10 = _mm256_set1_ps(seed + 1.0F);
  __m256 c11 = _mm256_set1_ps(seed + 1.1F);
  for (std::uint64_t i = 0; i < iterations; ++i) {
    c0 = _mm256_fmadd_ps(c0, mul, add);
    c1 = _mm256_fmadd_ps(c1, mul, add);
    c2 = _mm256_fmadd_ps(c2, mul, add);
    c3 = _mm256_fmadd_ps(c3, mul, add);
    c4 = _mm256_fmadd_ps(c4, mul, add);
    c5 = _mm256_fmadd_ps(c5, mul, add);
    c6 = _mm256_fmadd_ps(c6, mul, add);
    c7 = _mm256_fmadd_ps(c7, mul, add);
    c8 = _mm256_fmadd_ps(c8, mul, add);
    c9 = _mm256_fmadd_ps(c9, mul, add);
    c10 = _mm256_fmadd_ps(c10, mul, add);
    c11 = _mm256_fmadd_ps(c11, mul, add);
  }
  __m256 s = _mm256_add_ps(
      _mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
      _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)));
  s = _mm256_add_ps(
      s, _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11)));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  float total = 0;
  for (float lane : lanes) total += lane;
  return total;
}

#else  // !RPA_SCHEDULER_AVX2

bool HaveAvx2Fma() { return false; }

std::uint64_t ReadSumAvx2(const std::uint64_t* /*data*/,
                          std::size_t /*count*/) {
  RPA_CHECK_MSG(false, "ReadSumAvx2 called in a build without AVX2");
  return 0;
}

float FmaChainsAvx2(std::uint64_t /*iterations*/, float /*seed*/) {
  RPA_CHECK_MSG(false, "FmaChainsAvx2 called in a build without AVX2");
  return 0;
}

#endif

}  // namespace rpa::scheduler::internal
