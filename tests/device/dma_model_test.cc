// DmaModel (device/src/dma_model.h) against a brute-force reference: a
// nanosecond-by-nanosecond simulation in integers. With 12 bytes/ns of HBM
// bandwidth and at most 4 engines, every share (12, 6, 4, 3 bytes/ns) is a
// whole number of bytes per nanosecond, so the reference is exact and the
// event-driven model must agree with it on every landing time, engine and
// busy figure, for random workloads.

#include "dma_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <map>
#include <random>
#include <vector>

namespace rpa::device::internal {
namespace {

struct Submission {
  std::int64_t issue_ns = 0;
  int engine = -1;
  std::uint64_t bytes = 0;
  std::uint32_t chunks = 1;
};

struct Outcome {
  std::vector<DmaTiming> landed;  // by id - 1
  std::int64_t hbm_busy_ns = 0;
  std::vector<std::int64_t> engine_busy_ns;
};

constexpr std::int64_t kBytesPerNs = 12;

Outcome RunModel(const std::vector<Submission>& subs, std::uint32_t engines,
                 std::int64_t latency_ns, std::int64_t descriptor_ns) {
  DmaModel model(engines, static_cast<double>(kBytesPerNs) * 1e9,
                 static_cast<double>(latency_ns),
                 static_cast<double>(descriptor_ns));
  Outcome out;
  out.landed.resize(subs.size());
  auto record = [&](const DmaTiming& t) { out.landed[t.id - 1] = t; };
  for (const Submission& s : subs) {
    model.AdvanceTo(s.issue_ns, record);
    model.Submit(s.issue_ns, s.engine, s.bytes, s.chunks);
  }
  model.AdvanceTo(INT64_MAX / 4, record);
  EXPECT_EQ(model.in_flight(), 0u);
  std::int64_t end = 0;
  for (const DmaTiming& t : out.landed) end = std::max(end, t.land_ns);
  out.hbm_busy_ns = model.hbm_busy_ns(end);
  out.engine_busy_ns = model.engine_busy_ns(end);
  return out;
}

Outcome RunReference(const std::vector<Submission>& subs, std::uint32_t engines,
                     std::int64_t latency_ns, std::int64_t descriptor_ns) {
  struct Ref {
    DmaTiming timing;
    int requested = -1;
    std::int64_t remaining = 0;
    bool streaming = false;
  };
  std::vector<Ref> refs(subs.size());
  std::vector<std::uint64_t> engine_current(engines, 0);  // id, 0: free
  std::deque<std::uint64_t> any;
  std::vector<std::deque<std::uint64_t>> pinned(engines);
  Outcome out;
  out.landed.resize(subs.size());
  out.engine_busy_ns.assign(engines, 0);
  std::size_t next_sub = 0;
  std::size_t landed = 0;
  for (std::int64_t t = 0; landed < subs.size(); ++t) {
    // (1) landings were marked during the previous tick; free their engines.
    for (Ref& r : refs) {
      if (r.timing.land_ns == t) {
        const auto e = static_cast<std::size_t>(r.timing.engine);
        engine_current[e] = 0;
        out.engine_busy_ns[e] += t - r.timing.engine_start_ns;
        out.landed[r.timing.id - 1] = r.timing;
        ++landed;
      }
    }
    // (2) submissions at t.
    while (next_sub < subs.size() && subs[next_sub].issue_ns == t) {
      Ref& r = refs[next_sub];
      r.timing.id = next_sub + 1;
      r.timing.bytes = subs[next_sub].bytes;
      r.timing.num_chunks = subs[next_sub].chunks;
      r.timing.issue_ns = t;
      r.requested = subs[next_sub].engine;
      r.remaining = static_cast<std::int64_t>(subs[next_sub].bytes);
      (r.requested < 0 ? any : pinned[static_cast<std::size_t>(r.requested)])
          .push_back(r.timing.id);
      ++next_sub;
    }
    // (3) free engines, lowest index first, take the oldest they may serve.
    for (std::uint32_t e = 0; e < engines; ++e) {
      if (engine_current[e] != 0) continue;
      std::deque<std::uint64_t>* from = nullptr;
      if (!pinned[e].empty()) from = &pinned[e];
      if (!any.empty() && (from == nullptr || any.front() < from->front())) {
        from = &any;
      }
      if (from == nullptr) continue;
      Ref& r = refs[from->front() - 1];
      from->pop_front();
      engine_current[e] = r.timing.id;
      r.timing.engine = static_cast<int>(e);
      r.timing.engine_start_ns = t;
      r.timing.stream_start_ns =
          t + latency_ns + descriptor_ns * r.timing.num_chunks;
    }
    // (4) streams whose fixed cost is paid.
    std::vector<Ref*> streaming;
    for (Ref& r : refs) {
      if (r.timing.land_ns < 0 && r.timing.engine >= 0 &&
          r.timing.stream_start_ns <= t && r.timing.land_ns < 0) {
        streaming.push_back(&r);
      }
    }
    // (5) one nanosecond of processor sharing.
    if (!streaming.empty()) {
      ++out.hbm_busy_ns;
      const std::int64_t share =
          kBytesPerNs / static_cast<std::int64_t>(streaming.size());
      for (Ref* r : streaming) {
        r->remaining -= share;
        if (r->remaining <= 0) r->timing.land_ns = t + 1;
      }
    }
  }
  return out;
}

TEST(DmaModelTest, CeilNsRoundsUpButForgivesTheLastBit) {
  EXPECT_EQ(CeilNs(0), 0);
  EXPECT_EQ(CeilNs(-3), 0);
  EXPECT_EQ(CeilNs(0.25), 1);
  EXPECT_EQ(CeilNs(1000.0), 1000);
  EXPECT_EQ(CeilNs(1000.0000000000001), 1000);
  EXPECT_EQ(CeilNs(1000.001), 1001);
  EXPECT_EQ(CeilNs(3.7e6 * 1e9 / 3.7e12), 1000);
}

TEST(DmaModelTest, AgreesWithTheNanosecondReferenceOnRandomWorkloads) {
  std::mt19937_64 rng(20240607);
  for (int trial = 0; trial < 300; ++trial) {
    const auto engines = static_cast<std::uint32_t>(1 + rng() % 4);
    const std::int64_t latency_ns =
        std::vector<std::int64_t>{0, 7, 100}[rng() % 3];
    const std::int64_t descriptor_ns = static_cast<std::int64_t>(rng() % 4);
    const std::size_t count = 1 + rng() % 24;
    std::vector<Submission> subs;
    std::int64_t t = 0;
    for (std::size_t i = 0; i < count; ++i) {
      t += static_cast<std::int64_t>(rng() % 3 == 0 ? 0 : rng() % 400);
      Submission s;
      s.issue_ns = t;
      s.engine = rng() % 3 == 0 ? static_cast<int>(rng() % engines) : -1;
      s.bytes = 1 + rng() % (rng() % 2 == 0 ? 40 : 6000);
      s.chunks = static_cast<std::uint32_t>(1 + rng() % 5);
      subs.push_back(s);
    }
    const Outcome model = RunModel(subs, engines, latency_ns, descriptor_ns);
    const Outcome ref = RunReference(subs, engines, latency_ns, descriptor_ns);
    SCOPED_TRACE(::testing::Message()
                 << "trial " << trial << " engines " << engines << " latency "
                 << latency_ns << " descriptor " << descriptor_ns);
    for (std::size_t i = 0; i < subs.size(); ++i) {
      const DmaTiming& m = model.landed[i];
      const DmaTiming& r = ref.landed[i];
      ASSERT_EQ(m.id, i + 1);
      EXPECT_EQ(m.engine, r.engine) << "transfer " << i;
      EXPECT_EQ(m.engine_start_ns, r.engine_start_ns) << "transfer " << i;
      EXPECT_EQ(m.stream_start_ns, r.stream_start_ns) << "transfer " << i;
      ASSERT_EQ(m.land_ns, r.land_ns) << "transfer " << i;
    }
    EXPECT_EQ(model.hbm_busy_ns, ref.hbm_busy_ns);
    EXPECT_EQ(model.engine_busy_ns, ref.engine_busy_ns);
  }
}

TEST(DmaModelTest, NextEventIsTheEarliestStreamStartOrLanding) {
  DmaModel model(2, 1e9, 100, 10);  // 1 B/ns
  EXPECT_FALSE(model.NextEventNs().has_value());
  model.Submit(0, -1, 50, 2);
  EXPECT_EQ(model.NextEventNs(), 120);  // stream start
  std::vector<std::int64_t> landed;
  model.AdvanceTo(120,
                  [&](const DmaTiming& t) { landed.push_back(t.land_ns); });
  EXPECT_EQ(model.NextEventNs(), 170);  // landing
  model.AdvanceTo(169,
                  [&](const DmaTiming& t) { landed.push_back(t.land_ns); });
  EXPECT_TRUE(landed.empty());
  model.AdvanceTo(1000,
                  [&](const DmaTiming& t) { landed.push_back(t.land_ns); });
  EXPECT_THAT(landed, ::testing::ElementsAre(170));
  EXPECT_EQ(model.in_flight(), 0u);
}

}  // namespace
}  // namespace rpa::device::internal
