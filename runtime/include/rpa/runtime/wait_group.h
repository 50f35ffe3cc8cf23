#pragma once

// WaitGroup: waits for a count of outstanding things to reach zero (Go's
// sync.WaitGroup, marl::WaitGroup).
//
// Add(n) before starting n things, Done() as each ends, Wait() until all did.
// Done() more often than Add() is a bug (RPA_CHECK).
//
// Thread-safety: every method from any thread or fiber.
// Memory ordering: everything before each Done() happens-before Wait() returns
// (the count's read-modify-writes are acq_rel: the Done that reaches zero, or
// Wait's acquire load of zero, reads the end of their release sequence).
// Cost: Add and Done are one atomic read-modify-write; only the Done that
// reaches zero while someone waits takes the lock (to wake the waiters). The
// group may be destroyed as soon as Wait() returns.
//
// Example:
//   WaitGroup wg;
//   for (int i = 0; i < 8; ++i) {
//     wg.Add(1);
//     executor->Spawn([&, i] { Work(i); wg.Done(); });
//   }
//   wg.Wait();

#include <atomic>
#include <cstdint>

#include "rpa/runtime/internal/wait_queue.h"

namespace rpa::runtime {

class WaitGroup {
 public:
  explicit WaitGroup(std::uint64_t initial = 0) : word_(initial) {}
  WaitGroup(const WaitGroup&) = delete;
  WaitGroup& operator=(const WaitGroup&) = delete;

  void Add(std::uint64_t n = 1);
  void Done();
  void Wait();
  std::uint64_t count() const;

 private:
  static constexpr std::uint64_t kWaitersBit = std::uint64_t{1} << 63;
  static constexpr std::uint64_t kCountMask = kWaitersBit - 1;

  std::atomic<std::uint64_t> word_;  // count | kWaitersBit (wait_group.cc)
  internal::SpinLock lock_;          // guards waiters_
  internal::WaitQueue waiters_{&lock_};
};

}  // namespace rpa::runtime
