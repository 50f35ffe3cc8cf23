// ReadAt / WriteAt round trips on the io_uring backend (skipped where the
// sandbox forbids io_uring) and on the forced fallback, plus RunBlocking.

#include "rpa/runtime/file_io.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <numeric>
#include <ostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "executor_fixture.h"
#include "reactor.h"  // internal::ProbeIoUring

#include "rpa/runtime/blocking.h"
#include "rpa/runtime/this_fiber.h"

namespace rpa::runtime {
namespace {

class TempFile {
 public:
  TempFile() {
    std::string pattern = ::testing::TempDir() + "rpa_file_io_XXXXXX";
    fd_ = ::mkstemp(pattern.data());
    path_ = pattern;
  }
  ~TempFile() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  std::string path_;
};

struct IoParam {
  int num_workers;
  IoBackend backend;
};

std::string Describe(const IoParam& param) {
  return std::string(param.backend == IoBackend::kIoUring ? "uring"
                                                          : "threads") +
         "_workers" + std::to_string(param.num_workers);
}
void PrintTo(const IoParam& param, std::ostream* os) { *os << Describe(param); }

class FileIoTest : public ::testing::TestWithParam<IoParam> {
 protected:
  void SetUp() override {
    if (GetParam().backend == IoBackend::kIoUring &&
        !internal::ProbeIoUring().ok()) {
      GTEST_SKIP() << "io_uring is unavailable here: "
                   << internal::ProbeIoUring();
    }
    auto created = Executor::Create(
        {.num_workers = GetParam().num_workers,
         .io_backend = GetParam().backend,
         .ring_entries = 8});  // small: exercises back-pressure
    ASSERT_TRUE(created.ok()) << created.status();
    ex_ = std::move(created).value();
    ASSERT_EQ(ex_->io_backend(), GetParam().backend);
  }
  void TearDown() override {
    if (ex_ != nullptr) {
      EXPECT_TRUE(ex_->Shutdown().ok());
      ExecutorStats stats = ex_->Stats();
      EXPECT_EQ(stats.tasks_spawned, stats.tasks_completed);
    }
  }
  std::unique_ptr<Executor> ex_;
};

TEST_P(FileIoTest, PagesRoundTripThroughTheFile) {
  TempFile file;
  ASSERT_GE(file.fd(), 0);
  constexpr int kPages = 32;
  constexpr std::size_t kPageBytes = 4096;
  std::vector<JoinHandle<void>> writers;
  for (int p = 0; p < kPages; ++p) {
    writers.push_back(ex_->Spawn([&, p]() -> Status {
      std::vector<std::byte> page(kPageBytes, std::byte(p + 1));
      StatusOr<std::size_t> n =
          WriteAt(file.fd(), page, static_cast<std::uint64_t>(p) * kPageBytes);
      if (!n.ok()) return n.status();
      if (*n != kPageBytes) return InternalError("short write");
      return OkStatus();
    }));
  }
  for (auto& w : writers) ASSERT_TRUE(w.Join().ok());
  std::vector<JoinHandle<int>> readers;
  for (int p = 0; p < kPages; ++p) {
    readers.push_back(ex_->Spawn([&, p]() -> StatusOr<int> {
      std::vector<std::byte> page(kPageBytes);
      RPA_ASSIGN_OR_RETURN(
          std::size_t n,
          ReadAt(file.fd(), page, static_cast<std::uint64_t>(p) * kPageBytes));
      if (n != kPageBytes) return InternalError("short read");
      for (std::byte b : page) {
        if (b != std::byte(p + 1)) return InternalError("wrong byte");
      }
      return p;
    }));
  }
  for (int p = 0; p < kPages; ++p) {
    StatusOr<int> got = readers[static_cast<std::size_t>(p)].Join();
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, p);
  }
  // End of file reads 0 bytes.
  auto eof = ex_->Spawn([&] {
    std::vector<std::byte> page(16);
    return ReadAt(file.fd(), page, kPages * kPageBytes);
  });
  EXPECT_EQ(*eof.Join(), 0u);
}

TEST_P(FileIoTest, ErrorsNameTheFdAndMapTheErrno) {
  auto bad = ex_->Spawn([] {
    std::vector<std::byte> buffer(8);
    return ReadAt(-1, buffer, 0);
  });
  StatusOr<std::size_t> result = bad.Join();
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("fd=-1"), std::string::npos)
      << result.status();
}

TEST_P(FileIoTest, RunBlockingSuspendsOnlyTheFiber) {
  std::atomic<int> ticks{0};
  auto blocking = ex_->Spawn([&] {
    return RunBlocking([] {
      ::usleep(3000);  // a syscall the ring does not do for us
      return 7;
    });
  });
  auto ticker = ex_->Spawn([&] {
    for (int i = 0; i < 20; ++i) {
      ticks.fetch_add(1);
      this_fiber::Yield();
    }
  });
  EXPECT_EQ(*blocking.Join(), 7);
  EXPECT_TRUE(ticker.Join().ok());
  EXPECT_EQ(ticks.load(), 20);
  auto thrower = ex_->Spawn([]() -> int {
    return RunBlocking(
        []() -> int { throw std::runtime_error("disk on fire"); });
  });
  EXPECT_EQ(thrower.Join().status(), InternalError("task threw: disk on fire"));
}

std::string IoParamName(const ::testing::TestParamInfo<IoParam>& info) {
  return Describe(info.param);
}

INSTANTIATE_TEST_SUITE_P(Backends, FileIoTest,
                         ::testing::Values(IoParam{0, IoBackend::kIoUring},
                                           IoParam{1, IoBackend::kIoUring},
                                           IoParam{2, IoBackend::kIoUring},
                                           IoParam{4, IoBackend::kIoUring},
                                           IoParam{8, IoBackend::kIoUring},
                                           IoParam{0, IoBackend::kThreads},
                                           IoParam{1, IoBackend::kThreads},
                                           IoParam{2, IoBackend::kThreads},
                                           IoParam{4, IoBackend::kThreads},
                                           IoParam{8, IoBackend::kThreads}),
                         IoParamName);

TEST(BlockingTest, ZeroBlockingThreadsRunInline) {
  auto ex = Executor::Create({.num_workers = 1,
                              .io_backend = IoBackend::kThreads,
                              .blocking_threads = 0});
  ASSERT_TRUE(ex.ok());
  auto task = (*ex)->Spawn([] {
    const std::thread::id worker = std::this_thread::get_id();
    return RunBlocking([&] { return std::this_thread::get_id() == worker; });
  });
  // The kThreads backend keeps one pool thread for file I/O, so RunBlocking
  // still goes there.
  EXPECT_FALSE(*task.Join());
  auto uring = Executor::Create({.num_workers = 1, .blocking_threads = 0});
  ASSERT_TRUE(uring.ok());
  if ((*uring)->io_backend() == IoBackend::kIoUring) {
    auto inline_task = (*uring)->Spawn([] {
      const std::thread::id worker = std::this_thread::get_id();
      return RunBlocking([&] { return std::this_thread::get_id() == worker; });
    });
    EXPECT_TRUE(*inline_task.Join());  // no pool: inline on the worker
  }
  EXPECT_TRUE((*ex)->Shutdown().ok());
  EXPECT_TRUE((*uring)->Shutdown().ok());
}

TEST(FileIoPlainThreadTest, OutsideFibersItIsPreadPwrite) {
  TempFile file;
  const char text[] = "hello";
  auto n = WriteAt(file.fd(), std::as_bytes(std::span(text)), 100);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, sizeof(text));
  std::vector<std::byte> back(sizeof(text));
  ASSERT_EQ(*ReadAt(file.fd(), back, 100), sizeof(text));
  EXPECT_EQ(std::memcmp(back.data(), text, sizeof(text)), 0);
  EXPECT_EQ(RunBlocking([] { return 3; }), 3);  // inline outside fibers
}

}  // namespace
}  // namespace rpa::runtime
