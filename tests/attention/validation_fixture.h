#pragma once

// The fixture of the validation tests (validation_test.cc,
// validation_sequences_test.cc): a valid batch whose metadata, cache view,
// params and options a test mutates, and the checks that a rejected batch is
// rejected everywhere and writes nothing. The tests take it by
// `using namespace`.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "attention/batch_builder.h"
#include "validate.h"

#include "rpa/attention/plan.h"

namespace rpa::attention::validation_fixture {

using internal::ValidateBatch;
using testutil::BatchSpec;
using testutil::BuildBatch;
using testutil::TestBatch;

// Seven sequences: 2 decode, 2 prefill (chunk 4), 2 mixed, 1 not processed.
inline BatchSpec BaseSpec() {
  BatchSpec spec;
  spec.sequences = {{1, 9}, {1, 1}, {4, 12}, {4, 4}, {3, 20}, {5, 5}, {2, 6}};
  spec.distribution = std::array<std::int32_t, 3>{2, 4, 6};
  spec.num_q_heads = 4;
  spec.num_kv_heads = 2;
  spec.head_dim = 8;
  spec.page_size_tokens = 4;
  spec.params.chunk_prefill_size = 4;
  spec.seed = 7;
  return spec;
}

inline bool AllNan(const std::vector<float>& values) {
  for (float value : values) {
    if (!std::isnan(value)) return false;
  }
  return true;
}

class ValidationTest : public ::testing::Test {
 protected:
  ValidationTest() : batch_(BuildBatch(BaseSpec())) {
    kv_lens_ = batch_.kv_lens;
    page_indices_ = batch_.page_indices;
    cu_q_lens_ = batch_.cu_q_lens;
    distribution_ = batch_.distribution;
    shape_ = batch_.shape;
    cache_ = batch_.cache();
    params_ = batch_.params;
  }

  BatchMetadata Metadata() const {
    return BatchMetadata{.shape = shape_,
                         .kv_lens = kv_lens_,
                         .page_indices = page_indices_,
                         .cu_q_lens = cu_q_lens_,
                         .distribution = distribution_};
  }

  // The batch as mutated is rejected by ValidateBatch, AttentionPlan::Create
  // and Attend with InvalidArgument and a message containing every needle,
  // and nothing was written.
  void ExpectInvalid(std::initializer_list<std::string_view> needles) {
    const BatchMetadata meta = Metadata();
    const auto check = [&](const Status& status, const char* what) {
      EXPECT_EQ(status.code(), StatusCode::kInvalidArgument)
          << what << ": " << status;
      for (std::string_view needle : needles) {
        EXPECT_THAT(status.message(), ::testing::HasSubstr(std::string(needle)))
            << what;
      }
    };
    check(ValidateBatch(meta, cache_, params_, options_).status(),
          "ValidateBatch");
    check(AttentionPlan::Create(meta, cache_, params_, options_).status(),
          "AttentionPlan::Create");
    BatchTensors tensors = batch_.tensors();
    tensors.cache = cache_;
    check(Attend(meta, tensors, params_, options_), "Attend");
    ExpectUnchanged();
  }

  void ExpectValid() {
    const auto validated = ValidateBatch(Metadata(), cache_, params_, options_);
    EXPECT_TRUE(validated.ok()) << validated.status();
  }

  void ExpectUnchanged() {
    EXPECT_EQ(
        std::memcmp(batch_.cache_bytes().data(), batch_.original_cache.data(),
                    batch_.original_cache.size()),
        0)
        << "a rejected call wrote the cache";
    EXPECT_TRUE(AllNan(batch_.out)) << "a rejected call wrote out";
  }

  TestBatch batch_;
  std::vector<std::int32_t> kv_lens_;
  std::vector<std::int32_t> page_indices_;
  std::vector<std::int32_t> cu_q_lens_;
  std::vector<std::int32_t> distribution_;
  BatchShape shape_;
  memory::KvLayerView cache_;
  AttentionParams params_;
  PlanOptions options_;
};

}  // namespace rpa::attention::validation_fixture
