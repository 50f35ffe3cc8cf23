// KvCacheProgram: a KvCache against a model of its sequences (id, length, and
// the signature of every token written). After every successful Reserve the
// program writes each new token's signature into its K slot (first 4 bytes)
// and V slot (last 4 bytes) in every layer; after every op every live
// sequence must read back exactly its own signatures, which catches a missed
// copy-on-write, a page owned twice and a stale page table. The model decides
// whether each call must succeed (pages needed vs free, max_sequences, live vs
// stale ids); a failed call must leave tables, lengths, reference counts,
// Stats and contents as they were.
// The ExportBatch ops and the ops on ids that name no live sequence are in
// memory_fuzz_kv_export.cc, the checks in memory_fuzz_kv_checks.cc.
#include <algorithm>
#include <utility>

#include "memory_fuzz.h"

namespace rpa::memory::fuzz {
namespace {

constexpr std::uint32_t kMaxLength = 0x7fffffffu;
constexpr std::size_t kMaxStale = 32;

std::uint32_t TokenSignature(std::uint32_t uid, std::uint32_t token) {
  return Mix32(uid * 0x9e3779b1u ^ Mix32(token + 0x01234567u));
}

}  // namespace

KvCacheProgram::KvCacheProgram(const KvCacheConfig& config) : config_(config) {
  auto created = KvCache::Create(config);
  if (!created.ok()) {
    Fail(
        "KvCache::Create(num_pages %u, page_size_tokens %u, num_layers %u) "
        "failed: %s",
        config.num_pages, config.page_size_tokens, config.num_layers,
        created.status().ToString().c_str());
  }
  cache_ = std::move(*created);
  const std::size_t token_bytes = std::size_t{2} * config.num_kv_heads *
                                  config.head_dim *
                                  StorageBytes(config.storage);
  for (std::uint32_t layer = 0; layer < config.num_layers; ++layer) {
    const KvLayerView view = cache_->Layer(layer);
    const std::byte* expected_data =
        layer == 0 ? view.data
                   : layers_[0].data + std::size_t{layer} * config.num_pages *
                                           view.page_bytes;
    if (view.data == nullptr || view.data != expected_data ||
        view.num_pages != config.num_pages ||
        view.page_size_tokens != config.page_size_tokens ||
        view.num_combined_heads != 2 * config.num_kv_heads ||
        view.head_dim != config.head_dim || view.storage != config.storage ||
        view.token_bytes != token_bytes ||
        view.page_bytes != token_bytes * config.page_size_tokens) {
      Fail(
          "Layer(%u) view does not match the config: num_pages %u, "
          "page_size_tokens %u, "
          "heads %u, head_dim %u, token_bytes %zu (expected %zu), page_bytes "
          "%zu, data at "
          "offset %td (expected %td)",
          layer, view.num_pages, view.page_size_tokens, view.num_combined_heads,
          view.head_dim, view.token_bytes, token_bytes, view.page_bytes,
          layer == 0 ? 0 : view.data - layers_[0].data,
          layer == 0 ? 0 : expected_data - layers_[0].data);
    }
    layers_.push_back(view);
  }
  ever_used_.assign(config.num_pages, 0);
}

void KvCacheProgram::ProbeBadConfigs(const KvCacheConfig& good) {
  constexpr int kFields = 6;
  const char* names[kFields] = {"num_pages",    "page_size_tokens",
                                "num_kv_heads", "head_dim",
                                "num_layers",   "max_sequences"};
  for (int field = 0; field < kFields; ++field) {
    KvCacheConfig config = good;
    std::uint32_t* values[kFields] = {
        &config.num_pages, &config.page_size_tokens, &config.num_kv_heads,
        &config.head_dim,  &config.num_layers,       &config.max_sequences};
    *values[field] = 0;
    Trace("probe KvCache::Create(%s 0)", names[field]);
    auto created = KvCache::Create(config);
    ExpectCode(created.status(), "KvCache::Create with a zero size",
               StatusCode::kInvalidArgument);
  }
  // Page indices are int32 (SPEC section 1).
  KvCacheConfig config = good;
  config.num_pages = 0x80000000u;
  Trace("probe KvCache::Create(num_pages 2^31)");
  auto created = KvCache::Create(config);
  ExpectCode(created.status(), "KvCache::Create(num_pages 2^31)",
             StatusCode::kInvalidArgument);
}

std::uint32_t KvCacheProgram::PagesFor(std::uint64_t num_tokens) const {
  return static_cast<std::uint32_t>(
      (num_tokens + config_.page_size_tokens - 1) / config_.page_size_tokens);
}

bool KvCacheProgram::IsLive(SequenceId id) const {
  return std::any_of(live_.begin(), live_.end(),
                     [id](const Sequence& s) { return s.id == id; });
}

void KvCacheProgram::Step(ByteReader& in, std::uint8_t op) {
  const auto live = static_cast<std::uint32_t>(live_.size());
  const std::uint32_t code = op % 12;
  if (live == 0 && code >= 1 && code <= 8) {
    CreateSequence();
    return;
  }
  switch (code) {
    case 0:
      CreateSequence();
      break;
    case 1:
    case 2:
    case 3: {
      const std::uint32_t index = in.Below(live);
      Reserve(index, in.Below(2 * config_.page_size_tokens + 2));
      break;
    }
    case 4: {  // huge and boundary lengths
      const std::uint32_t index = in.Below(live);
      const auto length =
          static_cast<std::uint32_t>(live_[index].tokens.size());
      std::uint32_t num_tokens = 0;
      switch (in.U8() % 6) {
        case 0:
          num_tokens = config_.page_size_tokens * (in.U8() % 16u);
          break;
        case 1:
          num_tokens = 1u << 20;
          break;
        case 2:
          num_tokens = kMaxLength - length;
          break;
        case 3:
          num_tokens = kMaxLength - length + 1;
          break;
        case 4:
          num_tokens = 0xffffffffu;
          break;
        default:
          num_tokens = in.U32();
          break;
      }
      Reserve(index, num_tokens);
      break;
    }
    case 5:
      ReserveToBoundary(in.Below(live), in.U8());
      break;
    case 6:
    case 7:
      Fork(in.Below(live));
      break;
    case 8:
      FreeSequence(in.Below(live));
      break;
    case 9:
      if (!stale_.empty()) {
        const SequenceId id =
            stale_[in.Below(static_cast<std::uint32_t>(stale_.size()))];
        BadIdOp(id, in.U8(), /*stale=*/true);
        break;
      }
      [[fallthrough]];
    case 10: {  // an id that names nothing: random, or a live one with its
                // generation or slot bent
      std::uint64_t bits = in.U64();
      const std::uint8_t how = in.U8() % 3;
      if (how != 0 && live > 0) {
        const auto base = static_cast<std::uint64_t>(live_[in.Below(live)].id);
        bits = how == 1 ? base ^ ((bits | 1u) << 32)
                        : base ^ ((bits & 0xffffu) | 1u);
      }
      const auto id = static_cast<SequenceId>(bits);
      if (IsLive(id)) {
        Trace("kv (random id %llx is live: skipped)", IdBits(id));
        break;
      }
      BadIdOp(id, in.U8(), /*stale=*/false);
      break;
    }
    default:
      if ((in.U8() & 1u) != 0) {
        ExportGood(in);
      } else {
        ExportBad(in);
      }
      break;
  }
}

void KvCacheProgram::CreateSequence() {
  Trace("kv CreateSequence (model: %zu live of %u)", live_.size(),
        config_.max_sequences);
  const Snapshot before = Take();
  auto id = cache_->CreateSequence();
  if (live_.size() >= config_.max_sequences) {
    ExpectCode(id.status(), "CreateSequence at max_sequences",
               StatusCode::kResourceExhausted);
    ExpectUnchanged(before, "a failed CreateSequence");
    return;
  }
  ExpectCode(id.status(), "CreateSequence", StatusCode::kOk);
  if (IsLive(*id))
    Fail("CreateSequence returned the live id %llx", IdBits(*id));
  if (std::find(stale_.begin(), stale_.end(), *id) != stale_.end()) {
    Fail("CreateSequence returned the id %llx of a freed sequence",
         IdBits(*id));
  }
  ExpectTablesUnchanged(before, live_.size(), "CreateSequence");
  live_.push_back(Sequence{*id, next_uid_++, {}});
}

void KvCacheProgram::Reserve(std::size_t index, std::uint32_t num_tokens) {
  const std::uint32_t ps = config_.page_size_tokens;
  const auto length = static_cast<std::uint32_t>(live_[index].tokens.size());
  Trace("kv Reserve(uid %u, %u) (model: length %u)", live_[index].uid,
        num_tokens, length);
  const Snapshot before = Take();
  const std::vector<PageId>& old_table = before.tables[index];
  const bool overflow = num_tokens > kMaxLength - length;
  const std::uint64_t new_pages = PagesFor(std::uint64_t{length} + num_tokens) -
                                  std::uint64_t{PagesFor(length)};
  // The last page is shared and partially filled: the next writer copies it.
  const bool cow_candidate =
      length % ps != 0 && before.refcounts[PageIndex(old_table.back())] > 1;
  const bool cow = num_tokens > 0 && cow_candidate;
  const std::uint64_t needed = new_pages + (cow ? 1 : 0);
  const std::uint32_t free_pages = before.stats.free_pages;
  Trace(
      "kv Reserve(uid %u, %u) (model: length %u, needs %llu pages, %u free, "
      "copy-on-write %d)",
      live_[index].uid, num_tokens, length,
      static_cast<unsigned long long>(needed), free_pages, cow ? 1 : 0);

  const Status status = cache_->Reserve(live_[index].id, num_tokens);
  if (overflow) {
    ExpectCode(status, "Reserve past 2^31-1 tokens",
               StatusCode::kInvalidArgument, StatusCode::kResourceExhausted);
    ExpectUnchanged(before, "a failed Reserve");
    return;
  }
  if (num_tokens == 0) {
    ExpectCode(status, "Reserve(0)", StatusCode::kOk);
    ExpectUnchanged(before, "Reserve(0), a no-op with no copy-on-write,");
    return;
  }
  if (needed > free_pages) {
    ExpectCode(status, "Reserve without enough free pages",
               StatusCode::kResourceExhausted);
    ExpectUnchanged(before, "a failed Reserve");
    return;
  }
  ExpectCode(status, "Reserve with enough free pages", StatusCode::kOk);

  const std::vector<PageId> table = Table(index);
  if (table.size() != PagesFor(std::uint64_t{length} + num_tokens)) {
    Fail("after Reserve the table has %zu pages, expected %u", table.size(),
         PagesFor(std::uint64_t{length} + num_tokens));
  }
  for (std::size_t k = 0; k < table.size(); ++k) {
    const bool is_old = k < old_table.size();
    const bool is_last_old = k + 1 == old_table.size();
    if (is_old && table[k] == old_table[k]) {
      if (is_last_old && cow) {
        Fail(
            "Reserve wrote into shared page %u (refcount %u) instead of "
            "copying it",
            PageIndex(table[k]), before.refcounts[PageIndex(table[k])]);
      }
      continue;
    }
    if (is_old && !(is_last_old && cow)) {
      Fail(
          "Reserve replaced page %u (entry %zu) by page %u although it was not "
          "a shared "
          "partially filled last page",
          PageIndex(old_table[k]), k, PageIndex(table[k]));
    }
    if (PageIndex(table[k]) >= config_.num_pages) {
      Fail("Reserve put page %u >= num_pages in the table",
           PageIndex(table[k]));
    }
    if (before.refcounts[PageIndex(table[k])] != 0) {
      Fail(
          "Reserve put page %u (entry %zu) in the table, but it was in use "
          "(refcount %u)",
          PageIndex(table[k]), k, before.refcounts[PageIndex(table[k])]);
    }
  }
  ExpectTablesUnchanged(before, index, "Reserve");
  Sequence& seq = live_[index];
  for (std::uint32_t t = length; t < length + num_tokens; ++t) {
    seq.tokens.push_back(TokenSignature(seq.uid, t));
  }
  WriteTokens(seq, table, length);
}

void KvCacheProgram::ReserveToBoundary(std::size_t index, std::uint8_t delta) {
  // Exactly the tokens that fit in the free pages (after a copy-on-write),
  // or one more, or one fewer.
  const std::uint32_t ps = config_.page_size_tokens;
  const auto length = static_cast<std::uint32_t>(live_[index].tokens.size());
  const std::uint32_t free_pages = cache_->Stats().free_pages;
  bool cow = false;
  if (length % ps != 0) {
    auto table = cache_->PageTable(live_[index].id);
    cow = table.ok() && !table->empty() && cache_->RefCount(table->back()) > 1;
  }
  const std::uint32_t room = length % ps != 0 ? ps - length % ps : 0;
  const std::uint32_t usable =
      free_pages > 0 && cow ? free_pages - 1 : (cow ? 0 : free_pages);
  std::uint32_t num_tokens = room + usable * ps;
  if (delta % 3 == 1) ++num_tokens;
  if (delta % 3 == 2 && num_tokens > 0) --num_tokens;
  Reserve(index, num_tokens);
}

void KvCacheProgram::Fork(std::size_t index) {
  const SequenceId parent = live_[index].id;
  Trace("kv Fork(uid %u) (model: %zu live of %u)", live_[index].uid,
        live_.size(), config_.max_sequences);
  const Snapshot before = Take();
  auto child = cache_->Fork(parent);
  if (live_.size() >= config_.max_sequences) {
    ExpectCode(child.status(), "Fork at max_sequences",
               StatusCode::kResourceExhausted);
    ExpectUnchanged(before, "a failed Fork");
    return;
  }
  ExpectCode(child.status(), "Fork of a live sequence", StatusCode::kOk);
  if (IsLive(*child) ||
      std::find(stale_.begin(), stale_.end(), *child) != stale_.end()) {
    Fail("Fork returned the id %llx, which is live or was freed",
         IdBits(*child));
  }
  ExpectTablesUnchanged(before, live_.size(), "Fork");
  Sequence copy{*child, next_uid_++, live_[index].tokens};
  live_.push_back(std::move(copy));
  if (Table(live_.size() - 1) != before.tables[index]) {
    Fail("the child's page table differs from its parent's (uid %u)",
         live_[index].uid);
  }
}

void KvCacheProgram::FreeSequence(std::size_t index) {
  Trace("kv FreeSequence(uid %u) (model: length %zu)", live_[index].uid,
        live_[index].tokens.size());
  const Snapshot before = Take();
  const Status status = cache_->FreeSequence(live_[index].id);
  ExpectCode(status, "FreeSequence of a live sequence", StatusCode::kOk);
  ExpectTablesUnchanged(before, index, "FreeSequence");
  if (stale_.size() == kMaxStale) stale_.erase(stale_.begin());
  stale_.push_back(live_[index].id);
  live_.erase(live_.begin() + static_cast<std::ptrdiff_t>(index));
}

void KvCacheProgram::FreeAll() {
  while (!live_.empty()) {
    FreeSequence(live_.size() - 1);
    CheckInvariants();
  }
}

}  // namespace rpa::memory::fuzz
