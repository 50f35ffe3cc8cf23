#include "rpa/scheduler/tuning_table.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>
#include <tuple>
#include <utility>

#include "shipped_tuning_tables.h"
#include <nlohmann/json.hpp>

#include "rpa/scheduler/npy.h"

namespace rpa::scheduler {
namespace {

using nlohmann::json;

constexpr std::string_view kFormat = "rpa-tuning-table";
constexpr int kVersion = 1;

StatusOr<attention::KernelKind> ParseKernel(std::string_view name) {
  for (auto kind :
       {attention::KernelKind::kDecode, attention::KernelKind::kPrefill,
        attention::KernelKind::kMixed}) {
    if (attention::KernelKindName(kind) == name) return kind;
  }
  return InvalidArgumentError("unknown kernel \"" + std::string(name) +
                              "\" (decode, prefill, mixed)");
}

// Reads entry[key] as an unsigned 32-bit integer; `allow_zero` for the
// device-only field.
Status ReadU32(const json& entry, std::string_view where, const char* key,
               bool allow_zero, std::uint32_t* out) {
  auto it = entry.find(key);
  if (it == entry.end()) {
    return InvalidArgumentError(std::string(where) + ": missing \"" + key +
                                "\"");
  }
  if (!it->is_number_unsigned() && !it->is_number_integer()) {
    return InvalidArgumentError(std::string(where) + ": \"" + key +
                                "\" must be an integer, got " + it->dump());
  }
  if (it->is_number_integer() && it->get<std::int64_t>() < 0) {
    return InvalidArgumentError(std::string(where) + ": \"" + key +
                                "\" = " + it->dump() + " is negative");
  }
  const auto value = it->get<std::uint64_t>();
  if (value > std::numeric_limits<std::int32_t>::max() ||
      (!allow_zero && value == 0)) {
    return InvalidArgumentError(std::string(where) + ": \"" + key +
                                "\" = " + it->dump() + " is out of range");
  }
  *out = static_cast<std::uint32_t>(value);
  return OkStatus();
}

StatusOr<TuningEntry> ParseEntry(const json& entry, std::size_t index) {
  const std::string where = "entries[" + std::to_string(index) + "]";
  if (!entry.is_object()) {
    return InvalidArgumentError(where + " must be an object");
  }
  static constexpr std::array<const char*, 11> kKeys = {"kernel",
                                                        "storage",
                                                        "head_dim",
                                                        "q_per_kv",
                                                        "page_size",
                                                        "max_q_len",
                                                        "max_kv_len",
                                                        "q_tokens_per_block",
                                                        "kv_tokens_per_block",
                                                        "compute_kv_tokens",
                                                        "time_us"};
  for (const auto& [key, value] : entry.items()) {
    if (std::find(kKeys.begin(), kKeys.end(), key) == kKeys.end()) {
      return InvalidArgumentError(where + ": unknown key \"" + key + "\"");
    }
  }
  TuningEntry out;
  auto kernel = entry.find("kernel");
  if (kernel == entry.end() || !kernel->is_string()) {
    return InvalidArgumentError(where + ": \"kernel\" must be a string");
  }
  auto kind = ParseKernel(kernel->get<std::string>());
  if (!kind.ok()) {
    return InvalidArgumentError(where + ": " + kind.status().message());
  }
  out.kernel = *kind;
  auto storage = entry.find("storage");
  if (storage == entry.end() || !storage->is_string()) {
    return InvalidArgumentError(where + ": \"storage\" must be a string");
  }
  auto type = memory::ParseStorageType(storage->get<std::string>());
  if (!type) {
    return InvalidArgumentError(where + ": unknown storage " + storage->dump() +
                                " (f32, f16, bf16)");
  }
  out.key.storage = *type;
  RPA_RETURN_IF_ERROR(
      ReadU32(entry, where, "head_dim", false, &out.key.head_dim));
  RPA_RETURN_IF_ERROR(
      ReadU32(entry, where, "q_per_kv", false, &out.key.q_per_kv));
  RPA_RETURN_IF_ERROR(
      ReadU32(entry, where, "page_size", false, &out.key.page_size));
  RPA_RETURN_IF_ERROR(
      ReadU32(entry, where, "max_q_len", false, &out.key.max_q_len));
  RPA_RETURN_IF_ERROR(
      ReadU32(entry, where, "max_kv_len", false, &out.key.max_kv_len));
  RPA_RETURN_IF_ERROR(ReadU32(entry, where, "q_tokens_per_block", true,
                              &out.q_tokens_per_block));
  RPA_RETURN_IF_ERROR(ReadU32(entry, where, "kv_tokens_per_block", true,
                              &out.kv_tokens_per_block));
  RPA_RETURN_IF_ERROR(
      ReadU32(entry, where, "compute_kv_tokens", true, &out.compute_kv_tokens));
  if (auto t = entry.find("time_us"); t != entry.end()) {
    if (!t->is_number() || t->get<double>() < 0) {
      return InvalidArgumentError(where +
                                  ": \"time_us\" must be a number >= 0");
    }
    out.time_us = t->get<double>();
  }
  if (out.kernel == attention::KernelKind::kDecode && out.key.max_q_len != 1) {
    return InvalidArgumentError(where +
                                ": a decode entry needs max_q_len 1, got " +
                                std::to_string(out.key.max_q_len));
  }
  return out;
}

StatusOr<TuningTable> ParseJson(const json& doc) {
  if (!doc.is_object()) {
    return InvalidArgumentError("tuning table: the document must be an object");
  }
  for (const auto& [key, value] : doc.items()) {
    if (key != "format" && key != "version" && key != "target" &&
        key != "generated_by" && key != "entries") {
      return InvalidArgumentError("tuning table: unknown key \"" + key + "\"");
    }
  }
  auto format = doc.find("format");
  if (format == doc.end() || !format->is_string() ||
      format->get<std::string>() != kFormat) {
    return InvalidArgumentError(
        "tuning table: \"format\" must be \"rpa-tuning-table\"");
  }
  auto version = doc.find("version");
  if (version == doc.end() || !version->is_number_integer() ||
      version->get<std::int64_t>() != kVersion) {
    return InvalidArgumentError("tuning table: \"version\" must be 1");
  }
  auto target = doc.find("target");
  if (target == doc.end() || !target->is_string() ||
      target->get<std::string>().empty()) {
    return InvalidArgumentError(
        "tuning table: \"target\" must be a non-empty string");
  }
  std::string generated_by;
  if (auto g = doc.find("generated_by"); g != doc.end()) {
    if (!g->is_string()) {
      return InvalidArgumentError(
          "tuning table: \"generated_by\" must be a string");
    }
    generated_by = g->get<std::string>();
  }
  auto entries = doc.find("entries");
  if (entries == doc.end() || !entries->is_array()) {
    return InvalidArgumentError("tuning table: \"entries\" must be an array");
  }
  std::vector<TuningEntry> parsed;
  parsed.reserve(entries->size());
  for (std::size_t i = 0; i < entries->size(); ++i) {
    RPA_ASSIGN_OR_RETURN(TuningEntry e, ParseEntry((*entries)[i], i));
    parsed.push_back(e);
  }
  return TuningTable(target->get<std::string>(), std::move(parsed),
                     std::move(generated_by));
}

auto Bounds(const TuningEntry& e) {
  return std::make_tuple(e.key.max_q_len, e.key.max_kv_len);
}

}  // namespace

TuningTable::TuningTable(std::string target, std::vector<TuningEntry> entries,
                         std::string generated_by)
    : target_(std::move(target)),
      entries_(std::move(entries)),
      generated_by_(std::move(generated_by)) {}

StatusOr<TuningTable> TuningTable::Parse(std::string_view json_text) {
  json doc = json::parse(json_text.begin(), json_text.end(), nullptr,
                         /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return InvalidArgumentError("tuning table: not valid JSON");
  }
  return ParseJson(doc);
}

StatusOr<TuningTable> TuningTable::Load(const std::filesystem::path& file) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) {
    return NotFoundError("tuning table: no file " + file.string());
  }
  std::ifstream in(file, std::ios::binary);
  if (!in)
    return UnavailableError("tuning table: cannot open " + file.string());
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return UnavailableError("tuning table: cannot read " + file.string());
  }
  auto table = Parse(text.str());
  if (!table.ok()) {
    return Status(table.status().code(),
                  file.string() + ": " + table.status().message());
  }
  return table;
}

TuningTable TuningTable::Shipped(std::string_view target) {
  for (const internal::ShippedTable& shipped : internal::ShippedTables()) {
    if (shipped.target != target) continue;
    auto table = Parse(shipped.json);
    // The shipped files are checked by a test; a broken one is a build bug.
    RPA_CHECK_MSG(table.ok(), "shipped tuning table is invalid");
    return *std::move(table);
  }
  return TuningTable(std::string(target), {});
}

std::string TuningTable::ToJson() const {
  json entries = json::array();
  for (const TuningEntry& e : entries_) {
    entries.push_back(
        json{{"kernel", std::string(attention::KernelKindName(e.kernel))},
             {"storage", std::string(memory::StorageTypeName(e.key.storage))},
             {"head_dim", e.key.head_dim},
             {"q_per_kv", e.key.q_per_kv},
             {"page_size", e.key.page_size},
             {"max_q_len", e.key.max_q_len},
             {"max_kv_len", e.key.max_kv_len},
             {"q_tokens_per_block", e.q_tokens_per_block},
             {"kv_tokens_per_block", e.kv_tokens_per_block},
             {"compute_kv_tokens", e.compute_kv_tokens},
             {"time_us", e.time_us}});
  }
  json doc = {{"format", kFormat},
              {"version", kVersion},
              {"target", target_},
              {"generated_by", generated_by_},
              {"entries", entries}};
  return doc.dump(2) + "\n";
}

Status TuningTable::Save(const std::filesystem::path& file) const {
  const std::string text = ToJson();
  return WriteFileAtomically(file, std::as_bytes(std::span(text)));
}

const TuningEntry* TuningTable::Find(attention::KernelKind kernel,
                                     const TuningKey& key) const {
  const TuningEntry* covering = nullptr;
  const TuningEntry* largest = nullptr;
  for (const TuningEntry& e : entries_) {
    if (e.kernel != kernel || e.key.storage != key.storage ||
        e.key.head_dim != key.head_dim || e.key.q_per_kv != key.q_per_kv ||
        e.key.page_size != key.page_size) {
      continue;
    }
    if (largest == nullptr || Bounds(*largest) < Bounds(e)) largest = &e;
    if (e.key.max_q_len >= key.max_q_len &&
        e.key.max_kv_len >= key.max_kv_len &&
        (covering == nullptr || Bounds(e) < Bounds(*covering))) {
      covering = &e;
    }
  }
  return covering != nullptr ? covering : largest;
}

}  // namespace rpa::scheduler
