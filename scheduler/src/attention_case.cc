#include "rpa/scheduler/attention_case.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "npy_header.h"
#include <nlohmann/json.hpp>

#include "rpa/attention/plan.h"
#include "rpa/runtime/executor.h"

namespace rpa::scheduler {
namespace {

using Json = nlohmann::json;

// Built by appending: GCC 12's -Wrestrict misfires on "lit" + std::string.
std::string Wrap(char quote, std::string_view text) {
  std::string out(1, quote);
  out.append(text);
  out.push_back(quote);
  return out;
}
std::string Quote(std::string_view text) { return Wrap('"', text); }

// ------------------------------------------------------------ params.json

StatusOr<std::optional<float>> JsonFloat(const Json& value,
                                         std::string_view name,
                                         const std::string& key) {
  if (value.is_null()) return std::optional<float>();
  if (!value.is_number()) {
    return InvalidArgumentError(std::string(name) + ": \"" + key +
                                "\" must be a number or null, got " +
                                value.dump());
  }
  double d = value.get<double>();
  // Out-of-range doubles become +-inf explicitly (a plain cast would be
  // undefined); the plan then rejects them as not finite, naming the key.
  if (std::isfinite(d) &&
      std::fabs(d) > static_cast<double>(std::numeric_limits<float>::max())) {
    d = d > 0 ? std::numeric_limits<double>::infinity()
              : -std::numeric_limits<double>::infinity();
  }
  return std::optional<float>(static_cast<float>(d));
}

StatusOr<std::optional<std::int32_t>> JsonInt32(const Json& value,
                                                std::string_view name,
                                                const std::string& key) {
  if (value.is_null()) return std::optional<std::int32_t>();
  if (!value.is_number_integer()) {
    return InvalidArgumentError(std::string(name) + ": \"" + key +
                                "\" must be an integer or null, got " +
                                value.dump());
  }
  bool fits = value.is_number_unsigned()
                  ? value.get<std::uint64_t>() <=
                        static_cast<std::uint64_t>(
                            std::numeric_limits<std::int32_t>::max())
                  : value.get<std::int64_t>() >=
                            std::numeric_limits<std::int32_t>::min() &&
                        value.get<std::int64_t>() <=
                            std::numeric_limits<std::int32_t>::max();
  if (!fits) {
    return InvalidArgumentError(std::string(name) + ": \"" + key + "\" = " +
                                value.dump() + " is out of the int32 range");
  }
  return std::optional<std::int32_t>(
      static_cast<std::int32_t>(value.get<std::int64_t>()));
}

StatusOr<CaseParams> ParseCaseParamsJson(const Json& root,
                                         std::string_view name) {
  if (!root.is_object()) {
    return InvalidArgumentError(std::string(name) +
                                ": must be a JSON object, got " +
                                std::string(root.type_name()));
  }
  CaseParams out;
  for (const auto& [key, value] : root.items()) {
    if (key == "sm_scale") {
      RPA_ASSIGN_OR_RETURN(auto scale, JsonFloat(value, name, key));
      out.params.sm_scale = scale.value_or(1.0F);
    } else if (key == "soft_cap") {
      RPA_ASSIGN_OR_RETURN(out.params.soft_cap, JsonFloat(value, name, key));
    } else if (key == "k_scale") {
      RPA_ASSIGN_OR_RETURN(out.params.k_scale, JsonFloat(value, name, key));
    } else if (key == "v_scale") {
      RPA_ASSIGN_OR_RETURN(out.params.v_scale, JsonFloat(value, name, key));
    } else if (key == "sliding_window") {
      RPA_ASSIGN_OR_RETURN(out.params.sliding_window,
                           JsonInt32(value, name, key));
    } else if (key == "chunk_prefill_size") {
      RPA_ASSIGN_OR_RETURN(out.params.chunk_prefill_size,
                           JsonInt32(value, name, key));
    } else if (key == "causal") {
      if (value.is_null()) {
        out.params.causal = true;
      } else if (value.is_boolean()) {
        out.params.causal = value.get<bool>();
      } else {
        return InvalidArgumentError(
            std::string(name) +
            ": \"causal\" must be true, false or null, got " + value.dump());
      }
    } else if (key == "cache_dtype") {
      if (value.is_null()) continue;
      if (!value.is_string()) {
        return InvalidArgumentError(
            std::string(name) +
            ": \"cache_dtype\" must be \"f32\", \"f16\", "
            "\"bf16\" or null, got " +
            value.dump());
      }
      const auto& text = value.get_ref<const std::string&>();
      out.cache_dtype = memory::ParseStorageType(text);
      if (!out.cache_dtype.has_value()) {
        return InvalidArgumentError(std::string(name) +
                                    ": \"cache_dtype\" is " + Quote(text) +
                                    "; expected \"f32\", \"f16\" or \"bf16\"");
      }
    } else {
      return InvalidArgumentError(
          std::string(name) + ": unknown key " + Quote(key) +
          " (known: sm_scale, sliding_window, soft_cap, k_scale, v_scale, "
          "causal, chunk_prefill_size, cache_dtype)");
    }
  }
  return out;
}

// ------------------------------------------------------------ .npy checks

NpyDtype CacheNpyDtype(memory::StorageType type) {
  switch (type) {
    case memory::StorageType::kF32:
      return NpyDtype::kF32;
    case memory::StorageType::kF16:
      return NpyDtype::kF16;
    case memory::StorageType::kBf16:
      return NpyDtype::kU16;
  }
  return NpyDtype::kF32;
}

std::string Descr(NpyDtype dtype) { return Wrap('\'', NpyDtypeDescr(dtype)); }

Status CheckDtype(const NpyArray& array, const std::string& file,
                  NpyDtype want) {
  if (array.dtype() != want) {
    return InvalidArgumentError(file + ": dtype is " + Descr(array.dtype()) +
                                ", expected " + Descr(want));
  }
  return OkStatus();
}

Status CheckRank(const NpyArray& array, const std::string& file,
                 std::size_t rank, std::string_view layout) {
  if (array.shape().size() != rank) {
    return InvalidArgumentError(
        file + ": shape " + array.ShapeString() + " has " +
        std::to_string(array.shape().size()) + " dimensions, expected " +
        std::to_string(rank) + " " + std::string(layout));
  }
  return OkStatus();
}

// dimension `dim` of `file` (named `what`) must equal `want`, which comes
// from `source`.
Status CheckDim(const NpyArray& array, const std::string& file, std::size_t dim,
                std::string_view what, std::uint64_t want,
                const std::string& source) {
  if (array.shape()[dim] != want) {
    return InvalidArgumentError(file + ": dimension " + std::to_string(dim) +
                                " (" + std::string(what) + ") is " +
                                std::to_string(array.shape()[dim]) + " but " +
                                source + " gives " + std::to_string(want));
  }
  return OkStatus();
}

Status CheckFitsUint32(const NpyArray& array, const std::string& file) {
  for (std::size_t d = 0; d < array.shape().size(); ++d) {
    if (array.shape()[d] >
        static_cast<std::uint64_t>(std::numeric_limits<std::int32_t>::max())) {
      return InvalidArgumentError(file + ": dimension " + std::to_string(d) +
                                  " is " + std::to_string(array.shape()[d]) +
                                  ", more than 2^31 - 1");
    }
  }
  return OkStatus();
}

StatusOr<std::string> ReadTextFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return InvalidArgumentError(path.string() + ": cannot open");
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return InvalidArgumentError(path.string() + ": read failed");
  return text.str();
}

StatusOr<std::filesystem::path> WriteNpyTemp(const std::filesystem::path& path,
                                             const NpyArray& array) {
  RPA_ASSIGN_OR_RETURN(std::vector<std::byte> header,
                       internal::SerializeNpyHeader(
                           array.dtype(), array.shape(), array.num_bytes()));
  const std::span<const std::byte> parts[] = {header, array.bytes()};
  return internal::WriteTempFile(path, parts);
}

}  // namespace

StatusOr<CaseParams> ParseCaseParams(std::string_view json_text,
                                     std::string_view name) {
  Json root;
  try {
    root = Json::parse(json_text);
  } catch (const Json::exception& e) {
    return InvalidArgumentError(std::string(name) +
                                ": invalid JSON: " + e.what());
  }
  return ParseCaseParamsJson(root, name);
}

attention::BatchMetadata AttentionCase::Metadata() const {
  return {.shape = shape,
          .kv_lens = kv_lens.Values<std::int32_t>(),
          .page_indices = page_indices.Values<std::int32_t>(),
          .cu_q_lens = cu_q_lens.Values<std::int32_t>(),
          .distribution = distribution.Values<std::int32_t>()};
}

memory::KvLayerView AttentionCase::CacheView() {
  memory::KvLayerView view;
  const auto& dims = kv_cache.shape();
  view.data = kv_cache.data();
  view.num_pages = static_cast<std::uint32_t>(dims[0]);
  view.page_size_tokens = static_cast<std::uint32_t>(dims[1]);
  view.num_combined_heads = static_cast<std::uint32_t>(dims[2]);
  view.head_dim = static_cast<std::uint32_t>(dims[3]);
  view.storage = params.cache_dtype.value_or(memory::StorageType::kF32);
  view.token_bytes = static_cast<std::size_t>(view.num_combined_heads) *
                     view.head_dim * memory::StorageBytes(view.storage);
  view.page_bytes = view.page_size_tokens * view.token_bytes;
  return view;
}

StatusOr<AttentionCase> LoadAttentionCase(
    const std::filesystem::path& case_dir) {
  std::error_code error;
  if (!std::filesystem::is_directory(case_dir, error)) {
    return InvalidArgumentError("case directory " + case_dir.string() +
                                " does not exist or is not a directory");
  }
  AttentionCase c;
  const std::filesystem::path params_path = case_dir / "params.json";
  RPA_ASSIGN_OR_RETURN(std::string params_text, ReadTextFile(params_path));
  RPA_ASSIGN_OR_RETURN(c.params, ParseCaseParams(params_text, "params.json"));

  struct Input {
    const char* file;
    NpyArray* array;
  };
  const Input inputs[] = {
      {"q.npy", &c.q},
      {"k.npy", &c.k},
      {"v.npy", &c.v},
      {"kv_cache.npy", &c.kv_cache},
      {"kv_lens.npy", &c.kv_lens},
      {"page_indices.npy", &c.page_indices},
      {"cu_q_lens.npy", &c.cu_q_lens},
      {"distribution.npy", &c.distribution},
  };
  for (const Input& input : inputs) {
    StatusOr<NpyArray> array = ReadNpyFile(case_dir / input.file);
    if (!array.ok()) {
      // Name the file as the case knows it, not only by its full path.
      return Status(array.status().code(),
                    std::string(input.file) + ": " + array.status().message());
    }
    *input.array = std::move(*array);
    RPA_RETURN_IF_ERROR(CheckFitsUint32(*input.array, input.file));
  }

  // Dtypes.
  RPA_RETURN_IF_ERROR(CheckDtype(c.q, "q.npy", NpyDtype::kF32));
  RPA_RETURN_IF_ERROR(CheckDtype(c.k, "k.npy", NpyDtype::kF32));
  RPA_RETURN_IF_ERROR(CheckDtype(c.v, "v.npy", NpyDtype::kF32));
  for (const Input& input : std::span(inputs).subspan(4)) {
    RPA_RETURN_IF_ERROR(CheckDtype(*input.array, input.file, NpyDtype::kI32));
  }
  if (c.params.cache_dtype.has_value()) {
    NpyDtype want = CacheNpyDtype(*c.params.cache_dtype);
    if (c.kv_cache.dtype() != want) {
      return InvalidArgumentError(
          "kv_cache.npy: dtype is " + Descr(c.kv_cache.dtype()) +
          " but params.json's cache_dtype " +
          Quote(memory::StorageTypeName(*c.params.cache_dtype)) + " needs " +
          Descr(want));
    }
  } else {
    switch (c.kv_cache.dtype()) {
      case NpyDtype::kF32:
        c.params.cache_dtype = memory::StorageType::kF32;
        break;
      case NpyDtype::kF16:
        c.params.cache_dtype = memory::StorageType::kF16;
        break;
      case NpyDtype::kU16:
        c.params.cache_dtype = memory::StorageType::kBf16;
        break;
      case NpyDtype::kI32:
        return InvalidArgumentError(
            "kv_cache.npy: dtype is '<i4'; a cache is '<f4' (f32), '<f2' (f16) "
            "or '<u2' (bf16)");
    }
  }

  // Shapes, each against the files named before it.
  RPA_RETURN_IF_ERROR(CheckRank(c.q, "q.npy", 3, "[T, Hq, D]"));
  RPA_RETURN_IF_ERROR(CheckRank(c.k, "k.npy", 3, "[T, Hkv, D]"));
  RPA_RETURN_IF_ERROR(CheckRank(c.v, "v.npy", 3, "[T, Hkv, D]"));
  RPA_RETURN_IF_ERROR(
      CheckRank(c.kv_cache, "kv_cache.npy", 4, "[P, ps, 2 * Hkv, D]"));
  const std::uint64_t num_tokens = c.q.shape()[0];
  const std::uint64_t head_dim = c.q.shape()[2];
  RPA_RETURN_IF_ERROR(CheckDim(c.k, "k.npy", 0, "T", num_tokens, "q.npy"));
  RPA_RETURN_IF_ERROR(CheckDim(c.k, "k.npy", 2, "D", head_dim, "q.npy"));
  const std::uint64_t num_kv_heads = c.k.shape()[1];
  RPA_RETURN_IF_ERROR(CheckDim(c.v, "v.npy", 0, "T", num_tokens, "q.npy"));
  RPA_RETURN_IF_ERROR(CheckDim(c.v, "v.npy", 1, "Hkv", num_kv_heads, "k.npy"));
  RPA_RETURN_IF_ERROR(CheckDim(c.v, "v.npy", 2, "D", head_dim, "q.npy"));
  RPA_RETURN_IF_ERROR(
      CheckDim(c.kv_cache, "kv_cache.npy", 2, "2 * Hkv", 2 * num_kv_heads,
               "k.npy (Hkv = " + std::to_string(num_kv_heads) + ")"));
  RPA_RETURN_IF_ERROR(
      CheckDim(c.kv_cache, "kv_cache.npy", 3, "D", head_dim, "q.npy"));

  RPA_RETURN_IF_ERROR(CheckRank(c.kv_lens, "kv_lens.npy", 1, "[S]"));
  const std::uint64_t num_seqs = c.kv_lens.shape()[0];
  RPA_RETURN_IF_ERROR(CheckRank(c.cu_q_lens, "cu_q_lens.npy", 1, "[S + 1]"));
  RPA_RETURN_IF_ERROR(
      CheckDim(c.cu_q_lens, "cu_q_lens.npy", 0, "S + 1", num_seqs + 1,
               "kv_lens.npy (S = " + std::to_string(num_seqs) + ")"));
  RPA_RETURN_IF_ERROR(CheckRank(c.distribution, "distribution.npy", 1, "[3]"));
  RPA_RETURN_IF_ERROR(
      CheckDim(c.distribution, "distribution.npy", 0, "3", 3, "SPEC 1"));
  if (c.page_indices.shape().size() == 2) {
    // [S, pps] is the same table, row-major: accepted and read flat.
    RPA_RETURN_IF_ERROR(CheckDim(c.page_indices, "page_indices.npy", 0, "S",
                                 num_seqs, "kv_lens.npy"));
  } else {
    RPA_RETURN_IF_ERROR(CheckRank(c.page_indices, "page_indices.npy", 1,
                                  "[S * pps] (or 2: [S, pps])"));
  }

  c.shape = {.num_tokens = static_cast<std::uint32_t>(num_tokens),
             .num_q_heads = static_cast<std::uint32_t>(c.q.shape()[1]),
             .num_kv_heads = static_cast<std::uint32_t>(num_kv_heads),
             .head_dim = static_cast<std::uint32_t>(head_dim)};
  return c;
}

StatusOr<NpyArray> RunAttentionCase(AttentionCase& c,
                                    const RunCaseOptions& options) {
  if (options.threads < 1 || options.threads > 1024) {
    return InvalidArgumentError("threads must be in [1, 1024], got " +
                                std::to_string(options.threads));
  }
  attention::PlanOptions plan_options;
  plan_options.parallelism = options.threads;
  memory::KvLayerView cache = c.CacheView();
  RPA_ASSIGN_OR_RETURN(attention::AttentionPlan plan,
                       attention::AttentionPlan::Create(
                           c.Metadata(), cache, c.params.params, plan_options));
  RPA_ASSIGN_OR_RETURN(
      NpyArray out, NpyArray::Create(NpyDtype::kF32,
                                     {plan.num_used_tokens(),
                                      c.shape.num_q_heads, c.shape.head_dim}));
  std::unique_ptr<runtime::Executor> executor;
  if (options.threads >= 2) {
    RPA_ASSIGN_OR_RETURN(
        executor, runtime::Executor::Create({.num_workers = options.threads}));
  }
  attention::BatchTensors tensors{.q = c.q.Values<float>(),
                                  .k = c.k.Values<float>(),
                                  .v = c.v.Values<float>(),
                                  .cache = cache,
                                  .out = out.Values<float>()};
  Status run = attention::Run(plan, tensors, executor.get());
  if (executor != nullptr) {
    Status shutdown = executor->Shutdown();
    if (run.ok()) run = shutdown;
  }
  RPA_RETURN_IF_ERROR(run);
  return out;
}

Status AttendCaseDirectory(const std::filesystem::path& case_dir,
                           const std::filesystem::path& out_dir,
                           const RunCaseOptions& options) {
  RPA_ASSIGN_OR_RETURN(AttentionCase c, LoadAttentionCase(case_dir));
  RPA_ASSIGN_OR_RETURN(NpyArray out, RunAttentionCase(c, options));

  std::error_code error;
  std::filesystem::create_directories(out_dir, error);
  if (error) {
    return InvalidArgumentError("output directory " + out_dir.string() +
                                ": cannot create: " + error.message());
  }
  const std::filesystem::path out_path = out_dir / "out.npy";
  const std::filesystem::path cache_path = out_dir / "kv_cache.npy";
  // Both temporaries complete before either name appears.
  RPA_ASSIGN_OR_RETURN(std::filesystem::path out_temp,
                       WriteNpyTemp(out_path, out));
  StatusOr<std::filesystem::path> cache_temp =
      WriteNpyTemp(cache_path, c.kv_cache);
  if (!cache_temp.ok()) {
    std::filesystem::remove(out_temp, error);
    return cache_temp.status();
  }
  Status committed = internal::CommitTempFile(*cache_temp, cache_path);
  if (!committed.ok()) {
    std::filesystem::remove(out_temp, error);
    return committed;
  }
  committed = internal::CommitTempFile(out_temp, out_path);
  if (!committed.ok()) {
    // Never leave a kv_cache.npy without its out.npy.
    std::filesystem::remove(cache_path, error);
  }
  return committed;
}

}  // namespace rpa::scheduler
