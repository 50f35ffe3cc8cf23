// The DMA timing model (see dma_model.h and device/README.md).
//
// Exactness: time is integer nanoseconds; bytes remaining are doubles that
// only change when the set of streaming transfers changes (ProgressTo, then
// Replan), never when someone merely looks at the model, so observing the
// device (Stats(), an early AdvanceTo) cannot move an event by a rounding.

#include "dma_model.h"

#include <algorithm>
#include <cmath>

#include "rpa/runtime/check.h"

namespace rpa::device::internal {

std::int64_t CeilNs(double ns) {
  if (!(ns > 0)) return 0;
  RPA_CHECK_MSG(ns < 4e18, "simulated duration overflows int64 nanoseconds");
  const double tolerance = std::max(1e-6, ns * 1e-12);
  const double rounded = std::ceil(ns - tolerance);
  return rounded > 0 ? static_cast<std::int64_t>(rounded) : 0;
}

DmaModel::DmaModel(std::uint32_t num_engines, double hbm_bytes_per_s,
                   double issue_latency_ns, double descriptor_ns)
    : num_engines_(num_engines),
      hbm_bytes_per_s_(hbm_bytes_per_s),
      issue_latency_ns_(issue_latency_ns),
      descriptor_ns_(descriptor_ns),
      pinned_queue_(num_engines),
      engine_current_(num_engines, 0),
      engine_busy_done_ns_(num_engines, 0) {
  RPA_CHECK(num_engines > 0);
  RPA_CHECK(hbm_bytes_per_s > 0);
}

std::uint64_t DmaModel::Submit(std::int64_t now_ns, int engine,
                               std::uint64_t bytes, std::uint32_t num_chunks) {
  RPA_CHECK(engine >= -1 && engine < static_cast<int>(num_engines_));
  RPA_CHECK(bytes > 0 && num_chunks > 0);
  const std::uint64_t id = next_id_++;
  Transfer t;
  t.timing.id = id;
  t.timing.bytes = bytes;
  t.timing.num_chunks = num_chunks;
  t.timing.issue_ns = now_ns;
  t.requested_engine = engine;
  t.fixed_ns = CeilNs(issue_latency_ns_ +
                      static_cast<double>(num_chunks) * descriptor_ns_);
  transfers_.emplace(id, t);
  if (engine < 0) {
    any_queue_.push_back(id);
  } else {
    pinned_queue_[static_cast<std::size_t>(engine)].push_back(id);
  }
  Settle(now_ns, /*streaming_changed=*/false);
  return id;
}

void DmaModel::AdvanceTo(std::int64_t now_ns,
                         const std::function<void(const DmaTiming&)>& on_land) {
  for (;;) {
    const std::optional<std::int64_t> next = NextEventNs();
    if (!next.has_value() || *next > now_ns) return;
    Step(*next, on_land);
  }
}

std::optional<std::int64_t> DmaModel::NextEventNs() const {
  std::optional<std::int64_t> next;
  auto consider = [&next](std::int64_t t) {
    if (!next.has_value() || t < *next) next = t;
  };
  for (std::uint64_t id : delaying_) {
    consider(transfers_.at(id).timing.stream_start_ns);
  }
  for (std::uint64_t id : streaming_) {
    consider(transfers_.at(id).completion_ns);
  }
  return next;
}

void DmaModel::Step(std::int64_t t_ns,
                    const std::function<void(const DmaTiming&)>& on_land) {
  ProgressTo(t_ns);
  // Landings: streaming_ is in id order, so same-time landings go in issue
  // order.
  std::vector<DmaTiming> landed;
  std::vector<std::uint64_t> still_streaming;
  for (std::uint64_t id : streaming_) {
    Transfer& t = transfers_.at(id);
    if (t.completion_ns > t_ns) {
      still_streaming.push_back(id);
      continue;
    }
    const auto engine = static_cast<std::size_t>(t.timing.engine);
    t.timing.land_ns = t_ns;
    engine_busy_done_ns_[engine] += t_ns - t.timing.engine_start_ns;
    engine_current_[engine] = 0;
    landed.push_back(t.timing);
    transfers_.erase(id);
  }
  const bool changed = !landed.empty();
  if (changed) {
    streaming_ = std::move(still_streaming);
    if (streaming_.empty()) hbm_busy_done_ns_ += t_ns - hbm_busy_since_ns_;
  }
  Settle(t_ns, changed);
  for (const DmaTiming& timing : landed) on_land(timing);
}

void DmaModel::Settle(std::int64_t t_ns, bool streaming_changed) {
  Dispatch(t_ns);
  std::vector<std::uint64_t> still_delaying;
  for (std::uint64_t id : delaying_) {
    Transfer& t = transfers_.at(id);
    if (t.timing.stream_start_ns > t_ns) {
      still_delaying.push_back(id);
      continue;
    }
    if (!streaming_changed) ProgressTo(t_ns);  // before the share changes
    if (streaming_.empty()) hbm_busy_since_ns_ = t_ns;
    t.remaining_bytes = static_cast<double>(t.timing.bytes);
    streaming_.insert(
        std::upper_bound(streaming_.begin(), streaming_.end(), id), id);
    streaming_changed = true;
  }
  delaying_ = std::move(still_delaying);
  if (streaming_changed) Replan(t_ns);
}

void DmaModel::Dispatch(std::int64_t t_ns) {
  if (any_queue_.empty() &&
      std::all_of(pinned_queue_.begin(), pinned_queue_.end(),
                  [](const auto& q) { return q.empty(); })) {
    return;
  }
  for (std::uint32_t e = 0; e < num_engines_; ++e) {
    if (engine_current_[e] != 0) continue;
    std::deque<std::uint64_t>& pinned = pinned_queue_[e];
    // FIFO across both queues this engine serves: the older transfer first.
    std::deque<std::uint64_t>* from = nullptr;
    if (!pinned.empty()) from = &pinned;
    if (!any_queue_.empty() &&
        (from == nullptr || any_queue_.front() < from->front())) {
      from = &any_queue_;
    }
    if (from == nullptr) continue;
    const std::uint64_t id = from->front();
    from->pop_front();
    Transfer& t = transfers_.at(id);
    t.timing.engine = static_cast<int>(e);
    t.timing.engine_start_ns = t_ns;
    t.timing.stream_start_ns = t_ns + t.fixed_ns;
    engine_current_[e] = id;
    delaying_.insert(std::upper_bound(delaying_.begin(), delaying_.end(), id),
                     id);
  }
}

void DmaModel::ProgressTo(std::int64_t t_ns) {
  if (!streaming_.empty() && t_ns > rate_epoch_ns_) {
    // Each of the n streaming transfers moved dt * B / n bytes. dt * B first:
    // both are integers in practice, so the product and the quotient are
    // exact for round figures.
    const double moved = static_cast<double>(t_ns - rate_epoch_ns_) *
                         hbm_bytes_per_s_ /
                         (static_cast<double>(streaming_.size()) * 1e9);
    for (std::uint64_t id : streaming_) {
      Transfer& t = transfers_.at(id);
      t.remaining_bytes = std::max(0.0, t.remaining_bytes - moved);
    }
  }
  rate_epoch_ns_ = t_ns;
}

void DmaModel::Replan(std::int64_t t_ns) {
  RPA_CHECK(rate_epoch_ns_ == t_ns);
  // remaining * n * 1e9 / B in this order: n * 1e9 is exact, and so is the
  // product for round byte counts, leaving one rounding (the quotient).
  const double n_times_1e9 = static_cast<double>(streaming_.size()) * 1e9;
  for (std::uint64_t id : streaming_) {
    Transfer& t = transfers_.at(id);
    t.completion_ns =
        t_ns + CeilNs(t.remaining_bytes * n_times_1e9 / hbm_bytes_per_s_);
  }
}

std::int64_t DmaModel::hbm_busy_ns(std::int64_t now_ns) const {
  std::int64_t busy = hbm_busy_done_ns_;
  if (!streaming_.empty() && now_ns > hbm_busy_since_ns_) {
    busy += now_ns - hbm_busy_since_ns_;
  }
  return busy;
}

std::vector<std::int64_t> DmaModel::engine_busy_ns(std::int64_t now_ns) const {
  std::vector<std::int64_t> busy = engine_busy_done_ns_;
  for (std::uint32_t e = 0; e < num_engines_; ++e) {
    const std::uint64_t id = engine_current_[e];
    if (id == 0) continue;
    const std::int64_t start = transfers_.at(id).timing.engine_start_ns;
    if (now_ns > start) busy[e] += now_ns - start;
  }
  return busy;
}

}  // namespace rpa::device::internal
