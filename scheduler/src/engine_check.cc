// Engine::CheckInvariants: recomputes from scratch what the engine keeps
// incrementally (reference counts, queue membership, evictable pages) and
// compares. scheduler/README.md, "The engine", lists the invariants.

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "engine_impl.h"

namespace rpa::scheduler {
namespace {

std::size_t CountIn(const std::vector<internal::Request*>& list,
                    const internal::Request* request) {
  return static_cast<std::size_t>(
      std::count(list.begin(), list.end(), request));
}

}  // namespace

Status Engine::Impl::CheckInvariants() const {
  std::vector<std::uint32_t> refs(num_pages_, 0);
  const auto count_table = [&](const Request& request) -> Status {
    if (!request.has_seq) return OkStatus();
    const auto table = cache_->PageTable(request.seq);
    if (!table.ok()) {
      return InternalError(fmt::format("request {}: its sequence is gone: {}",
                                       request.id, table.status().message()));
    }
    if (table->size() != DivideRoundUp(request.reserved, page_size_)) {
      return InternalError(
          fmt::format("request {}: {} pages for {} reserved tokens", request.id,
                      table->size(), request.reserved));
    }
    for (memory::PageId page : *table) ++refs[memory::PageIndex(page)];
    return OkStatus();
  };

  std::size_t queued = 0;
  for (const auto& [id, owned] : requests_) {
    const Request& request = *owned;
    RPA_RETURN_IF_ERROR(count_table(request));
    const std::size_t in_running = CountIn(running_, &request);
    const std::size_t in_waiting = CountIn(waiting_, &request);
    const std::size_t in_io = CountIn(io_pending_, &request);
    if (in_running + in_waiting + in_io != 1) {
      return InternalError(fmt::format(
          "request {} is in {} running, {} waiting and {} I/O queues", id,
          in_running, in_waiting, in_io));
    }
    ++queued;
    if (request.computed > request.reserved && request.has_seq) {
      return InternalError(
          fmt::format("request {}: {} computed tokens but {} reserved", id,
                      request.computed, request.reserved));
    }
    if (request.computed >= request.tokens.size()) {
      return InternalError(fmt::format(
          "request {}: {} computed of {} tokens: nothing left to run", id,
          request.computed, request.tokens.size()));
    }
    bool consistent = true;
    switch (request.state) {
      case RequestState::kRunning:
        consistent = in_running == 1 && request.has_seq && !request.io;
        break;
      case RequestState::kWaiting:
        consistent = in_waiting == 1 && !request.has_seq &&
                     request.computed == 0 && !request.io;
        break;
      case RequestState::kSwappedOut:
        consistent = (in_waiting == 1 && !request.has_seq && !request.io &&
                      request.swap.num_pages > 0) ||
                     (in_io == 1 && request.has_seq && request.io &&
                      request.io->is_write());
        break;
      case RequestState::kSwappingIn:
        consistent = in_io == 1 && request.has_seq && request.io &&
                     !request.io->is_write();
        break;
    }
    if (!consistent) {
      return InternalError(fmt::format(
          "request {}: state {} disagrees with its queue / pages / I/O", id,
          static_cast<int>(request.state)));
    }
  }
  if (queued != running_.size() + waiting_.size() + io_pending_.size()) {
    return InternalError(fmt::format(
        "{} live requests but {} running + {} waiting + {} with I/O", queued,
        running_.size(), waiting_.size(), io_pending_.size()));
  }

  std::uint32_t used = 0;
  std::uint32_t evictable = 0;
  for (std::uint32_t p = 0; p < num_pages_; ++p) {
    const memory::PageId page = memory::MakePageId(p);
    const bool cached = prefix_ != nullptr && prefix_->IsCached(page);
    const std::uint32_t expected = refs[p] + (cached ? 1 : 0);
    if (cache_->RefCount(page) != expected) {
      return InternalError(fmt::format(
          "page {}: reference count {}, but {} page tables{} hold it", p,
          cache_->RefCount(page), refs[p],
          cached ? " and the prefix cache" : ""));
    }
    if (expected > 0) ++used;
    if (cached && refs[p] == 0) ++evictable;
  }
  if (cache_->Stats().used_pages != used) {
    return InternalError(fmt::format("{} pages used, {} referenced",
                                     cache_->Stats().used_pages, used));
  }
  if (prefix_ != nullptr && prefix_->num_evictable() != evictable) {
    return InternalError(fmt::format("{} pages listed evictable, {} are",
                                     prefix_->num_evictable(), evictable));
  }

  // The planned step writes slots [start, kv_len) of each request: those
  // pages must be its own.
  if (planned_) {
    for (std::size_t i = 0; i < batch_.size(); ++i) {
      const Request& request = *batch_[i].request;
      const ScheduledRequest& entry = scheduled_[i];
      const auto table = cache_->PageTable(request.seq);
      if (!table.ok() || request.reserved < entry.kv_len) {
        return InternalError(
            fmt::format("request {}: the step needs {} tokens of pages",
                        request.id, entry.kv_len));
      }
      for (std::uint32_t page = entry.start_position / page_size_;
           page < DivideRoundUp(entry.kv_len, page_size_); ++page) {
        if (cache_->RefCount((*table)[page]) != 1) {
          return InternalError(fmt::format(
              "request {}: page {} (entry {}) written by the step has {} "
              "references",
              request.id, memory::PageIndex((*table)[page]), page,
              cache_->RefCount((*table)[page])));
        }
      }
    }
  }
  return OkStatus();
}

}  // namespace rpa::scheduler
