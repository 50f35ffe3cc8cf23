// Built with -mavx512f when RPA_SCHEDULER_AVX512 is defined (see
// scheduler/CMakeLists.txt); FmaChainsAvx512 is only called after
// HaveAvx512F() checked the CPU.

#include "roofline_kernels.h"

#if RPA_SCHEDULER_AVX512
#include <immintrin.h>
#endif

#include "rpa/runtime/check.h"

namespace rpa::scheduler::internal {

#if RPA_SCHEDULER_AVX512

bool HaveAvx512F() { return __builtin_cpu_supports("avx512f"); }

float FmaChainsAvx512(std::uint64_t iterations, float seed) {
  // 12 chains, as FmaChainsAvx2: enough for 2 zmm FMA pipes of 4-cycle
  // latency, with headroom; 32 zmm registers hold them easily.
  const __m512 mul = _mm512_set1_ps(0.999999F);
  const __m512 add = _mm512_set1_ps(1e-7F);
  __m512 c[12];
  for (int i = 0; i < 12; ++i) {
    c[i] = _mm512_set1_ps(seed + 0.1F * static_cast<float>(i));
  }
  for (std::uint64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) c[i] = _mm512_fmadd_ps(c[i], mul, add);
  }
  __m512 sum = c[0];
  for (int i = 1; i < 12; ++i) sum = _mm512_add_ps(sum, c[i]);
  // Stored and summed in scalars: gcc 12's _mm512_reduce_add_ps trips its own
  // -Wuninitialized (an undefined vector inside the intrinsic).
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sum);
  float total = 0;
  for (float lane : lanes) total += lane;
  return total;
}

#else  // !RPA_SCHEDULER_AVX512

bool HaveAvx512F() { return false; }

float FmaChainsAvx512(std::uint64_t /*iterations*/, float /*seed*/) {
  RPA_CHECK_MSG(false, "FmaChainsAvx512 called in a build without AVX-512");
  return 0;
}

#endif

}  // namespace rpa::scheduler::internal
