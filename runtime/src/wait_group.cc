#include "rpa/runtime/wait_group.h"

#include "rpa/runtime/check.h"

namespace rpa::runtime {

void WaitGroup::Add(std::uint64_t n) {
  internal::SpinLockGuard guard(lock_);
  count_ += n;
}

void WaitGroup::Done() {
  internal::SpinLockGuard guard(lock_);
  RPA_CHECK_MSG(count_ > 0, "WaitGroup::Done() called more often than Add()");
  if (--count_ == 0) {
    while (internal::Waiter* waiter = waiters_.PopFront())
      internal::Wake(*waiter);
  }
}

void WaitGroup::Wait() {
  lock_.lock();
  if (count_ == 0) {
    lock_.unlock();
    return;
  }
  internal::Waiter self;
  internal::Wait(self, waiters_, lock_);
}

std::uint64_t WaitGroup::count() const {
  internal::SpinLockGuard guard(lock_);
  return count_;
}

}  // namespace rpa::runtime
