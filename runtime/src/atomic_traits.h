#pragma once

// The fence hook that lets lock-free code be instantiated with a
// deterministic atomic type in tests (tests/support/deterministic_schedule.h):
// an atomic type may define a static ThreadFence, which then becomes a
// scheduling point.

#include <atomic>
#include <cstdint>

#include "rpa/runtime/sanitizers.h"

namespace rpa::runtime::internal {

// A sequentially consistent fence (the store-load barrier of the Dekker
// pairs in the wake-up protocol). On x86 a locked RMW on the stack is
// cheaper than mfence and just as strong for ordinary memory. TSan does not
// model fences (gcc refuses them under -fsanitize=thread): there a seq_cst
// RMW on one shared atomic stands in, which TSan understands.
inline void SeqCstFence() noexcept {
#if RPA_HAS_TSAN
  static std::atomic<std::uint32_t> tsan_fence_word{0};
  tsan_fence_word.fetch_add(0, std::memory_order_seq_cst);
#elif defined(__x86_64__)
  asm volatile("lock orq $0, (%%rsp)" ::: "memory", "cc");
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

template <template <typename> class Atom>
struct AtomicTraits {
  static void ThreadFence(std::memory_order order) noexcept {
    if constexpr (requires { Atom<std::uint32_t>::ThreadFence(order); }) {
      Atom<std::uint32_t>::ThreadFence(order);
    } else if (order == std::memory_order_seq_cst) {
      SeqCstFence();
    } else {
#if RPA_HAS_TSAN
      SeqCstFence();  // stronger than asked; TSan has no fences
#else
      std::atomic_thread_fence(order);
#endif
    }
  }
};

}  // namespace rpa::runtime::internal
