#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <boost/context/detail/fcontext.hpp>

#include "rpa/runtime/check.h"
#include "rpa/runtime/int_math.h"
#include "rpa/runtime/sanitizers.h"

namespace rpa::runtime::internal {
namespace {

namespace ctx = boost::context::detail;

std::atomic<std::int64_t> g_live_stacks{0};

std::size_t PageBytes() {
  static const std::size_t page =
      static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

void TrampolineAdapter(ctx::transfer_t transfer) {
  Fiber::Trampoline(transfer.fctx, transfer.data);
}

}  // namespace

// ---- StackPool --------------------------------------------------------------

StackPool::StackPool(std::size_t stack_bytes)
    : stack_bytes_(RoundUpToMultiple(stack_bytes, PageBytes())) {}

StackPool::~StackPool() {
  std::lock_guard<std::mutex> lock(mu_);
  RPA_CHECK_MSG(free_.size() == mapped_,
                "StackPool destroyed while stacks are in use");
  for (const Stack& stack : free_) {
    RPA_ASAN_UNPOISON(stack.mapping, stack.mapping_bytes);
    ::munmap(stack.mapping, stack.mapping_bytes);
    g_live_stacks.fetch_sub(1, std::memory_order_relaxed);
  }
}

Stack StackPool::Allocate() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!free_.empty()) {
      Stack stack = free_.back();
      free_.pop_back();
      return stack;
    }
    ++mapped_;
  }
  Stack stack;
  stack.guard_bytes = RoundUpToMultiple(kGuardBytes, PageBytes());
  stack.mapping_bytes = stack.guard_bytes + stack_bytes_;
  // MAP_NORESERVE: only touched pages cost memory, so generous stacks are
  // cheap.
  void* mapping =
      ::mmap(nullptr, stack.mapping_bytes, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (mapping == MAP_FAILED) {
    std::fprintf(stderr,
                 "rpa::runtime: mmap of a %zu-byte fiber stack failed: %s\n",
                 stack.mapping_bytes, std::strerror(errno));
    RPA_CHECK_MSG(false, "out of memory for fiber stacks");
  }
  // The guard is at the low end: stacks grow down towards it.
  RPA_CHECK(::mprotect(mapping, stack.guard_bytes, PROT_NONE) == 0);
  stack.mapping = mapping;
  g_live_stacks.fetch_add(1, std::memory_order_relaxed);
  return stack;
}

void StackPool::Release(Stack stack) {
  // Frames of a fiber that was discarded without unwinding leave ASan's
  // stack redzones poisoned: clear them before anyone reuses the memory.
  RPA_ASAN_UNPOISON(stack.bottom(), stack.usable_bytes());
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(stack);
}

std::size_t StackPool::mapped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return mapped_;
}

std::int64_t StackPool::LiveStacks() {
  return g_live_stacks.load(std::memory_order_relaxed);
}

// ---- Fiber ------------------------------------------------------------------

Fiber::Fiber() : state(State::kThread) {
#if RPA_HAS_TSAN
  tsan_fiber_ = __tsan_get_current_fiber();
#endif
  // ASan's bounds of the thread's stack are learnt on the first switch away
  // from it (FinishSwitch records what __sanitizer_finish_switch_fiber says).
}

Fiber::Fiber(StackPool* pool, void (*entry)(void*), void* arg)
    : pool_(pool), stack_(pool->Allocate()), entry_(entry), arg_(arg) {
  context_ = ctx::make_fcontext(stack_.top(), stack_.usable_bytes(),
                                &TrampolineAdapter);
  asan_stack_bottom_ = stack_.bottom();
  asan_stack_bytes_ = stack_.usable_bytes();
#if RPA_HAS_TSAN
  tsan_fiber_ = __tsan_create_fiber(0);
  owns_tsan_fiber_ = true;
#endif
}

Fiber::~Fiber() {
#if RPA_HAS_TSAN
  if (owns_tsan_fiber_) __tsan_destroy_fiber(tsan_fiber_);
#endif
  if (pool_ != nullptr) pool_->Release(stack_);
}

void Fiber::Trampoline(void* transfer_fctx, void* transfer_data) {
  Fiber* self = static_cast<SwitchRecord*>(transfer_data)->to;
  FinishSwitch(transfer_fctx, transfer_data);
  self->entry_(self->arg_);
  RPA_CHECK_MSG(false, "a fiber's entry function returned");
}

}  // namespace rpa::runtime::internal
