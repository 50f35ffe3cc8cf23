// Scratch harness of bench/HISTORY.md ("Session 14: an AVX-512, page-blocked
// decode"), not part of the build: a decode kernel for f16, Hkv 8, group 4,
// D 128, page 16, shuffled pages, that reads each token row front to back and
// prefetches the next page while it computes; ns per (key, kv head), 1 thread,
// checked against a double-precision reference on the warm sizes.
//
//   g++ -O3 -march=x86-64-v4 decode_avx512_paged.cc -o ap
//   ./ap 65536 5     # cold: 65 536 keys (256 MiB of rows), best of 5
//   ./ap 512 2000    # warm: 512 keys, best of 2000
//
// Per page of 16 tokens:
//   (A) scores of all 32 query heads, the rows read in token order: two
//       tokens x two kv heads x four query heads = 16 zmm accumulators over
//       the head dim, reduced by one transpose tree into one zmm;
//   (B) the online softmax with the 32 heads as lanes (vertical max, exp and
//       sum over the page's tokens: no horizontal work);
//   (C) V accumulation per kv head and 64-column half: 16 zmm accumulators,
//       the softmax rescale fused into their load.
// Prefetches (-D to change): PF_SPREAD lines of the next page's rows per
// inner iteration of (A) and (C), walking them front to back; PF_PAGE: the
// first line of the row one page ahead (TLB walk and DRAM page opened early);
// PF_ROW: the whole row PF_ROW tokens ahead. Without PF_SPREAD the cold time
// is about the warm time plus the pure read time: compute and memory do not
// overlap.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

constexpr int H = 8, G = 4, D = 128, PS = 16, HQ = H * G;
constexpr size_t R = 2 * H * D;  // token row, in f16 elements

#ifndef PF_PAGE
#define PF_PAGE 1  // first line of the row one page ahead
#endif
#ifndef PF_ROW
#define PF_ROW 1  // whole row PF_ROW tokens ahead (0: off)
#endif

static inline __m512 L16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
}

// exp(x) for x <= 0 (x may be -inf): 2^(x log2 e), degree-6 polynomial.
static inline __m512 Exp16(__m512 x) {
  __m512 y = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  y = _mm512_max_ps(y, _mm512_set1_ps(-126.0f));
  const __m512 n =
      _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(y, n);  // [-0.5, 0.5]
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// v[0..16) -> one vector, lane j = sum of v[j]'s lanes.
static inline __m512 Reduce16(__m512* v) {
  __m512 b[4];
  for (int g = 0; g < 4; ++g) {
    __m512* w = v + 4 * g;
    const __m512 a01 = _mm512_add_ps(_mm512_unpacklo_ps(w[0], w[1]),
                                     _mm512_unpackhi_ps(w[0], w[1]));
    const __m512 a23 = _mm512_add_ps(_mm512_unpacklo_ps(w[2], w[3]),
                                     _mm512_unpackhi_ps(w[2], w[3]));
    const __m512d lo =
        _mm512_unpacklo_pd(_mm512_castps_pd(a01), _mm512_castps_pd(a23));
    const __m512d hi =
        _mm512_unpackhi_pd(_mm512_castps_pd(a01), _mm512_castps_pd(a23));
    b[g] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
  }
  // b[g]: in each 128-bit quarter, the partial sums of v[4g .. 4g + 3]; sum
  // the quarters so that lane 4g + k holds the total of v[4g + k].
  const __m512 d01 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], 0x44),
                                   _mm512_shuffle_f32x4(b[0], b[1], 0xEE));
  const __m512 d23 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], 0x44),
                                   _mm512_shuffle_f32x4(b[2], b[3], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(d01, d23, 0x88),
                       _mm512_shuffle_f32x4(d01, d23, 0xDD));
}

struct State {
  alignas(64) float q[HQ * D];  // pre-scaled
  alignas(64) float acc[HQ * D];
  alignas(64) float m[HQ];
  alignas(64) float l[HQ];
};

#ifndef PF_SPREAD
#define PF_SPREAD 2  // next page lines per inner iteration of (A) and (C)
#endif
struct Cursor {  // walks the lines of the next page's rows
  const uint16_t* const* rows = nullptr;
  int count = 0, row = 0, line = 0;
  inline void Step() {
    for (int k = 0; k < PF_SPREAD; ++k) {
      if (row >= count) return;
      _mm_prefetch((const char*)rows[row] + line * 64, _MM_HINT_T0);
      if (++line == (int)(R * 2 / 64)) line = 0, ++row;
    }
  }
};

void Run(State& st, const uint16_t* const* rows, int n) {
  for (int i = 0; i < HQ; ++i) st.m[i] = -INFINITY, st.l[i] = 0;
  std::fill(st.acc, st.acc + HQ * D, 0.f);
  alignas(64) float s[PS][HQ];
  alignas(64) float factor[HQ];
  for (int t0 = 0; t0 < n; t0 += PS) {
    const int nb = std::min(PS, n - t0);  // n % 2 == 0 assumed
    const uint16_t* const* br = rows + t0;
    Cursor cur;
    if (t0 + PS < n)
      cur.rows = rows + t0 + PS, cur.count = std::min(PS, n - t0 - PS);
    // (A) scores
    for (int t = 0; t < nb; t += 2) {
      if (PF_PAGE && t0 + t + PS < n) {
        _mm_prefetch((const char*)rows[t0 + t + PS], _MM_HINT_T0);
        _mm_prefetch((const char*)rows[t0 + t + 1 + PS], _MM_HINT_T0);
      }
      if (PF_ROW && t0 + t + PF_ROW + 1 < n) {
        for (int tt = 0; tt < 2; ++tt) {
          const char* r = (const char*)rows[t0 + t + tt + PF_ROW];
          for (int l = 0; l < (int)(R * 2); l += 64)
            _mm_prefetch(r + l, _MM_HINT_T0);
        }
      }
      for (int i = 0; i < H; i += 2) {
        __m512 a[16];
        for (auto& x : a) x = _mm512_setzero_ps();
        for (int c = 0; c < D; c += 16) {
          if (PF_SPREAD) cur.Step();
          __m512 k[2][2];
          for (int tt = 0; tt < 2; ++tt)
            for (int ii = 0; ii < 2; ++ii)
              k[tt][ii] = L16(br[t + tt] + 2 * (i + ii) * D + c);
          for (int ii = 0; ii < 2; ++ii)
            for (int h = 0; h < G; ++h) {
              const __m512 qv =
                  _mm512_load_ps(st.q + ((i + ii) * G + h) * D + c);
              for (int tt = 0; tt < 2; ++tt) {
                __m512& x = a[tt * 8 + ii * 4 + h];
                x = _mm512_fmadd_ps(qv, k[tt][ii], x);
              }
            }
        }
        const __m512 r = Reduce16(a);
        _mm256_store_ps(&s[t][i * G], _mm512_castps512_ps256(r));
        _mm256_store_ps(&s[t + 1][i * G], _mm512_extractf32x8_ps(r, 1));
      }
    }
    // (B) softmax, heads as lanes
    for (int j = 0; j < HQ; j += 16) {
      __m512 mb = _mm512_load_ps(&s[0][j]);
      for (int t = 1; t < nb; ++t)
        mb = _mm512_max_ps(mb, _mm512_load_ps(&s[t][j]));
      const __m512 mo = _mm512_load_ps(st.m + j);
      const __m512 mn = _mm512_max_ps(mo, mb);
      const __m512 f = Exp16(_mm512_sub_ps(mo, mn));
      __m512 sum = _mm512_setzero_ps();
      for (int t = 0; t < nb; ++t) {
        const __m512 p = Exp16(_mm512_sub_ps(_mm512_load_ps(&s[t][j]), mn));
        _mm512_store_ps(&s[t][j], p);
        sum = _mm512_add_ps(sum, p);
      }
      _mm512_store_ps(st.m + j, mn);
      _mm512_store_ps(st.l + j,
                      _mm512_fmadd_ps(_mm512_load_ps(st.l + j), f, sum));
      _mm512_store_ps(factor + j, f);
    }
    // (C) V
    for (int i = 0; i < H; ++i) {
      for (int ch = 0; ch < D; ch += 64) {
        __m512 a[G][4];
        for (int h = 0; h < G; ++h) {
          const __m512 f = _mm512_set1_ps(factor[i * G + h]);
          for (int j = 0; j < 4; ++j)
            a[h][j] = _mm512_mul_ps(
                _mm512_load_ps(st.acc + (i * G + h) * D + ch + 16 * j), f);
        }
        for (int t = 0; t < nb; ++t) {
          if (PF_SPREAD) cur.Step();
          const uint16_t* v = br[t] + (2 * i + 1) * D + ch;
          __m512 vv[4];
          for (int j = 0; j < 4; ++j) vv[j] = L16(v + 16 * j);
          for (int h = 0; h < G; ++h) {
            const __m512 w = _mm512_set1_ps(s[t][i * G + h]);
            for (int j = 0; j < 4; ++j)
              a[h][j] = _mm512_fmadd_ps(w, vv[j], a[h][j]);
          }
        }
        for (int h = 0; h < G; ++h)
          for (int j = 0; j < 4; ++j)
            _mm512_store_ps(st.acc + (i * G + h) * D + ch + 16 * j, a[h][j]);
      }
    }
  }
}

static float H2F(uint16_t h) { return _cvtsh_ss(h); }

int main(int argc, char** argv) {
  const int ntok = atoi(argv[1]);
  const int reps = atoi(argv[2]);
  const size_t pages = (ntok + PS - 1) / PS;
  uint16_t* buf = (uint16_t*)aligned_alloc(4096, pages * PS * R * 2);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (size_t i = 0; i < pages * PS * R; ++i) buf[i] = _cvtss_sh(u(rng), 0);
  std::vector<int> perm(pages);
  for (size_t i = 0; i < pages; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<const uint16_t*> rows(ntok);
  for (int t = 0; t < ntok; ++t)
    rows[t] = buf + (perm[t / PS] * PS + t % PS) * R;
  static State st;
  const float scale =
      0.0884f * 4;  // larger spread than 1/sqrt(D): exercise the max
  for (auto& x : st.q) x = u(rng) * scale;
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    Run(st, rows.data(), ntok);
    best = std::min(best, std::chrono::duration<double, std::nano>(
                              std::chrono::steady_clock::now() - t0)
                              .count());
  }
  double max_err = 0;
  if (ntok <= 4096) {  // double-precision reference
    for (int qh = 0; qh < HQ; ++qh) {
      const int i = qh / G;
      std::vector<double> sc(ntok);
      double mx = -1e300;
      for (int t = 0; t < ntok; ++t) {
        double d = 0;
        for (int c = 0; c < D; ++c)
          d += (double)st.q[qh * D + c] * H2F(rows[t][2 * i * D + c]);
        sc[t] = d;
        mx = std::max(mx, d);
      }
      double l = 0;
      for (auto& x : sc) l += (x = std::exp(x - mx));
      for (int c = 0; c < D; ++c) {
        double o = 0;
        for (int t = 0; t < ntok; ++t)
          o += sc[t] * H2F(rows[t][(2 * i + 1) * D + c]);
        o /= l;
        max_err =
            std::max(max_err, std::fabs(o - st.acc[qh * D + c] / st.l[qh]));
      }
    }
  }
  printf("tok %d PF_SPREAD %d PF_PAGE %d PF_ROW %d: %.2f ns per (key, kv head)",
         ntok, PF_SPREAD, PF_PAGE, PF_ROW, best / ((double)ntok * H));
  if (ntok <= 4096) {
    printf(", max |error| against the reference %.2e\n", max_err);
  } else {
    printf(" (reference skipped above 4096 keys)\n");
  }
}
