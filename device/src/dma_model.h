#pragma once
// DmaModel: the timing of the DMA engines and of the HBM bandwidth they
// share, as an exact discrete-event simulation in integer nanoseconds. It
// moves no data and knows no executor: the Device feeds it submissions and
// the current time, and is told, in order, which transfers land when
// (device/README.md, "The DMA model").
//
// A transfer's life: queued (FIFO per engine, plus one FIFO for "any
// engine") -> on an engine, paying its fixed cost (issue latency + chunks *
// descriptor cost, no bandwidth) -> streaming (processor sharing of the HBM
// bandwidth among every streaming transfer) -> landed (engine freed).
//
// Thread-safety: none (owned by one Device, used from one thread).
// Memory ordering: not applicable.
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <vector>

namespace rpa::device::internal {

// Rounds a non-negative duration in (fractional) nanoseconds up to whole
// nanoseconds, treating values within a relative 1e-12 (and an absolute
// 1e-6 ns) of an integer as that integer, so that exact quotients computed in
// double (3.7e6 B at 3.7e12 B/s = 1000 ns) do not gain a nanosecond from the
// last bit of rounding.
std::int64_t CeilNs(double ns);

struct DmaTiming {
  std::uint64_t id = 0;
  int engine = -1;
  std::uint64_t bytes = 0;
  std::uint32_t num_chunks = 0;
  std::int64_t issue_ns = 0;
  std::int64_t engine_start_ns = -1;  // taken off the queue by its engine
  std::int64_t stream_start_ns = -1;  // fixed cost paid, bytes start moving
  std::int64_t land_ns = -1;
};

class DmaModel {
 public:
  DmaModel(std::uint32_t num_engines, double hbm_bytes_per_s,
           double issue_latency_ns, double descriptor_ns);

  // Queues a transfer issued at `now_ns` (precondition: AdvanceTo(now_ns)
  // was called and now_ns is not before the last time seen). engine -1: the
  // first engine that is free (lowest index on ties). Returns its id (issue
  // order, from 1).
  std::uint64_t Submit(std::int64_t now_ns, int engine, std::uint64_t bytes,
                       std::uint32_t num_chunks);

  // Processes every event at or before now_ns in time order; calls on_land
  // for each landing (same-time landings in id order) before the engines it
  // frees take their next transfer.
  void AdvanceTo(std::int64_t now_ns,
                 const std::function<void(const DmaTiming&)>& on_land);

  // Time of the next event (a stream start or a landing), if any.
  std::optional<std::int64_t> NextEventNs() const;

  std::size_t in_flight() const { return transfers_.size(); }
  // Time with >= 1 transfer streaming, up to now_ns.
  std::int64_t hbm_busy_ns(std::int64_t now_ns) const;
  // Per engine: engine start to landing of every transfer it ran, up to now.
  std::vector<std::int64_t> engine_busy_ns(std::int64_t now_ns) const;

 private:
  struct Transfer {
    DmaTiming timing;
    int requested_engine = -1;
    std::int64_t fixed_ns = 0;
    double remaining_bytes = 0;      // at rate_epoch_ns_, while streaming
    std::int64_t completion_ns = 0;  // while streaming
  };

  void Step(std::int64_t t_ns,
            const std::function<void(const DmaTiming&)>& on_land);
  // Gives free engines their next transfers and starts the streams whose
  // fixed cost has been paid by t_ns; re-plans the streaming set if it
  // changed. Returns nothing: the caller reads NextEventNs().
  void Settle(std::int64_t t_ns, bool streaming_changed);
  void Dispatch(std::int64_t t_ns);
  // Charges every streaming transfer for the bytes it moved since
  // rate_epoch_ns_ at the current share.
  void ProgressTo(std::int64_t t_ns);
  void Replan(std::int64_t t_ns);

  const std::uint32_t num_engines_;
  const double hbm_bytes_per_s_;
  const double issue_latency_ns_;
  const double descriptor_ns_;

  std::uint64_t next_id_ = 1;
  std::map<std::uint64_t, Transfer> transfers_;  // every transfer in flight
  std::vector<std::deque<std::uint64_t>> pinned_queue_;  // per engine
  std::deque<std::uint64_t> any_queue_;                  // engine -1
  std::vector<std::uint64_t> engine_current_;            // 0: free
  std::vector<std::uint64_t> delaying_;   // on an engine, paying fixed cost
  std::vector<std::uint64_t> streaming_;  // in id order
  std::int64_t rate_epoch_ns_ = 0;

  std::int64_t hbm_busy_done_ns_ = 0;
  std::int64_t hbm_busy_since_ns_ = 0;  // valid while streaming_ non-empty
  std::vector<std::int64_t> engine_busy_done_ns_;
};

}  // namespace rpa::device::internal
