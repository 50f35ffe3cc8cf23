#pragma once

// Mutex: mutual exclusion that suspends the waiting fiber, not its thread.
//
// Ownership is handed over first come, first served: Unlock() with waiters
// gives the lock directly to the oldest waiter (no barging, no starvation).
// Not recursive. Hold it across suspensions freely (that is the point); an OS
// mutex held across a suspension stays valid too, because a started fiber
// never changes worker.
//
// Thread-safety: Lock/Unlock/TryLock from any thread or fiber; Unlock by the
// holder.
// Memory ordering: a critical section happens-before the next holder's.
//
// Example:
//   Mutex mu;
//   { MutexLock lock(mu); table.Insert(key, value); }

#include "rpa/runtime/internal/wait_queue.h"

namespace rpa::runtime {

class Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock();
  [[nodiscard]] bool TryLock();
  void Unlock();

  // std::lock_guard / std::unique_lock compatibility.
  void lock() { Lock(); }
  bool try_lock() { return TryLock(); }
  void unlock() { Unlock(); }

 private:
  internal::SpinLock lock_;
  bool held_ = false;
  internal::WaitQueue waiters_{&lock_};
};

// Scoped Lock()/Unlock().
class MutexLock {
 public:
  explicit MutexLock(Mutex& mu) : mu_(mu) { mu_.Lock(); }
  ~MutexLock() { mu_.Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

}  // namespace rpa::runtime
