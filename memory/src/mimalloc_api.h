#pragma once

// The mimalloc entry points the memory module uses, reached through one table
// of function pointers.
//
// Default build: libmimalloc is dlopen'ed privately (RTLD_LOCAL) under its
// soname (RPA_MIMALLOC_SONAME), so its exported malloc/free never become the
// process's; only the mi_* functions below are looked up. The library is never
// dlclose'd: heaps created in it live until their threads exit, and mimalloc's
// thread-exit hook must stay mapped.
// RPA_MIMALLOC_OVERRIDE build: mimalloc is linked normally (it then serves the
// whole process's malloc/free on purpose) and the table holds the direct
// addresses.
//
// Thread-safety: Mimalloc() loads once (a function-local static) and may be
// called from any thread; the table is immutable afterwards.

#include <mimalloc.h>

#include "rpa/runtime/status.h"

namespace rpa::memory::internal {

struct MimallocApi {
  decltype(&mi_version) version = nullptr;
  decltype(&mi_thread_init) thread_init = nullptr;
  decltype(&mi_reserve_os_memory_ex) reserve_os_memory_ex = nullptr;
  decltype(&mi_arena_area) arena_area = nullptr;
  decltype(&mi_heap_new_in_arena) heap_new_in_arena = nullptr;
  decltype(&mi_heap_malloc) heap_malloc = nullptr;
  decltype(&mi_heap_malloc_aligned) heap_malloc_aligned = nullptr;
  decltype(&mi_heap_collect) heap_collect = nullptr;
  decltype(&mi_free) free = nullptr;
  decltype(&mi_is_in_heap_region) is_in_heap_region = nullptr;
};

// The loaded table, or Unavailable("cannot load libmimalloc.so.2: <dlerror>")
// (the same error on every call: loading is attempted once per process).
StatusOr<const MimallocApi*> Mimalloc();

}  // namespace rpa::memory::internal
