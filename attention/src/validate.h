#pragma once

// Every rule of SPEC section 3, checked before anything is written. Private
// to attention/ (AttentionPlan::Create is the public entry point).

#include "plan_data.h"

#include "rpa/attention/batch.h"
#include "rpa/attention/params.h"
#include "rpa/attention/plan.h"
#include "rpa/memory/kv_cache.h"
#include "rpa/runtime/status.h"

namespace rpa::attention::internal {

// Checks the metadata against itself, the cache geometry (`cache`'s data is
// not read) and the parameters, and returns the validated batch: parameters
// resolved, page table copied, one SequenceSpan per processed sequence (with
// the kernel `options` assigns to its range; kDecode on a sequence with
// q_len != 1 is InvalidArgument), and the SPEC section 7 cost of each range.
// InvalidArgument names the field and the value.
StatusOr<ValidatedBatch> ValidateBatch(const BatchMetadata& metadata,
                                       const memory::KvLayerView& cache,
                                       const AttentionParams& params,
                                       const PlanOptions& options);

// The same, into `*batch`, whose vectors keep their capacity (a re-plan
// validates into scratch the plan owns and allocates nothing once the
// scratch has grown to the batch). On error `*batch` holds a partial result:
// validate into scratch, not into a live plan.
Status ValidateBatchInto(const BatchMetadata& metadata,
                         const memory::KvLayerView& cache,
                         const AttentionParams& params,
                         const PlanOptions& options, ValidatedBatch* batch);

// The SPEC section 7 cost of one validated sequence of `batch`
// (validate_cost.cc); ValidateBatchInto sums it per range.
BatchCost SequenceCost(const ValidatedBatch& batch, const SequenceSpan& seq);

}  // namespace rpa::attention::internal
