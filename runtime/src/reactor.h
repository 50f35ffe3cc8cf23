#pragma once

// Reactor: one per worker; where a worker's fibers wait for time and I/O, and
// where an idle worker parks.
//
//   UringReactor (io_uring, the default): timers are IORING_OP_TIMEOUT SQEs
//     (absolute CLOCK_MONOTONIC deadlines), file I/O is IORING_OP_READ/WRITE;
//     SQEs are batched and submitted at most once per scheduling round
//     (Poll) or before parking. In-flight operations never exceed the
//     completion queue (no CQE is ever dropped): a submitter beyond that gets
//     `false` from TryAdd* and waits for a slot (WaitForSlot), i.e. a full
//     ring is back-pressure. Parking is io_uring_submit_and_wait with a read
//     of the worker's eventfd armed: Wake() from any thread writes the eventfd,
//     the read completes and the worker returns from the kernel.
//   TimerHeapReactor (the kThreads fallback, and virtual time): timers in a
//     binary heap ordered by (deadline, sequence); parking is a condition
//     variable wait until the earliest deadline; file I/O goes to the blocking
//     pool (done by the caller, not here). In virtual time, Now() is a counter
//     that only AdvanceToNextTimer() moves.
//
// Completions make fibers ready through Worker::MakeReady (owner thread).
//
// Thread-safety: every method is for the owning worker's thread, except
// Wake() and Now() (any thread).

#include <cstddef>
#include <cstdint>
#include <memory>

#include "rpa/runtime/clock.h"
#include "rpa/runtime/executor.h"
#include "rpa/runtime/status.h"

namespace rpa::runtime::internal {

class Fiber;
class Worker;

// One operation of a fiber: lives on the fiber's stack until it completes.
struct ReactorOp {
  enum class Kind : std::uint8_t { kTimer, kRead, kWrite };
  Kind kind = Kind::kTimer;
  Fiber* fiber = nullptr;
  TimePoint deadline{};  // kTimer
  int fd = -1;           // kRead / kWrite
  void* buffer = nullptr;
  std::uint32_t bytes = 0;
  std::uint64_t offset = 0;
  alignas(8) unsigned char kernel_timespec[16] =
      {};                   // read by the kernel at submission
  std::int32_t result = 0;  // CQE res: bytes or -errno
};

class Reactor {
 public:
  virtual ~Reactor() = default;

  virtual TimePoint Now() const = 0;
  // Queues `op`; its fiber is made ready when it completes. False when the
  // ring is at its in-flight limit (call WaitForSlot, then retry).
  virtual bool TryAdd(ReactorOp* op) = 0;
  // Registers `fiber` to be made ready when an in-flight slot frees up.
  virtual void WaitForSlot(Fiber* fiber) = 0;
  virtual bool supports_file_io() const = 0;
  // Submits queued operations, harvests completions and expired timers.
  // True if a fiber became ready.
  virtual bool Poll() = 0;
  // Blocks until a completion, an expired timer or Wake() (a Wake() that
  // came before Park() is not lost: it makes Park() return at once).
  virtual void Park() = 0;
  virtual void Wake() = 0;
  // Operations (timers included) in flight or queued.
  virtual std::size_t pending() const = 0;
  // Virtual time: jumps to the earliest timer and fires it (and all timers
  // at the same deadline); false when there is none.
  virtual bool AdvanceToNextTimer() { return false; }
};

// io_uring, or Unavailable (the kernel or a seccomp sandbox forbids it).
StatusOr<std::unique_ptr<Reactor>> CreateUringReactor(Worker* worker,
                                                      std::uint32_t entries);
std::unique_ptr<Reactor> CreateTimerHeapReactor(Worker* worker,
                                                bool virtual_time);

// Whether io_uring works here (creates and destroys a tiny ring once).
Status ProbeIoUring();

}  // namespace rpa::runtime::internal
