#pragma once

// SpinLock: the small lock inside every cooperative primitive (not for users).
//
// Why not std::mutex: a primitive's lock is taken by a fiber before it parks
// and released by the worker *after* the fiber's context is saved (see
// wait_queue.h), i.e. in another fiber's context on the same thread. That is
// fine for plain atomics, but std::mutex (and TSan's model of it) requires the
// locking context to unlock. Critical sections are a few dozen instructions;
// contended waiters spin briefly, then yield the thread, so a preempted holder
// (2 cores shared with other processes) does not burn a whole time slice.
//
// Thread-safety: lock()/unlock() from any thread or fiber.
// Memory ordering: lock() is acquire, unlock() is release (a critical section
// happens-before the next one).

#include <atomic>
#include <thread>

namespace rpa::runtime::internal {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

class SpinLock {
 public:
  SpinLock() = default;
  SpinLock(const SpinLock&) = delete;
  SpinLock& operator=(const SpinLock&) = delete;

  void lock() {
    if (!locked_.exchange(true, std::memory_order_acquire)) return;
    LockSlow();
  }
  bool try_lock() {
    return !locked_.load(std::memory_order_relaxed) &&
           !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() { locked_.store(false, std::memory_order_release); }

 private:
  void LockSlow() {
    for (int spins = 0;; ++spins) {
      // Test before test-and-set: spin on a shared cache line, not on RMWs.
      while (locked_.load(std::memory_order_relaxed)) {
        if (spins < 64) {
          CpuRelax();
        } else {
          std::this_thread::yield();
        }
        ++spins;
      }
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
    }
  }

  std::atomic<bool> locked_{false};
};

// std::lock_guard without <mutex>.
class SpinLockGuard {
 public:
  explicit SpinLockGuard(SpinLock& lock) : lock_(lock) { lock_.lock(); }
  ~SpinLockGuard() { lock_.unlock(); }
  SpinLockGuard(const SpinLockGuard&) = delete;
  SpinLockGuard& operator=(const SpinLockGuard&) = delete;

 private:
  SpinLock& lock_;
};

}  // namespace rpa::runtime::internal
