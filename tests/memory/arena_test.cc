#include "rpa/memory/arena.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory_resource>
#include <new>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "rpa/runtime/sanitizers.h"

namespace rpa::memory {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

std::unique_ptr<Arena> MustCreate(const ArenaOptions& options) {
  auto arena = Arena::Create(options);
  EXPECT_TRUE(arena.ok()) << arena.status();
  return arena.ok() ? std::move(*arena) : nullptr;
}

bool IsAligned(const void* p, std::size_t alignment) {
  return reinterpret_cast<std::uintptr_t>(p) % alignment == 0;
}

TEST(ArenaTest, ZeroUnitBytesIsRejected) {
  auto arena = Arena::Create({.unit_bytes = 0, .num_units = 4});
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(arena.status().message(), "unit_bytes must be positive, got 0");
}

TEST(ArenaTest, ZeroNumUnitsIsRejected) {
  auto arena = Arena::Create({.unit_bytes = 4096, .num_units = 0});
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(arena.status().message(), "num_units must be positive, got 0");
}

TEST(ArenaTest, OverflowingRegionIsRejected) {
  // 2^40 * 2^30 overflows size_t.
  auto arena = Arena::Create(
      {.unit_bytes = std::size_t{1} << 40, .num_units = 1u << 30});
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(arena.status().message(),
              AllOf(HasSubstr("unit_bytes * num_units"),
                    HasSubstr("1099511627776"), HasSubstr("1073741824")));
}

TEST(ArenaTest, RegionAboveTheLimitIsRejected) {
  // 2^32 * (2^30 + 1) fits size_t but exceeds the 2^62 limit.
  auto arena = Arena::Create(
      {.unit_bytes = std::size_t{1} << 32, .num_units = (1u << 30) + 1});
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(arena.status().message(),
              AllOf(HasSubstr("unit_bytes * num_units"),
                    HasSubstr("4294967296"), HasSubstr("1073741825")));
}

TEST(ArenaTest, HugeMetadataBudgetIsRejected) {
  const std::size_t metadata_bytes = (std::size_t{1} << 60) + 1;
  auto arena = Arena::Create(
      {.unit_bytes = 4096, .num_units = 4, .metadata_bytes = metadata_bytes});
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(arena.status().message(),
              AllOf(HasSubstr("metadata_bytes"),
                    HasSubstr(std::to_string(metadata_bytes))));
}

TEST(ArenaTest, ReservationLargerThanTheAddressSpaceIsResourceExhausted) {
  // 2^62 bytes passes validation but no OS can map it.
  auto arena = Arena::Create({.unit_bytes = std::size_t{1} << 20,
                              .num_units = std::uint64_t{1} << 42});
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), StatusCode::kResourceExhausted)
      << arena.status();
  EXPECT_THAT(arena.status().message(), HasSubstr("arena"));
  // The failure consumed nothing: a normal arena still works.
  EXPECT_NE(MustCreate({.unit_bytes = 4096, .num_units = 4}), nullptr);
}

TEST(ArenaTest, UnitAddressIsArithmetic) {
  for (std::size_t unit_bytes :
       {std::size_t{100}, std::size_t{4096}, std::size_t{3 * 4096},
        std::size_t{64} << 10}) {
    SCOPED_TRACE(unit_bytes);
    auto arena = MustCreate({.unit_bytes = unit_bytes, .num_units = 37});
    ASSERT_NE(arena, nullptr);
    EXPECT_TRUE(IsAligned(arena->base(), 4096));
    EXPECT_EQ(arena->unit_bytes(), unit_bytes);
    EXPECT_EQ(arena->num_units(), 37u);
    EXPECT_EQ(arena->region_bytes(), 37 * unit_bytes);
    EXPECT_FALSE(arena->huge_pages());
    for (std::uint64_t i = 0; i < 37; ++i) {
      EXPECT_EQ(arena->UnitAddress(i), arena->base() + i * unit_bytes);
    }
    const ArenaStats stats = arena->Stats();
    EXPECT_EQ(stats.region_bytes, 37 * unit_bytes);
    EXPECT_GE(stats.reserved_bytes, stats.region_bytes);
    EXPECT_EQ(stats.metadata_budget_bytes, ArenaOptions{}.metadata_bytes);
    EXPECT_EQ(stats.metadata_used_bytes, 0u);
  }
}

TEST(ArenaTest, WholeRegionIsWritable) {
  // 40 MiB: more than one 32 MiB mimalloc segment.
  constexpr std::size_t kUnitBytes = std::size_t{64} << 10;
  constexpr std::uint64_t kNumUnits = 640;
  auto arena = MustCreate({.unit_bytes = kUnitBytes, .num_units = kNumUnits});
  ASSERT_NE(arena, nullptr);
  for (std::uint64_t i = 0; i < kNumUnits; ++i) {
    std::memset(arena->UnitAddress(i), static_cast<int>(i & 0xff), kUnitBytes);
  }
  for (std::uint64_t i = 0; i < kNumUnits; ++i) {
    const std::byte* unit = arena->UnitAddress(i);
    ASSERT_EQ(unit[0], static_cast<std::byte>(i & 0xff)) << i;
    ASSERT_EQ(unit[kUnitBytes - 1], static_cast<std::byte>(i & 0xff)) << i;
  }
}

TEST(ArenaTest, MetadataBudgetIsHard) {
  constexpr std::size_t kBudget = std::size_t{1} << 20;
  auto arena = MustCreate(
      {.unit_bytes = 4096, .num_units = 4, .metadata_bytes = kBudget});
  ASSERT_NE(arena, nullptr);
  std::pmr::memory_resource* resource = arena->metadata_resource();
  EXPECT_EQ(arena->Stats().metadata_budget_bytes, kBudget);

  void* half = resource->allocate(kBudget / 2);
  EXPECT_EQ(arena->Stats().metadata_used_bytes, kBudget / 2);
  EXPECT_THROW((void)resource->allocate(kBudget / 2 + 1), std::bad_alloc);
  EXPECT_EQ(arena->Stats().metadata_used_bytes,
            kBudget / 2);  // the refusal cost nothing

  void* rest = resource->allocate(kBudget / 2);  // exactly the budget
  EXPECT_EQ(arena->Stats().metadata_used_bytes, kBudget);
  EXPECT_THROW((void)resource->allocate(1), std::bad_alloc);
  std::memset(half, 1, kBudget / 2);
  std::memset(rest, 2, kBudget / 2);

  resource->deallocate(rest, kBudget / 2);
  resource->deallocate(half, kBudget / 2);
  EXPECT_EQ(arena->Stats().metadata_used_bytes, 0u);

  // A container growing past the budget gets std::bad_alloc, and what it
  // held stays counted until it is released.
  {
    std::pmr::vector<std::uint64_t> values(resource);
    EXPECT_THROW(
        {
          for (std::uint64_t i = 0; i < kBudget; ++i) values.push_back(i);
        },
        std::bad_alloc);
    EXPECT_GT(values.size(), 0u);
    EXPECT_LE(arena->Stats().metadata_used_bytes, kBudget);
    EXPECT_EQ(arena->Stats().metadata_used_bytes,
              values.capacity() * sizeof(std::uint64_t));
  }
  EXPECT_EQ(arena->Stats().metadata_used_bytes, 0u);
}

TEST(ArenaTest, MetadataHonoursAlignment) {
  auto arena = MustCreate({.unit_bytes = 4096, .num_units = 4});
  ASSERT_NE(arena, nullptr);
  std::pmr::memory_resource* resource = arena->metadata_resource();
  for (std::size_t alignment :
       {std::size_t{8}, std::size_t{16}, std::size_t{64}, std::size_t{256},
        std::size_t{4096}}) {
    void* p = resource->allocate(100, alignment);
    EXPECT_TRUE(IsAligned(p, alignment)) << alignment;
    // Metadata never lands in the page region.
    EXPECT_TRUE(static_cast<std::byte*>(p) + 100 <= arena->base() ||
                static_cast<std::byte*>(p) >=
                    arena->base() + arena->region_bytes());
    resource->deallocate(p, 100, alignment);
  }
  EXPECT_EQ(arena->Stats().metadata_used_bytes, 0u);
  EXPECT_TRUE(resource->is_equal(*resource));
  auto other = MustCreate({.unit_bytes = 4096, .num_units = 4});
  ASSERT_NE(other, nullptr);
  EXPECT_FALSE(resource->is_equal(*other->metadata_resource()));
}

TEST(ArenaTest, MetadataFromSeveralThreads) {
  constexpr int kThreads = 4;
  constexpr int kBlocksPerThread = 2000;
  auto arena = MustCreate({.unit_bytes = 4096, .num_units = 16});
  ASSERT_NE(arena, nullptr);
  std::pmr::memory_resource* resource = arena->metadata_resource();

  struct Block {
    std::uint8_t* data;
    std::size_t bytes;
    std::uint8_t tag;
  };
  // Each thread keeps every other block; the main thread frees those after
  // the join, so blocks are freed by a thread other than their allocator's.
  std::vector<std::vector<Block>> kept(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kBlocksPerThread; ++i) {
        const std::size_t bytes =
            16 + static_cast<std::size_t>((i * 37 + t * 11) % 3000);
        const auto tag = static_cast<std::uint8_t>(t * 31 + i);
        auto* data = static_cast<std::uint8_t*>(resource->allocate(bytes));
        std::memset(data, tag, bytes);
        if (i % 2 == 0) {
          kept[static_cast<std::size_t>(t)].push_back({data, bytes, tag});
        } else {
          ASSERT_EQ(data[bytes - 1], tag);
          resource->deallocate(data, bytes);
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  std::size_t kept_bytes = 0;
  for (const auto& blocks : kept) {
    for (const Block& block : blocks) kept_bytes += block.bytes;
  }
  EXPECT_EQ(arena->Stats().metadata_used_bytes, kept_bytes);
  for (const auto& blocks : kept) {
    for (const Block& block : blocks) {
      ASSERT_EQ(block.data[0],
                block.tag);  // no other thread's block overlapped it
      ASSERT_EQ(block.data[block.bytes - 1], block.tag);
      resource->deallocate(block.data, block.bytes);
    }
  }
  EXPECT_EQ(arena->Stats().metadata_used_bytes, 0u);
}

TEST(ArenaTest, ConcurrentAllocationsNeverExceedTheBudget) {
  constexpr std::size_t kBudget = 64 << 10;
  constexpr std::size_t kBlockBytes = 1000;
  constexpr int kThreads = 4;
  auto arena = MustCreate(
      {.unit_bytes = 4096, .num_units = 4, .metadata_bytes = kBudget});
  ASSERT_NE(arena, nullptr);
  std::pmr::memory_resource* resource = arena->metadata_resource();
  std::vector<std::vector<void*>> blocks(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (;;) {
        try {
          blocks[static_cast<std::size_t>(t)].push_back(
              resource->allocate(kBlockBytes));
        } catch (const std::bad_alloc&) {
          return;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  std::size_t count = 0;
  for (const auto& list : blocks) count += list.size();
  // Every thread stopped at the budget, so together they filled it exactly.
  EXPECT_EQ(count, kBudget / kBlockBytes);
  EXPECT_EQ(arena->Stats().metadata_used_bytes, count * kBlockBytes);
  for (const auto& list : blocks) {
    for (void* p : list) resource->deallocate(p, kBlockBytes);
  }
  EXPECT_EQ(arena->Stats().metadata_used_bytes, 0u);
}

TEST(ArenaTest, MetadataOfExitedThreadsIsReclaimed) {
  // A thread that exits while its metadata blocks are live leaves its
  // mimalloc segment abandoned; the blocks are freed later by another thread.
  // Reusing the arena again and again must not run out of metadata room.
  for (int i = 0; i < 40; ++i) {
    auto arena = MustCreate({.unit_bytes = 4096,
                             .num_units = 8,
                             .metadata_bytes = std::size_t{1} << 20});
    ASSERT_NE(arena, nullptr);
    std::pmr::memory_resource* resource = arena->metadata_resource();
    void* block = nullptr;
    std::thread([&] {
      try {
        block = resource->allocate(1000);
      } catch (const std::bad_alloc&) {
        block = nullptr;
      }
    }).join();
    ASSERT_NE(block, nullptr) << "iteration " << i;
    resource->deallocate(block, 1000);
  }
}

TEST(ArenaTest, TwoHundredArenasRecycleTheProcessLimitedMimallocArenas) {
  // mimalloc 2.0.9 allows 64 arenas per process and never releases one: 200
  // create/destroy cycles only work if destroyed Arenas are recycled.
  std::set<std::byte*> bases;
  for (int i = 0; i < 200; ++i) {
    const std::uint64_t num_units =
        16 + static_cast<std::uint64_t>(i % 5) * 200;
    auto arena = MustCreate({.unit_bytes = 4096,
                             .num_units = num_units,
                             .metadata_bytes = std::size_t{1} << 20,
                             .huge_pages = i % 7 == 0});
    ASSERT_NE(arena, nullptr) << "iteration " << i;
    for (std::size_t offset = 0; offset < arena->region_bytes();
         offset += 4096) {
      arena->base()[offset] =
          static_cast<std::byte>(i);  // every OS page is writable
    }
    void* meta = arena->metadata_resource()->allocate(4096);
    std::memset(meta, 1, 4096);
    arena->metadata_resource()->deallocate(meta, 4096);
    bases.insert(arena->base());
  }
  // Recycled arenas place their region at the same address again.
  EXPECT_LT(bases.size(), 10u);
}

TEST(ArenaTest, ArenasOfGrowingSizeRecycle) {
  // A growing series is the worst case for reuse: size classes keep the
  // number of distinct arenas small. 40 sizes from 4 MiB to 160 MiB.
  for (int round = 0; round < 3; ++round) {
    for (std::uint64_t mib = 4; mib <= 160; mib += 4) {
      auto arena =
          MustCreate({.unit_bytes = std::size_t{1} << 20, .num_units = mib});
      ASSERT_NE(arena, nullptr) << mib << " MiB, round " << round;
      arena->base()[arena->region_bytes() - 1] = std::byte{1};
    }
  }
}

// mimalloc 2.0.9 randomises the address hint of its first aligned OS
// allocation with the calling thread's default heap, which on a thread
// mimalloc never initialised is its read-only empty heap: the random
// generator's write faults. Arena::Create initialises the thread first. The
// death test re-executes the binary, so the process is fresh: mimalloc is
// loaded on the main thread and the first arena reserved on a new thread.
TEST(ArenaTest, FirstReservationOfAProcessFromAThreadMimallocNeverSaw) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        (void)Arena::MimallocIsProcessAllocator();  // loads mimalloc here
        bool created = false;
        std::thread([&created] {
          created = Arena::Create({.unit_bytes = 4096, .num_units = 64}).ok();
        }).join();
        std::_Exit(created ? 0 : 3);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(ArenaTest, CreateAndDestroyFromSeveralThreads) {
  constexpr int kThreads = 4;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        auto arena = Arena::Create(
            {.unit_bytes = 4096, .num_units = 64 + 64 * std::uint64_t(t)});
        if (!arena.ok()) {
          failures.fetch_add(1);
          continue;
        }
        std::memset((*arena)->base(), t, (*arena)->region_bytes());
        void* meta = (*arena)->metadata_resource()->allocate(512);
        (*arena)->metadata_resource()->deallocate(meta, 512);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(ArenaTest, DestroyedOnAnotherThread) {
  auto arena = MustCreate({.unit_bytes = 4096, .num_units = 64});
  ASSERT_NE(arena, nullptr);
  std::memset(arena->base(), 7, arena->region_bytes());
  std::thread([&] {
    void* meta = arena->metadata_resource()->allocate(256);
    arena->metadata_resource()->deallocate(meta, 256);
    arena.reset();
  }).join();
  EXPECT_EQ(arena, nullptr);
  // The arena went back to the pool in a usable state.
  for (int i = 0; i < 3; ++i)
    EXPECT_NE(MustCreate({.unit_bytes = 4096, .num_units = 64}), nullptr);
}

TEST(ArenaTest, HugePagesAreBestEffort) {
  constexpr std::size_t kRegionBytes = std::size_t{8} << 20;
  auto arena = MustCreate({.unit_bytes = 4096,
                           .num_units = kRegionBytes / 4096,
                           .huge_pages = true});
  ASSERT_NE(arena, nullptr);
  EXPECT_TRUE(arena->huge_pages());
  // The region starts on a 2 MiB boundary so transparent huge pages can back
  // it from the first byte; whether the kernel does is its choice.
  EXPECT_TRUE(IsAligned(arena->base(), std::size_t{2} << 20));
  std::memset(arena->base(), 3, kRegionBytes);
  EXPECT_EQ(arena->base()[kRegionBytes - 1], std::byte{3});
}

}  // namespace
}  // namespace rpa::memory
