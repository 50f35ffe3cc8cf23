// Engine bookkeeping shared by planning and committing: page release with
// the prefix cache's reference tracking, the hash chain and page
// registration, and the end of a request.

#include <fmt/format.h>

#include <algorithm>

#include "engine_impl.h"

namespace rpa::scheduler {

using internal::CachedPageRef;
using internal::PrefixCache;

Engine::Impl::Request* Engine::Impl::Find(RequestId id) const {
  const auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

void Engine::Impl::RemoveFrom(std::vector<Request*>& list, Request* request) {
  const auto it = std::find(list.begin(), list.end(), request);
  if (it != list.end()) list.erase(it);
}

// Drops the request's sequence. Cached pages that only the prefix cache
// holds afterwards become evictable, the request's last pages first (so
// eviction takes a sequence's tail before the prefix others may share).
void Engine::Impl::FreeSeq(Request* request) {
  RPA_DCHECK(request->has_seq);
  const StatusOr<std::span<const memory::PageId>> table =
      cache_->PageTable(request->seq);
  RPA_CHECK_MSG(table.ok(), table.status().ToString().c_str());
  page_scratch_.assign(table->begin(), table->end());  // capacity num_pages
  const Status freed = cache_->FreeSequence(request->seq);
  RPA_CHECK_MSG(freed.ok(), freed.ToString().c_str());
  if (prefix_ != nullptr) {
    for (auto it = page_scratch_.rbegin(); it != page_scratch_.rend(); ++it) {
      prefix_->OnReleased(*it);
    }
  }
  request->has_seq = false;
  request->seq = memory::SequenceId{};
  request->reserved = 0;
}

void Engine::Impl::ResetForRecompute(Request* request) {
  RPA_DCHECK(!request->has_seq);
  request->computed = 0;
  request->page_refs.clear();
  request->state = RequestState::kWaiting;
}

void Engine::Impl::EnsureHashes(Request* request, std::uint32_t num_pages) {
  std::vector<std::uint64_t>& hashes = request->page_hashes;
  while (hashes.size() < num_pages) {
    const std::size_t page = hashes.size();
    const std::uint64_t parent =
        page == 0 ? PrefixCache::kRootHash : hashes[page - 1];
    hashes.push_back(PrefixCache::ChainHash(
        parent, std::span<const std::int32_t>(request->tokens)
                    .subspan(page * page_size_, page_size_)));
  }
}

// Offers the request's newly full pages to the prefix cache. Stops where the
// chain breaks (the parent entry was evicted): a lookup could never reach a
// page past it.
void Engine::Impl::RegisterFullPages(Request* request) {
  if (prefix_ == nullptr || !request->has_seq) return;
  const std::uint32_t full = request->computed / page_size_;
  if (request->page_refs.size() >= full) return;
  EnsureHashes(request, full);
  const StatusOr<std::span<const memory::PageId>> table =
      cache_->PageTable(request->seq);
  RPA_CHECK_MSG(table.ok(), table.status().ToString().c_str());
  for (std::size_t page = request->page_refs.size(); page < full; ++page) {
    const CachedPageRef parent =
        page == 0 ? CachedPageRef{} : request->page_refs[page - 1];
    if (page > 0 && !prefix_->Valid(parent)) return;
    const CachedPageRef ref =
        prefix_->Insert((*table)[page], request->page_hashes[page], parent,
                        std::span<const std::int32_t>(request->tokens)
                            .subspan(page * page_size_, page_size_));
    if (ref.epoch == 0) return;
    request->page_refs.push_back(ref);  // capacity: the most pages
  }
}

// The end of a request (Finish, Abort, max_new_tokens): pages, swap space
// and the id go back at once. A swap job in flight for it is waited for
// first (its pages are being read or written); its outcome no longer
// matters.
void Engine::Impl::Release(Request* request, internal::PendingEnd kind) {
  if (kind == internal::PendingEnd::kAbort) {
    ++stats_.aborted_requests;
  } else {
    ++stats_.finished_requests;
  }
  if (request->io != nullptr) {
    if (!swap_->Wait(*request->io).ok()) ++stats_.swap_io_errors;
    request->io.reset();
    RemoveFrom(io_pending_, request);
  } else if (request->state == RequestState::kRunning) {
    RemoveFrom(running_, request);
  } else {
    RemoveFrom(waiting_, request);
  }
  if (request->has_seq) FreeSeq(request);
  if (request->swap.num_pages != 0) {
    swap_->Free(request->swap);
    request->swap = {};
  }
  requests_.erase(request->id);
}

}  // namespace rpa::scheduler
