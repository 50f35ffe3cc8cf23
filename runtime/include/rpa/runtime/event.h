#pragma once

// Event: a manual-reset flag that fibers (and threads) wait on.
//
// Set() wakes every waiter and keeps the event set until Reset(); Wait() on a
// set event returns at once. A fiber waiting suspends (its worker runs other
// fibers); a plain thread waiting blocks.
//
// Thread-safety: every method from any thread or fiber. The event may be
// destroyed as soon as a Wait() (or an IsSet() that returned true) returned,
// even while the Set() that released it is still returning: every method
// finishes its last access under the internal lock.
// Memory ordering: everything before Set() happens-before a Wait() that
// returns because of it (and an IsSet() that returns true).
//
// Example:
//   Event ready;
//   executor->Spawn([&] { LoadWeights(); ready.Set(); });
//   executor->Spawn([&] { ready.Wait(); Serve(); });

#include "rpa/runtime/internal/wait_queue.h"

namespace rpa::runtime {

class Event {
 public:
  Event() = default;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void Set();
  void Reset();
  bool IsSet() const;
  void Wait();

 private:
  mutable internal::SpinLock lock_;
  bool set_ = false;
  internal::WaitQueue waiters_{&lock_};
};

}  // namespace rpa::runtime
