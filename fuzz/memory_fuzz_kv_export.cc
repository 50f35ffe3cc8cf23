// KvCacheProgram's ExportBatch ops and its ops on ids that name no live
// sequence (stale, random, or a live id with its generation or slot bent).
// ExportBatch of live sequences must write exactly the model's page tables
// (checked in memory_fuzz_kv_checks.cc); every failed call, ExportBatch or
// another one with a bad id, must leave its output, the tables, lengths,
// reference counts and Stats as they were.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "memory_fuzz.h"

namespace rpa::memory::fuzz {
namespace {

constexpr std::size_t kMaxExport = 16;

bool SameBatch(const BatchPageTable& a, const BatchPageTable& b) {
  return a.kv_lens == b.kv_lens && a.page_indices == b.page_indices &&
         a.pages_per_sequence == b.pages_per_sequence;
}

// What ExportBatch must leave alone when it fails.
BatchPageTable Sentinel() {
  BatchPageTable table;
  table.kv_lens = {-7, 12345};
  table.page_indices = {-1, 99, 7};
  table.pages_per_sequence = 777;
  return table;
}

}  // namespace

void KvCacheProgram::BadIdOp(SequenceId id, std::uint8_t which, bool stale) {
  static const char* const kOps[] = {"Reserve",      "Fork",
                                     "FreeSequence", "SequenceLength",
                                     "PageTable",    "ExportBatch"};
  const int op = which % 6;
  Trace("kv %s(%s id %llx)", kOps[op], stale ? "stale" : "bad", IdBits(id));
  const Snapshot before = Take();
  Status status;
  BatchPageTable out = Sentinel();
  switch (op) {
    case 0:
      status = cache_->Reserve(id, 1u + which / 6u % 4u);
      break;
    case 1:
      status = cache_->Fork(id).status();
      break;
    case 2:
      status = cache_->FreeSequence(id);
      break;
    case 3:
      status = cache_->SequenceLength(id).status();
      break;
    case 4:
      status = cache_->PageTable(id).status();
      break;
    default: {
      std::vector<SequenceId> ids;
      for (const Sequence& seq : live_) ids.push_back(seq.id);
      const std::size_t at = which / 6u % (ids.size() + 1);
      ids.insert(ids.begin() + static_cast<std::ptrdiff_t>(at), id);
      status = cache_->ExportBatch(ids, 0, &out);
      break;
    }
  }
  if (stale) {
    if (op == 1 && live_.size() >= config_.max_sequences) {
      ExpectCode(status, kOps[op], StatusCode::kNotFound,
                 StatusCode::kResourceExhausted);
    } else {
      ExpectCode(status, kOps[op], StatusCode::kNotFound);
    }
  } else {
    if (status.ok())
      Fail("%s with an id that names nothing succeeded", kOps[op]);
    if (status.code() != StatusCode::kNotFound &&
        status.code() != StatusCode::kInvalidArgument &&
        !(op == 1 && status.code() == StatusCode::kResourceExhausted)) {
      Fail("%s with an id that names nothing returned %s", kOps[op],
           status.ToString().c_str());
    }
  }
  if (!SameBatch(out, Sentinel()))
    Fail("ExportBatch failed but wrote its output");
  ExpectUnchanged(before, (std::string("a failed ") + kOps[op]).c_str());
}

void KvCacheProgram::ExportGood(ByteReader& in) {
  std::vector<std::size_t> indices;
  const auto live = static_cast<std::uint32_t>(live_.size());
  const std::uint32_t count =
      live == 0 ? 0
                : in.Below(std::min<std::uint32_t>(2 * live, kMaxExport) + 1);
  std::uint32_t max_pages = 0;
  std::vector<SequenceId> ids;
  for (std::uint32_t i = 0; i < count; ++i) {
    indices.push_back(in.Below(live));
    ids.push_back(live_[indices.back()].id);
    max_pages =
        std::max(max_pages, PagesFor(live_[indices.back()].tokens.size()));
  }
  const std::uint8_t mode = in.U8() % 3;
  const std::uint32_t pages_per_sequence =
      mode == 0 ? 0
                : (mode == 1 ? std::max(max_pages, 1u)
                             : max_pages + 1 + in.U8() % 3u);
  Trace(
      "kv ExportBatch(%u sequences, pages_per_sequence %u) (model: max pages "
      "%u)",
      count, pages_per_sequence, max_pages);
  BatchPageTable out = Sentinel();
  const Status status = cache_->ExportBatch(ids, pages_per_sequence, &out);
  if (count == 0 && !status.ok()) {
    // An empty batch may be refused; it must not touch the output.
    ExpectCode(status, "ExportBatch of no sequences",
               StatusCode::kInvalidArgument);
    if (!SameBatch(out, Sentinel()))
      Fail("ExportBatch failed but wrote its output");
    return;
  }
  ExpectCode(status, "ExportBatch of live sequences", StatusCode::kOk);
  CheckExport(
      indices,
      pages_per_sequence == 0 ? std::max(max_pages, 1u) : pages_per_sequence,
      out);
}

void KvCacheProgram::ExportBad(ByteReader& in) {
  const auto live = static_cast<std::uint32_t>(live_.size());
  std::vector<SequenceId> ids;
  std::uint32_t max_pages = 0;
  std::size_t largest = 0;
  for (std::size_t i = 0; i < live_.size(); ++i) {
    if (PagesFor(live_[i].tokens.size()) > max_pages) {
      max_pages = PagesFor(live_[i].tokens.size());
      largest = i;
    }
  }
  const std::uint32_t count =
      live == 0 ? 0 : in.Below(std::min<std::uint32_t>(live, kMaxExport));
  for (std::uint32_t i = 0; i < count; ++i)
    ids.push_back(live_[in.Below(live)].id);
  BatchPageTable out = Sentinel();
  Status status;
  const std::uint8_t kind = in.U8();
  if (kind % 8 == 7) {
    Trace("kv ExportBatch(%zu sequences, out nullptr)", ids.size());
    status = cache_->ExportBatch(ids, 0, nullptr);
    ExpectCode(status, "ExportBatch into nullptr",
               StatusCode::kInvalidArgument);
  } else if (max_pages >= 2 && (kind & 1u) != 0) {
    ids.insert(ids.begin() + in.Below(count + 1), live_[largest].id);
    const std::uint32_t pages_per_sequence = 1 + in.Below(max_pages - 1);
    Trace("kv ExportBatch(%zu sequences, pages_per_sequence %u < %u needed)",
          ids.size(), pages_per_sequence, max_pages);
    status = cache_->ExportBatch(ids, pages_per_sequence, &out);
    ExpectCode(status, "ExportBatch with too few pages_per_sequence",
               StatusCode::kInvalidArgument);
  } else {
    const bool use_stale = !stale_.empty() && (in.U8() & 1u) != 0;
    SequenceId bad =
        use_stale ? stale_[in.Below(static_cast<std::uint32_t>(stale_.size()))]
                  : static_cast<SequenceId>(in.U64() ^ 0x5a5a5a5a00000000ull);
    if (IsLive(bad)) return;
    ids.insert(ids.begin() + in.Below(count + 1), bad);
    Trace("kv ExportBatch(%zu sequences, one %s id %llx)", ids.size(),
          use_stale ? "stale" : "bad", IdBits(bad));
    status = cache_->ExportBatch(ids, 0, &out);
    if (use_stale) {
      ExpectCode(status, "ExportBatch with a stale id", StatusCode::kNotFound);
    } else {
      ExpectCode(status, "ExportBatch with a bad id", StatusCode::kNotFound,
                 StatusCode::kInvalidArgument);
    }
  }
  if (!SameBatch(out, Sentinel()))
    Fail("ExportBatch failed but wrote its output");
}

}  // namespace rpa::memory::fuzz
