#pragma once

// A small SPEC section 5 case, written to a directory, and a straightforward
// double-precision evaluation of SPEC section 2 to check results against.
// Shared by the case-loading and the `rpa attend` end-to-end tests.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "rpa/attention/storage_convert.h"
#include "rpa/memory/storage_type.h"
#include "rpa/scheduler/npy.h"

namespace rpa::scheduler::testing {

struct SmallCase {
  // Hq 4, Hkv 2, D 8, page 4, 16 pages; 2 decode, 2 prefill chunks of 4
  // and 1 mixed sequence, in shuffled pages; unused cache slots are NaN.
  std::uint32_t num_q_heads = 4;
  std::uint32_t num_kv_heads = 2;
  std::uint32_t head_dim = 8;
  std::uint32_t page_size = 4;
  std::uint32_t num_pages = 16;
  std::uint32_t pages_per_seq = 3;
  memory::StorageType storage = memory::StorageType::kF16;
  float sm_scale = 0.35F;
  std::vector<std::int32_t> q_lens = {1, 1, 4, 4, 3};
  std::vector<std::int32_t> kv_lens = {5, 9, 4, 10, 7};
  std::vector<std::int32_t> distribution = {2, 4, 5};
  std::int32_t chunk_prefill_size = 4;

  std::vector<float> q, k, v;
  std::vector<float> cache;  // f32 values of the cache as stored
  std::vector<std::int32_t> page_indices;
  std::vector<std::int32_t> cu_q_lens;

  std::uint32_t num_tokens() const {
    return static_cast<std::uint32_t>(
        std::accumulate(q_lens.begin(), q_lens.end(), 0));
  }
  std::size_t TokenFloats() const { return 2ULL * num_kv_heads * head_dim; }
  std::size_t CacheIndex(std::int32_t page, std::uint32_t slot,
                         std::uint32_t combined_head, std::uint32_t d) const {
    return ((static_cast<std::size_t>(page) * page_size + slot) * 2 *
                num_kv_heads +
            combined_head) *
               head_dim +
           d;
  }

  void Generate(std::uint32_t seed = 7) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(0.0F, 1.0F);
    const std::uint32_t t = num_tokens();
    q.resize(static_cast<std::size_t>(t) * num_q_heads * head_dim);
    k.resize(static_cast<std::size_t>(t) * num_kv_heads * head_dim);
    v.resize(k.size());
    for (float& x : q) x = uniform(rng);
    for (float& x : k) x = uniform(rng);
    for (float& x : v) x = uniform(rng);
    cache.assign(
        static_cast<std::size_t>(num_pages) * page_size * TokenFloats(),
        std::numeric_limits<float>::quiet_NaN());
    std::vector<std::int32_t> perm(num_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    page_indices.assign(kv_lens.size() * pages_per_seq, 0);
    cu_q_lens = {0};
    std::size_t next = 0;
    for (std::size_t i = 0; i < kv_lens.size(); ++i) {
      cu_q_lens.push_back(cu_q_lens.back() + q_lens[i]);
      auto pages = static_cast<std::uint32_t>(
                       kv_lens[i] + static_cast<std::int32_t>(page_size) - 1) /
                   page_size;
      for (std::uint32_t p = 0; p < pages; ++p) {
        page_indices[i * pages_per_seq + p] = perm[next++];
      }
      // Cached positions [0, gap) hold stored values.
      std::int32_t gap = kv_lens[i] - q_lens[i];
      for (std::int32_t pos = 0; pos < gap; ++pos) {
        std::int32_t page =
            page_indices[i * pages_per_seq +
                         static_cast<std::uint32_t>(pos) / page_size];
        for (std::uint32_t h = 0; h < 2 * num_kv_heads; ++h) {
          for (std::uint32_t d = 0; d < head_dim; ++d) {
            cache[CacheIndex(page, static_cast<std::uint32_t>(pos) % page_size,
                             h, d)] =
                attention::RoundToStorage(uniform(rng), storage);
          }
        }
      }
    }
  }

  NpyDtype CacheDtype() const {
    return storage == memory::StorageType::kF32   ? NpyDtype::kF32
           : storage == memory::StorageType::kF16 ? NpyDtype::kF16
                                                  : NpyDtype::kU16;
  }

  static void WriteArray(const std::filesystem::path& path, NpyDtype dtype,
                         std::vector<std::uint64_t> shape, const void* data) {
    auto array = NpyArray::Create(dtype, std::move(shape));
    ASSERT_TRUE(array.ok()) << array.status();
    std::memcpy(array->data(), data, array->num_bytes());
    Status status = WriteNpyFile(path, *array);
    ASSERT_TRUE(status.ok()) << status;
  }

  // Writes every .npy file and params.json into `dir` (created).
  void Write(const std::filesystem::path& dir) const {
    std::filesystem::create_directories(dir);
    const std::uint64_t t = num_tokens();
    WriteArray(dir / "q.npy", NpyDtype::kF32, {t, num_q_heads, head_dim},
               q.data());
    WriteArray(dir / "k.npy", NpyDtype::kF32, {t, num_kv_heads, head_dim},
               k.data());
    WriteArray(dir / "v.npy", NpyDtype::kF32, {t, num_kv_heads, head_dim},
               v.data());
    std::vector<std::byte> stored(cache.size() * memory::StorageBytes(storage));
    attention::ConvertToStorage(cache, storage, stored.data());
    WriteArray(dir / "kv_cache.npy", CacheDtype(),
               {num_pages, page_size, 2 * num_kv_heads, head_dim},
               stored.data());
    WriteArray(dir / "kv_lens.npy", NpyDtype::kI32, {kv_lens.size()},
               kv_lens.data());
    WriteArray(dir / "page_indices.npy", NpyDtype::kI32, {page_indices.size()},
               page_indices.data());
    WriteArray(dir / "cu_q_lens.npy", NpyDtype::kI32, {cu_q_lens.size()},
               cu_q_lens.data());
    WriteArray(dir / "distribution.npy", NpyDtype::kI32, {3},
               distribution.data());
    std::ofstream params(dir / "params.json");
    params
        << "{\"sm_scale\": " << sm_scale
        << ", \"sliding_window\": null, \"soft_cap\": null, \"k_scale\": null, "
           "\"v_scale\": null, \"causal\": true, \"chunk_prefill_size\": "
        << chunk_prefill_size << ", \"cache_dtype\": \""
        << memory::StorageTypeName(storage) << "\"}\n";
  }

  // SPEC section 2 in double precision over the values as stored. Returns
  // out [T_used, Hq, D]; *cache_after gets the cache with the new tokens.
  std::vector<double> Reference(std::vector<float>* cache_after) const {
    std::vector<float> c = cache;
    const std::uint32_t group = num_q_heads / num_kv_heads;
    std::vector<double> out(
        static_cast<std::size_t>(
            cu_q_lens[static_cast<std::size_t>(distribution[2])]) *
        num_q_heads * head_dim);
    for (std::size_t i = 0; i < static_cast<std::size_t>(distribution[2]);
         ++i) {
      const std::int32_t gap = kv_lens[i] - q_lens[i];
      for (std::int32_t a = 0; a < q_lens[i]; ++a) {
        const std::int32_t pos = gap + a;
        const auto token = static_cast<std::size_t>(cu_q_lens[i] + a);
        std::int32_t page =
            page_indices[i * pages_per_seq +
                         static_cast<std::uint32_t>(pos) / page_size];
        for (std::uint32_t h = 0; h < num_kv_heads; ++h) {
          for (std::uint32_t d = 0; d < head_dim; ++d) {
            const std::size_t src = (token * num_kv_heads + h) * head_dim + d;
            c[CacheIndex(page, static_cast<std::uint32_t>(pos) % page_size,
                         2 * h, d)] =
                attention::RoundToStorage(k[src], storage);
            c[CacheIndex(page, static_cast<std::uint32_t>(pos) % page_size,
                         2 * h + 1, d)] =
                attention::RoundToStorage(v[src], storage);
          }
        }
      }
    }
    for (std::size_t i = 0; i < static_cast<std::size_t>(distribution[2]);
         ++i) {
      const std::int32_t gap = kv_lens[i] - q_lens[i];
      for (std::int32_t a = 0; a < q_lens[i]; ++a) {
        const std::int32_t pos = gap + a;
        const auto token = static_cast<std::size_t>(cu_q_lens[i] + a);
        for (std::uint32_t hq = 0; hq < num_q_heads; ++hq) {
          const std::uint32_t h = hq / group;
          std::vector<double> scores;
          double max_score = -std::numeric_limits<double>::infinity();
          for (std::int32_t b = 0; b <= pos; ++b) {  // causal
            std::int32_t page =
                page_indices[i * pages_per_seq +
                             static_cast<std::uint32_t>(b) / page_size];
            double dot = 0;
            for (std::uint32_t d = 0; d < head_dim; ++d) {
              dot += static_cast<double>(
                         q[(token * num_q_heads + hq) * head_dim + d]) *
                     static_cast<double>(c[CacheIndex(
                         page, static_cast<std::uint32_t>(b) % page_size, 2 * h,
                         d)]);
            }
            scores.push_back(dot * static_cast<double>(sm_scale));
            max_score = std::max(max_score, scores.back());
          }
          double sum = 0;
          for (double& s : scores) sum += (s = std::exp(s - max_score));
          for (std::uint32_t d = 0; d < head_dim; ++d) {
            double acc = 0;
            for (std::int32_t b = 0; b <= pos; ++b) {
              std::int32_t page =
                  page_indices[i * pages_per_seq +
                               static_cast<std::uint32_t>(b) / page_size];
              acc += scores[static_cast<std::size_t>(b)] *
                     static_cast<double>(c[CacheIndex(
                         page, static_cast<std::uint32_t>(b) % page_size,
                         2 * h + 1, d)]);
            }
            out[(token * num_q_heads + hq) * head_dim + d] = acc / sum;
          }
        }
      }
    }
    if (cache_after != nullptr) *cache_after = std::move(c);
    return out;
  }
};

// Max over elements of |got - want| / (1 + |want|) (SPEC section 4 bound:
// 1e-4).
inline double MaxRelativeError(std::span<const float> got,
                               const std::vector<double>& want) {
  double worst = 0;
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < got.size(); ++i) {
    double error = std::fabs(static_cast<double>(got[i]) - want[i]) /
                   (1 + std::fabs(want[i]));
    if (std::isnan(error)) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, error);
  }
  return worst;
}

}  // namespace rpa::scheduler::testing
