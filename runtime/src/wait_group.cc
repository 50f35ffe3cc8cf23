#include "rpa/runtime/wait_group.h"

#include "rpa/runtime/check.h"

namespace rpa::runtime {

// One atomic word: the count, and a bit saying that a waiter queued itself.
// Add and every Done but the last are one read-modify-write each; only the
// Done that reaches zero with the waiters bit set takes the lock, to wake the
// waiters. Without the bit it touches nothing more, because the group may be
// destroyed as soon as a Wait() that saw zero returns.
//
// No wake-up is lost: a waiter sets the bit with a CAS that also checks that
// the count is not zero, under the lock, and queues itself under that lock
// (released only after it is switched out). So the last Done's decrement
// either comes before the CAS (which fails, sees zero, and the waiter returns)
// or after it (it sees the bit and takes the lock, which it gets only once
// the waiter is queued).
void WaitGroup::Add(std::uint64_t n) {
  const std::uint64_t before = word_.fetch_add(n, std::memory_order_acq_rel);
  RPA_CHECK_MSG(((before & kCountMask) + n) <= kCountMask,
                "WaitGroup::Add() overflows the count");
}

void WaitGroup::Done() {
  const std::uint64_t before = word_.fetch_sub(1, std::memory_order_acq_rel);
  RPA_CHECK_MSG((before & kCountMask) > 0,
                "WaitGroup::Done() called more often than Add()");
  if (before != (kWaitersBit | 1)) return;
  internal::SpinLockGuard guard(lock_);
  word_.fetch_and(~kWaitersBit, std::memory_order_relaxed);
  while (internal::Waiter* waiter = waiters_.PopFront())
    internal::Wake(*waiter);
}

void WaitGroup::Wait() {
  if ((word_.load(std::memory_order_acquire) & kCountMask) == 0) return;
  lock_.lock();
  std::uint64_t word = word_.load(std::memory_order_acquire);
  for (;;) {
    if ((word & kCountMask) == 0) {
      lock_.unlock();
      return;
    }
    if ((word & kWaitersBit) != 0 ||
        word_.compare_exchange_weak(word, word | kWaitersBit,
                                    std::memory_order_acq_rel,
                                    std::memory_order_acquire)) {
      break;
    }
  }
  internal::Waiter self;
  internal::Wait(self, waiters_, lock_);
}

std::uint64_t WaitGroup::count() const {
  return word_.load(std::memory_order_acquire) & kCountMask;
}

}  // namespace rpa::runtime
