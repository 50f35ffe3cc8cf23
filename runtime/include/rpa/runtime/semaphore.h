#pragma once

// Semaphore: a counting semaphore whose units can be anything, bytes included
// (a DMA semaphore: the engine Release()s the bytes it moved, the consumer
// Acquire()s the bytes it needs).
//
// Acquire(n) waits until n units are available and takes them. Waiters are
// served first come, first served: a large request at the head of the queue
// is not overtaken by smaller ones behind it (no starvation of big
// transfers), and TryAcquire fails while anyone waits.
//
// Thread-safety: every method from any thread or fiber.
// Memory ordering: everything before a Release() happens-before the Acquire()
// that takes those units.
//
// Example (a DMA completion semaphore counting bytes):
//   Semaphore landed(0);
//   executor->Spawn([&] { CopyPage(dst, src); landed.Release(page_bytes); });
//   landed.Acquire(page_bytes);   // the page is in place

#include <cstdint>

#include "rpa/runtime/internal/wait_queue.h"

namespace rpa::runtime {

class Semaphore {
 public:
  explicit Semaphore(std::uint64_t initial_units) : units_(initial_units) {}
  Semaphore(const Semaphore&) = delete;
  Semaphore& operator=(const Semaphore&) = delete;

  void Acquire(std::uint64_t units = 1);
  [[nodiscard]] bool TryAcquire(std::uint64_t units = 1);
  void Release(std::uint64_t units = 1);
  // Units available now (a snapshot).
  std::uint64_t available() const;

 private:
  mutable internal::SpinLock lock_;
  std::uint64_t units_;
  internal::WaitQueue waiters_{&lock_};
};

}  // namespace rpa::runtime
