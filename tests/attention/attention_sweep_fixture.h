#pragma once

// Shared by the sweeps through the public API (attention_sweep_test.cc,
// attention_sweep_batches_test.cc): one batch through Attend against the
// double-precision oracle. The tests take it, with the testutil names they
// use, by `using namespace`.

#include <gtest/gtest.h>

#include "attention/batch_builder.h"
#include "attention/oracle.h"

#include "rpa/attention/plan.h"

namespace rpa::attention::attention_sweep_fixture {

using memory::StorageType;
using testutil::BatchSpec;
using testutil::BuildBatch;
using testutil::TestBatch;

// Attend, then the oracle's out and cache.
inline void ExpectMatchesOracle(TestBatch* batch,
                                const PlanOptions& options = {}) {
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch->original_oracle_input());
  const Status status =
      Attend(batch->metadata(), batch->tensors(), batch->params, options);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(testutil::CompareWithOracle(*batch, expected), "");
}

}  // namespace rpa::attention::attention_sweep_fixture
