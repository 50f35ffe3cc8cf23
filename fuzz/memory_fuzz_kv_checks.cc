// KvCacheProgram's checks: snapshots (what a failed call must not change),
// the invariants verified after every op (reference counts equal page-table
// entries, Stats agree with the tables, every live sequence reads back its own
// token signatures in every layer, ASan poisoning of free pages) and the
// output of ExportBatch.
#include <algorithm>
#include <cstring>

#include "memory_fuzz.h"

#include "rpa/runtime/sanitizers.h"

namespace rpa::memory::fuzz {
namespace {

constexpr std::uint32_t kNoPosition = 0xffffffffu;

// What the K (head) and V (tail) words of a token hold in one layer.
std::uint32_t SlotValue(std::uint32_t signature, std::uint32_t layer,
                        bool tail) {
  return Mix32(signature + layer * 0x27d4eb2fu + (tail ? 0x165667b1u : 0u));
}

bool SameStats(const KvCacheStats& a, const KvCacheStats& b) {
  return a.num_pages == b.num_pages && a.free_pages == b.free_pages &&
         a.used_pages == b.used_pages &&
         a.high_water_pages == b.high_water_pages &&
         a.shared_pages == b.shared_pages &&
         a.num_sequences == b.num_sequences &&
         a.metadata_used_bytes == b.metadata_used_bytes;
}

}  // namespace

RPA_FUZZ_NO_COVERAGE
std::vector<PageId> KvCacheProgram::Table(std::size_t index) const {
  auto table = cache_->PageTable(live_[index].id);
  if (!table.ok()) {
    Fail("PageTable of live sequence uid %u (id %llx) failed: %s",
         live_[index].uid, IdBits(live_[index].id),
         table.status().ToString().c_str());
  }
  return std::vector<PageId>(table->begin(), table->end());
}

RPA_FUZZ_NO_COVERAGE
KvCacheProgram::Snapshot KvCacheProgram::Take() const {
  Snapshot snapshot;
  for (std::size_t i = 0; i < live_.size(); ++i) {
    snapshot.tables.push_back(Table(i));
    auto length = cache_->SequenceLength(live_[i].id);
    if (!length.ok()) {
      Fail("SequenceLength of live sequence uid %u failed: %s", live_[i].uid,
           length.status().ToString().c_str());
    }
    snapshot.lengths.push_back(*length);
  }
  for (std::uint32_t page = 0; page < config_.num_pages; ++page) {
    snapshot.refcounts.push_back(cache_->RefCount(MakePageId(page)));
  }
  for (std::uint32_t bad : {config_.num_pages, 0xffffffffu}) {
    snapshot.refcounts.push_back(cache_->RefCount(MakePageId(bad)));
  }
  snapshot.stats = cache_->Stats();
  return snapshot;
}

RPA_FUZZ_NO_COVERAGE
void KvCacheProgram::ExpectUnchanged(const Snapshot& before,
                                     const char* what) const {
  const Snapshot after = Take();
  for (std::size_t i = 0; i < live_.size(); ++i) {
    if (before.tables[i] != after.tables[i] ||
        before.lengths[i] != after.lengths[i]) {
      Fail(
          "%s must change nothing but changed sequence uid %u: length %u -> "
          "%u, pages %zu -> %zu",
          what, live_[i].uid, before.lengths[i], after.lengths[i],
          before.tables[i].size(), after.tables[i].size());
    }
  }
  for (std::size_t page = 0; page < before.refcounts.size(); ++page) {
    if (before.refcounts[page] != after.refcounts[page]) {
      Fail(
          "%s must change nothing but changed the reference count of page %zu: "
          "%u -> %u",
          what, page, before.refcounts[page], after.refcounts[page]);
    }
  }
  const KvCacheStats& a = before.stats;
  const KvCacheStats& b = after.stats;
  if (!SameStats(a, b)) {
    Fail(
        "%s must change nothing but changed Stats: free %u -> %u, used %u -> "
        "%u, high water %u -> "
        "%u, "
        "shared %u -> %u, sequences %u -> %u, metadata bytes %zu -> %zu",
        what, a.free_pages, b.free_pages, a.used_pages, b.used_pages,
        a.high_water_pages, b.high_water_pages, a.shared_pages, b.shared_pages,
        a.num_sequences, b.num_sequences, a.metadata_used_bytes,
        b.metadata_used_bytes);
  }
}

RPA_FUZZ_NO_COVERAGE
void KvCacheProgram::ExpectTablesUnchanged(const Snapshot& before,
                                           std::size_t skip,
                                           const char* what) const {
  for (std::size_t i = 0; i < before.tables.size(); ++i) {
    if (i != skip && Table(i) != before.tables[i]) {
      Fail("%s changed the page table of another sequence (uid %u)", what,
           live_[i].uid);
    }
  }
}

RPA_FUZZ_NO_COVERAGE
void KvCacheProgram::CheckExport(std::span<const std::size_t> indices,
                                 std::uint32_t pages_per_sequence,
                                 const BatchPageTable& out) const {
  if (out.pages_per_sequence != pages_per_sequence ||
      out.kv_lens.size() != indices.size() ||
      out.page_indices.size() != indices.size() * pages_per_sequence) {
    Fail(
        "ExportBatch: pages_per_sequence %u (expected %u), %zu kv_lens "
        "(expected %zu), %zu "
        "page_indices",
        out.pages_per_sequence, pages_per_sequence, out.kv_lens.size(),
        indices.size(), out.page_indices.size());
  }
  for (std::size_t i = 0; i < indices.size(); ++i) {
    const Sequence& seq = live_[indices[i]];
    if (out.kv_lens[i] != static_cast<std::int32_t>(seq.tokens.size())) {
      Fail("ExportBatch: kv_lens[%zu] is %d, sequence uid %u has %zu tokens", i,
           out.kv_lens[i], seq.uid, seq.tokens.size());
    }
    const std::vector<PageId> table = Table(indices[i]);
    for (std::size_t k = 0; k < pages_per_sequence; ++k) {
      const std::int32_t expected =
          k < table.size() ? static_cast<std::int32_t>(PageIndex(table[k])) : 0;
      if (out.page_indices[i * pages_per_sequence + k] != expected) {
        Fail("ExportBatch: page_indices[%zu * %u + %zu] is %d, expected %d", i,
             pages_per_sequence, k,
             out.page_indices[i * pages_per_sequence + k], expected);
      }
    }
  }
}

RPA_FUZZ_NO_COVERAGE
void KvCacheProgram::WriteTokens(const Sequence& seq,
                                 std::span<const PageId> table,
                                 std::uint32_t from_token) {
  const std::uint32_t ps = config_.page_size_tokens;
  for (std::uint32_t t = from_token; t < seq.tokens.size(); ++t) {
    for (std::uint32_t layer = 0; layer < config_.num_layers; ++layer) {
      std::byte* slot = layers_[layer].SlotAddress(table[t / ps], t % ps);
      const std::uint32_t head = SlotValue(seq.tokens[t], layer, false);
      const std::uint32_t tail = SlotValue(seq.tokens[t], layer, true);
      std::memcpy(slot, &head, sizeof(head));
      std::memcpy(slot + layers_[layer].token_bytes - sizeof(tail), &tail,
                  sizeof(tail));
    }
  }
}

RPA_FUZZ_NO_COVERAGE
void KvCacheProgram::CheckContents(const Sequence& seq,
                                   std::span<const PageId> table) const {
  const std::uint32_t ps = config_.page_size_tokens;
  for (std::uint32_t t = 0; t < seq.tokens.size(); ++t) {
    for (std::uint32_t layer = 0; layer < config_.num_layers; ++layer) {
      const std::byte* slot = layers_[layer].SlotAddress(table[t / ps], t % ps);
      std::uint32_t head = 0;
      std::uint32_t tail = 0;
      std::memcpy(&head, slot, sizeof(head));
      std::memcpy(&tail, slot + layers_[layer].token_bytes - sizeof(tail),
                  sizeof(tail));
      if (head != SlotValue(seq.tokens[t], layer, false) ||
          tail != SlotValue(seq.tokens[t], layer, true)) {
        Fail(
            "sequence uid %u token %u layer %u (page %u slot %u) reads K %08x "
            "V %08x, "
            "expected K %08x V %08x: another sequence wrote into its page",
            seq.uid, t, layer, PageIndex(table[t / ps]), t % ps, head, tail,
            SlotValue(seq.tokens[t], layer, false),
            SlotValue(seq.tokens[t], layer, true));
      }
    }
  }
}

RPA_FUZZ_NO_COVERAGE
void KvCacheProgram::CheckInvariants() {
  const std::uint32_t n = config_.num_pages;
  std::vector<std::uint32_t> owners(n, 0);
  std::vector<std::uint32_t> position(n, kNoPosition);
  std::vector<std::size_t> last_owner(n, live_.size());
  for (std::size_t i = 0; i < live_.size(); ++i) {
    const Sequence& seq = live_[i];
    auto length = cache_->SequenceLength(seq.id);
    if (!length.ok() || *length != seq.tokens.size()) {
      Fail("SequenceLength(uid %u) is %s%u, the model says %zu", seq.uid,
           length.ok() ? "" : length.status().ToString().c_str(),
           length.ok() ? *length : 0u, seq.tokens.size());
    }
    const std::vector<PageId> table = Table(i);
    if (table.size() != PagesFor(seq.tokens.size())) {
      Fail("sequence uid %u of length %zu has %zu pages, expected %u", seq.uid,
           seq.tokens.size(), table.size(), PagesFor(seq.tokens.size()));
    }
    for (std::size_t k = 0; k < table.size(); ++k) {
      const std::uint32_t page = PageIndex(table[k]);
      if (page >= n)
        Fail("sequence uid %u entry %zu is page %u >= num_pages", seq.uid, k,
             page);
      if (last_owner[page] == i)
        Fail("sequence uid %u holds page %u twice", seq.uid, page);
      last_owner[page] = i;
      // Sharing comes from Fork, so a shared page is the same entry of every
      // table.
      if (position[page] == kNoPosition)
        position[page] = static_cast<std::uint32_t>(k);
      if (position[page] != k) {
        Fail(
            "page %u is entry %u of one table and entry %zu of sequence uid "
            "%u's",
            page, position[page], k, seq.uid);
      }
      ++owners[page];
    }
    CheckContents(seq, table);
  }
  std::uint32_t used = 0;
  std::uint32_t shared = 0;
  for (std::uint32_t page = 0; page < n; ++page) {
    const std::uint32_t refs = cache_->RefCount(MakePageId(page));
    if (refs != owners[page]) {
      Fail("RefCount(page %u) is %u, but %u page-table entries hold it", page,
           refs, owners[page]);
    }
    used += owners[page] > 0 ? 1u : 0u;
    shared += owners[page] > 1 ? 1u : 0u;
    if (owners[page] > 0) ever_used_[page] = 1;
    for (std::uint32_t layer = 0; layer < config_.num_layers; ++layer) {
      const std::byte* start = layers_[layer].SlotAddress(MakePageId(page), 0);
      if (owners[page] > 0 &&
          RegionHasPoison(start, layers_[layer].page_bytes)) {
        Fail("page %u (layer %u) is in use but poisoned for ASan", page, layer);
      }
      if (RPA_HAS_ASAN && owners[page] == 0 && ever_used_[page] != 0 &&
          !IsPoisoned(start)) {
        Fail("page %u (layer %u) was freed but is not poisoned for ASan", page,
             layer);
      }
    }
  }
  for (std::uint32_t bad : {n, n + 1, 0x80000000u, 0xffffffffu}) {
    if (cache_->RefCount(MakePageId(bad)) != 0)
      Fail("RefCount(%u) out of range is not 0", bad);
  }
  high_water_ = std::max(high_water_, used);
  const KvCacheStats stats = cache_->Stats();
  if (stats.num_pages != n || stats.used_pages != used ||
      stats.free_pages != n - used || stats.shared_pages != shared ||
      stats.num_sequences != live_.size() ||
      stats.high_water_pages != high_water_) {
    Fail(
        "Stats: num_pages %u, free %u, used %u, shared %u, sequences %u, high "
        "water %u; the "
        "tables say num_pages %u, free %u, used %u, shared %u, sequences %zu, "
        "high water %u",
        stats.num_pages, stats.free_pages, stats.used_pages, stats.shared_pages,
        stats.num_sequences, stats.high_water_pages, n, n - used, used, shared,
        live_.size(), high_water_);
  }
}

}  // namespace rpa::memory::fuzz
