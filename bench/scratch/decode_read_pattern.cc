// Scratch harness of bench/HISTORY.md ("Session 15: where the cold decode
// time goes"), not part of the build: the AVX-512 decode kernel's memory
// traffic without its arithmetic, to separate what the read pattern costs
// from what the compute costs. 256 MiB of blocks of 16 token rows of 4 KiB
// (f16, Hkv 8, D 128: one KV page), visited in shuffled order; while a block
// is consumed, the next one is prefetched two lines per step, front to back
// (the kernel's cursor), with the first line of each row a little earlier.
// GB/s and ns per 512 bytes (one (key, kv head) of K and V), best of 5.
//
//   g++ -O3 -mavx512f -mavx2 -mfma -mf16c decode_read_pattern.cc -o rp
//   ./rp FILLER ORDER          # e.g. ./rp 2 0, ./rp 2 1, ./rp 2 2
//   HOT=1 ./rp 2 0             # plus a 32 KiB L1 working set read each step
//
// FILLER: groups of 8 independent ymm FMAs per step (throughput-bound, as
// the kernel's arithmetic is; 2 is about the kernel's FMA work per byte).
// ORDER: how the current block is consumed (16 bytes of f16 per load):
//   0  the kernel's: per pair of tokens and tile of two kv heads, the K
//      parts; then per kv head and 128-byte half of V, the 16 tokens;
//   1  the block front to back;
//   2  as 0 for K, then V token by token (each row's V parts in address
//      order).
// The step count (512 per block) and the loads are the same in every order.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr std::size_t kRowBytes = 4096;
constexpr std::size_t kBlockRows = 16;
constexpr std::size_t kBlockBytes = kRowBytes * kBlockRows;
constexpr std::size_t kBlockLines = kBlockBytes / 64;
constexpr std::size_t kTotalBytes = std::size_t{256} << 20;
constexpr std::size_t kHotFloats = 32 * 1024 / 4;

alignas(64) float hot[kHotFloats];

struct Sums {
  __m256 load[4];
  __m256 fma[8];
  __m256 hot[4];
};

// One step: the cursor's two prefetches, the filler, the hot reads.
struct Stepper {
  const char* next = nullptr;
  std::size_t line = 0;
  int filler = 0;
  bool use_hot = false;
  std::size_t hot_at = 0;

  void Step(Sums& s) {
    _mm_prefetch(next + line * 64, _MM_HINT_T0);
    _mm_prefetch(next + line * 64 + 64, _MM_HINT_T0);
    if (line + 2 < kBlockLines) line += 2;
    const __m256 m = _mm256_set1_ps(0.999F);
    for (int w = 0; w < filler; ++w) {
      for (auto& f : s.fma) f = _mm256_fmadd_ps(f, m, m);
    }
    if (use_hot) {
      for (int k = 0; k < 4; ++k) {
        s.hot[k] =
            _mm256_add_ps(s.hot[k], _mm256_load_ps(hot + hot_at + 8 * k));
      }
      hot_at = (hot_at + 32) % kHotFloats;
    }
  }
};

inline void Consume(Sums& s, const char* p, int lane) {
  s.load[lane & 3] = _mm256_add_ps(
      s.load[lane & 3],
      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// ORDER 0 / 2, (A): the K parts, per pair of tokens and tile of two heads.
void KeysByPairs(Sums& s, Stepper& st, const char* cur) {
  for (std::size_t pair = 0; pair < kBlockRows / 2; ++pair) {
    _mm_prefetch(st.next + 2 * pair * kRowBytes, _MM_HINT_T0);
    _mm_prefetch(st.next + (2 * pair + 1) * kRowBytes, _MM_HINT_T0);
    for (std::size_t tile = 0; tile < 4; ++tile) {
      for (std::size_t c = 0; c < 8; ++c) {
        st.Step(s);
        for (std::size_t h = 2 * tile; h < 2 * tile + 2; ++h) {
          for (std::size_t t = 2 * pair; t < 2 * pair + 2; ++t) {
            Consume(s, cur + t * kRowBytes + 2 * h * 256 + c * 32,
                    static_cast<int>(2 * h + t));
          }
        }
      }
    }
  }
}

// The four loads of one 128-byte half of token t's V part of kv head h.
void ValueHalf(Sums& s, Stepper& st, const char* cur, std::size_t t,
               std::size_t h, std::size_t half) {
  st.Step(s);
  for (int j = 0; j < 4; ++j) {
    Consume(s, cur + t * kRowBytes + (2 * h + 1) * 256 + half * 128 + j * 32,
            j);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s FILLER ORDER\n", argv[0]);
    return 2;
  }
  const int filler = std::atoi(argv[1]);
  const int order = std::atoi(argv[2]);
  const bool use_hot = std::getenv("HOT") != nullptr;
  const std::size_t blocks = kTotalBytes / kBlockBytes;
  char* buf = static_cast<char*>(std::aligned_alloc(4096, kTotalBytes));
  std::memset(buf, 1, kTotalBytes);
  std::vector<std::size_t> visit(blocks);
  for (std::size_t i = 0; i < blocks; ++i) visit[i] = i;
  std::shuffle(visit.begin(), visit.end(), std::mt19937(1));
  double best = 1e30;
  float sink = 0;
  for (int rep = 0; rep < 5; ++rep) {
    Sums s;
    for (auto& v : s.load) v = _mm256_setzero_ps();
    for (auto& v : s.fma) v = _mm256_set1_ps(1.0F);
    for (auto& v : s.hot) v = _mm256_setzero_ps();
    const auto start = std::chrono::steady_clock::now();
    for (std::size_t b = 0; b < blocks; ++b) {
      const char* cur = buf + visit[b] * kBlockBytes;
      Stepper st;
      st.next = b + 1 < blocks ? buf + visit[b + 1] * kBlockBytes : cur;
      st.filler = filler;
      st.use_hot = use_hot;
      if (order == 1) {
        for (std::size_t i = 0; i < kBlockLines / 2; ++i) {
          if (i % 32 == 0) {
            _mm_prefetch(st.next + (i / 32) * kRowBytes, _MM_HINT_T0);
          }
          st.Step(s);
          for (int j = 0; j < 4; ++j) Consume(s, cur + i * 128 + j * 32, j);
        }
        continue;
      }
      KeysByPairs(s, st, cur);
      if (order == 0) {  // (C) per kv head and half, the 16 tokens
        for (std::size_t h = 0; h < 8; ++h) {
          for (std::size_t half = 0; half < 2; ++half) {
            for (std::size_t t = 0; t < kBlockRows; ++t) {
              ValueHalf(s, st, cur, t, h, half);
            }
          }
        }
      } else {  // (C) token by token
        for (std::size_t t = 0; t < kBlockRows; ++t) {
          for (std::size_t h = 0; h < 8; ++h) {
            for (std::size_t half = 0; half < 2; ++half) {
              ValueHalf(s, st, cur, t, h, half);
            }
          }
        }
      }
    }
    const auto end = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(end - start).count());
    __m256 all = _mm256_setzero_ps();
    for (const auto* group : {s.load, s.fma}) {
      for (int k = 0; k < 4; ++k) all = _mm256_add_ps(all, group[k]);
    }
    for (const auto& v : s.hot) all = _mm256_add_ps(all, v);
    float lanes[8];
    _mm256_storeu_ps(lanes, all);
    sink += lanes[0];
  }
  std::printf("filler %d order %d%s: %.1f GB/s, %.2f ns per 512 B (%g)\n",
              filler, order, use_hot ? " hot" : "", kTotalBytes / best / 1e9,
              best / static_cast<double>(kTotalBytes / 512) * 1e9, sink);
  std::free(buf);
  return 0;
}
