#pragma once

// KvCache: the paged KV cache of shared/SPEC.md section 1, for every layer of
// a model, with per-sequence page tables.
//
// Layout: one Arena holds num_layers planes; plane l is exactly SPEC's
// kv_cache tensor of layer l, [num_pages, page_size_tokens, 2 * num_kv_heads,
// head_dim] in C order, combined head 2h = K of kv head h, 2h + 1 = V of kv
// head h. A PageId names the same page in every layer, so one page table
// serves all layers. Address arithmetic: layer l, page p, slot s is
//   base + ((l * num_pages + p) * page_size_tokens + s) * token_bytes.
//
// Sequences: CreateSequence starts an empty one; Reserve(seq, n) makes room for
// n more tokens (allocating pages at page boundaries, all or nothing); Fork
// shares every page of a sequence with a new one (pages are reference
// counted); a shared, partially filled last page is copied on write by the
// next Reserve of either sharer, so writers never touch a shared page.
// FreeSequence drops the references and returns unreferenced pages.
// Every operation validates first and mutates after: a failed call (bad id,
// no pages, no metadata memory) changes nothing.
//
// Metadata (page tables, reference counts, sequence slots, the page
// allocator's bookkeeping) lives in the Arena's metadata heap with a budget
// computed from the config: page tables get 4 * num_pages entries in total
// (forks copy their parent's table), slots max_sequences. Past it,
// CreateSequence / Fork / Reserve return ResourceExhausted.
//
// Thread-safety: not thread-safe; calls on one KvCache must be serialized
// (the scheduler owns it). Const member functions may run concurrently with
// each other. The page memory behind Layer() may be read and written by
// kernels concurrently as long as no mutating call runs.
//
// Example:
//   auto cache = KvCache::Create({.num_pages = 1024, .page_size_tokens = 16,
//                                 .num_kv_heads = 8, .head_dim = 128,
//                                 .storage = StorageType::kBf16, .num_layers =
//                                 32});
//   RPA_ASSIGN_OR_RETURN(SequenceId seq, (*cache)->CreateSequence());
//   RPA_RETURN_IF_ERROR((*cache)->Reserve(seq, prompt_len));  // then write K/V
//   BatchPageTable table;
//   RPA_RETURN_IF_ERROR((*cache)->ExportBatch({&seq, 1}, 0, &table));

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "rpa/memory/page_id.h"
#include "rpa/memory/storage_type.h"
#include "rpa/runtime/status.h"

namespace rpa::memory {

class Arena;
class PageAllocator;

// Names a live sequence: slot in the low 32 bits, generation in the high 32,
// so an id whose sequence was freed is NotFound even after its slot is reused.
// Generations start at 1: SequenceId{} never names a sequence.
enum class SequenceId : std::uint64_t {};

struct KvCacheConfig {
  std::uint32_t num_pages = 0;         // P
  std::uint32_t page_size_tokens = 0;  // ps
  std::uint32_t num_kv_heads = 0;      // Hkv
  std::uint32_t head_dim = 0;          // D
  StorageType storage = StorageType::kF32;
  std::uint32_t num_layers = 1;
  bool huge_pages = false;              // ArenaOptions::huge_pages
  std::uint32_t max_sequences = 65536;  // live sequences at once
};

// One layer's cache as the kernels consume it (SPEC section 1 kv_cache).
struct KvLayerView {
  std::byte* data = nullptr;
  std::uint32_t num_pages = 0;
  std::uint32_t page_size_tokens = 0;
  std::uint32_t num_combined_heads = 0;  // 2 * num_kv_heads
  std::uint32_t head_dim = 0;
  StorageType storage = StorageType::kF32;
  std::size_t token_bytes = 0;  // num_combined_heads * head_dim * element bytes
  std::size_t page_bytes = 0;   // page_size_tokens * token_bytes

  std::byte* SlotAddress(PageId page, std::uint32_t slot) const {
    return data +
           (static_cast<std::size_t>(PageIndex(page)) * page_size_tokens +
            slot) *
               token_bytes;
  }
};

// The page-table inputs of SPEC section 1 for a batch of sequences.
struct BatchPageTable {
  std::vector<std::int32_t> kv_lens;  // [S]
  std::vector<std::int32_t>
      page_indices;  // [S * pages_per_sequence]; unused entries are 0
  std::uint32_t pages_per_sequence = 0;
};

struct KvCacheStats {
  std::uint32_t num_pages = 0;
  std::uint32_t free_pages = 0;
  std::uint32_t used_pages = 0;
  std::uint32_t high_water_pages = 0;
  std::uint32_t shared_pages = 0;  // pages with more than one reference
  std::uint32_t num_sequences = 0;
  std::size_t metadata_used_bytes = 0;
};

class KvCache {
 public:
  // InvalidArgument names the bad field (zero sizes, overflow);
  // ResourceExhausted or Unavailable come from the Arena.
  static StatusOr<std::unique_ptr<KvCache>> Create(const KvCacheConfig& config);

  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // A new, empty sequence. ResourceExhausted at max_sequences.
  StatusOr<SequenceId> CreateSequence();

  // A new sequence sharing all of `parent`'s pages and its length. NotFound for
  // a bad parent; ResourceExhausted at max_sequences or when the metadata
  // budget cannot hold the copied page table.
  StatusOr<SequenceId> Fork(SequenceId parent);

  // Makes room for num_tokens more tokens: length += num_tokens. Allocates the
  // pages this crosses into and, if the last page is shared and partially
  // filled, a private copy of it (the filled slots are copied in every layer).
  // All or nothing: ResourceExhausted when the pages (message "need N pages,
  // M free") or the page table's metadata are not there, InvalidArgument if the
  // length would exceed 2^31 - 1, NotFound for a bad id. num_tokens 0 is a
  // no-op.
  Status Reserve(SequenceId seq, std::uint32_t num_tokens);

  // Drops the sequence; pages no other sequence references become free.
  Status FreeSequence(SequenceId seq);

  // Page-level sharing (the scheduler's prefix cache).
  //
  // A new sequence of num_tokens tokens whose page table is `pages` (in
  // order), taking one reference on each page: the pages hold the K/V of
  // tokens [0, num_tokens) and are shared read-only. If num_tokens ends inside
  // the last page and that page has another reference, the next Reserve
  // copies it on write (as after Fork). Validated first, nothing changed on
  // error: InvalidArgument unless pages.size() == ceil(num_tokens /
  // page_size_tokens), for a page id out of range, a page that is not
  // allocated (reference count 0), a page listed twice, or num_tokens above
  // 2^31 - 1; ResourceExhausted at max_sequences or when the metadata budget
  // cannot hold the table. Empty pages with num_tokens 0 is CreateSequence.
  StatusOr<SequenceId> CreateSequenceFromPages(std::span<const PageId> pages,
                                               std::uint32_t num_tokens);

  // One more / one fewer reference on an allocated page, held by the caller
  // outside any page table (the prefix cache keeps cached pages alive this
  // way). A page whose last reference is released becomes free.
  // InvalidArgument for a page out of range or not allocated (reference count
  // 0), naming the page; nothing changed. RefCount counts these references
  // too, and a page they share with a table is copied on write like a page
  // shared by two tables.
  Status RetainPage(PageId page);
  Status ReleasePage(PageId page);

  StatusOr<std::uint32_t> SequenceLength(SequenceId seq) const;
  // Valid until the next mutating call.
  StatusOr<std::span<const PageId>> PageTable(SequenceId seq) const;

  // Writes kv_lens and page_indices for `seqs` (in order) into *out, reusing
  // its vectors' capacity. pages_per_sequence 0 means the largest page count
  // among `seqs` (at least 1); a smaller value than some sequence needs is
  // InvalidArgument, a bad id NotFound, a null out InvalidArgument. *out is
  // untouched on error.
  Status ExportBatch(std::span<const SequenceId> seqs,
                     std::uint32_t pages_per_sequence,
                     BatchPageTable* out) const;

  // References held on a page by page tables and RetainPage (0 = free); 0 for
  // an out-of-range id.
  std::uint32_t RefCount(PageId page) const;

  // The layer's tensor; layer < num_layers (RPA_CHECK).
  KvLayerView Layer(std::uint32_t layer) const;

  KvCacheStats Stats() const;
  const KvCacheConfig& config() const { return config_; }

 private:
  class Impl;
  KvCache(const KvCacheConfig& config, std::unique_ptr<Impl> impl);

  KvCacheConfig config_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rpa::memory
