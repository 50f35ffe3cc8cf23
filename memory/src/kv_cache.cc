// KvCache: page tables, reference counts and copy-on-write over one Arena and
// one PageAllocator. memory/README.md ("The KV cache") states the invariants;
// every mutating call below first checks everything that can fail (ids,
// lengths, free pages, metadata memory) and only then changes state, so a
// failed call changes nothing.

#include "rpa/memory/kv_cache.h"

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

#include "page_pool.h"

#include "rpa/memory/arena.h"
#include "rpa/memory/page_allocator.h"
#include "rpa/runtime/check.h"
#include "rpa/runtime/int_math.h"

namespace rpa::memory {
namespace {

constexpr std::uint32_t kMaxLengthTokens =
    std::numeric_limits<std::int32_t>::max();
// page_indices are int32 (SPEC section 1).
constexpr std::uint32_t kMaxNumPages = std::uint32_t{1} << 31;
// The Arena's largest region.
constexpr std::uint64_t kMaxCacheBytes = std::uint64_t{1} << 62;
// The metadata budget provides page-table entries for this many times
// num_pages in total: forks copy their parent's table, so entries outnumber
// pages when prefixes are shared.
constexpr std::uint64_t kPageTableEntriesPerPage = 4;
constexpr std::uint64_t kMetadataHeadroomBytes = std::uint64_t{256} << 10;
constexpr std::uint32_t kNoSlot = std::numeric_limits<std::uint32_t>::max();

struct Slot {
  explicit Slot(std::pmr::memory_resource* resource) : pages(resource) {}

  std::uint32_t generation = 1;  // never 0, so SequenceId{0} names nothing
  bool live = false;
  std::uint32_t length = 0;           // tokens
  std::uint32_t next_free = kNoSlot;  // free-list link while !live
  std::pmr::vector<PageId> pages;     // ceil(length / page_size_tokens) entries
};

SequenceId MakeSequenceId(std::uint32_t slot, std::uint32_t generation) {
  return static_cast<SequenceId>(std::uint64_t{generation} << 32 | slot);
}

std::uint64_t RawId(SequenceId seq) { return static_cast<std::uint64_t>(seq); }

Status ValidateConfig(const KvCacheConfig& config) {
  const auto positive = [](const char* field, std::uint32_t value) {
    return value > 0 ? OkStatus()
                     : InvalidArgumentError(fmt::format(
                           "{} must be positive, got {}", field, value));
  };
  RPA_RETURN_IF_ERROR(positive("num_pages", config.num_pages));
  RPA_RETURN_IF_ERROR(positive("page_size_tokens", config.page_size_tokens));
  RPA_RETURN_IF_ERROR(positive("num_kv_heads", config.num_kv_heads));
  RPA_RETURN_IF_ERROR(positive("head_dim", config.head_dim));
  RPA_RETURN_IF_ERROR(positive("num_layers", config.num_layers));
  RPA_RETURN_IF_ERROR(positive("max_sequences", config.max_sequences));
  if (config.num_pages >= kMaxNumPages) {
    return InvalidArgumentError(fmt::format(
        "num_pages must be below 2^31 (page indices are int32), got {}",
        config.num_pages));
  }
  if (config.storage != StorageType::kF32 &&
      config.storage != StorageType::kF16 &&
      config.storage != StorageType::kBf16) {
    return InvalidArgumentError(
        fmt::format("storage must be f32, f16 or bf16, got {}",
                    static_cast<int>(config.storage)));
  }
  // num_layers * num_pages * page_size_tokens * 2 * num_kv_heads * head_dim *
  // element bytes
  std::uint64_t bytes = StorageBytes(config.storage) * std::uint64_t{2};
  bool overflow = false;
  for (std::uint64_t factor :
       {std::uint64_t{config.num_kv_heads}, std::uint64_t{config.head_dim},
        std::uint64_t{config.page_size_tokens}, std::uint64_t{config.num_pages},
        std::uint64_t{config.num_layers}}) {
    overflow = overflow || __builtin_mul_overflow(bytes, factor, &bytes);
  }
  if (overflow || bytes > kMaxCacheBytes) {
    return InvalidArgumentError(fmt::format(
        "the cache of num_layers {} x num_pages {} x page_size_tokens {} x 2 x "
        "num_kv_heads {} x "
        "head_dim {} x {} bytes ({}) exceeds 2^62 bytes",
        config.num_layers, config.num_pages, config.page_size_tokens,
        config.num_kv_heads, config.head_dim, StorageBytes(config.storage),
        StorageTypeName(config.storage)));
  }
  return OkStatus();
}

// The metadata budget of a cache (ArenaOptions::metadata_bytes). Every term is
// an upper bound of what the cache allocates through the arena's resource:
//  - the page allocator's bookkeeping, as its pool computes it;
//  - one reference count per page;
//  - the sequence slots, up to max_sequences, twice for the moment the growing
//    vector holds its old and new buffers;
//  - page tables of kPageTableEntriesPerPage * num_pages entries in total,
//  twice
//    for geometric growth;
//  - fixed headroom.
// Past it, Reserve / Fork / CreateSequence return ResourceExhausted.
std::size_t MetadataBudgetBytes(const KvCacheConfig& config,
                                const PageAllocatorOptions& allocator) {
  const std::uint64_t num_pages = config.num_pages;
  const std::uint64_t allocator_bytes =
      internal::PagePool<std::atomic>::MetadataBytes(allocator);
  const std::uint64_t refcount_bytes = num_pages * sizeof(std::uint32_t);
  const std::uint64_t slot_bytes =
      2 * std::uint64_t{config.max_sequences} * sizeof(Slot);
  const std::uint64_t page_table_bytes =
      2 * kPageTableEntriesPerPage * num_pages * sizeof(PageId);
  return allocator_bytes + refcount_bytes + slot_bytes + page_table_bytes +
         kMetadataHeadroomBytes;
}

}  // namespace

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

StatusOr<std::unique_ptr<KvCache>> KvCache::Create(
    const KvCacheConfig& config) {
  RPA_RETURN_IF_ERROR(ValidateConfig(config));
  const std::size_t token_bytes = std::size_t{2} * config.num_kv_heads *
                                  config.head_dim *
                                  StorageBytes(config.storage);
  const std::size_t page_bytes = token_bytes * config.page_size_tokens;
  // Layer-major: layer l is units [l * num_pages, (l + 1) * num_pages), one
  // contiguous SPEC tensor.
  PageAllocatorOptions allocator_options;
  allocator_options.num_pages = config.num_pages;
  RPA_ASSIGN_OR_RETURN(
      std::unique_ptr<Arena> arena,
      Arena::Create(
          {.unit_bytes = page_bytes,
           .num_units = std::uint64_t{config.num_layers} * config.num_pages,
           .metadata_bytes = MetadataBudgetBytes(config, allocator_options),
           .huge_pages = config.huge_pages}));
  // Freed pages are poisoned (ASan) in every layer.
  allocator_options.memory =
      PageMemory{.base = arena->base(),
                 .page_bytes = page_bytes,
                 .num_planes = config.num_layers,
                 .plane_stride_bytes = page_bytes * config.num_pages};
  allocator_options.metadata = arena->metadata_resource();
  std::unique_ptr<Impl> impl;
  try {
    impl = std::make_unique<Impl>(config, std::move(arena));
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("no memory for the KvCache object");
  }
  RPA_RETURN_IF_ERROR(impl->Init(allocator_options));
  try {
    return std::unique_ptr<KvCache>(new KvCache(config, std::move(impl)));
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("no memory for the KvCache object");
  }
}

KvCache::KvCache(const KvCacheConfig& config, std::unique_ptr<Impl> impl)
    : config_(config), impl_(std::move(impl)) {}

KvCache::~KvCache() = default;

StatusOr<SequenceId> KvCache::CreateSequence() {
  return impl_->CreateSequence();
}
StatusOr<SequenceId> KvCache::Fork(SequenceId parent) {
  return impl_->Fork(parent);
}
Status KvCache::Reserve(SequenceId seq, std::uint32_t num_tokens) {
  return impl_->Reserve(seq, num_tokens);
}
Status KvCache::FreeSequence(SequenceId seq) {
  return impl_->FreeSequence(seq);
}
StatusOr<SequenceId> KvCache::CreateSequenceFromPages(
    std::span<const PageId> pages, std::uint32_t num_tokens) {
  return impl_->CreateSequenceFromPages(pages, num_tokens);
}
Status KvCache::RetainPage(PageId page) { return impl_->RetainPage(page); }
Status KvCache::ReleasePage(PageId page) { return impl_->ReleasePage(page); }
StatusOr<std::uint32_t> KvCache::SequenceLength(SequenceId seq) const {
  return impl_->SequenceLength(seq);
}
StatusOr<std::span<const PageId>> KvCache::PageTable(SequenceId seq) const {
  return impl_->PageTable(seq);
}
Status KvCache::ExportBatch(std::span<const SequenceId> seqs,
                            std::uint32_t pages_per_sequence,
                            BatchPageTable* out) const {
  return impl_->ExportBatch(seqs, pages_per_sequence, out);
}
std::uint32_t KvCache::RefCount(PageId page) const {
  return impl_->RefCount(page);
}
KvLayerView KvCache::Layer(std::uint32_t layer) const {
  return impl_->Layer(layer);
}
KvCacheStats KvCache::Stats() const { return impl_->Stats(); }

}  // namespace rpa::memory
