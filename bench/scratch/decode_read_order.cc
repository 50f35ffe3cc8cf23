// Scratch harness of bench/HISTORY.md ("Session 11: the read order"), not part
// of the build: the decode kernel's K/V read orders without the arithmetic,
// GB/s on 1 thread. Token rows of ROW_BYTES (all kv heads' K and V: 4096 for
// f16, 8192 for f32 at Hkv 8, D 128), pages of 16 rows, shuffled.
//
//   g++ -O2 -mavx2 decode_read_order.cc -o ro
//   ./ro ROW_BYTES TOKENS_PER_BLOCK MODE [BLOCKS_AHEAD]
//
// MODE  0: the kernel's order (per block, per kv head, its K and V in each
//          row; with BLOCKS_AHEAD, that head's lines of the rows that many
//          blocks ahead prefetched);
//       1: the whole buffer sequentially (the probe's pattern);
//       2: each row whole, in order;
//       3: as 2, plus the first line of the row one page ahead prefetched
//          (4 / 5: the whole row, T1 / NTA; 6: its first four lines);
//       7: as 0, plus the first line of each row BLOCKS_AHEAD blocks ahead;
//    9-11: per block, the K halves of each row in order, then the V halves
//          per kv head (10: the whole rows in the first pass; 11: the V
//          halves prefetched in the first pass);
//   12-14: as 0, plus the next block's rows whole, one row per kv head
//          (T0 / T1 / NTA).
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  size_t R = atoi(argv[1]);  // token row bytes (4096 f16, 8192 f32)
  int U = atoi(argv[2]);     // tokens per block
  int mode = atoi(argv[3]);  // see the top of the file
  int pf = argc > 4 ? atoi(argv[4]) : 0;  // prefetch distance in blocks
  size_t pages = 4096, ps = 16, P = R * ps;
  size_t total = pages * P;
  char* buf = (char*)aligned_alloc(4096, total);
  memset(buf, 1, total);
  std::vector<int> perm(pages);
  for (size_t i = 0; i < pages; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), std::mt19937(1));
  size_t tokens = pages * ps;
  size_t H = 8, B = R / H;
  // The row of token `tok`, and of the same token one page later.
  const auto row = [&](size_t tok) {
    return buf + perm[tok / ps] * P + (tok % ps) * R;
  };
  const auto row_a_page_ahead = [&](size_t tok) {
    const size_t page = std::min(tok / ps + 1, pages - 1);
    return buf + perm[page] * P + (tok % ps) * R;
  };
  double best = 1e30;
  float sink = 0;
  for (int rep = 0; rep < 5; ++rep) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    const auto read = [&](const char* p, size_t bytes) {
      for (size_t l = 0; l < bytes; l += 64) {
        acc0 = _mm256_add_ps(acc0, _mm256_load_ps((const float*)(p + l)));
        acc1 = _mm256_add_ps(acc1, _mm256_load_ps((const float*)(p + l + 32)));
      }
    };
    auto t0 = std::chrono::steady_clock::now();
    if (mode == 1) {
      read(buf, total);
    } else if (mode >= 3 && mode <= 6) {
      for (size_t tok = 0; tok < tokens; ++tok) {
        const char* p = row(tok);
        const char* q = row_a_page_ahead(tok);
        if (mode == 3) _mm_prefetch(q, _MM_HINT_T0);
        if (mode == 4)
          for (size_t l = 0; l < R; l += 64) _mm_prefetch(q + l, _MM_HINT_T1);
        if (mode == 5)
          for (size_t l = 0; l < R; l += 64) _mm_prefetch(q + l, _MM_HINT_NTA);
        if (mode == 6)
          for (size_t l = 0; l < 256; l += 64) _mm_prefetch(q + l, _MM_HINT_T0);
        read(p, R);
      }
    } else if (mode == 9 || mode == 10 || mode == 11) {
      const char* rows[64];
      for (size_t blk = 0; blk < tokens; blk += U) {
        for (int t = 0; t < U; ++t) {
          size_t tok = blk + t;
          rows[t] = row(tok);
          _mm_prefetch(row_a_page_ahead(tok), _MM_HINT_T0);
          const char* p = rows[t];
          for (size_t h = 0; h < H; ++h) {
            size_t lim = mode != 10 ? B / 2 : B;
            if (mode == 11)
              for (size_t l = B / 2; l < B; l += 64)
                _mm_prefetch(p + h * B + l, _MM_HINT_T0);
            read(p + h * B, lim);
          }
        }
        for (size_t h = 0; h < H; ++h)
          for (int t = 0; t < U; ++t) {
            read(rows[t] + h * B + B / 2, B / 2);
          }
      }
    } else if (mode == 2) {
      for (size_t tok = 0; tok < tokens; ++tok) {
        read(row(tok), R);
      }
    } else {
      const char* rows[64];
      const char* nrows[64];
      for (size_t blk = 0; blk < tokens; blk += U) {
        for (int t = 0; t < U; ++t) {
          rows[t] = row(blk + t);
        }
        if (pf || mode >= 12)
          for (int t = 0; t < U; ++t) {
            size_t tok = blk + (pf ? pf : 1) * U + t;
            if (tok >= tokens) tok = tokens - 1;
            nrows[t] = row(tok);
          }
        for (size_t h = 0; h < H; ++h) {
          if (pf && mode == 0)
            for (int t = 0; t < U; ++t)
              for (size_t l = 0; l < B; l += 64)
                _mm_prefetch(nrows[t] + h * B + l, _MM_HINT_T0);
          if (mode == 12 || mode == 13 || mode == 14) {
            const char* r = nrows[h % U];
            for (size_t l = 0; l < R; l += 64) {
              if (mode == 12) _mm_prefetch(r + l, _MM_HINT_T0);
              if (mode == 13) _mm_prefetch(r + l, _MM_HINT_T1);
              if (mode == 14) _mm_prefetch(r + l, _MM_HINT_NTA);
            }
          }
          if (pf && mode == 7 && h == 0)
            for (int t = 0; t < U; ++t) _mm_prefetch(nrows[t], _MM_HINT_T0);
          for (int t = 0; t < U; ++t) {
            read(rows[t] + h * B, B);
          }
        }
      }
    }
    auto t1 = std::chrono::steady_clock::now();
    float o[8];
    _mm256_storeu_ps(o, _mm256_add_ps(acc0, acc1));
    sink += o[0];
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  printf("R %zu U %d mode %d pf %d: %.1f GB/s (%g)\n", R, U, mode, pf,
         total / best / 1e9, sink);
}
