// `rpa attend` end to end: the built binary on a generated case directory.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "scheduler/case_builder.h"
#include "scheduler/cli_runner.h"

#include "rpa/scheduler/npy.h"

namespace rpa::scheduler {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

using Result = testing_util::CliResult;
using testing_util::Slurp;

class CliAttendTest : public testing_util::CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    small_.Generate();
    small_.Write(root_ / "case");
  }

  std::vector<std::string> OutputFiles(const std::string& dir) const {
    std::vector<std::string> names;
    if (!std::filesystem::exists(root_ / dir)) return names;
    for (const auto& entry : std::filesystem::directory_iterator(root_ / dir)) {
      names.push_back(entry.path().filename().string());
    }
    return names;
  }

  testing::SmallCase small_;
};

TEST_F(CliAttendTest, WritesOutAndCacheThatMatchTheReference) {
  for (int threads : {1, 2}) {
    const std::string out_dir = "out" + std::to_string(threads);
    Result r = Rpa("attend " + (root_ / "case").string() + " " +
                   (root_ / out_dir).string() + " --threads " +
                   std::to_string(threads));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "");
    auto out = ReadNpyFile(root_ / out_dir / "out.npy");
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->dtype(), NpyDtype::kF32);
    EXPECT_EQ(out->shape(),
              (std::vector<std::uint64_t>{small_.num_tokens(), 4, 8}));
    std::vector<float> cache_after;
    std::vector<double> want = small_.Reference(&cache_after);
    EXPECT_LE(testing::MaxRelativeError(out->Values<float>(), want), 1e-4);

    auto cache = ReadNpyFile(root_ / out_dir / "kv_cache.npy");
    ASSERT_TRUE(cache.ok()) << cache.status();
    EXPECT_EQ(cache->dtype(), NpyDtype::kF16);
    EXPECT_EQ(cache->shape(), (std::vector<std::uint64_t>{16, 4, 4, 8}));
    std::vector<std::byte> stored(cache_after.size() * 2);
    attention::ConvertToStorage(cache_after, memory::StorageType::kF16,
                                stored.data());
    ASSERT_EQ(cache->num_bytes(), stored.size());
    EXPECT_EQ(std::memcmp(cache->data(), stored.data(), stored.size()), 0);
    EXPECT_EQ(OutputFiles(out_dir).size(), 2U) << "no temporaries left behind";
  }
}

TEST_F(CliAttendTest, PageIndexOutOfRangeWritesNothing) {
  std::vector<std::int32_t> pages = small_.page_indices;
  pages[6] = 16;  // sequence 2's first page; P = 16
  testing::SmallCase::WriteArray(root_ / "case" / "page_indices.npy",
                                 NpyDtype::kI32, {pages.size()}, pages.data());
  Result r = Rpa("attend " + (root_ / "case").string() + " " +
                 (root_ / "out").string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(
      r.err, AllOf(HasSubstr("rpa attend"), HasSubstr("page_indices[6] = 16")));
  EXPECT_EQ(r.out, "");
  EXPECT_TRUE(OutputFiles("out").empty());
}

TEST_F(CliAttendTest, DtypeMismatchWritesNothingAndKeepsOldOutputs) {
  std::ofstream(root_ / "case" / "params.json") << R"({"cache_dtype": "bf16"})";
  std::filesystem::create_directories(root_ / "out");
  std::ofstream(root_ / "out" / "out.npy") << "old";
  Result r = Rpa("attend " + (root_ / "case").string() + " " +
                 (root_ / "out").string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err,
              AllOf(HasSubstr("kv_cache.npy"), HasSubstr("cache_dtype")));
  EXPECT_EQ(OutputFiles("out"), std::vector<std::string>{"out.npy"});
  EXPECT_EQ(Slurp(root_ / "out" / "out.npy"), "old");
}

TEST_F(CliAttendTest, UsageErrorsExitNonZero) {
  EXPECT_NE(Rpa("attend").exit_code, 0);
  EXPECT_NE(Rpa("attend a b --threads 0").exit_code, 0);
  EXPECT_NE(Rpa("frobnicate").exit_code, 0);
  EXPECT_EQ(Rpa("--help").exit_code, 0);
}

TEST_F(CliAttendTest, RooflineJsonIsOneObject) {
  Result r = Rpa("roofline --json --buffer-mib 16");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("\"read_bandwidth_gbps\""),
                           HasSubstr("\"fma_peak_gflops\""),
                           HasSubstr("\"avx512_fma_peak_gflops\"")));
  EXPECT_EQ(r.out.front(), '{');
}

}  // namespace
}  // namespace rpa::scheduler
