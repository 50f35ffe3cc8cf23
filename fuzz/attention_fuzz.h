#pragma once

// The attention fuzzer's internals (fuzz/attention_fuzz*.cc): the entry point
// decodes an input into a batch and its options (attention_fuzz.cc), malformed
// mode mutates them (attention_fuzz_mutate.cc), and CheckCall runs Attend and
// holds the outcome to the oracle (attention_fuzz_check.cc).

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "attention/batch_builder.h"
#include "byte_reader.h"

#include "rpa/attention/batch.h"
#include "rpa/attention/params.h"
#include "rpa/attention/plan.h"
#include "rpa/memory/kv_cache.h"
#include "rpa/runtime/executor.h"

namespace rpa::attention::fuzz {

using testutil::TestBatch;

using ::rpa::fuzz::ByteReader;

// Records a line of the decoded case (printed by Fail, and printed as it
// happens when RPA_FUZZ_TRACE is set).
void Trace(const std::string& line);

// Prints the mismatch and the decoded case to stderr, then aborts.
[[noreturn]] void Fail(const std::string& what);

// The values as "{1, 2, 3}", for traces.
std::string Join(const std::vector<std::int32_t>& values);

struct Case {
  BatchMetadata metadata;
  memory::KvLayerView cache;
  AttentionParams params;
  PlanOptions options;
};

// Checks the outcome of Attend on `input` (metadata views may differ from
// the batch's own).
void CheckCall(TestBatch* batch, const Case& input, runtime::Executor* executor,
               bool must_succeed);

// Applies one mutation of malformed mode (3 bytes: what, index, value) to the
// case or to the metadata arrays it will view.
void Mutate(ByteReader* in, TestBatch* batch, Case* input,
            std::vector<std::int32_t>* kv_lens,
            std::vector<std::int32_t>* page_indices,
            std::vector<std::int32_t>* cu_q_lens,
            std::vector<std::int32_t>* distribution);

}  // namespace rpa::attention::fuzz
