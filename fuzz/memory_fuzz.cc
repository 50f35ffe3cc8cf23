// libFuzzer harness of the memory module: a PageAllocator and a KvCache, each
// against a simple reference model, invariants checked after every op (see
// memory_fuzz.h for the programs).
//
// Input layout (missing bytes read as zero, so every input is valid):
//   byte 0  allocator: bits 0-5 num_pages - 1 (1..64), bits 6-7
//   thread_cache_pages {0,2,4,8} byte 1  allocator: bits 0-1 max_thread_caches
//   {1,2,64,64}, bit 2 page memory (ASan
//           poisoning), bit 3 two planes, bit 4 probe bad options/configs of
//           both Creates
//   byte 2  cache: bits 0-2 page_size_tokens - 1 (1..8), bits 3-4 num_layers
//   (1..3),
//           bits 5-6 storage {f32,f16,bf16,f32}, bit 7 num_kv_heads - 1 (1..2)
//   byte 3  cache: bits 0-5 num_pages - 1 (1..64), bits 6-7 head_dim {2,4,8,8}
//   byte 4  cache: bits 0-2 max_sequences - 1 (1..8); allocator: bit 3 the
//   helper thread
//           exits after the allocator is destroyed
//   then up to kMaxOps ops: an op byte (bit 7 set: cache op, else allocator op)
//   and the operand bytes that op reads.
#include "memory_fuzz.h"

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "rpa/runtime/sanitizers.h"

namespace rpa::memory::fuzz {
namespace {

// Keeps one input cheap, so libFuzzer runs many per second.
constexpr int kMaxOps = 256;

int g_step = -1;
char g_op[512] = "(setup)";

bool TraceEnabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("RPA_FUZZ_TRACE");
    return value != nullptr && value[0] != '\0' && value[0] != '0';
  }();
  return enabled;
}

}  // namespace

void Trace(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::vsnprintf(g_op, sizeof(g_op), format, args);
  va_end(args);
  if (TraceEnabled()) std::fprintf(stderr, "[%d] %s\n", g_step, g_op);
}

void Fail(const char* format, ...) {
  std::fprintf(stderr, "\nmemory_fuzz: INVARIANT VIOLATED at op %d: %s\n  ",
               g_step, g_op);
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fprintf(stderr, "\n(replay with RPA_FUZZ_TRACE=1 to see every op)\n");
  std::fflush(stderr);
  std::abort();
}

void ExpectCode(const Status& status, const char* what, StatusCode code) {
  if (status.code() != code) {
    Fail("%s returned %s, expected %s", what, status.ToString().c_str(),
         std::string(StatusCodeName(code)).c_str());
  }
}

void ExpectCode(const Status& status, const char* what, StatusCode code1,
                StatusCode code2) {
  if (status.code() != code1 && status.code() != code2) {
    Fail("%s returned %s, expected %s or %s", what, status.ToString().c_str(),
         std::string(StatusCodeName(code1)).c_str(),
         std::string(StatusCodeName(code2)).c_str());
  }
}

std::uint32_t Mix32(std::uint32_t x) {
  x ^= x >> 16;
  x *= 0x85ebca6bu;
  x ^= x >> 13;
  x *= 0xc2b2ae35u;
  x ^= x >> 16;
  return x;
}

HelperThread::HelperThread() : thread_([this] { Loop(); }) {}

HelperThread::~HelperThread() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    quit_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void HelperThread::Run(const std::function<void()>& task) {
  std::unique_lock<std::mutex> lock(mutex_);
  task_ = &task;
  wake_.notify_all();
  wake_.wait(lock, [this] { return task_ == nullptr; });
}

void HelperThread::Loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    wake_.wait(lock, [this] { return quit_ || task_ != nullptr; });
    if (task_ != nullptr) {
      (*task_)();  // the caller waits, so holding the lock costs nothing
      task_ = nullptr;
      wake_.notify_all();
    } else if (quit_) {
      return;
    }
  }
}

bool IsPoisoned(const void* address) {
#if RPA_HAS_ASAN
  return __asan_address_is_poisoned(address) != 0;
#else
  (void)address;
  return false;
#endif
}

bool RegionHasPoison(const void* address, std::size_t bytes) {
#if RPA_HAS_ASAN
  return __asan_region_is_poisoned(const_cast<void*>(address), bytes) !=
         nullptr;
#else
  (void)address;
  (void)bytes;
  return false;
#endif
}

}  // namespace rpa::memory::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  namespace fz = rpa::memory::fuzz;
  using rpa::memory::StorageType;
  fz::ByteReader in(data, size);
  const std::uint8_t header[5] = {in.U8(), in.U8(), in.U8(), in.U8(), in.U8()};

  constexpr std::uint32_t kThreadCachePages[4] = {0, 2, 4, 8};
  constexpr std::uint32_t kMaxThreadCaches[4] = {1, 2, 64, 64};
  fz::AllocatorConfig allocator_config;
  allocator_config.num_pages = (header[0] & 63u) + 1;
  allocator_config.thread_cache_pages = kThreadCachePages[header[0] >> 6];
  allocator_config.max_thread_caches = kMaxThreadCaches[header[1] & 3u];
  allocator_config.with_memory = (header[1] & 4u) != 0;
  allocator_config.num_planes = (header[1] & 8u) != 0 ? 2 : 1;
  const bool probe_bad_configs = (header[1] & 16u) != 0;

  constexpr StorageType kStorage[4] = {StorageType::kF32, StorageType::kF16,
                                       StorageType::kBf16, StorageType::kF32};
  constexpr std::uint32_t kLayers[4] = {1, 2, 3, 1};
  constexpr std::uint32_t kHeadDim[4] = {2, 4, 8, 8};
  rpa::memory::KvCacheConfig cache_config;
  cache_config.page_size_tokens = (header[2] & 7u) + 1;
  cache_config.num_layers = kLayers[(header[2] >> 3) & 3u];
  cache_config.storage = kStorage[(header[2] >> 5) & 3u];
  cache_config.num_kv_heads = (header[2] >> 7) + 1u;
  cache_config.num_pages = (header[3] & 63u) + 1;
  cache_config.head_dim = kHeadDim[header[3] >> 6];
  cache_config.max_sequences = (header[4] & 7u) + 1;
  allocator_config.helper_outlives_allocator = (header[4] & 8u) != 0;

  fz::g_step = -1;
  fz::Trace(
      "setup: allocator num_pages %u thread_cache_pages %u max_thread_caches "
      "%u memory %d "
      "planes %u; cache num_pages %u page_size_tokens %u num_layers %u storage "
      "%u "
      "num_kv_heads %u head_dim %u max_sequences %u",
      allocator_config.num_pages, allocator_config.thread_cache_pages,
      allocator_config.max_thread_caches, allocator_config.with_memory ? 1 : 0,
      allocator_config.num_planes, cache_config.num_pages,
      cache_config.page_size_tokens, cache_config.num_layers,
      static_cast<unsigned>(cache_config.storage), cache_config.num_kv_heads,
      cache_config.head_dim, cache_config.max_sequences);
  if (probe_bad_configs) {
    fz::AllocatorProgram::ProbeBadOptions();
    fz::KvCacheProgram::ProbeBadConfigs(cache_config);
  }

  fz::AllocatorProgram allocator(allocator_config);
  fz::KvCacheProgram cache(cache_config);
  allocator.CheckInvariants();
  cache.CheckInvariants();
  for (int step = 0; step < fz::kMaxOps && !in.empty(); ++step) {
    fz::g_step = step;
    const std::uint8_t op = in.U8();
    if ((op & 0x80u) != 0) {
      cache.Step(in, static_cast<std::uint8_t>(op & 0x7fu));
      cache.CheckInvariants();
    } else {
      allocator.Step(in, op);
      allocator.CheckInvariants();
    }
  }
  fz::g_step = fz::kMaxOps;
  allocator.FreeAll();
  cache.FreeAll();
  return 0;
}
