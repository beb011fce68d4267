// Causal grouped-query attention with a bf16 key/value cache: bf16 products (AVX512_BF16
// vdpbf16ps) with FP32 accumulation, FP32 online softmax over key tiles.
//
// Prefill layout: the rows of a work block (up to kBQ = 64 (query, head) pairs) live in the 16
// lanes of kBQ/16 vectors, so the softmax (running max, exponentials, sums, rescaling) is vertical:
//   S^T[key][row]  = sum over pairs of dims: broadcast(K[key][d, d+1]) * Qt[d/2][row][2]
//   O^T[dim][row] += sum over pairs of keys: broadcast(Vi[key/2][dim])  * Pt[key/2][row][2]
// Qt: the block's queries, times scale*log2(e), in bf16 with pairs of dims interleaved (packed once
// per block). K is read in place (a pair of dims is 32 contiguous bits of a key row). Vi: a tile of
// V with pairs of consecutive keys interleaved, packed per key tile. Pt: the tile's probabilities
// in bf16 with pairs of keys interleaved, written by the softmax. Exponentials are base 2.
// Blocks: n >= kBQ takes 64 consecutive queries of one head; shorter inputs take all (query, head)
// pairs of one key/value head. At most kDecRows such rows (decode) use the keys-in-lanes kernels
// below (run_decode_tiles). Keys visible to every row of a block are processed without masks;
// only the keys of the diagonal are masked. When there are few blocks (decode), keys are split
// into chunks of kChunk, merged afterwards in a fixed order. Every block (and chunk) is computed
// by one thread in a fixed order: results do not depend on the thread count.
#include <omp.h>

#include <cstdint>
#include <vector>

#include "engine/kernels/bf16_internal.h"  // first: it includes immintrin.h
#include "longrope/kernels.h"

namespace longrope::kernels {

namespace {

using attn_detail::kBQ;       // rows (query, head) per block: 4 vectors of 16 lanes
constexpr int64_t kBK = 128;  // keys per tile (multiple of 64)
using attn_detail::kChunk;    // keys per chunk when keys are split (a multiple of kBK)
constexpr int kQKRows = 4;    // keys per QK micro-kernel call
constexpr int kPVDims = 4;    // dims per PV micro-kernel call
using attn_detail::kDecRows;  // decode path: at most this many rows per key/value head
using attn_detail::kLazy;     // the decode path's softmax moves its reference as lazily
using attn_detail::kNegInf;

using bf16_detail::exp2_clamped_ps;
using bf16_detail::exp2_ps;
using bf16_detail::imin;
using bf16_detail::load_u32;

struct AttnJob {
  const AttentionArgsBf16* a;
  attn_detail::Blocks blocks;
  bool decode;  // grouped with at most kDecRows rows per block: keys in the lanes
};

// Per-thread scratch, 64-byte aligned pieces of one buffer.
struct Scratch {
  uint32_t* qt;  // [hdp][kBQ]
  float* s;      // [kBK][kBQ]
  uint32_t* pt;  // [kBK/2][kBQ]
  uint32_t* vi;  // [kBK/2][hd]
  float* ot;     // [hd][kBQ]
  // Decode path.
  uint32_t* kt;  // [hdp][kBK]: K tile, pairs of dims, keys in lanes
  uint32_t* qd;  // [kDecRows][hdp]
  float* sd;     // [kDecRows][kBK]
  uint16_t* pd;  // [kDecRows][kBK] bf16
  float* od;     // [kDecRows][hd]
};

// Floats rounded up to whole 64-byte lines.
inline int64_t round64(int64_t n) {
  return (n + 15) / 16 * 16;
}

// Carves the pieces out of base (when base is null, only the size is computed).
inline int64_t carve(float* base, int hd, Scratch* sc) {
  const int64_t hdp = (hd + 1) / 2;
  const int64_t sizes[] = {
      hdp * kBQ, kBK * kBQ,      kBK / 2 * kBQ,  kBK / 2 * hd,       hd * kBQ,
      hdp * kBK, kDecRows * hdp, kDecRows * kBK, kDecRows * kBK / 2, int64_t(kDecRows) * hd};
  float* p =
      base ? base + ((64 - reinterpret_cast<uintptr_t>(base) % 64) % 64) / sizeof(float) : nullptr;
  float* piece[10];
  int64_t total = 16;
  for (int i = 0; i < 10; ++i) {
    piece[i] = p ? p + total - 16 : nullptr;
    total += round64(sizes[i]);
  }
  if (sc) {
    sc->qt = reinterpret_cast<uint32_t*>(piece[0]);
    sc->s = piece[1];
    sc->pt = reinterpret_cast<uint32_t*>(piece[2]);
    sc->vi = reinterpret_cast<uint32_t*>(piece[3]);
    sc->ot = piece[4];
    sc->kt = reinterpret_cast<uint32_t*>(piece[5]);
    sc->qd = reinterpret_cast<uint32_t*>(piece[6]);
    sc->sd = piece[7];
    sc->pd = reinterpret_cast<uint16_t*>(piece[8]);
    sc->od = piece[9];
  }
  return total;
}

// S^T rows [0, MK) of the tile: S[r][row] for keys K + r*hd (key index key0 + r), NQV vectors of
// rows; folds the scores into the running tile maximum mx (only visible keys when `masked`).
template <int MK, int NQV>
LONGROPE_BF16_TARGET inline void qk_kernel(const uint16_t* K, int hd, const uint32_t* qt, float* s,
                                           bool masked, int64_t key0, const int32_t* pos,
                                           __m512* mx) {
  __m512 acc[MK][NQV];
  attn_detail::zero_rows<MK, NQV>(acc);
  const int full = hd / 2;
  for (int dp = 0; dp < full; ++dp) {
    __m512bh q[NQV];
#pragma GCC unroll 4
    for (int v = 0; v < NQV; ++v) q[v] = (__m512bh)_mm512_load_si512(qt + dp * kBQ + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MK; ++r) {
      const __m512bh kb =
          (__m512bh)_mm512_set1_epi32(static_cast<int>(load_u32(K + r * hd + 2 * dp)));
#pragma GCC unroll 4
      for (int v = 0; v < NQV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], kb, q[v]);
    }
  }
  if (hd & 1) {
    __m512bh q[NQV];
#pragma GCC unroll 4
    for (int v = 0; v < NQV; ++v) q[v] = (__m512bh)_mm512_load_si512(qt + full * kBQ + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MK; ++r) {
      const __m512bh kb = (__m512bh)_mm512_set1_epi32(K[r * hd + 2 * full]);
#pragma GCC unroll 4
      for (int v = 0; v < NQV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], kb, q[v]);
    }
  }
  attn_detail::store_scores<MK, NQV>(acc, s, masked, key0, pos, mx);
}

// O^T rows [0, D) (dims) += sum over njp key pairs of Vi[jp][dim] * Pt[jp][row].
template <int D, int NQV>
LONGROPE_BF16_TARGET inline void pv_kernel(int64_t njp, const uint32_t* vi, int hd,
                                           const uint32_t* pt, float* ot) {
  __m512 acc[D][NQV];
  attn_detail::load_rows<D, NQV>(acc, ot);
  for (int64_t jp = 0; jp < njp; ++jp) {
    __m512bh p[NQV];
#pragma GCC unroll 4
    for (int v = 0; v < NQV; ++v) p[v] = (__m512bh)_mm512_load_si512(pt + jp * kBQ + 16 * v);
#pragma GCC unroll 8
    for (int d = 0; d < D; ++d) {
      const __m512bh vb = (__m512bh)_mm512_set1_epi32(static_cast<int>(vi[jp * hd + d]));
#pragma GCC unroll 4
      for (int v = 0; v < NQV; ++v) acc[d][v] = _mm512_dpbf16_ps(acc[d][v], vb, p[v]);
    }
  }
  attn_detail::store_rows<D, NQV>(acc, ot);
}

template <int NQV>
LONGROPE_BF16_TARGET void qk_tile(const uint16_t* K, int64_t k0, int64_t bk, int hd,
                                  const uint32_t* qt, float* s, bool masked, const int32_t* pos,
                                  __m512* mx) {
  int64_t j = 0;
  for (; j + kQKRows <= bk; j += kQKRows)
    qk_kernel<kQKRows, NQV>(K + j * hd, hd, qt, s + j * kBQ, masked, k0 + j, pos, mx);
  for (; j < bk; ++j) qk_kernel<1, NQV>(K + j * hd, hd, qt, s + j * kBQ, masked, k0 + j, pos, mx);
}

template <int NQV>
LONGROPE_BF16_TARGET void pv_tile(int64_t njp, const uint32_t* vi, int hd, const uint32_t* pt,
                                  float* ot) {
  int d = 0;
  for (; d + kPVDims <= hd; d += kPVDims)
    pv_kernel<kPVDims, NQV>(njp, vi + d, hd, pt, ot + d * kBQ);
  for (; d < hd; ++d) pv_kernel<1, NQV>(njp, vi + d, hd, pt, ot + d * kBQ);
}

// Vi[jp][d] = (V[2jp][d], V[2jp+1][d]) for the bk keys of V (row stride hd); a missing odd key
// is zero.
LONGROPE_BF16_TARGET void pack_v(const uint16_t* V, int64_t bk, int hd, uint32_t* vi) {
  const int64_t full = bk / 2;
  if (hd % 32 == 0) {
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40,
                                        8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    for (int64_t jp = 0; jp < full; ++jp) {
      const uint16_t* r0 = V + 2 * jp * hd;
      for (int c = 0; c < hd; c += 32) {
        const __m512i a = _mm512_loadu_si512(r0 + c), b = _mm512_loadu_si512(r0 + hd + c);
        _mm512_store_si512(vi + jp * hd + c, _mm512_permutex2var_epi16(a, lo, b));
        _mm512_store_si512(vi + jp * hd + c + 16, _mm512_permutex2var_epi16(a, hi, b));
      }
    }
  } else {
    for (int64_t jp = 0; jp < full; ++jp)
      for (int d = 0; d < hd; ++d)
        vi[jp * hd + d] = uint32_t(V[2 * jp * hd + d]) | uint32_t(V[(2 * jp + 1) * hd + d]) << 16;
  }
  if (bk & 1)
    for (int d = 0; d < hd; ++d) vi[full * hd + d] = V[2 * full * hd + d];
}

// Online softmax over one tile of bk keys starting at key k0, whose scores are in S and their
// maximum per row in tmx: updates m, l, rescales O^T and writes Pt. `masked`: key k is visible to
// row r only when k <= pos[r]. The reference m of a row moves only when the tile's maximum exceeds
// it by more than kLazy (attn_detail::settle_reference), which saves most rescalings of O.
template <int NQV>
LONGROPE_BF16_TARGET void softmax_tile(Scratch& sc, int64_t k0, int64_t bk, bool masked,
                                       const int32_t* pos, const __m512* tmx, float* m, float* l,
                                       int hd) {
  const __m512i interleave =
      _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const int64_t njp = (bk + 1) / 2;
#pragma GCC unroll 4
  for (int v = 0; v < NQV; ++v) {
    const __m512i pv = _mm512_load_si512(pos + 16 * v);
    __m512 lsum = _mm512_load_ps(l + 16 * v);
    const __m512 ms = attn_detail::settle_reference(tmx[v], m + 16 * v, &lsum, sc.ot + 16 * v, hd);
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    for (int64_t jp = 0; jp < njp; ++jp) {
      const int64_t j = 2 * jp;
      __m512 p0 = exp2_ps(_mm512_sub_ps(_mm512_load_ps(sc.s + j * kBQ + 16 * v), ms));
      __m512 p1 = j + 1 < bk
                      ? exp2_ps(_mm512_sub_ps(_mm512_load_ps(sc.s + (j + 1) * kBQ + 16 * v), ms))
                      : _mm512_setzero_ps();
      if (masked) {
        p0 = _mm512_maskz_mov_ps(_mm512_cmpge_epi32_mask(pv, _mm512_set1_epi32(int(k0 + j))), p0);
        p1 = _mm512_maskz_mov_ps(_mm512_cmpge_epi32_mask(pv, _mm512_set1_epi32(int(k0 + j + 1))),
                                 p1);
      }
      sum0 = _mm512_add_ps(sum0, p0);
      sum1 = _mm512_add_ps(sum1, p1);
      const __m512i pb = (__m512i)_mm512_cvtne2ps_pbh(p1, p0);
      _mm512_store_si512(sc.pt + jp * kBQ + 16 * v, _mm512_permutexvar_epi16(interleave, pb));
    }
    _mm512_store_ps(l + 16 * v, _mm512_add_ps(lsum, _mm512_add_ps(sum0, sum1)));
  }
}

template <int NQV>
LONGROPE_BF16_TARGET void run_tiles(const AttentionArgsBf16& a, Scratch& sc, const uint16_t* K,
                                    const uint16_t* V, int64_t k_begin, int64_t k_end,
                                    int64_t k_full, const int32_t* pos, float* m, float* l) {
  const int hd = a.head_dim;
  for (int64_t k0 = k_begin; k0 < k_end;) {
    // Tiles do not straddle k_full: keys below it are visible to every row of the block.
    const bool masked = k0 >= k_full;
    const int64_t bk = imin(kBK, (masked ? k_end : imin(k_end, k_full)) - k0);
    __m512 tmx[NQV];
#pragma GCC unroll 4
    for (int v = 0; v < NQV; ++v) tmx[v] = _mm512_set1_ps(kNegInf);
    qk_tile<NQV>(K + k0 * hd, k0, bk, hd, sc.qt, sc.s, masked, pos, tmx);
    softmax_tile<NQV>(sc, k0, bk, masked, pos, tmx, m, l, hd);
    pack_v(V + k0 * hd, bk, hd, sc.vi);
    pv_tile<NQV>((bk + 1) / 2, sc.vi, hd, sc.pt, sc.ot);
    k0 += bk;
  }
}

// ---- Decode path: few rows (queries x heads of one kv head), keys in the lanes.
//   S[r][key]  = sum over pairs of dims: broadcast(Qd[r][d/2]) * Kt[d/2][key]
//   O[r][dims] += sum over pairs of keys: broadcast(Pd[r][key pair]) * Vi[key/2][dims]
// Kt: the K tile transposed (pairs of dims x keys), 16 x 16 blocks of 32-bit words.

// Kt for keys [0, bk) of K (row stride hd, hd a multiple of 32); keys up to the next multiple of
// 64 are zero.
LONGROPE_BF16_TARGET void pack_kt(const uint16_t* K, int64_t bk, int hd, uint32_t* kt) {
  attn_detail::transpose_key_tile(K, int64_t(hd) * 2, bk, hd / 2, kt, kBK);
}

// S rows [0, R) for the 64 keys of Kt starting at kt.
template <int R>
LONGROPE_BF16_TARGET inline void qk_dec_kernel(const uint32_t* kt, int hdp, const uint32_t* qd,
                                               float* sd) {
  __m512 acc[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int dp = 0; dp < hdp; ++dp) {
    __m512bh k[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) k[v] = (__m512bh)_mm512_load_si512(kt + dp * kBK + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh qb = (__m512bh)_mm512_set1_epi32(static_cast<int>(qd[r * hdp + dp]));
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], qb, k[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) _mm512_store_ps(sd + r * kBK + 16 * v, acc[r][v]);
}

// O rows [0, R), dims [0, 64) of od (row stride hd) += the njp key pairs of Pd times Vi.
template <int R>
LONGROPE_BF16_TARGET inline void pv_dec_kernel(int64_t njp, const uint32_t* vi, int hd,
                                               const uint32_t* pd, float* od) {
  __m512 acc[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_loadu_ps(od + r * hd + 16 * v);
  for (int64_t jp = 0; jp < njp; ++jp) {
    __m512bh x[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) x[v] = (__m512bh)_mm512_load_si512(vi + jp * hd + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh pb = (__m512bh)_mm512_set1_epi32(static_cast<int>(pd[r * (kBK / 2) + jp]));
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], pb, x[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(od + r * hd + 16 * v, acc[r][v]);
}

// Online softmax of row r over one tile (keys k0 + [0, bk)): the same rules as softmax_tile.
LONGROPE_BF16_TARGET void softmax_dec_row(Scratch& sc, int r, int64_t k0, int64_t bk, bool masked,
                                          int32_t pos, float* m, float* l, int hd) {
  const float* s = sc.sd + r * kBK;
  const int64_t nv = (bk + 15) / 16;
  __mmask16 vis[kBK / 16];
  const __m512 ms =
      attn_detail::dec_row_reference(s, k0, bk, masked, pos, &m[r], &l[r], sc.od + r * hd, hd, vis);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t v = 0; v < nv; v += 2) {
    const __m512 p0 =
        _mm512_maskz_mov_ps(vis[v], exp2_ps(_mm512_sub_ps(_mm512_load_ps(s + 16 * v), ms)));
    const __m512 p1 =
        v + 1 < nv ? _mm512_maskz_mov_ps(
                         vis[v + 1], exp2_ps(_mm512_sub_ps(_mm512_load_ps(s + 16 * v + 16), ms)))
                   : _mm512_setzero_ps();
    sum = _mm512_add_ps(sum, _mm512_add_ps(p0, p1));
    _mm512_store_si512(sc.pd + r * kBK + 16 * v, (__m512i)_mm512_cvtne2ps_pbh(p1, p0));
  }
  l[r] += attn_detail::sum_lanes(sum);
}

template <int R>
LONGROPE_BF16_TARGET void run_decode_tiles(const AttentionArgsBf16& a, Scratch& sc,
                                           const uint16_t* K, const uint16_t* V, int64_t k_begin,
                                           int64_t k_end, int64_t k_full, const int32_t* pos,
                                           float* m, float* l) {
  const int hd = a.head_dim, hdp = hd / 2;
  for (int64_t k0 = k_begin; k0 < k_end;) {
    const bool masked = k0 >= k_full;
    const int64_t bk = imin(kBK, (masked ? k_end : imin(k_end, k_full)) - k0);
    pack_kt(K + k0 * hd, bk, hd, sc.kt);
    for (int64_t j = 0; j < bk; j += 64) qk_dec_kernel<R>(sc.kt + j, hdp, sc.qd, sc.sd + j);
    for (int r = 0; r < R; ++r) softmax_dec_row(sc, r, k0, bk, masked, pos[r], m, l, hd);
    pack_v(V + k0 * hd, bk, hd, sc.vi);
    const uint32_t* pd = reinterpret_cast<const uint32_t*>(sc.pd);
    for (int d = 0; d < hd; d += 64) pv_dec_kernel<R>((bk + 1) / 2, sc.vi + d, hd, pd, sc.od + d);
    k0 += bk;
  }
}

// One work item: block b, key chunk c. Writes the output rows, or the chunk's partial result.
LONGROPE_BF16_TARGET void attention_item(const AttnJob& job, int64_t b, int64_t c, float* scratch) {
  const AttentionArgsBf16& a = *job.a;
  const int hd = a.head_dim, hdp = (hd + 1) / 2;
  const int group = a.n_head / a.n_head_kv;
  Scratch sc;
  carve(scratch, hd, &sc);
  alignas(64) int32_t pos[kBQ];
  alignas(64) float m[kBQ], l[kBQ];
  int64_t qi[kBQ];
  int hh[kBQ];
  int64_t min_pos, k_begin, k_end;
  const int rows =
      attn_detail::block_setup(job.blocks, b, c, qi, hh, pos, &min_pos, &k_begin, &k_end);
  const int nqv = (rows + 15) / 16;
  for (int r = 0; r < kBQ; ++r) {
    m[r] = kNegInf;
    l[r] = 0.0f;
  }
  const int kvh = hh[0] / group;

  const float qscale = a.scale * 1.4426950408889634f;
  // bf16 pair of q[2dp], q[2dp+1] of row r, times scale*log2(e); zero for padding rows.
  auto q_pair = [&](int r, int dp) {
    if (r >= rows) return uint32_t(0);
    const float* q = a.q + qi[r] * a.q_stride + int64_t(hh[r]) * hd;
    uint32_t w = bf16_detail::f32_to_bf16_rne(q[2 * dp] * qscale);
    if (2 * dp + 1 < hd) w |= uint32_t(bf16_detail::f32_to_bf16_rne(q[2 * dp + 1] * qscale)) << 16;
    return w;
  };
  for (int64_t i = 0; i < int64_t(hd) * kBQ; ++i) sc.ot[i] = 0.0f;
  const uint16_t* K = a.k + int64_t(kvh) * a.kv_cap * hd;
  const uint16_t* V = a.v + int64_t(kvh) * a.kv_cap * hd;
  if (k_begin < k_end && job.decode) {
    for (int r = 0; r < rows; ++r)
      for (int dp = 0; dp < hdp; ++dp) sc.qd[r * hdp + dp] = q_pair(r, dp);
    for (int64_t i = 0; i < int64_t(rows) * hd; ++i) sc.od[i] = 0.0f;
    attn_detail::with_count<kDecRows>(rows, [&](auto R) {
      run_decode_tiles<R()>(a, sc, K, V, k_begin, k_end, min_pos, pos, m, l);
    });
    for (int r = 0; r < rows; ++r)
      for (int d = 0; d < hd; ++d) sc.ot[d * kBQ + r] = sc.od[r * hd + d];
  } else if (k_begin < k_end) {
    if (hd % 32 == 0) {
      // 16 rows at a time: the rows' bf16 pairs (32-bit words) transposed 16 x 16.
      const __m512 vs = _mm512_set1_ps(qscale);
      for (int r0 = 0; r0 < kBQ; r0 += 16) {
        for (int t = 0; t < hdp / 16; ++t) {
          __m512i w[16], o[16];
          for (int c = 0; c < 16; ++c) {
            const int r = r0 + c;
            if (r >= rows) {
              w[c] = _mm512_setzero_si512();
              continue;
            }
            const float* q = a.q + qi[r] * a.q_stride + int64_t(hh[r]) * hd + 32 * t;
            w[c] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(_mm512_loadu_ps(q + 16), vs),
                                                _mm512_mul_ps(_mm512_loadu_ps(q), vs));
          }
          bf16_detail::transpose16_epi32(w, o);
          for (int q = 0; q < 16; ++q) _mm512_store_si512(sc.qt + (16 * t + q) * kBQ + r0, o[q]);
        }
      }
    } else {
      for (int r = 0; r < kBQ; ++r)
        for (int dp = 0; dp < hdp; ++dp) sc.qt[dp * kBQ + r] = q_pair(r, dp);
    }
    attn_detail::with_count<4>(
        nqv, [&](auto NQV) { run_tiles<NQV()>(a, sc, K, V, k_begin, k_end, min_pos, pos, m, l); });
  }

  attn_detail::finish_item(job.blocks, b, c, sc.ot, m, l, rows, qi, hh, a.out, a.out_stride);
}

}  // namespace

void attention_bf16(const AttentionArgsBf16& a) {
  bf16_detail::require_avx512_bf16("attention_bf16");
  check_attention_args(a, "attention_bf16");
  if (a.n == 0) return;
  // Long prefill: both products on oneDNN matmuls (AMX) where the build and the CPU allow.
  if (bf16_detail::attention_bf16_onednn(a)) return;
  AttnJob job{};
  job.a = &a;
  job.blocks = attn_detail::plan_blocks(a.n, a.p0, a.n_head, a.n_head_kv, a.head_dim);
  job.decode = attn_detail::keys_in_lanes(job.blocks);
  attn_detail::run_blocks(
      job.blocks, carve(nullptr, a.head_dim, nullptr), a.out, a.out_stride,
      [&](int64_t b, int64_t c, float* scratch) { attention_item(job, b, c, scratch); });
}

}  // namespace longrope::kernels
