// KvCache's public calls. Create validates the config, sizes the Arena and
// its metadata budget and builds the KvCache::Impl (kv_cache_impl.h: page
// tables, reference counts and copy-on-write), to which every other call
// forwards.

#include "rpa/memory/kv_cache.h"

#include <fmt/format.h>

#include <atomic>
#include <memory>
#include <new>
#include <utility>

#include "kv_cache_impl.h"
#include "page_pool.h"

#include "rpa/memory/arena.h"
#include "rpa/memory/page_allocator.h"

namespace rpa::memory {
namespace {

// page_indices are int32 (SPEC section 1).
constexpr std::uint32_t kMaxNumPages = std::uint32_t{1} << 31;
// The Arena's largest region.
constexpr std::uint64_t kMaxCacheBytes = std::uint64_t{1} << 62;
// The metadata budget provides page-table entries for this many times
// num_pages in total: forks copy their parent's table, so entries outnumber
// pages when prefixes are shared.
constexpr std::uint64_t kPageTableEntriesPerPage = 4;
constexpr std::uint64_t kMetadataHeadroomBytes = std::uint64_t{256} << 10;

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
