#pragma once

// The fence every lock-free structure of rpa uses, and the hook that lets
// that code be instantiated with a deterministic atomic type in tests
// (tests/support/deterministic_schedule.h): an atomic type may define a
// static ThreadFence, which then becomes a scheduling point.
//
// Thread-safety: stateless.

#include <atomic>
#include <cstdint>

#include "rpa/runtime/sanitizers.h"

namespace rpa::runtime::internal {

// A full (store->load) fence, for the Dekker-style pairs of the Chase-Lev
// deques and the executor's wake-up protocol. clang lowers a seq_cst fence to
// `mfence`, which costs ~20 ns on the AMD EPYC VMs we measured; a locked RMW
// of the stack top is an equally strong barrier for ordinary write-back memory
// and costs ~2.5 ns (gcc emits exactly this). Weaker fences are compiler
// barriers on x86-64 (TSO). ThreadSanitizer builds use the same instructions:
// TSan does not model fences (gcc warns about atomic_thread_fence under
// -fsanitize=thread), and no rpa code relies on a fence for happens-before,
// only for store->load ordering between atomics, so TSan still sees every
// release/acquire edge that carries data and no extra edge that could hide a
// race.
inline void ThreadFence(std::memory_order order) noexcept {
#if defined(__x86_64__)
  if (order == std::memory_order_seq_cst) {
    asm volatile("lock orq $0, (%%rsp)" ::: "memory", "cc");
    return;
  }
  asm volatile("" ::: "memory");
#else
#if RPA_HAS_TSAN && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wtsan"
#endif
  std::atomic_thread_fence(order);
#if RPA_HAS_TSAN && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif
}

inline void SeqCstFence() noexcept { ThreadFence(std::memory_order_seq_cst); }

template <template <typename> class Atom>
struct AtomicTraits {
  static void ThreadFence(std::memory_order order) noexcept {
    if constexpr (requires { Atom<std::uint32_t>::ThreadFence(order); }) {
      Atom<std::uint32_t>::ThreadFence(order);
    } else {
      ::rpa::runtime::internal::ThreadFence(order);
    }
  }
};

}  // namespace rpa::runtime::internal
