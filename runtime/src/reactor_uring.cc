// UringReactor: timers, file I/O and wake-ups on one io_uring per worker.

#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <string>

#include "fiber.h"
#include "reactor.h"
#include "worker.h"

#include "rpa/runtime/check.h"

namespace rpa::runtime::internal {
namespace {

// Unsubmitted SQEs beyond this are submitted right away rather than at the
// end of the scheduling round.
constexpr unsigned kSubmitBatch = 32;

Status RingError(const char* what, int negative_errno) {
  return UnavailableError(std::string(what) + ": " +
                          std::strerror(-negative_errno));
}

class UringReactor final : public Reactor {
 public:
  explicit UringReactor(Worker* worker) : worker_(worker) {}

  Status Init(std::uint32_t entries) {
    io_uring_params params;
    std::memset(&params, 0, sizeof(params));
    params.flags = IORING_SETUP_CLAMP;
    // No COOP_TASKRUN / DEFER_TASKRUN: completions must show up in the CQ
    // without a syscall, because spinning workers only peek at it.
    const int rc = io_uring_queue_init_params(entries, &ring_, &params);
    if (rc < 0) return RingError("io_uring_queue_init_params", rc);
    ring_ok_ = true;
    // One CQ slot stays free for the eventfd read that wakes a parked worker.
    max_in_flight_ = params.cq_entries - 1;
    event_fd_ = ::eventfd(0, EFD_CLOEXEC);
    if (event_fd_ < 0) return RingError("eventfd", -errno);
    return OkStatus();
  }

  ~UringReactor() override {
    if (ring_ok_) io_uring_queue_exit(&ring_);
    if (event_fd_ >= 0) ::close(event_fd_);
  }

  TimePoint Now() const override { return Clock::now(); }

  bool TryAdd(ReactorOp* op) override {
    if (in_flight_ >= max_in_flight_) return false;
    io_uring_sqe* sqe = GetSqe();
    switch (op->kind) {
      case ReactorOp::Kind::kTimer: {
        const auto ns = op->deadline.time_since_epoch().count();
        auto* ts = new (op->kernel_timespec) __kernel_timespec;
        ts->tv_sec = ns / 1'000'000'000;
        ts->tv_nsec = ns % 1'000'000'000;
        // Absolute CLOCK_MONOTONIC, which is what steady_clock reads.
        io_uring_prep_timeout(sqe, ts, 0, IORING_TIMEOUT_ABS);
        break;
      }
      case ReactorOp::Kind::kRead:
        io_uring_prep_read(sqe, op->fd, op->buffer, op->bytes, op->offset);
        break;
      case ReactorOp::Kind::kWrite:
        io_uring_prep_write(sqe, op->fd, op->buffer, op->bytes, op->offset);
        break;
    }
    io_uring_sqe_set_data(sqe, op);
    ++in_flight_;
    if (unsubmitted_ >= kSubmitBatch) Submit();
    return true;
  }

  void WaitForSlot(Fiber* fiber) override { slot_waiters_.PushBack(fiber); }
  bool supports_file_io() const override { return true; }

  bool Poll() override {
    Submit();
    return Harvest();
  }

  void Park() override {
    if (!wake_armed_) {
      io_uring_sqe* sqe = GetSqe();
      io_uring_prep_read(sqe, event_fd_, &wake_buffer_, sizeof(wake_buffer_),
                         static_cast<std::uint64_t>(-1));
      io_uring_sqe_set_data(sqe, &wake_buffer_);
      wake_armed_ = true;
    }
    if (io_uring_cq_ready(&ring_) > 0) {
      Submit();
      return;
    }
    // Submits the batch and sleeps in the kernel until one CQE: a timer, an
    // I/O completion, or the eventfd read that Wake() completes.
    const int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc >= 0) unsubmitted_ = 0;
  }

  void Wake() override {
    const std::uint64_t one = 1;
    // EAGAIN (counter saturated) still leaves the eventfd readable.
    [[maybe_unused]] const ssize_t n = ::write(event_fd_, &one, sizeof(one));
  }

  std::size_t pending() const override { return in_flight_; }

 private:
  io_uring_sqe* GetSqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {  // the SQ is full of unsubmitted entries
      Submit();
      sqe = io_uring_get_sqe(&ring_);
      RPA_CHECK_MSG(sqe != nullptr, "io_uring SQ full after submit");
    }
    ++unsubmitted_;
    return sqe;
  }

  void Submit() {
    if (unsubmitted_ == 0) return;
    int rc;
    do {
      rc = io_uring_submit(&ring_);
    } while (rc == -EINTR);
    // -EBUSY / -EAGAIN: the kernel wants completions reaped first; the SQEs
    // stay queued and go with the next round.
    if (rc >= 0) unsubmitted_ = 0;
  }

  bool Harvest() {
    bool woke = false;
    unsigned head;
    unsigned count = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++count;
      void* data = io_uring_cqe_get_data(cqe);
      if (data == &wake_buffer_) {
        wake_armed_ = false;
        continue;
      }
      auto* op = static_cast<ReactorOp*>(data);
      op->result = cqe->res;
      --in_flight_;
      worker_->MakeReady(op->fiber);
      woke = true;
      if (Fiber* waiter = slot_waiters_.PopFront()) worker_->MakeReady(waiter);
    }
    if (count > 0) io_uring_cq_advance(&ring_, count);
    return woke;
  }

  Worker* const worker_;
  io_uring ring_;
  bool ring_ok_ = false;
  int event_fd_ = -1;
  std::uint64_t wake_buffer_ = 0;
  bool wake_armed_ = false;
  unsigned max_in_flight_ = 0;
  unsigned in_flight_ = 0;
  unsigned unsubmitted_ = 0;
  FiberList slot_waiters_;
};

}  // namespace

StatusOr<std::unique_ptr<Reactor>> CreateUringReactor(Worker* worker,
                                                      std::uint32_t entries) {
  auto reactor = std::make_unique<UringReactor>(worker);
  RPA_RETURN_IF_ERROR(reactor->Init(entries));
  return std::unique_ptr<Reactor>(std::move(reactor));
}

Status ProbeIoUring() {
  io_uring ring;
  const int rc = io_uring_queue_init(2, &ring, 0);
  if (rc < 0) return RingError("io_uring_queue_init", rc);
  io_uring_queue_exit(&ring);
  return OkStatus();
}

}  // namespace rpa::runtime::internal
