#pragma once

// The inner loops of the roofline probe. roofline_avx2.cc is compiled with
// -mavx2 -mfma and roofline_avx512.cc with -mavx512f (unless RPA_PORTABLE, or
// the compiler lacks the flags); each is only called after a CPUID check.
// Private to scheduler/.

#include <cstddef>
#include <cstdint>

namespace rpa::scheduler::internal {

// True when the build has the AVX2 kernels and this CPU runs them.
bool HaveAvx2Fma();

// Sums `count` 64-bit words (count a multiple of 32) with 8-wide vector adds.
std::uint64_t ReadSumAvx2(const std::uint64_t* data, std::size_t count);
// 12 chains x 8 lanes of `iterations` dependent FMAs; returns a value that
// depends on all of them (so nothing is optimised away).
float FmaChainsAvx2(std::uint64_t iterations, float seed);

// True when the build has the AVX-512 loop and this CPU runs it.
bool HaveAvx512F();
// 12 chains x 16 lanes (zmm) of `iterations` dependent FMAs.
float FmaChainsAvx512(std::uint64_t iterations, float seed);

// Portable stand-ins (same contracts).
std::uint64_t ReadSumPortable(const std::uint64_t* data, std::size_t count);
float FmaChainsPortable(std::uint64_t iterations, float seed);
// FLOPs one FmaChains* call performs with `lanes` f32 lanes per FMA (1 for
// the portable loop).
double FmaChainsFlops(std::uint64_t iterations, int lanes);

}  // namespace rpa::scheduler::internal
