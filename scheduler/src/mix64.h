#pragma once
// SplitMix64 (Steele, Lea and Flood), the 64-bit mixing every seeded or
// hashed value in scheduler/ is built from: one place, so the demo, the
// workloads, the synthetic model and the prefix cache agree on it.
#include <cstdint>

namespace rpa::scheduler::internal {

// SplitMix64's finalizer: bijective, every input bit affects every output
// bit.
constexpr std::uint64_t Mix64Finalize(std::uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// One SplitMix64 output for state x: the finalizer of x + the golden gamma.
constexpr std::uint64_t Mix64(std::uint64_t x) {
  return Mix64Finalize(x + 0x9e3779b97f4a7c15ULL);
}

}  // namespace rpa::scheduler::internal
