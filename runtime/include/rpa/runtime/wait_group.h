#pragma once

// WaitGroup: waits for a count of outstanding things to reach zero (Go's
// sync.WaitGroup, marl::WaitGroup).
//
// Add(n) before starting n things, Done() as each ends, Wait() until all did.
// Done() more often than Add() is a bug (RPA_CHECK).
//
// Thread-safety: every method from any thread or fiber.
// Memory ordering: everything before each Done() happens-before Wait() returns.
//
// Example:
//   WaitGroup wg;
//   for (int i = 0; i < 8; ++i) {
//     wg.Add(1);
//     executor->Spawn([&, i] { Work(i); wg.Done(); });
//   }
//   wg.Wait();

#include <cstdint>

#include "rpa/runtime/internal/wait_queue.h"

namespace rpa::runtime {

class WaitGroup {
 public:
  explicit WaitGroup(std::uint64_t initial = 0) : count_(initial) {}
  WaitGroup(const WaitGroup&) = delete;
  WaitGroup& operator=(const WaitGroup&) = delete;

  void Add(std::uint64_t n = 1);
  void Done();
  void Wait();
  std::uint64_t count() const;

 private:
  mutable internal::SpinLock lock_;
  std::uint64_t count_;
  internal::WaitQueue waiters_{&lock_};
};

}  // namespace rpa::runtime
