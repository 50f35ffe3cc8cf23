#include "rpa/scheduler/attention_case.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "scheduler/case_builder.h"

namespace rpa::scheduler {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// --- params.json --------------------------------------------------------

TEST(CaseParamsTest, EveryKeyParsed) {
  auto p = ParseCaseParams(
      R"({"sm_scale": 0.5, "sliding_window": 128, "soft_cap": 30, "k_scale": 2,
          "v_scale": 0.25, "causal": false, "chunk_prefill_size": 64,
          "cache_dtype": "bf16"})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->params.sm_scale, 0.5F);
  EXPECT_EQ(p->params.sliding_window, 128);
  EXPECT_EQ(p->params.soft_cap, 30.0F);
  EXPECT_EQ(p->params.k_scale, 2.0F);
  EXPECT_EQ(p->params.v_scale, 0.25F);
  EXPECT_FALSE(p->params.causal);
  EXPECT_EQ(p->params.chunk_prefill_size, 64);
  EXPECT_EQ(p->cache_dtype, memory::StorageType::kBf16);
}

TEST(CaseParamsTest, NullAndAbsentMeanNone) {
  auto p = ParseCaseParams(
      R"({"sm_scale": null, "sliding_window": null, "soft_cap": null, "k_scale": null,
          "v_scale": null, "causal": null, "chunk_prefill_size": null,
          "cache_dtype": null})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->params.sm_scale, 1.0F);
  EXPECT_FALSE(p->params.sliding_window.has_value());
  EXPECT_FALSE(p->params.soft_cap.has_value());
  EXPECT_FALSE(p->params.k_scale.has_value());
  EXPECT_FALSE(p->params.v_scale.has_value());
  EXPECT_TRUE(p->params.causal);
  EXPECT_FALSE(p->params.chunk_prefill_size.has_value());
  EXPECT_FALSE(p->cache_dtype.has_value());
  auto empty = ParseCaseParams("{}");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->params.causal);
}

TEST(CaseParamsTest, RejectionsNameTheKey) {
  struct Bad {
    const char* json;
    std::vector<std::string> expect;
  };
  const Bad cases[] = {
      {R"({"sm_scal": 1})", {"unknown key \"sm_scal\""}},
      {R"({"sm_scale": "1"})", {"\"sm_scale\"", "must be a number"}},
      {R"({"soft_cap": true})", {"\"soft_cap\"", "must be a number"}},
      {R"({"sliding_window": 1.5})",
       {"\"sliding_window\"", "must be an integer"}},
      {R"({"sliding_window": 3000000000})", {"\"sliding_window\"", "int32"}},
      {R"({"chunk_prefill_size": -3000000000})",
       {"\"chunk_prefill_size\"", "int32"}},
      {R"({"causal": 1})", {"\"causal\"", "true, false or null"}},
      {R"({"cache_dtype": "f64"})", {"\"cache_dtype\"", "\"f64\""}},
      {R"({"cache_dtype": 16})", {"\"cache_dtype\""}},
      {R"([1, 2])", {"must be a JSON object"}},
      {R"({"sm_scale": 1,})", {"invalid JSON"}},
      {"", {"invalid JSON"}},
  };
  for (const Bad& bad : cases) {
    auto p = ParseCaseParams(bad.json);
    ASSERT_FALSE(p.ok()) << bad.json;
    EXPECT_THAT(p.status().message(), HasSubstr("params.json")) << bad.json;
    for (const std::string& part : bad.expect) {
      EXPECT_THAT(p.status().message(), HasSubstr(part)) << bad.json;
    }
  }
}

TEST(CaseParamsTest, HugeFloatsBecomeInfinityForThePlanToReject) {
  auto p = ParseCaseParams(R"({"sm_scale": 1e300})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(std::isinf(p->params.sm_scale));
}

// --- loading --------------------------------------------------------------

class AttentionCaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("attention_case_test_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    small_.Generate();
    small_.Write(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void WriteI32(const std::string& file, std::vector<std::int32_t> values,
                std::vector<std::uint64_t> shape = {}) {
    if (shape.empty()) shape = {values.size()};
    testing::SmallCase::WriteArray(dir_ / file, NpyDtype::kI32, shape,
                                   values.data());
  }
  void WriteF32(const std::string& file, std::vector<std::uint64_t> shape) {
    std::size_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> zeros(n);
    testing::SmallCase::WriteArray(dir_ / file, NpyDtype::kF32, shape,
                                   zeros.data());
  }
  void WriteParams(const std::string& text) {
    std::ofstream(dir_ / "params.json") << text;
  }

  std::string LoadError() {
    auto c = LoadAttentionCase(dir_);
    EXPECT_FALSE(c.ok());
    return c.ok() ? "" : c.status().message();
  }

  std::filesystem::path dir_;
  testing::SmallCase small_;
};

TEST_F(AttentionCaseTest, LoadsTheCase) {
  auto c = LoadAttentionCase(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->shape.num_tokens, small_.num_tokens());
  EXPECT_EQ(c->shape.num_q_heads, 4U);
  EXPECT_EQ(c->shape.num_kv_heads, 2U);
  EXPECT_EQ(c->shape.head_dim, 8U);
  EXPECT_EQ(c->params.cache_dtype, memory::StorageType::kF16);
  EXPECT_EQ(c->params.params.chunk_prefill_size, 4);
  memory::KvLayerView view = c->CacheView();
  EXPECT_EQ(view.num_pages, 16U);
  EXPECT_EQ(view.page_size_tokens, 4U);
  EXPECT_EQ(view.num_combined_heads, 4U);
  EXPECT_EQ(view.token_bytes, 4U * 8 * 2);
  EXPECT_EQ(view.page_bytes, 4U * 4 * 8 * 2);
}

TEST_F(AttentionCaseTest, RunMatchesTheDoublePrecisionReference) {
  for (memory::StorageType storage :
       {memory::StorageType::kF32, memory::StorageType::kF16,
        memory::StorageType::kBf16}) {
    small_.storage = storage;
    small_.Generate();
    small_.Write(dir_);
    for (int threads : {1, 2}) {
      auto c = LoadAttentionCase(dir_);
      ASSERT_TRUE(c.ok()) << c.status();
      auto out = RunAttentionCase(*c, {.threads = threads});
      ASSERT_TRUE(out.ok()) << out.status();
      std::vector<float> cache_after;
      std::vector<double> want = small_.Reference(&cache_after);
      EXPECT_EQ(out->shape(),
                (std::vector<std::uint64_t>{small_.num_tokens(), 4, 8}));
      EXPECT_LE(testing::MaxRelativeError(out->Values<float>(), want), 1e-4)
          << memory::StorageTypeName(storage) << " threads " << threads;
      std::vector<std::byte> stored(cache_after.size() *
                                    memory::StorageBytes(storage));
      attention::ConvertToStorage(cache_after, storage, stored.data());
      ASSERT_EQ(stored.size(), c->kv_cache.num_bytes());
      EXPECT_EQ(std::memcmp(stored.data(), c->kv_cache.data(), stored.size()),
                0)
          << "the cache holds exactly the new tokens' stored bits";
    }
  }
}

TEST_F(AttentionCaseTest, EachMissingFileIsNamed) {
  for (const char* file : {"q.npy", "k.npy", "v.npy", "kv_cache.npy",
                           "kv_lens.npy", "page_indices.npy", "cu_q_lens.npy",
                           "distribution.npy", "params.json"}) {
    small_.Write(dir_);
    std::filesystem::remove(dir_ / file);
    EXPECT_THAT(LoadError(), AllOf(HasSubstr(file), HasSubstr("cannot open")))
        << file;
  }
  EXPECT_THAT(LoadAttentionCase(dir_ / "nope").status().message(),
              HasSubstr("not a directory"));
}

TEST_F(AttentionCaseTest, DtypeErrorsNameTheFile) {
  std::vector<std::uint16_t> halves(small_.q.size());
  testing::SmallCase::WriteArray(dir_ / "q.npy", NpyDtype::kF16,
                                 {small_.num_tokens(), 4, 8}, halves.data());
  EXPECT_THAT(LoadError(), AllOf(HasSubstr("q.npy"), HasSubstr("'<f2'"),
                                 HasSubstr("'<f4'")));
  small_.Write(dir_);
  WriteF32("kv_lens.npy", {5});
  EXPECT_THAT(LoadError(),
              AllOf(HasSubstr("kv_lens.npy"), HasSubstr("expected '<i4'")));
}

TEST_F(AttentionCaseTest, CacheDtypeMustMatchParams) {
  WriteParams(R"({"cache_dtype": "bf16", "chunk_prefill_size": 4})");
  EXPECT_THAT(LoadError(), AllOf(HasSubstr("kv_cache.npy"), HasSubstr("'<f2'"),
                                 HasSubstr("\"bf16\""), HasSubstr("'<u2'")));
  WriteParams(R"({"cache_dtype": "f32", "chunk_prefill_size": 4})");
  EXPECT_THAT(LoadError(),
              AllOf(HasSubstr("kv_cache.npy"), HasSubstr("'<f4'")));
  // Without cache_dtype the file's dtype decides.
  WriteParams(R"({"chunk_prefill_size": 4, "sm_scale": 0.35})");
  auto c = LoadAttentionCase(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->params.cache_dtype, memory::StorageType::kF16);
}

TEST_F(AttentionCaseTest, ShapeErrorsNameFileAndDimension) {
  const std::uint64_t t = small_.num_tokens();
  struct Bad {
    const char* file;
    std::vector<std::uint64_t> shape;
    std::vector<std::string> expect;
  };
  const Bad cases[] = {
      {"q.npy", {t, 4}, {"q.npy", "2 dimensions", "[T, Hq, D]"}},
      {"k.npy",
       {t + 1, 2, 8},
       {"k.npy", "dimension 0 (T) is 14", "q.npy gives 13"}},
      {"k.npy", {t, 2, 16}, {"k.npy", "dimension 2 (D) is 16"}},
      {"v.npy",
       {t, 1, 8},
       {"v.npy", "dimension 1 (Hkv) is 1", "k.npy gives 2"}},
      {"v.npy", {t, 2, 8, 1}, {"v.npy", "4 dimensions"}},
  };
  for (const Bad& bad : cases) {
    small_.Write(dir_);
    WriteF32(bad.file, bad.shape);
    std::string message = LoadError();
    for (const std::string& part : bad.expect)
      EXPECT_THAT(message, HasSubstr(part)) << bad.file;
  }
  small_.Write(dir_);
  std::vector<std::uint16_t> cache(16 * 4 * 6 * 8);
  testing::SmallCase::WriteArray(dir_ / "kv_cache.npy", NpyDtype::kF16,
                                 {16, 4, 6, 8}, cache.data());
  EXPECT_THAT(LoadError(), AllOf(HasSubstr("kv_cache.npy"),
                                 HasSubstr("dimension 2 (2 * Hkv) is 6"),
                                 HasSubstr("gives 4")));
  small_.Write(dir_);
  WriteI32("cu_q_lens.npy", {0, 1, 2, 6, 10});
  EXPECT_THAT(LoadError(),
              AllOf(HasSubstr("cu_q_lens.npy"), HasSubstr("(S + 1) is 5"),
                    HasSubstr("gives 6")));
  small_.Write(dir_);
  WriteI32("distribution.npy", {2, 4});
  EXPECT_THAT(LoadError(),
              AllOf(HasSubstr("distribution.npy"), HasSubstr("is 2")));
  small_.Write(dir_);
  WriteI32("kv_lens.npy", {5, 9, 4, 10, 7}, {5, 1});
  EXPECT_THAT(LoadError(),
              AllOf(HasSubstr("kv_lens.npy"), HasSubstr("2 dimensions")));
}

TEST_F(AttentionCaseTest, TwoDimensionalPageTableIsAccepted) {
  WriteI32("page_indices.npy", small_.page_indices, {5, small_.pages_per_seq});
  auto c = LoadAttentionCase(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Metadata().page_indices.size(), 15U);
  WriteI32("page_indices.npy", small_.page_indices, {3, 5});
  EXPECT_THAT(LoadError(), AllOf(HasSubstr("page_indices.npy"),
                                 HasSubstr("dimension 0 (S)")));
}

TEST_F(AttentionCaseTest, PlanErrorsComeFromTheRunAndChangeNothing) {
  std::vector<std::int32_t> pages = small_.page_indices;
  pages[3] = 99;  // sequence 1's first page
  WriteI32("page_indices.npy", pages);
  auto c = LoadAttentionCase(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<std::byte> before(c->kv_cache.bytes().begin(),
                                c->kv_cache.bytes().end());
  auto out = RunAttentionCase(*c);
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(out.status().message(), AllOf(HasSubstr("page_indices[3] = 99")));
  EXPECT_EQ(std::memcmp(before.data(), c->kv_cache.data(), before.size()), 0);
  EXPECT_FALSE(RunAttentionCase(*c, {.threads = 0}).ok());
}

}  // namespace
}  // namespace rpa::scheduler
