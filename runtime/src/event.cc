#include "rpa/runtime/event.h"

namespace rpa::runtime {

void Event::Set() {
  internal::SpinLockGuard guard(lock_);
  set_ = true;
  while (internal::Waiter* waiter = waiters_.PopFront())
    internal::Wake(*waiter);
}

void Event::Reset() {
  internal::SpinLockGuard guard(lock_);
  set_ = false;
}

bool Event::IsSet() const {
  internal::SpinLockGuard guard(lock_);
  return set_;
}

void Event::Wait() {
  lock_.lock();
  if (set_) {
    lock_.unlock();
    return;
  }
  internal::Waiter self;
  internal::Wait(self, waiters_, lock_);
}

}  // namespace rpa::runtime
