// Scratch harness of bench/HISTORY.md ("Session 11: the read order"), not part
// of the build: a token-major decode (each token row read once; online softmax
// over all query heads per token), f16, Hkv 8, group 4, D 128, page 16,
// shuffled pages; ns per (key, kv head).
//
//   g++ -O3 -mavx2 -mfma -mf16c -DRPA_ATTENTION_AVX2 -I../../attention/src \
//       -DPFA=1 decode_token_major.cc -o tm
//   ./tm 65536 5 0    # cold: 65 536 keys, best of 5
//   ./tm 512 2000 0   # warm: 512 keys (L2), best of 2000
//
// PFA: rows ahead whose lines are prefetched while a row is processed (0:
// none). The third argument (default 1) adds a prefetch of the first line of
// the row one page ahead.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "fast_exp.h"

#ifndef PFA
#define PFA 0
#endif
constexpr int H = 8, G = 4, D = 128, PS = 16;
constexpr size_t R = 2 * H * D * 2;  // token row bytes (f16)

// The kernels' exp (attention/src/fast_exp.h).
using rpa::attention::internal::Exp8;

static inline __m256 L8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
}

// 4 ymm of 8 lanes -> one __m128: lane h = sum(a[h])
static inline __m128 Red4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
  __m256 u = _mm256_hadd_ps(t0, t1);
  return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

struct State {
  alignas(64) float q[H * G * D];
  alignas(64) float acc[H * G * D];
  alignas(64) float m[H * G];
  alignas(64) float l[H * G];
};

void Run(State& st, const uint16_t* const* rows, int n, float scale,
         const uint16_t* const* pfrows) {
  for (int i = 0; i < H * G; ++i) {
    st.m[i] = -INFINITY;
    st.l[i] = 0;
  }
  std::fill(st.acc, st.acc + H * G * D, 0.f);
  alignas(32) float s[H * G];
  alignas(32) float p[H * G];
  for (int t = 0; t < n; ++t) {
    const uint16_t* row = rows[t];
    if (pfrows) _mm_prefetch((const char*)pfrows[t], _MM_HINT_T0);
    // scores for all kv heads
    for (int i = 0; i < H; ++i) {
      const uint16_t* k = row + 2 * i * D;
      if (PFA && t + PFA < n) {
        const char* nr = (const char*)rows[t + PFA] + i * 512;
        for (int l = 0; l < 512; l += 64) _mm_prefetch(nr + l, _MM_HINT_T0);
      }
      const float* q = st.q + i * G * D;
      __m256 a[8];
      for (auto& x : a) x = _mm256_setzero_ps();
      for (int c = 0; c < D; c += 16) {
        __m256 k0 = L8(k + c), k1 = L8(k + c + 8);
        for (int h = 0; h < G; ++h) {
          a[2 * h] =
              _mm256_fmadd_ps(_mm256_load_ps(q + h * D + c), k0, a[2 * h]);
          a[2 * h + 1] = _mm256_fmadd_ps(_mm256_load_ps(q + h * D + c + 8), k1,
                                         a[2 * h + 1]);
        }
      }
      __m128 r = Red4(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]),
                      _mm256_add_ps(a[4], a[5]), _mm256_add_ps(a[6], a[7]));
      _mm_store_ps(s + 4 * i, r);
    }
    // online softmax on 32 lanes
    for (int j = 0; j < H * G; j += 8) {
      __m256 x = _mm256_mul_ps(_mm256_load_ps(s + j), _mm256_set1_ps(scale));
      __m256 m = _mm256_load_ps(st.m + j);
      __m256 mn = _mm256_max_ps(m, x);
      int moved = _mm256_movemask_ps(_mm256_cmp_ps(mn, m, _CMP_NEQ_UQ));
      __m256 l = _mm256_load_ps(st.l + j);
      if (moved) {
        __m256 f = Exp8(_mm256_sub_ps(m, mn));
        l = _mm256_mul_ps(l, f);
        alignas(32) float ff[8];
        _mm256_store_ps(ff, f);
        for (int b = 0; b < 8; ++b)
          if (moved >> b & 1) {
            float* ar = st.acc + (j + b) * D;
            __m256 fb = _mm256_set1_ps(ff[b]);
            for (int c = 0; c < D; c += 8)
              _mm256_store_ps(ar + c,
                              _mm256_mul_ps(_mm256_load_ps(ar + c), fb));
          }
        _mm256_store_ps(st.m + j, mn);
      }
      __m256 pe = Exp8(_mm256_sub_ps(x, mn));
      _mm256_store_ps(st.l + j, _mm256_add_ps(l, pe));
      _mm256_store_ps(p + j, pe);
    }
    // V
    for (int i = 0; i < H; ++i) {
      const uint16_t* v = row + (2 * i + 1) * D;
      float* acc = st.acc + i * G * D;
      __m256 w[G];
      for (int h = 0; h < G; ++h) w[h] = _mm256_broadcast_ss(p + G * i + h);
      for (int c = 0; c < D; c += 8) {
        const __m256 vv = L8(v + c);
        for (int h = 0; h < G; ++h) {
          float* a = acc + h * D + c;
          _mm256_store_ps(a, _mm256_fmadd_ps(w[h], vv, _mm256_load_ps(a)));
        }
      }
    }
  }
}

int main(int argc, char** argv) {
  int ntok = atoi(argv[1]);  // tokens per run
  int reps = atoi(argv[2]);
  int pf = argc > 3 ? atoi(argv[3]) : 1;
  size_t pages = (ntok + PS - 1) / PS;
  uint16_t* buf = (uint16_t*)aligned_alloc(4096, pages * PS * R);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (size_t i = 0; i < pages * PS * R / 2; i += 8) {
    __m256 x = _mm256_set_ps(u(rng), u(rng), u(rng), u(rng), u(rng), u(rng),
                             u(rng), u(rng));
    _mm_storeu_si128((__m128i*)(buf + i), _mm256_cvtps_ph(x, 0));
  }
  std::vector<int> perm(pages);
  for (size_t i = 0; i < pages; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<const uint16_t*> rows(ntok), pfr(ntok);
  for (int t = 0; t < ntok; ++t)
    rows[t] = buf + (perm[t / PS] * PS + t % PS) * (R / 2);
  for (int t = 0; t < ntok; ++t) pfr[t] = rows[std::min(ntok - 1, t + PS)];
  static State st;
  for (auto& x : st.q) x = u(rng);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    Run(st, rows.data(), ntok, 0.0884f, pf ? pfr.data() : nullptr);
    double ns = std::chrono::duration<double, std::nano>(
                    std::chrono::steady_clock::now() - t0)
                    .count();
    best = std::min(best, ns);
  }
  double sum = 0;
  for (int i = 0; i < H * G * D; ++i) sum += st.acc[i] / st.l[i / D];
  printf("tok %d pf %d: %.2f ns per (key, kv head) checksum %.5f\n", ntok, pf,
         best / (ntok * H), sum);
}
