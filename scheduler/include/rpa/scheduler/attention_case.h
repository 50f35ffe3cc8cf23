#pragma once

// An attention case directory (shared/SPEC.md section 5): the inputs of one
// ragged paged attention call as .npy files plus params.json, loaded, run
// and written back. This is what `rpa attend CASE_DIR OUT_DIR` does.
//
// Loading checks everything that can be checked without the kernels: every
// file is present and a valid .npy of the right dtype ('<f4' q / k / v,
// '<i4' metadata, the cache '<f4' | '<f2' | '<u2' as params.json's
// "cache_dtype" says), shapes agree with each other (errors name the file and
// the dimension: "k.npy: dimension 2 (D) is 64 but q.npy has D = 128"), and
// params.json holds only known keys of the right JSON types. The SPEC section
// 3 rules are then checked by AttentionPlan::Create.
//
// Failure: InvalidArgument naming the file and the field; nothing is
// written. AttendCaseDirectory validates the whole case (the plan included)
// and runs it in memory before it creates any output file; both outputs are
// written to temporary files and renamed into place only when both are
// complete, so a failure never leaves a partial out.npy or kv_cache.npy.
//
// Thread-safety: functions on distinct cases may run concurrently.
//
// Example:
//   RPA_ASSIGN_OR_RETURN(AttentionCase c, LoadAttentionCase("case/"));
//   RPA_ASSIGN_OR_RETURN(NpyArray out, RunAttentionCase(c, {.threads = 2}));
//   // c.kv_cache now holds the step's new K/V.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string_view>

#include "rpa/attention/batch.h"
#include "rpa/attention/params.h"
#include "rpa/memory/kv_cache.h"
#include "rpa/memory/storage_type.h"
#include "rpa/runtime/status.h"
#include "rpa/scheduler/npy.h"

namespace rpa::scheduler {

// params.json, parsed.
struct CaseParams {
  attention::AttentionParams params;
  // "cache_dtype"; nullopt (absent or null) = taken from kv_cache.npy.
  std::optional<memory::StorageType> cache_dtype;
};

// Parses params.json's text. Every key is optional and null means "none" (or
// the default: sm_scale 1, causal true); unknown keys, wrong JSON types,
// non-integral or out-of-int32 sliding_window / chunk_prefill_size, and an
// unknown cache_dtype are InvalidArgument naming `name` and the key. Values
// are not range-checked here (AttentionPlan::Create does that with the SPEC's
// messages).
StatusOr<CaseParams> ParseCaseParams(std::string_view json_text,
                                     std::string_view name = "params.json");

struct AttentionCase {
  CaseParams params;  // cache_dtype always set after loading
  attention::BatchShape shape;
  NpyArray q;  // '<f4' [T, Hq, D]
  NpyArray k;  // '<f4' [T, Hkv, D]
  NpyArray v;  // '<f4' [T, Hkv, D]
  // [P, ps, 2 * Hkv, D]: '<f4' (f32), '<f2' (f16) or '<u2' (bf16 bits).
  NpyArray kv_cache;
  NpyArray kv_lens;       // '<i4' [S]
  NpyArray page_indices;  // '<i4' [S * pps] (or [S, pps])
  NpyArray cu_q_lens;     // '<i4' [S + 1]
  NpyArray distribution;  // '<i4' [3]

  // Views over the arrays above (valid while the case lives).
  attention::BatchMetadata Metadata() const;
  memory::KvLayerView CacheView();
};

// Reads and checks CASE_DIR/{q,k,v,kv_cache,kv_lens,page_indices,cu_q_lens,
// distribution}.npy and CASE_DIR/params.json (see the file comment).
StatusOr<AttentionCase> LoadAttentionCase(
    const std::filesystem::path& case_dir);

struct RunCaseOptions {
  // 1: the plan runs on the calling thread. >= 2: on a runtime::Executor with
  // that many workers, and PlanOptions::parallelism = threads.
  int threads = 1;
};

// Plans and runs the case: returns out ('<f4' [T_used, Hq, D]) and updates
// c.kv_cache in place. On error (the plan's validation, a bad thread count,
// the executor) nothing is modified.
StatusOr<NpyArray> RunAttentionCase(AttentionCase& c,
                                    const RunCaseOptions& options = {});

// Load + Run + write OUT_DIR/out.npy and OUT_DIR/kv_cache.npy (OUT_DIR is
// created if missing, after the run succeeded). On error no output file is
// created or replaced.
Status AttendCaseDirectory(const std::filesystem::path& case_dir,
                           const std::filesystem::path& out_dir,
                           const RunCaseOptions& options = {});

}  // namespace rpa::scheduler
