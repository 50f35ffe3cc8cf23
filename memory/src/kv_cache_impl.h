#pragma once

// KvCache::Impl, moved out of kv_cache.cc (which builds it in
// KvCache::Create and forwards every public call to it): page tables,
// reference counts and copy-on-write over one Arena and one PageAllocator.
// memory/README.md ("The KV cache") states the invariants; every mutating
// call below first checks everything that can fail (ids, lengths, free pages,
// metadata memory) and only then changes state, so a failed call changes
// nothing.

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory_resource>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "rpa/memory/arena.h"
#include "rpa/memory/kv_cache.h"
#include "rpa/memory/page_allocator.h"
#include "rpa/runtime/check.h"
#include "rpa/runtime/int_math.h"

namespace rpa::memory {
namespace internal {

inline constexpr std::uint32_t kMaxLengthTokens =
    std::numeric_limits<std::int32_t>::max();
inline constexpr std::uint32_t kNoSlot =
    std::numeric_limits<std::uint32_t>::max();

struct Slot {
  explicit Slot(std::pmr::memory_resource* resource) : pages(resource) {}

  std::uint32_t generation = 1;  // never 0, so SequenceId{0} names nothing
  bool live = false;
  std::uint32_t length = 0;           // tokens
  std::uint32_t next_free = kNoSlot;  // free-list link while !live
  std::pmr::vector<PageId> pages;     // ceil(length / page_size_tokens) entries
};

inline SequenceId MakeSequenceId(std::uint32_t slot, std::uint32_t generation) {
  return static_cast<SequenceId>(std::uint64_t{generation} << 32 | slot);
}

inline std::uint64_t RawId(SequenceId seq) {
  return static_cast<std::uint64_t>(seq);
}

}  // namespace internal

// Named unqualified below, as when they sat in kv_cache.cc's unnamed
// namespace; only kv_cache.cc includes this header.
using internal::kMaxLengthTokens;
using internal::kNoSlot;
using internal::MakeSequenceId;
using internal::RawId;
using internal::Slot;

class KvCache::Impl {
 public:
  Impl(const KvCacheConfig& config, std::unique_ptr<Arena> arena)
      : config_(config),
        token_bytes_(std::size_t{2} * config.num_kv_heads * config.head_dim *
                     StorageBytes(config.storage)),
        page_bytes_(token_bytes_ * config.page_size_tokens),
        arena_(std::move(arena)),
        resource_(arena_->metadata_resource()),
        refcounts_(resource_),
        slots_(resource_) {}

  Status Init(const PageAllocatorOptions& allocator_options) {
    try {
      refcounts_.assign(config_.num_pages, 0);
    } catch (const std::bad_alloc&) {
      return ResourceExhaustedError(fmt::format(
          "metadata budget of {} bytes cannot hold the reference counts of "
          "num_pages {}",
          arena_->Stats().metadata_budget_bytes, config_.num_pages));
    }
    RPA_ASSIGN_OR_RETURN(allocator_, PageAllocator::Create(allocator_options));
    return OkStatus();
  }

  StatusOr<SequenceId> CreateSequence() {
    RPA_RETURN_IF_ERROR(CheckSequenceLimit());
    std::uint32_t index = 0;
    try {
      index = AcquireSlot();
    } catch (const std::bad_alloc&) {
      return MetadataExhausted("a new sequence slot");
    }
    Slot& slot = slots_[index];
    slot.live = true;
    slot.length = 0;
    ++num_sequences_;
    return MakeSequenceId(index, slot.generation);
  }

  StatusOr<SequenceId> Fork(SequenceId parent) {
    RPA_ASSIGN_OR_RETURN(const std::uint32_t parent_index, Find(parent));
    RPA_RETURN_IF_ERROR(CheckSequenceLimit());
    std::uint32_t index = 0;
    std::pmr::vector<PageId> pages(resource_);
    try {
      pages =
          slots_[parent_index].pages;  // a copy of the entries, capacity = size
      index = AcquireSlot();  // may move the slots: an index, never a reference
    } catch (const std::bad_alloc&) {
      return MetadataExhausted(fmt::format(
          "the page table of a fork of sequence {}", RawId(parent)));
    }
    for (PageId page : pages) AddReference(page);
    Slot& child = slots_[index];
    child.live = true;
    child.length = slots_[parent_index].length;
    child.pages = std::move(pages);  // same resource: steals the buffer
    ++num_sequences_;
    return MakeSequenceId(index, child.generation);
  }

  Status Reserve(SequenceId seq, std::uint32_t num_tokens) {
    RPA_ASSIGN_OR_RETURN(const std::uint32_t index, Find(seq));
    if (num_tokens == 0) return OkStatus();
    Slot& slot = slots_[index];
    const std::uint32_t ps = config_.page_size_tokens;
    if (num_tokens > kMaxLengthTokens - slot.length) {
      return InvalidArgumentError(
          fmt::format("num_tokens {} would grow sequence {} from {} to {} "
                      "tokens, above 2^31 - 1",
                      num_tokens, RawId(seq), slot.length,
                      std::uint64_t{slot.length} + num_tokens));
    }
    const std::uint32_t new_length = slot.length + num_tokens;
    const auto old_pages = static_cast<std::uint32_t>(slot.pages.size());
    const auto new_pages =
        static_cast<std::uint32_t>(DivideRoundUp(new_length, ps));
    // The new tokens start in the last page when it has room; if that page is
    // shared, this sequence must write into a private copy of it.
    const std::uint32_t filled_in_last = slot.length % ps;
    const bool copy_last =
        filled_in_last != 0 && refcounts_[PageIndex(slot.pages.back())] > 1;
    const std::uint32_t needed = new_pages - old_pages + (copy_last ? 1 : 0);

    const std::uint32_t free_pages = config_.num_pages - used_pages_;
    if (needed > free_pages) {
      return ResourceExhaustedError(
          fmt::format("sequence {}: {} more tokens need {} pages, {} free",
                      RawId(seq), num_tokens, needed, free_pages));
    }
    // Metadata before pages: growing the table can fail without side effects,
    // giving pages back could not (it would move the high-water mark). The
    // table also lends its tail to AllocateN, so it holds the private copy's
    // id for a moment too.
    const std::size_t table_entries = std::size_t{old_pages} + needed;
    if (slot.pages.capacity() < table_entries) {
      const std::size_t capacity = std::max<std::size_t>(
          table_entries,
          std::min<std::size_t>(2 * slot.pages.capacity(), config_.num_pages));
      try {
        slot.pages.reserve(capacity);
      } catch (const std::bad_alloc&) {
        return MetadataExhausted(
            fmt::format("a page table of {} entries for sequence {}", capacity,
                        RawId(seq)));
      }
    }
    if (needed > 0) {
      slot.pages.resize(table_entries);  // within capacity: no allocation
      if (!allocator_->AllocateN(
              std::span<PageId>(slot.pages).subspan(old_pages))) {
        // Unreachable while this cache is the allocator's only user.
        slot.pages.resize(old_pages);
        return ResourceExhaustedError(fmt::format(
            "sequence {}: {} more tokens need {} pages, {} free", RawId(seq),
            num_tokens, needed, allocator_->Stats().free_pages));
      }
      for (std::size_t i = old_pages; i < table_entries; ++i)
        TakeNewPage(slot.pages[i]);
      if (copy_last) {
        const PageId copy = slot.pages.back();
        slot.pages.pop_back();
        const PageId shared = slot.pages[old_pages - 1];
        const std::size_t bytes = std::size_t{filled_in_last} * token_bytes_;
        for (std::uint32_t layer = 0; layer < config_.num_layers; ++layer) {
          std::memcpy(PageAddress(layer, copy), PageAddress(layer, shared),
                      bytes);
        }
        slot.pages[old_pages - 1] = copy;
        DropReference(shared);  // another sequence still holds it
      }
      high_water_pages_ = std::max(high_water_pages_, used_pages_);
    }
    slot.length = new_length;
    return OkStatus();
  }

  Status FreeSequence(SequenceId seq) {
    RPA_ASSIGN_OR_RETURN(const std::uint32_t index, Find(seq));
    Slot& slot = slots_[index];
    // Pages whose last reference goes are gathered at the front of the
    // table being dropped, so freeing allocates nothing.
    std::size_t unreferenced = 0;
    for (PageId page : slot.pages) {
      if (DropReference(page) == 0) slot.pages[unreferenced++] = page;
    }
    const Status freed = allocator_->FreeN(
        std::span<const PageId>(slot.pages.data(), unreferenced));
    RPA_CHECK_MSG(freed.ok(), freed.ToString().c_str());
    std::pmr::vector<PageId>(resource_).swap(
        slot.pages);  // releases the table's memory
    slot.live = false;
    slot.length = 0;
    slot.generation =
        slot.generation == std::numeric_limits<std::uint32_t>::max()
            ? 1
            : slot.generation + 1;
    slot.next_free = free_head_;  // the free list is intrusive: no allocation
    free_head_ = index;
    --num_sequences_;
    return OkStatus();
  }

  StatusOr<SequenceId> CreateSequenceFromPages(std::span<const PageId> pages,
                                               std::uint32_t num_tokens) {
    const std::uint32_t ps = config_.page_size_tokens;
    if (num_tokens > kMaxLengthTokens) {
      return InvalidArgumentError(
          fmt::format("num_tokens {} is above 2^31 - 1", num_tokens));
    }
    if (pages.size() != DivideRoundUp(num_tokens, ps)) {
      return InvalidArgumentError(fmt::format(
          "num_tokens {} needs {} pages of {} tokens but pages has {} entries",
          num_tokens, DivideRoundUp(num_tokens, ps), ps, pages.size()));
    }
    for (std::size_t i = 0; i < pages.size(); ++i) {
      RPA_RETURN_IF_ERROR(
          CheckAllocated(pages[i], fmt::format("pages[{}]", i)));
    }
    RPA_RETURN_IF_ERROR(CheckSequenceLimit());
    std::uint32_t index = 0;
    std::pmr::vector<PageId> table(resource_);
    try {
      table.assign(pages.begin(), pages.end());
      // Distinct entries (README invariant 1): sort a copy and compare
      // neighbours.
      std::pmr::vector<PageId> sorted(table, resource_);
      std::sort(sorted.begin(), sorted.end());
      const auto repeated = std::adjacent_find(sorted.begin(), sorted.end());
      if (repeated != sorted.end()) {
        return InvalidArgumentError(fmt::format(
            "page {} is listed twice in pages", PageIndex(*repeated)));
      }
      index = AcquireSlot();
    } catch (const std::bad_alloc&) {
      return MetadataExhausted(
          fmt::format("a shared page table of {} entries", pages.size()));
    }
    for (PageId page : table) AddReference(page);
    Slot& slot = slots_[index];
    slot.live = true;
    slot.length = num_tokens;
    slot.pages = std::move(table);  // same resource: steals the buffer
    ++num_sequences_;
    return MakeSequenceId(index, slot.generation);
  }

  Status RetainPage(PageId page) {
    RPA_RETURN_IF_ERROR(CheckAllocated(page, "page"));
    AddReference(page);
    return OkStatus();
  }

  Status ReleasePage(PageId page) {
    RPA_RETURN_IF_ERROR(CheckAllocated(page, "page"));
    if (DropReference(page) == 0) {
      const Status freed = allocator_->Free(page);
      RPA_CHECK_MSG(freed.ok(), freed.ToString().c_str());
    }
    return OkStatus();
  }

  StatusOr<std::uint32_t> SequenceLength(SequenceId seq) const {
    RPA_ASSIGN_OR_RETURN(const std::uint32_t index, Find(seq));
    return slots_[index].length;
  }

  StatusOr<std::span<const PageId>> PageTable(SequenceId seq) const {
    RPA_ASSIGN_OR_RETURN(const std::uint32_t index, Find(seq));
    const Slot& slot = slots_[index];
    return std::span<const PageId>(slot.pages.data(), slot.pages.size());
  }

  Status ExportBatch(std::span<const SequenceId> seqs,
                     std::uint32_t pages_per_sequence,
                     BatchPageTable* out) const {
    if (out == nullptr) return InvalidArgumentError("out must not be null");
    std::uint32_t most_pages = 0;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      RPA_ASSIGN_OR_RETURN(const std::uint32_t index, Find(seqs[i]));
      const auto pages = static_cast<std::uint32_t>(slots_[index].pages.size());
      if (pages_per_sequence != 0 && pages > pages_per_sequence) {
        return InvalidArgumentError(
            fmt::format("pages_per_sequence {} is less than the {} pages of "
                        "sequence {} (seqs[{}])",
                        pages_per_sequence, pages, RawId(seqs[i]), i));
      }
      most_pages = std::max(most_pages, pages);
    }
    const std::uint32_t pps = pages_per_sequence != 0
                                  ? pages_per_sequence
                                  : std::max<std::uint32_t>(most_pages, 1);
    const std::size_t num_entries = seqs.size() * std::size_t{pps};
    try {
      // Reserving first keeps *out's contents untouched if memory runs out.
      out->kv_lens.reserve(seqs.size());
      out->page_indices.reserve(num_entries);
    } catch (const std::bad_alloc&) {
      return ResourceExhaustedError(fmt::format(
          "no memory for a batch page table of {} entries", num_entries));
    }
    out->kv_lens.clear();
    out->page_indices.assign(num_entries, 0);
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      const Slot& slot = slots_[static_cast<std::uint32_t>(RawId(seqs[i]))];
      out->kv_lens.push_back(static_cast<std::int32_t>(slot.length));
      for (std::size_t p = 0; p < slot.pages.size(); ++p) {
        out->page_indices[i * pps + p] =
            static_cast<std::int32_t>(PageIndex(slot.pages[p]));
      }
    }
    out->pages_per_sequence = pps;
    return OkStatus();
  }

  std::uint32_t RefCount(PageId page) const {
    return PageIndex(page) < config_.num_pages ? refcounts_[PageIndex(page)]
                                               : 0;
  }

  KvLayerView Layer(std::uint32_t layer) const {
    RPA_CHECK(layer < config_.num_layers);
    return KvLayerView{
        .data = arena_->UnitAddress(std::uint64_t{layer} * config_.num_pages),
        .num_pages = config_.num_pages,
        .page_size_tokens = config_.page_size_tokens,
        .num_combined_heads = 2 * config_.num_kv_heads,
        .head_dim = config_.head_dim,
        .storage = config_.storage,
        .token_bytes = token_bytes_,
        .page_bytes = page_bytes_};
  }

  KvCacheStats Stats() const {
    return KvCacheStats{
        .num_pages = config_.num_pages,
        .free_pages = config_.num_pages - used_pages_,
        .used_pages = used_pages_,
        .high_water_pages = high_water_pages_,
        .shared_pages = shared_pages_,
        .num_sequences = num_sequences_,
        .metadata_used_bytes = arena_->Stats().metadata_used_bytes};
  }

 private:
  // The slot of a live sequence, or NotFound naming the id.
  StatusOr<std::uint32_t> Find(SequenceId seq) const {
    const std::uint64_t raw = RawId(seq);
    const auto index = static_cast<std::uint32_t>(raw);
    const auto generation = static_cast<std::uint32_t>(raw >> 32);
    if (index >= slots_.size() || !slots_[index].live ||
        slots_[index].generation != generation) {
      return NotFoundError(
          fmt::format("sequence {} (slot {}, generation {}) is not a live "
                      "sequence of this cache",
                      raw, index, generation));
    }
    return index;
  }

  Status CheckAllocated(PageId page, std::string_view field) const {
    if (PageIndex(page) >= config_.num_pages) {
      return InvalidArgumentError(fmt::format("{} = {} is out of range [0, {})",
                                              field, PageIndex(page),
                                              config_.num_pages));
    }
    if (refcounts_[PageIndex(page)] == 0) {
      return InvalidArgumentError(
          fmt::format("{} = {} is not allocated (reference count 0)", field,
                      PageIndex(page)));
    }
    return OkStatus();
  }

  Status CheckSequenceLimit() const {
    if (num_sequences_ >= config_.max_sequences) {
      return ResourceExhaustedError(
          fmt::format("max_sequences {} sequences are live; free one first",
                      config_.max_sequences));
    }
    return OkStatus();
  }

  Status MetadataExhausted(std::string_view what) const {
    const ArenaStats stats = arena_->Stats();
    return ResourceExhaustedError(fmt::format(
        "the metadata budget of {} bytes ({} used) cannot hold {}",
        stats.metadata_budget_bytes, stats.metadata_used_bytes, what));
  }

  // A free slot index (its Slot holds no pages). Throws std::bad_alloc, with
  // nothing changed, when the slots cannot grow. Caller checked the limit.
  std::uint32_t AcquireSlot() {
    if (free_head_ != kNoSlot) {
      const std::uint32_t index = free_head_;
      free_head_ = slots_[index].next_free;
      slots_[index].next_free = kNoSlot;
      return index;
    }
    if (slots_.size() == slots_.capacity()) {
      // Strong guarantee: a throwing reserve leaves slots_ as it was.
      slots_.reserve(std::min<std::size_t>(
          std::max<std::size_t>(2 * slots_.capacity(), 16),
          config_.max_sequences));
    }
    slots_.emplace_back(
        resource_);  // within capacity; an empty pmr vector allocates nothing
    return static_cast<std::uint32_t>(slots_.size() - 1);
  }

  std::byte* PageAddress(std::uint32_t layer, PageId page) const {
    return arena_->UnitAddress(std::uint64_t{layer} * config_.num_pages +
                               PageIndex(page));
  }

  void TakeNewPage(PageId page) {
    RPA_DCHECK(refcounts_[PageIndex(page)] == 0);
    refcounts_[PageIndex(page)] = 1;
    ++used_pages_;
  }

  void AddReference(PageId page) {
    std::uint32_t& count = refcounts_[PageIndex(page)];
    RPA_DCHECK(count > 0);
    if (++count == 2) ++shared_pages_;
  }

  // The references left.
  std::uint32_t DropReference(PageId page) {
    std::uint32_t& count = refcounts_[PageIndex(page)];
    RPA_DCHECK(count > 0);
    --count;
    if (count == 1) --shared_pages_;
    if (count == 0) --used_pages_;
    return count;
  }

  const KvCacheConfig config_;
  const std::size_t token_bytes_;
  const std::size_t page_bytes_;
  // Declaration order is destruction order in reverse: everything below
  // allocates from arena_'s metadata resource and goes before it.
  std::unique_ptr<Arena> arena_;
  std::pmr::memory_resource* const resource_;
  std::unique_ptr<PageAllocator> allocator_;
  std::pmr::vector<std::uint32_t> refcounts_;  // [num_pages]; 0 = free
  std::pmr::vector<Slot> slots_;
  std::uint32_t free_head_ =
      kNoSlot;  // slots of freed sequences, linked by next_free
  std::uint32_t num_sequences_ = 0;
  std::uint32_t used_pages_ = 0;    // pages with a reference
  std::uint32_t shared_pages_ = 0;  // pages with more than one reference
  std::uint32_t high_water_pages_ = 0;
};

}  // namespace rpa::memory
