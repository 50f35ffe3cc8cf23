// The embedding rule: linking rpa must not replace the host program's
// malloc/free. Debian's libmimalloc.so exports malloc/free, so a program that
// links it normally hands the whole process to mimalloc; rpa instead loads it
// with dlopen(RTLD_LOCAL) and calls only its mi_* functions. These tests look
// at the running process, independently of rpa's own answer.
//
// With the RPA_MIMALLOC_OVERRIDE build option the expectations flip (mimalloc
// is then the process allocator on purpose), except under ASan/TSan, whose
// interceptors own malloc in any build.

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>

#include "rpa/memory/arena.h"
#include "rpa/runtime/sanitizers.h"

namespace rpa::memory {
namespace {

// tests/memory/CMakeLists.txt passes the soname the library dlopens.
#ifndef RPA_MIMALLOC_SONAME
#error "RPA_MIMALLOC_SONAME must be defined by the build"
#endif

#if defined(RPA_MIMALLOC_OVERRIDE) && RPA_MIMALLOC_OVERRIDE && \
    !RPA_HAS_ASAN && !RPA_HAS_TSAN
constexpr bool kMimallocIsProcessAllocator = true;
#else
constexpr bool kMimallocIsProcessAllocator = false;
#endif

#if defined(RPA_MIMALLOC_OVERRIDE) && RPA_MIMALLOC_OVERRIDE
constexpr bool kMimallocIsGloballyVisible = true;
#else
constexpr bool kMimallocIsGloballyVisible = false;
#endif

using IsInHeapRegionFn = bool (*)(const void*);

class EmbeddingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // An Arena makes sure mimalloc is loaded.
    auto arena = Arena::Create({.unit_bytes = 4096, .num_units = 16});
    ASSERT_TRUE(arena.ok()) << arena.status();
    arena_ = std::move(*arena);
    // RTLD_NOLOAD: a handle to the already loaded library, never a new load.
    mimalloc_ = dlopen(RPA_MIMALLOC_SONAME, RTLD_NOW | RTLD_NOLOAD);
    ASSERT_NE(mimalloc_, nullptr) << dlerror();
    is_in_heap_region_ = reinterpret_cast<IsInHeapRegionFn>(
        dlsym(mimalloc_, "mi_is_in_heap_region"));
    ASSERT_NE(is_in_heap_region_, nullptr);
  }

  void TearDown() override {
    if (mimalloc_ != nullptr)
      dlclose(mimalloc_);  // drops the NOLOAD reference only
  }

  std::unique_ptr<Arena> arena_;
  void* mimalloc_ = nullptr;
  IsInHeapRegionFn is_in_heap_region_ = nullptr;
};

TEST_F(EmbeddingTest, GlobalMallocIsNotMimallocs) {
  void* global_malloc = dlsym(RTLD_DEFAULT, "malloc");
  void* global_free = dlsym(RTLD_DEFAULT, "free");
  void* mimalloc_malloc = dlsym(mimalloc_, "malloc");
  void* mimalloc_free = dlsym(mimalloc_, "free");
  ASSERT_NE(global_malloc, nullptr);
  ASSERT_NE(mimalloc_malloc, nullptr);  // Debian's build does export them
  EXPECT_EQ(global_malloc == mimalloc_malloc, kMimallocIsProcessAllocator);
  EXPECT_EQ(global_free == mimalloc_free, kMimallocIsProcessAllocator);
}

TEST_F(EmbeddingTest, MallocedMemoryIsNotInMimallocsRegion) {
  void* p = std::malloc(100);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(is_in_heap_region_(p), kMimallocIsProcessAllocator);
  std::free(p);
  auto object = std::make_unique<char[]>(100);
  EXPECT_EQ(is_in_heap_region_(object.get()), kMimallocIsProcessAllocator);
}

#if !RPA_HAS_ASAN && !RPA_HAS_TSAN
TEST_F(EmbeddingTest, ProbeRecognizesMimallocsOwnMemory) {
  // The positive control: the probe above can say yes. (Under ASan/TSan the
  // shadow layout moves mimalloc's mappings out of the range it tracks.)
  using MallocFn = void* (*)(std::size_t);
  using FreeFn = void (*)(void*);
  auto mi_malloc = reinterpret_cast<MallocFn>(dlsym(mimalloc_, "mi_malloc"));
  auto mi_free = reinterpret_cast<FreeFn>(dlsym(mimalloc_, "mi_free"));
  ASSERT_NE(mi_malloc, nullptr);
  ASSERT_NE(mi_free, nullptr);
  void* p = mi_malloc(100);
  EXPECT_TRUE(is_in_heap_region_(p));
  mi_free(p);
}
#endif

TEST_F(EmbeddingTest, MimallocSymbolsStayOutOfTheGlobalScope) {
  // RTLD_LOCAL: nothing else in the process can bind to the private copy.
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "mi_malloc") != nullptr,
            kMimallocIsGloballyVisible);
}

TEST_F(EmbeddingTest, ArenaAgreesWithTheProcess) {
  EXPECT_EQ(Arena::MimallocIsProcessAllocator(), kMimallocIsProcessAllocator);
}

}  // namespace
}  // namespace rpa::memory
