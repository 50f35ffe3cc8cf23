#pragma once

// BlockingPool: a few threads that run BlockingJobs (RunBlocking, and file I/O
// on the kThreads backend) so that a worker never blocks in a syscall.
//
// Thread-safety: Submit from any thread. Jobs run in FIFO order.
// Memory ordering: Submit happens-before the job runs (mutex); the job's
// writes happen-before its fiber resumes (the wake-up goes through the
// worker's inbox: release push, acquire take).

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "rpa/runtime/blocking.h"

namespace rpa::runtime::internal {

class BlockingPool {
 public:
  explicit BlockingPool(int num_threads);
  ~BlockingPool();  // runs the queued jobs, then joins
  BlockingPool(const BlockingPool&) = delete;
  BlockingPool& operator=(const BlockingPool&) = delete;

  void Submit(BlockingJob* job);

 private:
  void ThreadMain();

  std::mutex mu_;
  std::condition_variable cv_;
  BlockingJob* head_ = nullptr;
  BlockingJob* tail_ = nullptr;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace rpa::runtime::internal
