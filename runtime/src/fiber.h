#pragma once

// Fiber and StackPool: the execution contexts the executor switches between.
//
// A Fiber is a saved register context (Boost.Context's fcontext: the
// assembly make_fcontext/jump_fcontext, ~13 ns per round trip here) plus the
// stack it runs on. Stacks come from a StackPool: mmap'd with a PROT_NONE
// guard region below the usable part (stacks grow down), so running off the
// end faults at once instead of scribbling over a neighbour.
//
// Sanitizers: Debian's Boost.Context is the assembly build and tells no
// sanitizer about switches, so SwitchTo() does: ASan's
// __sanitizer_start_switch_fiber before the jump and
// __sanitizer_finish_switch_fiber after it (so ASan knows which stack is
// live and keeps fake stacks apart), TSan's __tsan_switch_to_fiber before the
// jump (each fiber has its own TSan context from __tsan_create_fiber, and a
// switch is a synchronisation point: what a fiber did before switching out
// happens-before what runs after the switch).
//
// Lifecycle: a Fiber starts in `entry(arg)` on its first SwitchTo; entry never
// returns. The executor's fibers run its scheduling loop forever; a fiber is
// retired by simply never switching to it again and destroying it from
// another context (~Fiber returns the stack to the pool).
//
// Thread-safety: a Fiber is used by one thread (its worker). StackPool is
// thread-safe (a mutex; stacks are taken only when a task suspends and no
// pooled fiber is free, i.e. rarely).

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include <boost/context/detail/fcontext.hpp>

#include "rpa/runtime/check.h"
#include "rpa/runtime/internal/wait_queue.h"
#include "rpa/runtime/sanitizers.h"

#if RPA_HAS_ASAN
#include <sanitizer/common_interface_defs.h>
#endif
#if RPA_HAS_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace rpa::runtime::internal {

class Worker;
class TaskBase;

struct Stack {
  void* mapping = nullptr;  // start of the mapping (the guard region)
  std::size_t mapping_bytes = 0;
  std::size_t guard_bytes = 0;

  char* bottom() const { return static_cast<char*>(mapping) + guard_bytes; }
  std::size_t usable_bytes() const { return mapping_bytes - guard_bytes; }
  char* top() const { return static_cast<char*>(mapping) + mapping_bytes; }
};

class StackPool {
 public:
  // Guard region below every stack: big enough that a function with a large
  // frame cannot step over it into the next mapping.
  static constexpr std::size_t kGuardBytes = 64 * 1024;

  explicit StackPool(std::size_t stack_bytes);
  ~StackPool();
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;

  Stack Allocate();  // aborts with a message when mmap fails
  void Release(Stack stack);

  std::size_t stack_bytes() const { return stack_bytes_; }
  // Stacks this pool has mapped (in use + cached).
  std::size_t mapped() const;
  // Stacks mapped by all pools of the process (leak checks in tests).
  static std::int64_t LiveStacks();

 private:
  const std::size_t stack_bytes_;
  mutable std::mutex mu_;
  std::vector<Stack> free_;
  std::size_t mapped_ = 0;
};

class Fiber {
 public:
  enum class State : std::uint8_t {
    kThread,   // a thread's own context (no pool stack)
    kIdle,     // in its worker's loop, between tasks (or not started)
    kRunning,  // the worker's current fiber
    kBlocked,  // suspended in a task, waiting for a wake-up
    kReady,    // woken, queued to run
  };

  // The calling thread's own context.
  Fiber();
  // A fiber on `stack` that runs entry(arg) when first switched to.
  Fiber(StackPool* pool, void (*entry)(void*), void* arg);
  ~Fiber();
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;

  // Switches from this fiber (which must be the running one) to `to`.
  // Returns when some fiber switches back to this one. Inline: every frame
  // between a Yield() and the jump costs a mispredicted return after it (the
  // return stack buffer holds the other fiber's addresses).
  void SwitchTo(Fiber* to) {
    RPA_DCHECK(to != this);
    SwitchRecord record{this, to};
#if RPA_HAS_ASAN
    __sanitizer_start_switch_fiber(&asan_fake_stack_, to->asan_stack_bottom_,
                                   to->asan_stack_bytes_);
#endif
#if RPA_HAS_TSAN
    __tsan_switch_to_fiber(to->tsan_fiber_, 0);
#endif
    boost::context::detail::transfer_t back =
        boost::context::detail::jump_fcontext(
            static_cast<boost::context::detail::fcontext_t>(to->context_),
            &record);
    FinishSwitch(back.fctx, back.data);
  }

  bool is_thread_context() const { return pool_ == nullptr; }

  // The entry point given to make_fcontext (not for callers).
  static void Trampoline(void* transfer_fctx, void* transfer_data);

  // Bookkeeping owned by the worker.
  Fiber* next = nullptr;      // ready list, idle list, or inbox link
  Fiber* all_next = nullptr;  // the worker's list of all its fibers
  Fiber* all_prev = nullptr;
  Worker* worker = nullptr;
  TaskBase* task = nullptr;  // the task it runs, if any
  Waiter* waiter = nullptr;  // what it is blocked on, if in a WaitQueue
  State state = State::kIdle;

 private:
  struct SwitchRecord {
    Fiber* from;
    Fiber* to;
  };
  // Runs first thing in the context that was switched to: saves the context
  // of the fiber that switched away and completes the sanitizer handshake.
  static void FinishSwitch(void* fctx, void* data) {
    auto* record = static_cast<SwitchRecord*>(data);
    record->from->context_ = fctx;
#if RPA_HAS_ASAN
    const void* from_bottom = nullptr;
    std::size_t from_bytes = 0;
    __sanitizer_finish_switch_fiber(record->to->asan_fake_stack_, &from_bottom,
                                    &from_bytes);
    // A thread's own stack: learn its bounds the first time we leave it.
    if (record->from->is_thread_context() &&
        record->from->asan_stack_bytes_ == 0) {
      record->from->asan_stack_bottom_ = from_bottom;
      record->from->asan_stack_bytes_ = from_bytes;
    }
#endif
  }

  void* context_ = nullptr;  // saved fcontext_t while not running
  StackPool* pool_ = nullptr;
  Stack stack_;
  void (*entry_)(void*) = nullptr;
  void* arg_ = nullptr;
  // Sanitizer state.
  const void* asan_stack_bottom_ = nullptr;
  std::size_t asan_stack_bytes_ = 0;
#if RPA_HAS_ASAN
  void* asan_fake_stack_ = nullptr;
#endif
#if RPA_HAS_TSAN
  void* tsan_fiber_ = nullptr;
  bool owns_tsan_fiber_ = false;
#endif
};

}  // namespace rpa::runtime::internal
