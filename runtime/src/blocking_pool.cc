#include "blocking_pool.h"

namespace rpa::runtime::internal {

BlockingPool::BlockingPool(int num_threads) {
  threads_.reserve(static_cast<std::size_t>(num_threads));
  for (int i = 0; i < num_threads; ++i)
    threads_.emplace_back([this] { ThreadMain(); });
}

BlockingPool::~BlockingPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& thread : threads_) thread.join();
}

void BlockingPool::Submit(BlockingJob* job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    job->next = nullptr;
    if (tail_ != nullptr) {
      tail_->next = job;
    } else {
      head_ = job;
    }
    tail_ = job;
  }
  cv_.notify_one();
}

void BlockingPool::ThreadMain() {
  for (;;) {
    BlockingJob* job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return head_ != nullptr || stop_; });
      if (head_ == nullptr) return;  // stopping and drained
      job = head_;
      head_ = job->next;
      if (head_ == nullptr) tail_ = nullptr;
    }
    job->run(job);
    // The job lives on the suspended fiber's stack: Wake reads the waiter
    // before the fiber can resume and never touches it after.
    Wake(job->waiter);
  }
}

}  // namespace rpa::runtime::internal
