#include "rpa/runtime/semaphore.h"

namespace rpa::runtime {

void Semaphore::Acquire(std::uint64_t units) {
  lock_.lock();
  // FIFO: nobody overtakes a waiter, even when the units would fit.
  if (waiters_.empty() && units_ >= units) {
    units_ -= units;
    lock_.unlock();
    return;
  }
  internal::Waiter self;
  self.amount = units;
  internal::Wait(self, waiters_, lock_);  // Release() took our units for us
}

bool Semaphore::TryAcquire(std::uint64_t units) {
  internal::SpinLockGuard guard(lock_);
  if (!waiters_.empty() || units_ < units) return false;
  units_ -= units;
  return true;
}

void Semaphore::Release(std::uint64_t units) {
  internal::SpinLockGuard guard(lock_);
  units_ += units;
  // Direct hand-off to the waiters at the head whose requests now fit.
  while (!waiters_.empty() && waiters_.front()->amount <= units_) {
    internal::Waiter* waiter = waiters_.PopFront();
    units_ -= waiter->amount;
    internal::Wake(*waiter);
  }
}

std::uint64_t Semaphore::available() const {
  internal::SpinLockGuard guard(lock_);
  return units_;
}

}  // namespace rpa::runtime
