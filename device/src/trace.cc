// TraceRecorder (see trace.h). The JSON is formatted by hand (nlohmann::json
// took ~13 us per event, seconds for a full trace); strings go through
// AppendJsonString, which escapes them and replaces invalid UTF-8, so the
// output is valid JSON whatever a label holds (the tests parse it back).

#include "trace.h"

#include <iterator>
#include <string>
#include <utility>

#include "fmt/format.h"

namespace rpa::device::internal {
namespace {

double Us(std::int64_t ns) { return static_cast<double>(ns) / 1000.0; }

// Length of the valid UTF-8 sequence starting at text[i], or 0.
std::size_t Utf8Length(std::string_view text, std::size_t i) {
  const auto byte = [&](std::size_t j) {
    return static_cast<unsigned char>(text[j]);
  };
  const unsigned char c = byte(i);
  std::size_t n = 0;
  std::uint32_t min = 0;
  std::uint32_t cp = 0;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2, min = 0x80, cp = c & 0x1Fu;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3, min = 0x800, cp = c & 0x0Fu;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4, min = 0x10000, cp = c & 0x07u;
  } else {
    return 0;
  }
  if (i + n > text.size()) return 0;
  for (std::size_t j = 1; j < n; ++j) {
    if ((byte(i + j) & 0xC0u) != 0x80u) return 0;
    cp = (cp << 6) | (byte(i + j) & 0x3Fu);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

void AppendJsonString(std::string& out, std::string_view text) {
  out += '"';
  for (std::size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
      ++i;
    } else if (c < 0x20) {
      fmt::format_to(std::back_inserter(out), "\\u{:04x}", c);
      ++i;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
    } else if (const std::size_t n = Utf8Length(text, i); n > 0) {
      out.append(text.substr(i, n));
      i += n;
    } else {
      out += "\\ufffd";  // an invalid byte
      ++i;
    }
  }
  out += '"';
}

void AppendMetadata(std::string& out, std::string_view what, std::uint32_t tid,
                    std::string_view arg_key, std::string_view arg_name) {
  fmt::format_to(std::back_inserter(out),
                 "{{\"name\":\"{}\",\"ph\":\"M\",\"pid\":0,\"tid\":{},"
                 "\"args\":{{\"{}\":",
                 what, tid, arg_key);
  AppendJsonString(out, arg_name);
  out += "}},\n";
}

}  // namespace

TraceRecorder::TraceRecorder(bool enabled, std::size_t max_events,
                             std::string device_name, std::uint32_t num_engines)
    : enabled_(enabled),
      max_events_(max_events),
      device_name_(std::move(device_name)),
      num_engines_(num_engines) {}

bool TraceRecorder::Admit() {
  if (!enabled_) return false;
  if (events_.size() >= max_events_) {
    ++dropped_;
    return false;
  }
  return true;
}

void TraceRecorder::AddDma(int engine, std::int64_t start_ns,
                           std::int64_t end_ns, std::string_view label,
                           const DmaTraceArgs& args) {
  if (!Admit()) return;
  Event event;
  event.kind = Kind::kDma;
  event.track = static_cast<std::uint32_t>(engine);
  event.start_ns = start_ns;
  event.end_ns = end_ns;
  if (!label.empty()) {
    event.name = std::string(label);
  } else {
    event.name =
        args.direction == DmaDirection::kHbmToVmem ? "hbm->vmem" : "vmem->hbm";
  }
  event.dma = args;
  events_.push_back(std::move(event));
}

void TraceRecorder::AddMatMul(std::int64_t start_ns, std::int64_t end_ns,
                              std::string_view label, std::uint64_t m,
                              std::uint64_t k, std::uint64_t n,
                              double flops_charged) {
  if (!Admit()) return;
  Event event;
  event.kind = Kind::kMatMul;
  event.track = num_engines_;
  event.start_ns = start_ns;
  event.end_ns = end_ns;
  event.name = std::string(label);
  event.mkn[0] = m;
  event.mkn[1] = k;
  event.mkn[2] = n;
  event.amount = flops_charged;
  events_.push_back(std::move(event));
}

void TraceRecorder::AddVector(std::int64_t start_ns, std::int64_t end_ns,
                              std::string_view label, double ops) {
  if (!Admit()) return;
  Event event;
  event.kind = Kind::kVector;
  event.track = num_engines_ + 1;
  event.start_ns = start_ns;
  event.end_ns = end_ns;
  event.name = std::string(label);
  event.amount = ops;
  events_.push_back(std::move(event));
}

std::string TraceRecorder::ToJson() const {
  std::string out;
  out.reserve(256 + events_.size() * 200);
  out += "{\"traceEvents\":[\n";
  AppendMetadata(out, "process_name", 0, "name",
                 "rpa simulated " + device_name_);
  for (std::uint32_t e = 0; e < num_engines_; ++e) {
    AppendMetadata(out, "thread_name", e, "name",
                   fmt::format("DMA engine {}", e));
  }
  AppendMetadata(out, "thread_name", num_engines_, "name", "matrix unit");
  AppendMetadata(out, "thread_name", num_engines_ + 1, "name", "vector unit");
  for (std::uint32_t tid = 0; tid < num_engines_ + 2; ++tid) {
    fmt::format_to(std::back_inserter(out),
                   "{{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":0,"
                   "\"tid\":{},\"args\":{{\"sort_index\":{}}}}}",
                   tid, tid);
    out += tid + 1 < num_engines_ + 2 || !events_.empty() ? ",\n" : "\n";
  }
  for (std::size_t i = 0; i < events_.size(); ++i) {
    const Event& e = events_[i];
    out += "{\"name\":";
    AppendJsonString(out, e.name);
    const char* category = e.kind == Kind::kDma      ? "dma"
                           : e.kind == Kind::kMatMul ? "matrix"
                                                     : "vector";
    // fmt prints doubles in their shortest round-trip form: valid JSON
    // numbers (never nan or inf here).
    fmt::format_to(std::back_inserter(out),
                   ",\"cat\":\"{}\",\"ph\":\"X\",\"pid\":0,\"tid\":{},"
                   "\"ts\":{},\"dur\":{},\"args\":{{",
                   category, e.track, Us(e.start_ns),
                   Us(e.end_ns - e.start_ns));
    switch (e.kind) {
      case Kind::kDma:
        fmt::format_to(
            std::back_inserter(out),
            "\"dma\":{},\"direction\":\"{}\",\"bytes\":{},\"chunks\":{},"
            "\"issued_us\":{},\"stream_start_us\":{}",
            e.dma.dma_id,
            e.dma.direction == DmaDirection::kHbmToVmem ? "hbm->vmem"
                                                        : "vmem->hbm",
            e.dma.bytes, e.dma.chunks, Us(e.dma.issue_ns),
            Us(e.dma.stream_start_ns));
        break;
      case Kind::kMatMul:
        fmt::format_to(std::back_inserter(out),
                       "\"m\":{},\"k\":{},\"n\":{},\"flops_charged\":{}",
                       e.mkn[0], e.mkn[1], e.mkn[2], e.amount);
        break;
      case Kind::kVector:
        fmt::format_to(std::back_inserter(out), "\"ops\":{}", e.amount);
        break;
    }
    out += i + 1 < events_.size() ? "}},\n" : "}}\n";
  }
  out += "],\n\"displayTimeUnit\":\"ns\",\"otherData\":{\"device\":";
  AppendJsonString(out, device_name_);
  fmt::format_to(std::back_inserter(out),
                 ",\"events_kept\":{},\"events_dropped\":{}}}}}\n",
                 events_.size(), dropped_);
  return out;
}

}  // namespace rpa::device::internal
