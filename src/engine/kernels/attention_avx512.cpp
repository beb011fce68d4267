// Causal grouped-query attention, FP32, AVX-512: the products are register-blocked FMA
// micro-kernels on rows in lanes, in place of the small sgemm calls of attention.cpp (whose
// packing dominated at head_dim 64, and whose per-call cost dominated decoding).
//
// A work block is kBQ = 64 rows: in prefill 64 consecutive queries of one head, for shorter inputs
// the (query, head) pairs of one key/value head (decoding: the query heads of the group; keys are
// then split into chunks across threads and merged, attn_detail::run_blocks). The rows live in the
// 16 lanes of up to 4 vectors, so the online softmax is vertical (one row per lane):
//   S^T[key][row]  = sum over dims: broadcast(K[key][d]) * Qt[d][row]
//   O^T[dim][row] += sum over keys: broadcast(V[key][dim]) * P^T[key][row]
// Qt: the block's queries times scale * log2(e) (exponentials are base 2), transposed once per
// block. K and V are read in place; P^T overwrites S^T. Tiles of keys visible to every row of the
// block run without masks; only the tiles on the diagonal are masked. The reference maximum of a
// row moves lazily (attn_detail::settle_reference). Blocks of at most kDecRows rows (decoding: the
// query heads of one group) waste most lanes in that layout and take the keys-in-lanes path below
// instead, as the bf16 kernel does. Every block and chunk is computed by one thread in a fixed
// order: results do not depend on the thread count.
#include <cmath>
#include <cstdint>

#include "engine/kernels/bf16_internal.h"  // first: it includes immintrin.h
#include "longrope/kernels.h"
#include "longrope/train_ops.h"

namespace longrope::kernels {

namespace {

constexpr int64_t kBK = 128;  // keys per tile
constexpr int kQKRows = 6;    // keys per QK micro-kernel call (6 x 4 accumulators)
constexpr int kPVDims = 6;    // dims per PV micro-kernel call (6 x 4 accumulators)

using attn_detail::kBQ;
using attn_detail::kDecRows;
using attn_detail::kNegInf;
using bf16_detail::exp2_ps;
using bf16_detail::imin;

// acc[r][v] += sum over t in [0, T) of B[r * rs + t * ts] * A[t][16v..16v+15] (A's rows `as`
// apart): the outer-product micro-kernel of every product (prefill QK: B = K, A = Qt; PV: B = V^T,
// A = P^T; decode QK: B = Qd, A = Kt; PV: B = Pd, A = V).
template <int R, int NQV>
LONGROPE_AVX512_TARGET inline void fma_block(__m512 (&acc)[R][NQV], const float* B, int64_t rs,
                                             int64_t ts, const float* A, int64_t as, int64_t T) {
  for (int64_t t = 0; t < T; ++t) {
    __m512 a[NQV];
#pragma GCC unroll 4
    for (int v = 0; v < NQV; ++v) a[v] = _mm512_loadu_ps(A + t * as + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(B[r * rs + t * ts]);
#pragma GCC unroll 4
      for (int v = 0; v < NQV; ++v) acc[r][v] = _mm512_fmadd_ps(b, a[v], acc[r][v]);
    }
  }
}

// S^T rows [0, MK) for keys K + r*ks (key index key0 + r); folds the scores of visible keys into
// the tile maximum mx.
template <int MK, int NQV>
LONGROPE_AVX512_TARGET inline void qk_kernel(const float* K, int64_t ks, int hd, const float* qt,
                                             float* s, bool masked, int64_t key0,
                                             const int32_t* pos, __m512* mx) {
  __m512 acc[MK][NQV];
  attn_detail::zero_rows<MK, NQV>(acc);
  fma_block<MK, NQV>(acc, K, ks, 1, qt, kBQ, hd);
  attn_detail::store_scores<MK, NQV>(acc, s, masked, key0, pos, mx);
}

// O^T rows [0, D) (dims of V + d) += sum over the bk keys (rows ks apart) of V[j][d] * P^T[j][row].
template <int D, int NQV>
LONGROPE_AVX512_TARGET inline void pv_kernel(int64_t bk, const float* V, int64_t ks,
                                             const float* pt, float* ot) {
  __m512 acc[D][NQV];
  attn_detail::load_rows<D, NQV>(acc, ot);
  fma_block<D, NQV>(acc, V, 1, ks, pt, kBQ, bk);
  attn_detail::store_rows<D, NQV>(acc, ot);
}

// Online softmax over one tile of bk keys from k0 (scores in s, their row maxima in tmx): updates
// m, l, rescales O^T and overwrites s with the probabilities. `masked`: key k is visible to row r
// only when k <= pos[r].
template <int NQV>
LONGROPE_AVX512_TARGET void softmax_tile(float* s, float* ot, int64_t k0, int64_t bk, bool masked,
                                         const int32_t* pos, const __m512* tmx, float* m, float* l,
                                         int hd) {
#pragma GCC unroll 4
  for (int v = 0; v < NQV; ++v) {
    const __m512i pv = _mm512_load_si512(pos + 16 * v);
    __m512 lsum = _mm512_load_ps(l + 16 * v);
    const __m512 ms = attn_detail::settle_reference(tmx[v], m + 16 * v, &lsum, ot + 16 * v, hd);
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    for (int64_t j = 0; j < bk; ++j) {
      float* sj = s + j * kBQ + 16 * v;
      __m512 p = exp2_ps(_mm512_sub_ps(_mm512_load_ps(sj), ms));
      if (masked)
        p = _mm512_maskz_mov_ps(_mm512_cmpge_epi32_mask(pv, _mm512_set1_epi32(int(k0 + j))), p);
      if (j & 1)
        sum1 = _mm512_add_ps(sum1, p);
      else
        sum0 = _mm512_add_ps(sum0, p);
      _mm512_store_ps(sj, p);
    }
    _mm512_store_ps(l + 16 * v, _mm512_add_ps(lsum, _mm512_add_ps(sum0, sum1)));
  }
}

template <int NQV>
LONGROPE_AVX512_TARGET void run_tiles(const float* K, const float* V, int64_t ks, int hd,
                                      int64_t k_begin, int64_t k_end, int64_t k_full,
                                      const int32_t* pos, const float* qt, float* s, float* ot,
                                      float* m, float* l) {
  for (int64_t k0 = k_begin; k0 < k_end;) {
    // Tiles do not straddle k_full: keys below it are visible to every row of the block.
    const bool masked = k0 >= k_full;
    const int64_t bk = imin(kBK, (masked ? k_end : imin(k_end, k_full)) - k0);
    __m512 tmx[NQV];
#pragma GCC unroll 4
    for (int v = 0; v < NQV; ++v) tmx[v] = _mm512_set1_ps(kNegInf);
    const float* Kt = K + k0 * ks;
    int64_t j = 0;
    for (; j + kQKRows <= bk; j += kQKRows)
      qk_kernel<kQKRows, NQV>(Kt + j * ks, ks, hd, qt, s + j * kBQ, masked, k0 + j, pos, tmx);
    for (; j < bk; ++j)
      qk_kernel<1, NQV>(Kt + j * ks, ks, hd, qt, s + j * kBQ, masked, k0 + j, pos, tmx);
    softmax_tile<NQV>(s, ot, k0, bk, masked, pos, tmx, m, l, hd);
    const float* Vt = V + k0 * ks;
    int d = 0;
    for (; d + kPVDims <= hd; d += kPVDims)
      pv_kernel<kPVDims, NQV>(bk, Vt + d, ks, s, ot + d * kBQ);
    for (; d < hd; ++d) pv_kernel<1, NQV>(bk, Vt + d, ks, s, ot + d * kBQ);
    k0 += bk;
  }
}

// ---- Decode path: at most kDecRows rows, keys in the lanes.
//   S[r][key]   = sum over dims: broadcast(Qd[r][d]) * Kt[d][key]
//   O[r][dims] += sum over keys: broadcast(Pd[r][key]) * V[key][dims]
// Kt: the key tile transposed (dims x keys) in 16 x 16 blocks; V is read in place.

// S rows [0, R) (rows kBK apart) for the 64 keys of Kt starting at kt.
template <int R>
LONGROPE_AVX512_TARGET inline void qk_dec_kernel(const float* kt, int hd, const float* qd,
                                                 float* sd) {
  __m512 acc[R][4];
  attn_detail::zero_rows<R, 4>(acc);
  fma_block<R, 4>(acc, qd, hd, 1, kt, kBK, hd);
  attn_detail::store_rows<R, 4>(acc, sd, kBK);
}

// O rows [0, R), dims [0, 64) of od (rows hd apart) += the bk keys of Pd times V (rows ks apart).
template <int R>
LONGROPE_AVX512_TARGET inline void pv_dec_kernel(int64_t bk, const float* V, int64_t ks, int hd,
                                                 const float* pd, float* od) {
  __m512 acc[R][4];
  attn_detail::load_rows<R, 4>(acc, od, hd);
  fma_block<R, 4>(acc, pd, kBK, 1, V, ks, bk);
  attn_detail::store_rows<R, 4>(acc, od, hd);
}

// Per-thread scratch (64-byte aligned pieces; every size a multiple of 16 floats when hd is).
struct Scratch {
  float* qt;  // [hd][kBQ]
  float* s;   // [kBK][kBQ]
  float* ot;  // [hd][kBQ]
  // Decode path.
  float* kt;  // [hd][kBK]
  float* qd;  // [kDecRows][hd]
  float* sd;  // [kDecRows][kBK]: scores, then probabilities
  float* od;  // [kDecRows][hd]
};

// Floats per thread; carves the pieces out of base when sc is given.
int64_t carve(float* base, int hd, Scratch* sc) {
  const int64_t h = hd;
  const int64_t sizes[] = {h * kBQ,      kBK * kBQ,      h * kBQ,     h * kBK,
                           kDecRows * h, kDecRows * kBK, kDecRows * h};
  float* piece[7];
  int64_t total = 0;
  for (int i = 0; i < 7; ++i) {
    piece[i] = base ? base + total : nullptr;
    total += (sizes[i] + 15) / 16 * 16;
  }
  if (sc) *sc = {piece[0], piece[1], piece[2], piece[3], piece[4], piece[5], piece[6]};
  return total;
}

// Online softmax of decode row r over one tile: the probabilities overwrite its scores.
LONGROPE_AVX512_TARGET void softmax_dec_row(const Scratch& sc, int r, int64_t k0, int64_t bk,
                                            bool masked, int32_t pos, float* m, float* l, int hd) {
  float* s = sc.sd + r * kBK;
  const int64_t nv = (bk + 15) / 16;
  __mmask16 vis[kBK / 16];
  const __m512 ms =
      attn_detail::dec_row_reference(s, k0, bk, masked, pos, &m[r], &l[r], sc.od + r * hd, hd, vis);
  __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
  for (int64_t v = 0; v < nv; ++v) {
    const __m512 p =
        _mm512_maskz_mov_ps(vis[v], exp2_ps(_mm512_sub_ps(_mm512_load_ps(s + 16 * v), ms)));
    if (v & 1)
      sum1 = _mm512_add_ps(sum1, p);
    else
      sum0 = _mm512_add_ps(sum0, p);
    _mm512_store_ps(s + 16 * v, p);
  }
  l[r] += attn_detail::sum_lanes(_mm512_add_ps(sum0, sum1));
}

template <int R>
LONGROPE_AVX512_TARGET void run_decode_tiles(const Scratch& sc, const float* K, const float* V,
                                             int64_t ks, int hd, int64_t k_begin, int64_t k_end,
                                             int64_t k_full, const int32_t* pos, float* m,
                                             float* l) {
  for (int64_t k0 = k_begin; k0 < k_end;) {
    const bool masked = k0 >= k_full;
    const int64_t bk = imin(kBK, (masked ? k_end : imin(k_end, k_full)) - k0);
    attn_detail::transpose_key_tile(K + k0 * ks, ks * int64_t(sizeof(float)), bk, hd,
                                    reinterpret_cast<uint32_t*>(sc.kt), kBK);
    for (int64_t j = 0; j < bk; j += 64) qk_dec_kernel<R>(sc.kt + j, hd, sc.qd, sc.sd + j);
    for (int r = 0; r < R; ++r) softmax_dec_row(sc, r, k0, bk, masked, pos[r], m, l, hd);
    for (int d = 0; d < hd; d += 64)
      pv_dec_kernel<R>(bk, V + k0 * ks + d, ks, hd, sc.sd, sc.od + d);
    k0 += bk;
  }
}

// What the kernel reads and writes: queries q (rows q_stride apart); the keys and values of kv
// head h at k + h * kv_head_stride (and v + ...), key rows kv_row_stride apart; outputs (rows
// out_stride apart); where lse is given, each (head, query)'s natural log-sum-exp of its scaled
// scores at lse[h * n + i] (training's layout).
struct F32Attn {
  const float* q;
  int64_t q_stride;
  const float *k, *v;
  int64_t kv_head_stride, kv_row_stride;
  float* out;
  int64_t out_stride;
  float* lse;
  int64_t n, p0;
  int n_head, n_head_kv, head_dim;
  float scale;
};

// Work item (b, c): block b's rows against chunk c of their keys.
LONGROPE_AVX512_TARGET void attention_item(const F32Attn& a, const attn_detail::Blocks& k,
                                           bool decode, int64_t b, int64_t c, float* scratch) {
  const int hd = a.head_dim;
  Scratch sc;
  carve(scratch, hd, &sc);
  float* const ot = sc.ot;
  alignas(64) int32_t pos[kBQ];
  alignas(64) float m[kBQ], l[kBQ];
  int64_t qi[kBQ];
  int hh[kBQ];
  int64_t min_pos, k_begin, k_end;
  const int rows = attn_detail::block_setup(k, b, c, qi, hh, pos, &min_pos, &k_begin, &k_end);
  const float qscale = a.scale * 1.4426950408889634f;
  for (int r = 0; r < kBQ; ++r) {
    m[r] = kNegInf;
    l[r] = 0.0f;
  }
  for (int64_t i = 0; i < int64_t(hd) * kBQ; ++i) ot[i] = 0.0f;
  const int kvh = hh[0] / (a.n_head / a.n_head_kv);
  const float* K = a.k + int64_t(kvh) * a.kv_head_stride;
  const float* V = a.v + int64_t(kvh) * a.kv_head_stride;
  const int64_t ks = a.kv_row_stride;
  if (decode) {
    for (int r = 0; r < rows; ++r) {
      const float* q = a.q + qi[r] * a.q_stride + int64_t(hh[r]) * hd;
      for (int d = 0; d < hd; ++d) sc.qd[r * hd + d] = q[d] * qscale;
    }
    for (int64_t i = 0; i < int64_t(rows) * hd; ++i) sc.od[i] = 0.0f;
    attn_detail::with_count<kDecRows>(rows, [&](auto R) {
      run_decode_tiles<R()>(sc, K, V, ks, hd, k_begin, k_end, min_pos, pos, m, l);
    });
    for (int r = 0; r < rows; ++r)
      for (int d = 0; d < hd; ++d) ot[d * kBQ + r] = sc.od[r * hd + d];
  } else {
    float* qt = sc.qt;
    for (int r = 0; r < kBQ; ++r) {
      if (r >= rows) {
        for (int d = 0; d < hd; ++d) qt[d * kBQ + r] = 0.0f;
        continue;
      }
      const float* q = a.q + qi[r] * a.q_stride + int64_t(hh[r]) * hd;
      for (int d = 0; d < hd; ++d) qt[d * kBQ + r] = q[d] * qscale;
    }
    attn_detail::with_count<4>((rows + 15) / 16, [&](auto NQV) {
      run_tiles<NQV()>(K, V, ks, hd, k_begin, k_end, min_pos, pos, qt, sc.s, ot, m, l);
    });
  }
  attn_detail::finish_item(k, b, c, ot, m, l, rows, qi, hh, a.out, a.out_stride);
  // Scores were scaled by log2(e) and summed as powers of 2 from the reference m: the natural
  // log-sum-exp is (m + log2 l) ln 2. Only for unsplit keys (training calls have p0 = 0).
  if (a.lse)
    for (int r = 0; r < rows; ++r)
      a.lse[int64_t(hh[r]) * a.n + qi[r]] =
          static_cast<float>(double(m[r]) * 0.6931471805599453 + std::log(double(l[r])));
}

bool run(const F32Attn& a) {
  if (a.n == 0 || !cpu_has_avx512()) return false;
  attn_detail::Blocks k = attn_detail::plan_blocks(a.n, a.p0, a.n_head, a.n_head_kv, a.head_dim);
  if (a.lse && k.n_chunks > 1) return false;
  const bool decode = attn_detail::keys_in_lanes(k);
  attn_detail::run_blocks(
      k, carve(nullptr, a.head_dim, nullptr), a.out, a.out_stride,
      [&](int64_t b, int64_t c, float* scratch) { attention_item(a, k, decode, b, c, scratch); });
  return true;
}

}  // namespace

bool attention_f32_avx512(const AttentionArgs& a) {
  return run({a.q, a.q_stride, a.k, a.v, a.kv_cap * a.head_dim, a.head_dim, a.out, a.out_stride,
              nullptr, a.n, a.p0, a.n_head, a.n_head_kv, a.head_dim, a.scale});
}

bool attention_forward_f32_avx512(const train::AttentionShape& s, const float* q, const float* k,
                                  const float* v, float* out, float* lse) {
  const int64_t qs = int64_t(s.n_head) * s.head_dim, ks = int64_t(s.n_head_kv) * s.head_dim;
  return run({q, qs, k, v, s.head_dim, ks, out, qs, lse, s.n, 0, s.n_head, s.n_head_kv, s.head_dim,
              float(s.scale)});
}

}  // namespace longrope::kernels
