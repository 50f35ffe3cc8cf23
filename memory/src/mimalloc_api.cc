#include "mimalloc_api.h"

#include <fmt/format.h>

#include <string>

#if !RPA_MIMALLOC_OVERRIDE
#include <dlfcn.h>
#ifndef RPA_MIMALLOC_SONAME
#error \
    "memory/CMakeLists.txt defines RPA_MIMALLOC_SONAME when RPA_MIMALLOC_OVERRIDE is off"
#endif
#endif

namespace rpa::memory::internal {
namespace {

#if RPA_MIMALLOC_OVERRIDE

StatusOr<const MimallocApi*> Load() {
  static const MimallocApi api = {
      .version = &mi_version,
      .thread_init = &mi_thread_init,
      .reserve_os_memory_ex = &mi_reserve_os_memory_ex,
      .arena_area = &mi_arena_area,
      .heap_new_in_arena = &mi_heap_new_in_arena,
      .heap_malloc = &mi_heap_malloc,
      .heap_malloc_aligned = &mi_heap_malloc_aligned,
      .heap_collect = &mi_heap_collect,
      .free = &mi_free,
      .is_in_heap_region = &mi_is_in_heap_region,
  };
  return &api;
}

#else  // !RPA_MIMALLOC_OVERRIDE

// Looks `name` up in `handle` and stores it into *fn with the prototype of
// mimalloc.h; false (and *error set) when the symbol is missing.
template <typename Fn>
bool Resolve(void* handle, const char* name, Fn* fn, std::string* error) {
  void* symbol = dlsym(handle, name);
  if (symbol == nullptr) {
    const char* message = dlerror();
    *error =
        message != nullptr ? message : fmt::format("symbol {} not found", name);
    return false;
  }
  // POSIX guarantees that a data pointer from dlsym converts to a function
  // pointer.
  *fn = reinterpret_cast<Fn>(symbol);
  return true;
}

StatusOr<const MimallocApi*> Load() {
  // RTLD_LOCAL keeps mimalloc's exported malloc/free out of the global symbol
  // scope, so the host's allocator stays the process allocator. RTLD_NODELETE
  // documents (and enforces) that the library stays mapped for good.
  void* handle =
      dlopen(RPA_MIMALLOC_SONAME, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  if (handle == nullptr) {
    const char* message = dlerror();
    return UnavailableError(
        fmt::format("cannot load {}: {}", RPA_MIMALLOC_SONAME,
                    message != nullptr ? message : "unknown error"));
  }
  static MimallocApi api;
  std::string error;
  const bool ok =
      Resolve(handle, "mi_version", &api.version, &error) &&
      Resolve(handle, "mi_thread_init", &api.thread_init, &error) &&
      Resolve(handle, "mi_reserve_os_memory_ex", &api.reserve_os_memory_ex,
              &error) &&
      Resolve(handle, "mi_arena_area", &api.arena_area, &error) &&
      Resolve(handle, "mi_heap_new_in_arena", &api.heap_new_in_arena, &error) &&
      Resolve(handle, "mi_heap_malloc", &api.heap_malloc, &error) &&
      Resolve(handle, "mi_heap_malloc_aligned", &api.heap_malloc_aligned,
              &error) &&
      Resolve(handle, "mi_heap_collect", &api.heap_collect, &error) &&
      Resolve(handle, "mi_free", &api.free, &error) &&
      Resolve(handle, "mi_is_in_heap_region", &api.is_in_heap_region, &error);
  if (!ok) {
    // Never dlclose: a partially initialized mimalloc may have registered
    // thread-exit hooks.
    return UnavailableError(
        fmt::format("cannot load {}: {}", RPA_MIMALLOC_SONAME, error));
  }
  return &api;
}

#endif  // RPA_MIMALLOC_OVERRIDE

}  // namespace

StatusOr<const MimallocApi*> Mimalloc() {
  // C++ guarantees thread-safe, once-only initialization of a function-local
  // static; a failure is remembered, not retried.
  static const StatusOr<const MimallocApi*> api = Load();
  return api;
}

namespace {

// Loads libmimalloc during static initialization, before main and so
// normally before the process has other threads. Loading it later, from one
// thread while others are being created, left a new thread's copy of
// mimalloc's thread-local default heap zero instead of mimalloc's empty heap
// (observed in a core dump: mi_heap_get_default() returned NULL right after
// mi_thread_init(), and mi_heap_new_in_arena faulted on it; about once in a
// thousand runs of ArenaTest.CreateAndDestroyFromSeveralThreads). A thread
// created while a dlopen sets up a library's static TLS can miss that set-up
// (glibc); loading at start-up leaves no such window for the threads a
// service creates afterwards. A load failure is remembered and reported by
// Arena::Create, as before.
[[maybe_unused]] const bool kMimallocLoadedAtStartup = Mimalloc().ok();

}  // namespace

}  // namespace rpa::memory::internal
