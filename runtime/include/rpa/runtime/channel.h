#pragma once

// Channel<T>: a bounded FIFO between fibers (and threads).
//
// Send() waits while the channel is full, Receive() while it is empty; a
// waiting fiber is suspended, a waiting thread blocked. capacity 0 makes a
// rendezvous channel (Send waits for a receiver). Values are handed directly
// to a waiting receiver (no extra copy into the buffer), and waiting senders
// and receivers are served in arrival order.
//
// Close(): later Send()s fail with FailedPrecondition (the value is dropped);
// Receive() drains what is buffered, then returns std::nullopt; waiting
// senders fail and waiting receivers get std::nullopt.
//
// Thread-safety: every method from any thread or fiber, any number of
// senders and receivers.
// Memory ordering: everything before Send(v) happens-before the Receive()
// that returns v.
//
// Example:
//   Channel<PageId> to_swap(64);
//   executor->Spawn([&] { while (auto page = to_swap.Receive()) SwapOut(*page);
//   }); RPA_RETURN_IF_ERROR(to_swap.Send(page)); to_swap.Close();

#include <cstddef>
#include <memory>
#include <optional>
#include <utility>

#include "rpa/runtime/internal/wait_queue.h"
#include "rpa/runtime/status.h"

namespace rpa::runtime {

template <typename T>
class Channel {
 public:
  explicit Channel(std::size_t capacity)
      : capacity_(capacity),
        buffer_(capacity > 0 ? std::make_unique<std::optional<T>[]>(capacity)
                             : nullptr) {}
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // Waits for room (or a receiver). FailedPrecondition once closed.
  Status Send(T value) {
    lock_.lock();
    if (closed_) {
      lock_.unlock();
      return ClosedError();
    }
    if (internal::Waiter* receiver = receivers_.PopFront()) {
      static_cast<std::optional<T>*>(receiver->slot)->emplace(std::move(value));
      receiver->ok = true;
      internal::Wake(*receiver);
      lock_.unlock();
      return OkStatus();
    }
    if (size_ < capacity_) {
      PushLocked(std::move(value));
      lock_.unlock();
      return OkStatus();
    }
    internal::Waiter self;
    self.slot = &value;
    internal::Wait(self, senders_, lock_);
    return self.ok ? OkStatus() : ClosedError();
  }

  // Never waits: ResourceExhausted when full (then `value` is untouched),
  // FailedPrecondition when closed.
  Status TrySend(T&& value) {
    internal::SpinLockGuard guard(lock_);
    if (closed_) return ClosedError();
    if (internal::Waiter* receiver = receivers_.PopFront()) {
      static_cast<std::optional<T>*>(receiver->slot)->emplace(std::move(value));
      receiver->ok = true;
      internal::Wake(*receiver);
      return OkStatus();
    }
    if (size_ == capacity_) return ResourceExhaustedError("channel full");
    PushLocked(std::move(value));
    return OkStatus();
  }

  // Waits for a value; std::nullopt once closed and drained.
  std::optional<T> Receive() {
    lock_.lock();
    std::optional<T> out;
    if (TakeLocked(out) || closed_) {
      lock_.unlock();
      return out;
    }
    internal::Waiter self;
    self.slot = &out;
    internal::Wait(self, receivers_, lock_);
    return out;
  }

  // Never waits: std::nullopt when empty (or closed and drained).
  std::optional<T> TryReceive() {
    internal::SpinLockGuard guard(lock_);
    std::optional<T> out;
    TakeLocked(out);
    return out;
  }

  void Close() {
    internal::SpinLockGuard guard(lock_);
    closed_ = true;
    while (internal::Waiter* w = receivers_.PopFront()) {
      w->ok = false;
      internal::Wake(*w);
    }
    while (internal::Waiter* w = senders_.PopFront()) {
      w->ok = false;
      internal::Wake(*w);
    }
  }

  bool closed() const {
    internal::SpinLockGuard guard(lock_);
    return closed_;
  }
  std::size_t size() const {
    internal::SpinLockGuard guard(lock_);
    return size_;
  }
  std::size_t capacity() const { return capacity_; }

 private:
  static Status ClosedError() {
    return FailedPreconditionError("channel is closed");
  }

  void PushLocked(T&& value) {
    std::size_t tail = head_ + size_;
    if (tail >= capacity_) tail -= capacity_;
    buffer_[tail].emplace(std::move(value));
    ++size_;
  }

  // Takes the oldest value (buffer first, then a waiting sender's); refills
  // the buffer from the oldest waiting sender.
  bool TakeLocked(std::optional<T>& out) {
    if (size_ > 0) {
      out.emplace(std::move(*buffer_[head_]));
      buffer_[head_].reset();
      head_ = head_ + 1 == capacity_ ? 0 : head_ + 1;
      --size_;
      if (internal::Waiter* sender = senders_.PopFront()) {
        PushLocked(std::move(*static_cast<T*>(sender->slot)));
        sender->ok = true;
        internal::Wake(*sender);
      }
      return true;
    }
    if (internal::Waiter* sender = senders_.PopFront()) {  // capacity 0
      out.emplace(std::move(*static_cast<T*>(sender->slot)));
      sender->ok = true;
      internal::Wake(*sender);
      return true;
    }
    return false;
  }

  const std::size_t capacity_;
  std::unique_ptr<std::optional<T>[]> buffer_;
  std::size_t head_ = 0;
  std::size_t size_ = 0;
  bool closed_ = false;
  mutable internal::SpinLock lock_;
  internal::WaitQueue senders_{&lock_};
  internal::WaitQueue receivers_{&lock_};
};

}  // namespace rpa::runtime
