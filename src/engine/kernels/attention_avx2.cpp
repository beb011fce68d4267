// Causal grouped-query attention, FP32, AVX2 + FMA: the rows-in-lanes design of the AVX-512
// kernel (attention_avx512.cpp) on 8-lane vectors, for CPUs without AVX-512 (AMD Zen 3, the
// portable variant) in place of the sgemm tiles of attention.cpp, whose packing of small tiles
// and separate softmax passes held them near a quarter of the FMA peak.
//
// Prefill only: 64 or more new queries whose blocks (64 consecutive queries of one head) need no
// key split. A block's rows live in the 8 lanes of 8 vectors; the micro-kernels take 2 of them
// (16 rows) at a time against 6 keys (Q K^T) or 6 dims (P V), 12 accumulators of the 16 ymm
// registers:
//   S^T[key][row]  = sum over dims: broadcast(K[key][d]) * Qt[d][row]
//   O^T[dim][row] += sum over keys: broadcast(V[key][dim]) * P^T[key][row]
// Qt holds the queries times scale * log2(e) (exponentials are base 2); P^T overwrites S^T. The
// online softmax is vertical (one row per lane) with the AVX-512 kernel's lazily moved reference
// (attn_detail::kLazy); tiles below the block's first query run without masks. Every block is one
// thread's work in a fixed order: results do not depend on the thread count.
#include <immintrin.h>

#include <cstdint>

#include "engine/kernels/bf16_internal.h"
#include "longrope/kernels.h"

#define LONGROPE_AVX2_TARGET __attribute__((target("avx2,fma")))

namespace longrope::kernels {

namespace {

constexpr int64_t kBK = 128;  // keys per tile
constexpr int kRows = 6;      // keys (QK) or dims (PV) per micro-kernel call
constexpr int kNV = 2;        // vectors of 8 rows per micro-kernel call
constexpr int kVecs = attn_detail::kBQ / 8;

using attn_detail::kBQ;
using attn_detail::kLazy;
using attn_detail::kNegInf;
using bf16_detail::imin;

// 2^x for 8 lanes, x clamped below at -125 (2^-125 stands for every smaller value, -inf
// included; NaN stays NaN): the AVX-512 exp2_ps's polynomial, scaled through the exponent bits.
LONGROPE_AVX2_TARGET inline __m256 exp2_clamped(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-125.0f), x);  // x second: a NaN passes through
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);
  __m256 p = _mm256_set1_ps(bf16_detail::kExp2Poly[0]);
#pragma GCC unroll 6
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(bf16_detail::kExp2Poly[i]));
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}

// Lanes where key `key` is visible (key <= pos).
LONGROPE_AVX2_TARGET inline __m256 visible(__m256i pos, int64_t key) {
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(pos, _mm256_set1_epi32(int(key - 1))));
}

// acc[r][v] += sum over t in [0, T) of B[r * rs + t * ts] * A[t * as + 8v .. 8v + 7].
template <int R>
LONGROPE_AVX2_TARGET inline void fma_block(__m256 (&acc)[R][kNV], const float* B, int64_t rs,
                                           int64_t ts, const float* A, int64_t as, int64_t T) {
  for (int64_t t = 0; t < T; ++t) {
    __m256 a[kNV];
#pragma GCC unroll 2
    for (int v = 0; v < kNV; ++v) a[v] = _mm256_load_ps(A + t * as + 8 * v);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 b = _mm256_broadcast_ss(B + r * rs + t * ts);
#pragma GCC unroll 2
      for (int v = 0; v < kNV; ++v) acc[r][v] = _mm256_fmadd_ps(b, a[v], acc[r][v]);
    }
  }
}

// S^T rows [0, MK), lanes [8 * v0, 8 * (v0 + kNV)), for keys K + r * ks (index key0 + r); folds
// the scores of visible keys into the tile maxima mx.
template <int MK>
LONGROPE_AVX2_TARGET inline void qk_kernel(const float* K, int64_t ks, int hd, const float* qt,
                                           float* s, bool masked, int64_t key0, const int32_t* pos,
                                           int v0, __m256* mx) {
  __m256 acc[MK][kNV];
#pragma GCC unroll 6
  for (int r = 0; r < MK; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < kNV; ++v) acc[r][v] = _mm256_setzero_ps();
  fma_block<MK>(acc, K, ks, 1, qt + 8 * v0, kBQ, hd);
#pragma GCC unroll 6
  for (int r = 0; r < MK; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < kNV; ++v) {
      const int w = v0 + v;
      _mm256_store_ps(s + r * kBQ + 8 * w, acc[r][v]);
      const __m256 hi = _mm256_max_ps(mx[w], acc[r][v]);
      mx[w] = masked ? _mm256_blendv_ps(
                           mx[w], hi,
                           visible(_mm256_load_si256(reinterpret_cast<const __m256i*>(pos + 8 * w)),
                                   key0 + r))
                     : hi;
    }
}

// O^T rows [0, D) (dims of V + d), lanes [8 * v0, 8 * (v0 + kNV)) += sum over the bk keys (rows
// ks apart) of V[j][d] * P^T[j][row].
template <int D>
LONGROPE_AVX2_TARGET inline void pv_kernel(int64_t bk, const float* V, int64_t ks, const float* pt,
                                           int v0, float* ot) {
  __m256 acc[D][kNV];
#pragma GCC unroll 6
  for (int d = 0; d < D; ++d)
#pragma GCC unroll 2
    for (int v = 0; v < kNV; ++v) acc[d][v] = _mm256_load_ps(ot + d * kBQ + 8 * (v0 + v));
  fma_block<D>(acc, V, 1, ks, pt + 8 * v0, kBQ, bk);
#pragma GCC unroll 6
  for (int d = 0; d < D; ++d)
#pragma GCC unroll 2
    for (int v = 0; v < kNV; ++v) _mm256_store_ps(ot + d * kBQ + 8 * (v0 + v), acc[d][v]);
}

// The reference of the 8 rows of vector w, as attn_detail::settle_reference does it for 16:
// moves m to the tile maximum (rescaling the running sum and O^T) only when tmx exceeds it by more
// than kLazy; returns what the scores subtract (m, or 0 in rows without a visible key so far).
LONGROPE_AVX2_TARGET inline __m256 settle_reference(__m256 tmx, float* m, __m256* lsum, float* ot,
                                                    int hd) {
  const __m256 neg_inf = _mm256_set1_ps(kNegInf), zero = _mm256_setzero_ps();
  __m256 mref = _mm256_load_ps(m);
  if (_mm256_movemask_ps(
          _mm256_cmp_ps(tmx, _mm256_add_ps(mref, _mm256_set1_ps(kLazy)), _CMP_GT_OQ)) != 0) {
    const __m256 m_new = _mm256_max_ps(mref, tmx);
    const __m256 ms = _mm256_blendv_ps(m_new, zero, _mm256_cmp_ps(m_new, neg_inf, _CMP_EQ_OQ));
    const __m256 corr = exp2_clamped(_mm256_sub_ps(mref, ms));
    *lsum = _mm256_mul_ps(*lsum, corr);
    for (int d = 0; d < hd; ++d)
      _mm256_store_ps(ot + d * kBQ, _mm256_mul_ps(_mm256_load_ps(ot + d * kBQ), corr));
    mref = m_new;
    _mm256_store_ps(m, m_new);
  }
  return _mm256_blendv_ps(mref, zero, _mm256_cmp_ps(mref, neg_inf, _CMP_EQ_OQ));
}

// Online softmax over one tile of bk keys from k0 for vectors [0, nv): updates m, l, rescales O^T
// and overwrites s with the probabilities.
LONGROPE_AVX2_TARGET void softmax_tile(float* s, float* ot, int64_t k0, int64_t bk, bool masked,
                                       const int32_t* pos, const __m256* tmx, float* m, float* l,
                                       int hd, int nv) {
  for (int w = 0; w < nv; ++w) {
    const __m256i pv = _mm256_load_si256(reinterpret_cast<const __m256i*>(pos + 8 * w));
    __m256 lsum = _mm256_load_ps(l + 8 * w);
    const __m256 ms = settle_reference(tmx[w], m + 8 * w, &lsum, ot + 8 * w, hd);
    __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
    for (int64_t j = 0; j < bk; ++j) {
      float* sj = s + j * kBQ + 8 * w;
      __m256 p = exp2_clamped(_mm256_sub_ps(_mm256_load_ps(sj), ms));
      if (masked) p = _mm256_and_ps(p, visible(pv, k0 + j));
      if (j & 1)
        sum1 = _mm256_add_ps(sum1, p);
      else
        sum0 = _mm256_add_ps(sum0, p);
      _mm256_store_ps(sj, p);
    }
    _mm256_store_ps(l + 8 * w, _mm256_add_ps(lsum, _mm256_add_ps(sum0, sum1)));
  }
}

// The block's key tiles; nv vectors of rows hold queries (a multiple of kNV).
LONGROPE_AVX2_TARGET void run_tiles(const float* K, const float* V, int64_t ks, int hd,
                                    int64_t k_end, int64_t k_full, const int32_t* pos,
                                    const float* qt, float* s, float* ot, float* m, float* l,
                                    int nv) {
  for (int64_t k0 = 0; k0 < k_end;) {
    // Tiles do not straddle k_full: keys below it are visible to every row of the block.
    const bool masked = k0 >= k_full;
    const int64_t bk = imin(kBK, (masked ? k_end : imin(k_end, k_full)) - k0);
    __m256 tmx[kVecs];
    for (int w = 0; w < kVecs; ++w) tmx[w] = _mm256_set1_ps(kNegInf);
    const float* Kt = K + k0 * ks;
    for (int v0 = 0; v0 < nv; v0 += kNV) {
      int64_t j = 0;
      for (; j + kRows <= bk; j += kRows)
        qk_kernel<kRows>(Kt + j * ks, ks, hd, qt, s + j * kBQ, masked, k0 + j, pos, v0, tmx);
      for (; j < bk; ++j)
        qk_kernel<1>(Kt + j * ks, ks, hd, qt, s + j * kBQ, masked, k0 + j, pos, v0, tmx);
    }
    softmax_tile(s, ot, k0, bk, masked, pos, tmx, m, l, hd, nv);
    const float* Vt = V + k0 * ks;
    for (int v0 = 0; v0 < nv; v0 += kNV) {
      int d = 0;
      for (; d + kRows <= hd; d += kRows) pv_kernel<kRows>(bk, Vt + d, ks, s, v0, ot + d * kBQ);
      for (; d < hd; ++d) pv_kernel<1>(bk, Vt + d, ks, s, v0, ot + d * kBQ);
    }
    k0 += bk;
  }
}

// Per-thread scratch: Qt [hd][kBQ], S^T / P^T [kBK][kBQ], O^T [hd][kBQ] (64-byte aligned).
int64_t scratch_floats(int hd) {
  return 2 * int64_t(hd) * kBQ + kBK * kBQ;
}

// Block b: its 64 (or, last, fewer) queries of one head against every key up to the last one.
LONGROPE_AVX2_TARGET void attention_block(const AttentionArgs& a, const attn_detail::Blocks& k,
                                          int64_t b, float* scratch) {
  const int hd = a.head_dim;
  float* const qt = scratch;
  float* const s = qt + int64_t(hd) * kBQ;
  float* const ot = s + kBK * kBQ;
  alignas(64) int32_t pos[kBQ];
  alignas(64) float m[kBQ], l[kBQ];
  int64_t qi[kBQ];
  int hh[kBQ];
  int64_t min_pos, k_begin, k_end;
  const int rows = attn_detail::block_setup(k, b, 0, qi, hh, pos, &min_pos, &k_begin, &k_end);
  const float qscale = a.scale * 1.4426950408889634f;
  for (int r = 0; r < kBQ; ++r) {
    m[r] = kNegInf;
    l[r] = 0.0f;
  }
  for (int64_t i = 0; i < int64_t(hd) * kBQ; ++i) ot[i] = 0.0f;
  for (int r = 0; r < kBQ; ++r) {
    if (r >= rows) {
      for (int d = 0; d < hd; ++d) qt[d * kBQ + r] = 0.0f;
      continue;
    }
    const float* q = a.q + qi[r] * a.q_stride + int64_t(hh[r]) * hd;
    for (int d = 0; d < hd; ++d) qt[d * kBQ + r] = q[d] * qscale;
  }
  const int kvh = hh[0] / (a.n_head / a.n_head_kv);
  const int64_t head = int64_t(kvh) * a.kv_cap * hd;
  const int nv = (rows + 8 * kNV - 1) / (8 * kNV) * kNV;
  run_tiles(a.k + head, a.v + head, hd, hd, k_end, min_pos, pos, qt, s, ot, m, l, nv);
  attn_detail::finish_item(k, b, 0, ot, m, l, rows, qi, hh, a.out, a.out_stride);
}

}  // namespace

bool attention_f32_avx2(const AttentionArgs& a) {
  if (a.n < kBQ || !cpu_has_avx2_fma()) return false;
  attn_detail::Blocks k = attn_detail::plan_blocks(a.n, a.p0, a.n_head, a.n_head_kv, a.head_dim);
  if (k.grouped || k.n_chunks > 1) return false;
  attn_detail::run_blocks(
      k, scratch_floats(a.head_dim), a.out, a.out_stride,
      [&](int64_t b, int64_t, float* scratch) { attention_block(a, k, b, scratch); });
  return true;
}

}  // namespace longrope::kernels
