// Scratch harness of bench/HISTORY.md ("Session 11: the read order"), not part of the build:
// the decode kernel's K/V read orders without the arithmetic, GB/s on 1 thread.
//   g++ -O2 -mavx2 decode_read_order.cc -o ro && ./ro ROW_BYTES TOKENS_PER_BLOCK MODE [BLOCKS_AHEAD]
// MODE: 0 the kernel's order, 1 sequential buffer, 2 rows whole, 3 rows whole + first line one
// page ahead, 7 kernel order + first line BLOCKS_AHEAD ahead, 9/10/11 K pass then V pass,
// 12/13/14 kernel order + next block's rows whole (T0/T1/NTA). 4/5/6: other prefetches.
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <algorithm>
#include <random>
// Read pattern of the decode kernel: token rows of R bytes (all heads), page = 16 tokens,
// shuffled pages; per block of U tokens: for head h: for token t: read B bytes at t's row + h*B.
int main(int argc, char** argv) {
  size_t R = atoi(argv[1]);      // token row bytes (4096 f16, 8192 f32)
  int U = atoi(argv[2]);         // tokens per block
  int mode = atoi(argv[3]);      // 0 = pattern, 1 = sequential whole buffer
  int pf = argc > 4 ? atoi(argv[4]) : 0; // prefetch distance in blocks
  size_t pages = 4096, ps = 16, P = R * ps;
  size_t total = pages * P;
  char* buf = (char*)aligned_alloc(4096, total);
  memset(buf, 1, total);
  std::vector<int> perm(pages); for (size_t i = 0; i < pages; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), std::mt19937(1));
  size_t tokens = pages * ps; size_t H = 8, B = R / H;
  double best = 1e30; float sink = 0;
  for (int rep = 0; rep < 5; ++rep) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    auto t0 = std::chrono::steady_clock::now();
    if (mode == 1) {
      for (size_t o = 0; o < total; o += 64) acc0 = _mm256_add_ps(acc0, _mm256_load_ps((float*)(buf + o))), acc1 = _mm256_add_ps(acc1, _mm256_load_ps((float*)(buf + o + 32)));
    } else if (mode >= 3 && mode <= 6) {
      for (size_t tok = 0; tok < tokens; ++tok) {
        const char* p = buf + perm[tok / ps] * P + (tok % ps) * R;
        size_t np = tok / ps + 1 < pages ? tok / ps + 1 : tok / ps;
        const char* q = buf + perm[np] * P + (tok % ps) * R;
        if (mode == 3) _mm_prefetch(q, _MM_HINT_T0);
        if (mode == 4) for (size_t l = 0; l < R; l += 64) _mm_prefetch(q + l, _MM_HINT_T1);
        if (mode == 5) for (size_t l = 0; l < R; l += 64) _mm_prefetch(q + l, _MM_HINT_NTA);
        if (mode == 6) for (size_t l = 0; l < 256; l += 64) _mm_prefetch(q + l, _MM_HINT_T0);
        for (size_t l = 0; l < R; l += 64) acc0 = _mm256_add_ps(acc0, _mm256_load_ps((const float*)(p + l))), acc1 = _mm256_add_ps(acc1, _mm256_load_ps((const float*)(p + l + 32)));
      }
    } else if (mode == 9 || mode == 10 || mode == 11) {
      const char* rows[64];
      for (size_t blk = 0; blk < tokens; blk += U) {
        for (int t = 0; t < U; ++t) {
          size_t tok = blk + t; rows[t] = buf + perm[tok / ps] * P + (tok % ps) * R;
          size_t np = tok / ps + 1 < pages ? tok / ps + 1 : tok / ps;
          _mm_prefetch(buf + perm[np] * P + (tok % ps) * R, _MM_HINT_T0);
          const char* p = rows[t];
          for (size_t h = 0; h < H; ++h) {
            size_t lim = mode != 10 ? B / 2 : B;
            if (mode == 11) for (size_t l = B / 2; l < B; l += 64) _mm_prefetch(p + h * B + l, _MM_HINT_T0);
            for (size_t l = 0; l < lim; l += 64) acc0 = _mm256_add_ps(acc0, _mm256_load_ps((const float*)(p + h * B + l))), acc1 = _mm256_add_ps(acc1, _mm256_load_ps((const float*)(p + h * B + l + 32)));
          }
        }
        for (size_t h = 0; h < H; ++h) for (int t = 0; t < U; ++t) {
          const char* p = rows[t] + h * B + B / 2;
          for (size_t l = 0; l < B / 2; l += 64) acc0 = _mm256_add_ps(acc0, _mm256_load_ps((const float*)(p + l))), acc1 = _mm256_add_ps(acc1, _mm256_load_ps((const float*)(p + l + 32)));
        }
      }
    } else if (mode == 2) {
      for (size_t tok = 0; tok < tokens; ++tok) {
        const char* p = buf + perm[tok / ps] * P + (tok % ps) * R;
        for (size_t l = 0; l < R; l += 64) acc0 = _mm256_add_ps(acc0, _mm256_load_ps((const float*)(p + l))), acc1 = _mm256_add_ps(acc1, _mm256_load_ps((const float*)(p + l + 32)));
      }
    } else {
      const char* rows[64];
      const char* nrows[64];
      for (size_t blk = 0; blk < tokens; blk += U) {
        for (int t = 0; t < U; ++t) { size_t tok = blk + t; rows[t] = buf + perm[tok / ps] * P + (tok % ps) * R; }
        if (pf || mode >= 12) for (int t = 0; t < U; ++t) { size_t tok = blk + (pf ? pf : 1)*U + t; if (tok >= tokens) tok = tokens-1; nrows[t] = buf + perm[tok / ps] * P + (tok % ps) * R; }
        for (size_t h = 0; h < H; ++h) {
          if (pf && mode == 0) for (int t = 0; t < U; ++t) for (size_t l = 0; l < B; l += 64) _mm_prefetch(nrows[t] + h * B + l, _MM_HINT_T0);
          if (mode == 12 || mode == 13 || mode == 14) { const char* r = nrows[h % U]; if (mode == 12) for (size_t l = 0; l < R; l += 64) _mm_prefetch(r + l, _MM_HINT_T0); else if (mode == 13) for (size_t l = 0; l < R; l += 64) _mm_prefetch(r + l, _MM_HINT_T1); else for (size_t l = 0; l < R; l += 64) _mm_prefetch(r + l, _MM_HINT_NTA); }
          if (pf && mode == 7 && h == 0) for (int t = 0; t < U; ++t) _mm_prefetch(nrows[t], _MM_HINT_T0);
          for (int t = 0; t < U; ++t) {
            const char* p = rows[t] + h * B;
            for (size_t l = 0; l < B; l += 64) acc0 = _mm256_add_ps(acc0, _mm256_load_ps((const float*)(p + l))), acc1 = _mm256_add_ps(acc1, _mm256_load_ps((const float*)(p + l + 32)));
          }
        }
      }
    }
    auto t1 = std::chrono::steady_clock::now();
    float o[8]; _mm256_storeu_ps(o, _mm256_add_ps(acc0, acc1)); sink += o[0];
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  printf("R %zu U %d mode %d pf %d: %.1f GB/s (%g)\n", R, U, mode, pf, total / best / 1e9, sink);
}
