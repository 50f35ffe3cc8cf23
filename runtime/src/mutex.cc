#include "rpa/runtime/mutex.h"

#include "rpa/runtime/check.h"

namespace rpa::runtime {

void Mutex::Lock() {
  lock_.lock();
  if (!held_) {
    held_ = true;
    lock_.unlock();
    return;
  }
  internal::Waiter self;
  internal::Wait(self, waiters_, lock_);  // Unlock() handed us the mutex
}

bool Mutex::TryLock() {
  internal::SpinLockGuard guard(lock_);
  if (held_) return false;
  held_ = true;
  return true;
}

void Mutex::Unlock() {
  internal::SpinLockGuard guard(lock_);
  RPA_CHECK_MSG(held_, "Mutex::Unlock() of an unlocked mutex");
  if (internal::Waiter* waiter = waiters_.PopFront()) {
    internal::Wake(*waiter);  // ownership passes directly: held_ stays true
    return;
  }
  held_ = false;
}

}  // namespace rpa::runtime
