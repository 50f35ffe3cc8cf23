#include "prefix_cache.h"

#include <algorithm>
#include <bit>

#include "mix64.h"

#include "rpa/runtime/check.h"

namespace rpa::scheduler::internal {
PrefixCache::PrefixCache(memory::KvCache* cache, std::uint32_t page_size_tokens)
    : cache_(cache),
      num_pages_(cache->config().num_pages),
      page_size_tokens_(page_size_tokens),
      entries_(num_pages_),
      tokens_(std::size_t{num_pages_} * page_size_tokens) {
  // At most num_pages entries: a load factor of at most 1/2 keeps probe
  // chains short.
  const std::uint64_t slots = std::bit_ceil(std::uint64_t{num_pages_} * 2);
  table_.assign(slots, kNil);
  table_mask_ = slots - 1;
}

std::uint64_t PrefixCache::ChainHash(
    std::uint64_t parent_hash, std::span<const std::int32_t> page_tokens) {
  std::uint64_t h = Mix64Finalize(parent_hash ^ 0x6a09e667f3bcc909ULL);
  for (std::int32_t token : page_tokens) {
    h = Mix64Finalize(
        h ^ (static_cast<std::uint64_t>(static_cast<std::uint32_t>(token)) *
             0x9e3779b97f4a7c15ULL));
  }
  return Mix64Finalize(h ^ page_tokens.size());
}

bool PrefixCache::Matches(std::uint32_t index, std::uint64_t hash,
                          CachedPageRef parent,
                          std::span<const std::int32_t> page_tokens) const {
  const Entry& entry = entries_[index];
  if (entry.epoch == 0 || entry.hash != hash) return false;
  if (parent.epoch == 0) {
    if (entry.parent_page != kNil) return false;
  } else if (entry.parent_page != memory::PageIndex(parent.page) ||
             entry.parent_epoch != parent.epoch) {
    return false;
  }
  // The hash matched: the token ids decide (a collision is a miss).
  const std::int32_t* stored =
      tokens_.data() + std::size_t{index} * page_size_tokens_;
  return std::equal(page_tokens.begin(), page_tokens.end(), stored);
}

std::uint32_t PrefixCache::Find(
    std::uint64_t hash, CachedPageRef parent,
    std::span<const std::int32_t> page_tokens) const {
  for (std::uint64_t slot = hash & table_mask_; table_[slot] != kNil;
       slot = (slot + 1) & table_mask_) {
    if (Matches(table_[slot], hash, parent, page_tokens)) return table_[slot];
  }
  return kNil;
}

std::uint32_t PrefixCache::Lookup(std::span<const std::uint64_t> hashes,
                                  std::span<const std::int32_t> tokens,
                                  std::span<CachedPageRef> refs) const {
  RPA_DCHECK(refs.size() >= hashes.size());
  CachedPageRef parent;
  std::uint32_t n = 0;
  for (; n < hashes.size(); ++n) {
    const std::uint32_t index = Find(
        hashes[n], parent,
        tokens.subspan(std::size_t{n} * page_size_tokens_, page_size_tokens_));
    if (index == kNil) break;
    parent = CachedPageRef{memory::MakePageId(index), entries_[index].epoch};
    refs[n] = parent;
  }
  return n;
}

CachedPageRef PrefixCache::Insert(memory::PageId page, std::uint64_t hash,
                                  CachedPageRef parent,
                                  std::span<const std::int32_t> page_tokens) {
  if (parent.epoch != 0 && !Valid(parent)) return {};
  const std::uint32_t existing = Find(hash, parent, page_tokens);
  if (existing != kNil) {
    return {memory::MakePageId(existing), entries_[existing].epoch};
  }
  const std::uint32_t index = memory::PageIndex(page);
  Entry& entry = entries_[index];
  if (entry.epoch != 0) {
    // Already the entry of other contents (cannot happen: a cached page is
    // full and never written again); keep the chain broken here.
    return {};
  }
  const Status retained = cache_->RetainPage(page);
  RPA_CHECK_MSG(retained.ok(), retained.ToString().c_str());
  entry.hash = hash;
  entry.epoch = next_epoch_++;
  entry.parent_page = parent.epoch == 0 ? kNil : memory::PageIndex(parent.page);
  entry.parent_epoch = parent.epoch;
  std::copy(page_tokens.begin(), page_tokens.end(),
            tokens_.begin() + static_cast<std::ptrdiff_t>(std::size_t{index} *
                                                          page_size_tokens_));
  TableInsert(index);
  ++num_cached_;
  // A page offered by a request is referenced by its table too, so it is not
  // evictable yet; OnReleased makes it so.
  if (cache_->RefCount(page) == 1) LruPushBack(index);
  return {page, entry.epoch};
}

bool PrefixCache::Valid(CachedPageRef ref) const {
  return ref.epoch != 0 &&
         entries_[memory::PageIndex(ref.page)].epoch == ref.epoch;
}

bool PrefixCache::IsCached(memory::PageId page) const {
  return entries_[memory::PageIndex(page)].epoch != 0;
}

void PrefixCache::OnAcquired(memory::PageId page) {
  const std::uint32_t index = memory::PageIndex(page);
  if (entries_[index].in_lru) LruUnlink(index);
}

void PrefixCache::OnReleased(memory::PageId page) {
  const std::uint32_t index = memory::PageIndex(page);
  if (entries_[index].epoch != 0 && !entries_[index].in_lru &&
      cache_->RefCount(page) == 1) {
    LruPushBack(index);
  }
}

std::uint32_t PrefixCache::Evict(std::uint32_t count) {
  std::uint32_t evicted = 0;
  while (evicted < count && lru_head_ != kNil) {
    const std::uint32_t index = lru_head_;
    LruUnlink(index);
    Drop(index);
    ++evicted;
  }
  evictions_ += evicted;
  return evicted;
}

void PrefixCache::Clear() {
  for (std::uint32_t index = 0; index < num_pages_; ++index) {
    if (entries_[index].epoch == 0) continue;
    if (entries_[index].in_lru) LruUnlink(index);
    Drop(index);
  }
}

void PrefixCache::Drop(std::uint32_t index) {
  TableErase(index);
  entries_[index].epoch = 0;
  --num_cached_;
  const Status released = cache_->ReleasePage(memory::MakePageId(index));
  RPA_CHECK_MSG(released.ok(), released.ToString().c_str());
}

void PrefixCache::TableInsert(std::uint32_t index) {
  std::uint64_t slot = entries_[index].hash & table_mask_;
  while (table_[slot] != kNil) slot = (slot + 1) & table_mask_;
  table_[slot] = index;
}

// Linear probing with backward-shift deletion: no tombstones, so probe
// chains never grow with churn.
void PrefixCache::TableErase(std::uint32_t index) {
  std::uint64_t hole = entries_[index].hash & table_mask_;
  while (table_[hole] != index) {
    RPA_DCHECK(table_[hole] != kNil);
    hole = (hole + 1) & table_mask_;
  }
  std::uint64_t next = hole;
  for (;;) {
    next = (next + 1) & table_mask_;
    if (table_[next] == kNil) break;
    const std::uint64_t home = entries_[table_[next]].hash & table_mask_;
    // The entry at `next` may move into the hole only if its home slot is
    // not cyclically inside (hole, next].
    const bool stays = hole <= next ? (hole < home && home <= next)
                                    : (hole < home || home <= next);
    if (stays) continue;
    table_[hole] = table_[next];
    hole = next;
  }
  table_[hole] = kNil;
}

void PrefixCache::LruPushBack(std::uint32_t index) {
  Entry& entry = entries_[index];
  RPA_DCHECK(!entry.in_lru);
  entry.in_lru = true;
  entry.lru_prev = lru_tail_;
  entry.lru_next = kNil;
  if (lru_tail_ != kNil) {
    entries_[lru_tail_].lru_next = index;
  } else {
    lru_head_ = index;
  }
  lru_tail_ = index;
  ++num_evictable_;
}

void PrefixCache::LruUnlink(std::uint32_t index) {
  Entry& entry = entries_[index];
  RPA_DCHECK(entry.in_lru);
  if (entry.lru_prev != kNil) {
    entries_[entry.lru_prev].lru_next = entry.lru_next;
  } else {
    lru_head_ = entry.lru_next;
  }
  if (entry.lru_next != kNil) {
    entries_[entry.lru_next].lru_prev = entry.lru_prev;
  } else {
    lru_tail_ = entry.lru_prev;
  }
  entry.in_lru = false;
  entry.lru_prev = kNil;
  entry.lru_next = kNil;
  --num_evictable_;
}

}  // namespace rpa::scheduler::internal
