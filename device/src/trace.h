#pragma once
// TraceRecorder: the device's Chrome trace-event log (device/README.md,
// "The trace"). Events are kept compact and turned into JSON on demand.
//
// Tracks (tid): 0 .. num_engines-1 are the DMA engines, then the matrix unit,
// then the vector unit; pid 0. Times in the JSON are simulated microseconds.
//
// Thread-safety: none (owned by one Device).
// Memory ordering: not applicable.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "rpa/device/device.h"

namespace rpa::device::internal {

struct DmaTraceArgs {
  DmaDirection direction = DmaDirection::kHbmToVmem;
  std::uint64_t bytes = 0;
  std::uint32_t chunks = 0;
  std::uint64_t dma_id = 0;
  std::int64_t issue_ns = 0;
  std::int64_t stream_start_ns = 0;
};

class TraceRecorder {
 public:
  TraceRecorder(bool enabled, std::size_t max_events, std::string device_name,
                std::uint32_t num_engines);

  void AddDma(int engine, std::int64_t start_ns, std::int64_t end_ns,
              std::string_view label, const DmaTraceArgs& args);
  void AddMatMul(std::int64_t start_ns, std::int64_t end_ns,
                 std::string_view label, std::uint64_t m, std::uint64_t k,
                 std::uint64_t n, double flops_charged);
  void AddVector(std::int64_t start_ns, std::int64_t end_ns,
                 std::string_view label, double ops);

  std::size_t kept() const { return events_.size(); }
  std::uint64_t dropped() const { return dropped_; }
  std::string ToJson() const;

 private:
  enum class Kind : std::uint8_t { kDma, kMatMul, kVector };
  struct Event {
    Kind kind = Kind::kDma;
    std::uint32_t track = 0;
    std::int64_t start_ns = 0;
    std::int64_t end_ns = 0;
    std::string name;
    DmaTraceArgs dma;           // kDma
    std::uint64_t mkn[3] = {};  // kMatMul
    double amount = 0;          // flops charged (kMatMul), ops (kVector)
  };
  bool Admit();

  bool enabled_;
  std::size_t max_events_;
  std::string device_name_;
  std::uint32_t num_engines_;
  std::vector<Event> events_;
  std::uint64_t dropped_ = 0;
};

}  // namespace rpa::device::internal
