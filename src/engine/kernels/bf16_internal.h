// Shared pieces of the AVX-512 kernels (gemm_bf16.cpp, attention_bf16.cpp, attention_avx512.cpp).
#pragma once
// GCC 12 reports the _mm512_undefined_*() inside many AVX-512 intrinsics (max, roundscale, scalef,
// unpack, shuffle) as (maybe-)uninitialized once they are inlined (GCC bug 105593; at -O2 with
// sanitizers too). The warning is attributed to the intrinsics header, so it is silenced before
// that header is first included.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "longrope/error.h"
#include "longrope/kernels.h"
#include "longrope/train_ops.h"

// Function attribute of every AVX512_BF16 code path. Functions carrying it use intrinsics and plain
// loops only: an std template instantiated inside one could be emitted with AVX-512 instructions
// and then picked by the linker for callers on CPUs without them.
#define LONGROPE_BF16_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))
// The same for AVX-512 code without bf16 instructions (the FP32 attention, the helpers below):
// a subset of the bf16 target, so these inline into LONGROPE_BF16_TARGET functions too.
#define LONGROPE_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

namespace longrope::kernels {
// The project's own AVX512_BF16 GEMM (what gemm_bf16_nt runs when oneDNN is not in the build).
void gemm_bf16_nt_own(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                      const uint16_t* B, int64_t ldb, float* C, int64_t ldc, float beta);
// The FP32 attention's AVX-512 path (attention_avx512.cpp): computes `a` and returns true when it
// applies (AVX-512 in the variant in effect, at least one query), else returns false having done
// nothing. `a` already checked.
bool attention_f32_avx512(const AttentionArgs& a);
// The same design on AVX2 + FMA (attention_avx2.cpp), for CPUs without AVX-512: prefill only (64
// or more queries whose blocks need no key split); returns false, having done nothing, elsewhere.
bool attention_f32_avx2(const AttentionArgs& a);
// The same kernel for training's forward attention (train::attention_forward<float>: keys and
// values as rows of every kv head, the natural log-sum-exp of each (head, query) into lse):
// returns false, having done nothing, where it does not apply.
bool attention_forward_f32_avx512(const train::AttentionShape& s, const float* q, const float* k,
                                  const float* v, float* out, float* lse);
}  // namespace longrope::kernels

namespace longrope::kernels::bf16_detail {

// Plain helpers (no std templates: usable inside target-attributed functions).
inline int64_t imin(int64_t a, int64_t b) {
  return a < b ? a : b;
}
inline int64_t imax(int64_t a, int64_t b) {
  return a > b ? a : b;
}

inline uint32_t load_u32(const uint16_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The same product through oneDNN's matmul (gemm_onednn.cpp). Returns false when the build has no
// oneDNN or the CPU lacks AVX512_BF16 (the caller then runs its own kernel).
bool gemm_bf16_onednn(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                      const uint16_t* B, int64_t ldb, float* C, int64_t ldc, float beta);
// Whether gemm_bf16_nt goes through oneDNN, and oneDNN's version ("" without it).
bool have_onednn();

// Causal attention with the two products of each tile on oneDNN matmuls (AMX) for long prefill
// (attention_onednn.cpp). Returns false, computing nothing, when the build has no oneDNN, the CPU
// (variant in effect) has no AMX, or the input is short (see kMinN there) or has a small head_dim:
// attention_bf16 then runs its own kernel.
bool attention_bf16_onednn(const AttentionArgsBf16& a);

// Throws longrope::Error naming `fn` when the CPU (variant in effect) lacks AVX512_BF16.
inline void require_avx512_bf16(const char* fn) {
  if (!cpu_has_avx512_bf16())
    throw Error(std::string(fn) + ": " + cpu_variant_missing(CpuVariant::kAvx512Bf16) +
                " (check kernels::cpu_has_avx512_bf16() and use the FP32 kernels)");
}

// Caps the ISA oneDNN may use below AMX (avx512_core_bf16), for LONGROPE_CPU below amx on an AMX
// CPU; works only before oneDNN's first use (cpu.cpp calls it when it reads LONGROPE_CPU, before
// any kernel runs). A no-op without oneDNN.
void onednn_cap_isa_below_amx();

inline float bf16_to_f32(uint16_t h) {
  const uint32_t x = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
}

// Round to nearest even, NaN kept quiet: the same as longrope::fp32_to_bf16.
inline uint16_t f32_to_bf16_rne(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// Transposes 16 x 16 32-bit words: out[q] holds word q of in[0..15] (lane c from in[c]).
LONGROPE_AVX512_TARGET inline void transpose16_epi32(const __m512i* in, __m512i* out) {
  __m512i u[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    u[2 * i] = _mm512_unpacklo_epi32(in[2 * i], in[2 * i + 1]);
    u[2 * i + 1] = _mm512_unpackhi_epi32(in[2 * i], in[2 * i + 1]);
  }
  // Rows 4G..4G+3: w[4G+e] holds, in 128-bit lane L, word 4L+e of those rows.
  __m512i w[16];
#pragma GCC unroll 4
  for (int G = 0; G < 4; ++G) {
    w[4 * G + 0] = _mm512_unpacklo_epi64(u[4 * G], u[4 * G + 2]);
    w[4 * G + 1] = _mm512_unpackhi_epi64(u[4 * G], u[4 * G + 2]);
    w[4 * G + 2] = _mm512_unpacklo_epi64(u[4 * G + 1], u[4 * G + 3]);
    w[4 * G + 3] = _mm512_unpackhi_epi64(u[4 * G + 1], u[4 * G + 3]);
  }
#pragma GCC unroll 4
  for (int e = 0; e < 4; ++e) {
    const __m512i v0 = _mm512_shuffle_i32x4(w[e], w[4 + e], 0x44);
    const __m512i v1 = _mm512_shuffle_i32x4(w[e], w[4 + e], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(w[8 + e], w[12 + e], 0x44);
    const __m512i v3 = _mm512_shuffle_i32x4(w[8 + e], w[12 + e], 0xEE);
    out[e] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    out[4 + e] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    out[8 + e] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    out[12 + e] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
}

// 2^f on [-0.5, 0.5], degree 5 fitted for relative error (below 2e-7 in FP32), highest power
// first: the exponentials of every vector width (this file, attention_avx2.cpp).
inline constexpr float kExp2Poly[6] = {1.326472731307149e-3f, 9.671512991189957e-3f,
                                       5.550733581185341e-2f, 2.4022242426872253e-1f,
                                       6.931470036506653e-1f, 1.0f};

// 2^x for finite x <= 128 (large negative x give 0).
LONGROPE_AVX512_TARGET inline __m512 exp2_ps(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);  // [-0.5, 0.5]
  __m512 p = _mm512_set1_ps(kExp2Poly[0]);
#pragma GCC unroll 6
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[i]));
  return _mm512_scalef_ps(p, n);
}

// The same for x that may be -inf (gives 2^-127). NaN stays NaN: max_ps returns its second
// operand when either is NaN, so x goes second.
LONGROPE_AVX512_TARGET inline __m512 exp2_clamped_ps(__m512 x) {
  return exp2_ps(_mm512_max_ps(_mm512_set1_ps(-127.0f), x));
}

}  // namespace longrope::kernels::bf16_detail

// Pieces of the prefill attentions that keep a block's rows in the lanes (attention_bf16.cpp,
// attention_avx512.cpp): S^T and O^T are [rows of keys or dims][kBQ] floats.
namespace longrope::kernels::attn_detail {

constexpr int kBQ = 64;  // rows of a block: 4 vectors of 16 lanes
constexpr float kNegInf = -__builtin_inff();
// The reference maximum of a row moves only when a tile's maximum exceeds it by more than this:
// probabilities up to 2^kLazy are exact enough in FP32 and bf16, and most rescalings of O^T go.
constexpr float kLazy = 8.0f;

// Accumulators for R rows of S^T or O^T (NQV vectors each): set to 0, loaded from rows, stored to
// rows (rows `stride` floats apart, 64-byte aligned).
template <int R, int NQV>
LONGROPE_AVX512_TARGET inline void zero_rows(__m512 (&acc)[R][NQV]) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NQV; ++v) acc[r][v] = _mm512_setzero_ps();
}
template <int R, int NQV>
LONGROPE_AVX512_TARGET inline void load_rows(__m512 (&acc)[R][NQV], const float* rows,
                                             int64_t stride = kBQ) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NQV; ++v) acc[r][v] = _mm512_load_ps(rows + r * stride + 16 * v);
}
template <int R, int NQV>
LONGROPE_AVX512_TARGET inline void store_rows(const __m512 (&acc)[R][NQV], float* rows,
                                              int64_t stride = kBQ) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NQV; ++v) _mm512_store_ps(rows + r * stride + 16 * v, acc[r][v]);
}

// S^T rows [0, MK) (scores of keys key0..) from acc; folds the scores into the tile maxima mx,
// only those of visible keys (k <= pos[row]) when `masked`.
template <int MK, int NQV>
LONGROPE_AVX512_TARGET inline void store_scores(const __m512 (&acc)[MK][NQV], float* s, bool masked,
                                                int64_t key0, const int32_t* pos, __m512* mx) {
#pragma GCC unroll 8
  for (int r = 0; r < MK; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NQV; ++v) {
      _mm512_store_ps(s + r * kBQ + 16 * v, acc[r][v]);
      if (masked) {
        const __mmask16 vis = _mm512_cmpge_epi32_mask(_mm512_load_si512(pos + 16 * v),
                                                      _mm512_set1_epi32(int(key0 + r)));
        mx[v] = _mm512_mask_max_ps(mx[v], vis, mx[v], acc[r][v]);
      } else {
        mx[v] = _mm512_max_ps(mx[v], acc[r][v]);
      }
    }
}

// The online softmax's reference for the 16 rows of one vector, given the tile's maxima tmx: when
// tmx exceeds the reference m by more than kLazy, m moves to the maximum and the running sum
// *lsum and the hd rows of O^T (these 16 lanes, row stride kBQ) are rescaled. Returns what the
// scores subtract: m, or 0 in rows without a visible key so far (m = -inf), which keeps them free
// of NaN.
LONGROPE_AVX512_TARGET inline __m512 settle_reference(__m512 tmx, float* m, __m512* lsum, float* ot,
                                                      int hd) {
  const __m512 neg_inf = _mm512_set1_ps(kNegInf);
  __m512 mref = _mm512_load_ps(m);
  if (_mm512_cmp_ps_mask(tmx, _mm512_add_ps(mref, _mm512_set1_ps(kLazy)), _CMP_GT_OQ) != 0) {
    const __m512 m_new = _mm512_max_ps(mref, tmx);
    const __m512 ms = _mm512_mask_mov_ps(m_new, _mm512_cmp_ps_mask(m_new, neg_inf, _CMP_EQ_OQ),
                                         _mm512_setzero_ps());
    // m = -inf: 2^-127, times a sum and rows of O^T that are still 0.
    const __m512 corr = bf16_detail::exp2_clamped_ps(_mm512_sub_ps(mref, ms));
    *lsum = _mm512_mul_ps(*lsum, corr);
    for (int d = 0; d < hd; ++d)
      _mm512_store_ps(ot + d * kBQ, _mm512_mul_ps(_mm512_load_ps(ot + d * kBQ), corr));
    mref = m_new;
    _mm512_store_ps(m, m_new);
  }
  return _mm512_mask_mov_ps(mref, _mm512_cmp_ps_mask(mref, neg_inf, _CMP_EQ_OQ),
                            _mm512_setzero_ps());
}

// The decode paths' key tiles with the keys in the lanes: for keys [0, bk) of src (rows
// row_bytes apart) and `words` 32-bit words of each (a multiple of 16: FP32 dims or bf16 pairs of
// dims), dst[w * dst_stride + key] = word w of key; keys up to the next multiple of 64 are 0.
LONGROPE_AVX512_TARGET inline void transpose_key_tile(const void* src, int64_t row_bytes,
                                                      int64_t bk, int words, uint32_t* dst,
                                                      int64_t dst_stride) {
  const char* base = static_cast<const char*>(src);
  const int64_t nkb = (bk + 63) / 64 * 4;  // blocks of 16 keys
  for (int64_t kb = 0; kb < nkb; ++kb) {
    for (int t = 0; t < words / 16; ++t) {
      __m512i r[16], o[16];
#pragma GCC unroll 16
      for (int c = 0; c < 16; ++c)
        r[c] = 16 * kb + c < bk ? _mm512_loadu_si512(base + (16 * kb + c) * row_bytes + 64 * t)
                                : _mm512_setzero_si512();
      bf16_detail::transpose16_epi32(r, o);
#pragma GCC unroll 16
      for (int q = 0; q < 16; ++q)
        _mm512_store_si512(dst + (16 * t + q) * dst_stride + 16 * kb, o[q]);
    }
  }
}

// The decode paths' online softmax for one row r (keys in the lanes): of the tile's scores s
// (keys k0 + [0, bk)), marks the visible keys in vis (room for (bk + 15) / 16 masks; keys up to pos
// when `masked`), moves the row's reference m[r] as settle_reference does (rescaling l[r] and the
// row's hd outputs od) and returns what the scores subtract (0 while m[r] = -inf).
LONGROPE_AVX512_TARGET inline __m512 dec_row_reference(const float* s, int64_t k0, int64_t bk,
                                                       bool masked, int32_t pos, float* m, float* l,
                                                       float* od, int hd, __mmask16* vis) {
  const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const int64_t nv = (bk + 15) / 16;
  const int64_t last = masked ? bf16_detail::imin(k0 + bk - 1, pos) : k0 + bk - 1;
  __m512 mx = _mm512_set1_ps(kNegInf);
  for (int64_t v = 0; v < nv; ++v) {
    const __m512i key = _mm512_add_epi32(iota, _mm512_set1_epi32(int(k0 + 16 * v)));
    vis[v] = _mm512_cmple_epi32_mask(key, _mm512_set1_epi32(int(last)));
    mx = _mm512_mask_max_ps(mx, vis[v], mx, _mm512_load_ps(s + 16 * v));
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, mx);
  float tmax = kNegInf;
  for (int i = 0; i < 16; ++i) tmax = lanes[i] > tmax ? lanes[i] : tmax;
  float mref = *m;
  if (tmax > mref + kLazy) {
    const float m_new = tmax > mref ? tmax : mref;
    const float corr = _mm512_cvtss_f32(bf16_detail::exp2_clamped_ps(_mm512_set1_ps(mref - m_new)));
    *l *= corr;
    for (int d = 0; d < hd; ++d) od[d] *= corr;
    *m = mref = m_new;
  }
  return _mm512_set1_ps(mref == kNegInf ? 0.0f : mref);
}

// The sum of a vector's lanes in lane order (the decode paths' running sums).
LONGROPE_AVX512_TARGET inline float sum_lanes(__m512 x) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, x);
  float sum = 0.0f;
  for (int i = 0; i < 16; ++i) sum += lanes[i];
  return sum;
}

// Calls f(std::integral_constant<int, R>{}) with R = min(n, Max) (n >= 1): a block's row count
// or vector count as the template argument of the kernel that runs it.
template <int Max, class F>
inline void with_count(int n, F&& f) {
  if constexpr (Max > 1) {
    if (n < Max) {
      with_count<Max - 1>(n, f);
      return;
    }
  }
  f(std::integral_constant<int, Max>{});
}

// How an attention call's (query, head) rows are cut into blocks of at most kBQ rows, and each
// block's keys into chunks. Prefill (n >= kBQ): kBQ consecutive queries of one head. Shorter
// inputs (decoding): every (query, head) pair of one key/value head, query-major. With few blocks
// the keys are split into chunks of kChunk, each chunk's partial result (O^T, m, l) kept in
// `partial` and merged in chunk order afterwards.
constexpr int64_t kChunk = 1024;  // keys per chunk when keys are split
struct Blocks {
  int64_t n = 0, p0 = 0;
  int n_head = 1, n_head_kv = 1, head_dim = 1;
  bool grouped = false;
  int64_t n_blocks = 0, n_chunks = 1;
  float* partial = nullptr;    // n_blocks * n_chunks partial results when n_chunks > 1
  int64_t partial_stride = 0;  // floats per partial result: O^T [hd][kBQ], m [kBQ], l [kBQ]
};

inline Blocks plan_blocks(int64_t n, int64_t p0, int n_head, int n_head_kv, int head_dim) {
  Blocks k;
  k.n = n;
  k.p0 = p0;
  k.n_head = n_head;
  k.n_head_kv = n_head_kv;
  k.head_dim = head_dim;
  k.grouped = n < kBQ;
  const int64_t group = n_head / n_head_kv;
  k.n_blocks =
      k.grouped ? n_head_kv * ((n * group + kBQ - 1) / kBQ) : n_head * ((n + kBQ - 1) / kBQ);
  // Few blocks (decoding): split the keys. Depends on the shape only.
  k.n_chunks = k.n_blocks < 16 ? (p0 + n + kChunk - 1) / kChunk : 1;
  k.partial_stride = (int64_t(head_dim) * kBQ + 2 * kBQ + 15) / 16 * 16;
  return k;
}

// Blocks of at most kDecRows rows (decoding: the query heads of one group) waste most lanes in the
// rows-in-lanes layout; with head_dim a multiple of 64 both kernels run them keys-in-lanes.
constexpr int kDecRows = 6;
inline bool keys_in_lanes(const Blocks& k) {
  return k.n * (k.n_head / k.n_head_kv) <= kDecRows && k.head_dim % 64 == 0;
}

// Row r of block b: query *qi, head *h.
inline void block_row(const Blocks& k, int64_t b, int r, int64_t* qi, int* h) {
  if (k.grouped) {
    const int group = k.n_head / k.n_head_kv;
    const int64_t per_kv = (k.n * group + kBQ - 1) / kBQ;
    const int kvh = static_cast<int>(b / per_kv);
    const int64_t idx = (b % per_kv) * kBQ + r;
    *qi = idx / group;
    *h = kvh * group + static_cast<int>(idx % group);
  } else {
    const int64_t n_qt = (k.n + kBQ - 1) / kBQ;
    *h = static_cast<int>(b / n_qt);
    *qi = (b % n_qt) * kBQ + r;
  }
}

inline int block_rows(const Blocks& k, int64_t b) {
  if (k.grouped) {
    const int64_t total = k.n * (k.n_head / k.n_head_kv);
    const int64_t per_kv = (total + kBQ - 1) / kBQ;
    return static_cast<int>(bf16_detail::imin(kBQ, total - (b % per_kv) * kBQ));
  }
  const int64_t n_qt = (k.n + kBQ - 1) / kBQ;
  return static_cast<int>(bf16_detail::imin(kBQ, k.n - (b % n_qt) * kBQ));
}

// The rows of block b (their queries qi, heads hh, positions pos, padded to kBQ with the last
// position) and the block's key range [*k_begin, *k_end) for chunk c; *min_pos: keys below it are
// visible to every row. Returns the number of rows.
inline int block_setup(const Blocks& k, int64_t b, int64_t c, int64_t* qi, int* hh, int32_t* pos,
                       int64_t* min_pos, int64_t* k_begin, int64_t* k_end) {
  const int rows = block_rows(k, b);
  int64_t lo = INT64_MAX, hi = -1;
  for (int r = 0; r < rows; ++r) {
    block_row(k, b, r, &qi[r], &hh[r]);
    const int64_t p = k.p0 + qi[r];
    lo = bf16_detail::imin(lo, p);
    hi = bf16_detail::imax(hi, p);
  }
  for (int r = 0; r < kBQ; ++r)
    pos[r] = static_cast<int32_t>(r < rows ? k.p0 + qi[r] : hi);  // padding rows: harmless
  *min_pos = lo;
  *k_begin = c * kChunk;
  *k_end = bf16_detail::imin(k.n_chunks > 1 ? *k_begin + kChunk : hi + 1, hi + 1);
  return rows;
}

// The end of work item (b, c) whose rows hold O^T (ot), m and l: the output rows (O / l), or the
// chunk's partial result when the keys are split.
inline void finish_item(const Blocks& k, int64_t b, int64_t c, const float* ot, const float* m,
                        const float* l, int rows, const int64_t* qi, const int* hh, float* out,
                        int64_t out_stride) {
  const int hd = k.head_dim;
  if (k.n_chunks > 1) {
    float* dst = k.partial + (b * k.n_chunks + c) * k.partial_stride;
    for (int64_t i = 0; i < int64_t(hd) * kBQ; ++i) dst[i] = ot[i];
    for (int r = 0; r < kBQ; ++r) {
      dst[int64_t(hd) * kBQ + r] = m[r];
      dst[int64_t(hd) * kBQ + kBQ + r] = l[r];
    }
    return;
  }
  for (int r = 0; r < rows; ++r) {
    float* o = out + qi[r] * out_stride + int64_t(hh[r]) * hd;
    const float inv = 1.0f / l[r];
    for (int d = 0; d < hd; ++d) o[d] = ot[d * kBQ + r] * inv;
  }
}

// Combines the chunks of block b in chunk order and writes its output rows.
LONGROPE_AVX512_TARGET inline void merge_chunks(const Blocks& k, int64_t b, float* out,
                                                int64_t out_stride) {
  const int hd = k.head_dim;
  const int rows = block_rows(k, b);
  const float* part = k.partial + b * k.n_chunks * k.partial_stride;
  const int64_t mo = int64_t(hd) * kBQ, lo = mo + kBQ;
  for (int r = 0; r < rows; ++r) {
    float mx = kNegInf;
    for (int64_t c = 0; c < k.n_chunks; ++c) {
      const float mc = part[c * k.partial_stride + mo + r];
      mx = mc > mx ? mc : mx;
    }
    float lsum = 0.0f;
    int64_t qi;
    int h;
    block_row(k, b, r, &qi, &h);
    float* o = out + qi * out_stride + int64_t(h) * hd;
    for (int d = 0; d < hd; ++d) o[d] = 0.0f;
    for (int64_t c = 0; c < k.n_chunks; ++c) {
      const float* pc = part + c * k.partial_stride;
      if (pc[mo + r] == kNegInf) continue;
      const float w =
          _mm512_cvtss_f32(bf16_detail::exp2_clamped_ps(_mm512_set1_ps(pc[mo + r] - mx)));
      lsum += w * pc[lo + r];
      for (int d = 0; d < hd; ++d) o[d] += w * pc[d * kBQ + r];
    }
    const float inv = 1.0f / lsum;
    for (int d = 0; d < hd; ++d) o[d] *= inv;
  }
}

// Runs item(b, c, scratch) for every block b and chunk c on the OpenMP threads (prefill: the last,
// longest, query tiles first, for balance under the causal mask), then merges the blocks whose keys
// were split. Each item is one thread's work in a fixed order and the merge goes in chunk order,
// so results do not depend on the thread count. `scratch_floats`: per thread.
template <class Item>
void run_blocks(Blocks& k, int64_t scratch_floats, float* out, int64_t out_stride, Item&& item) {
  std::vector<float> partial;
  if (k.n_chunks > 1) {
    partial.resize(size_t(k.n_blocks * k.n_chunks * k.partial_stride));
    k.partial = partial.data();
  }
  const int64_t items = k.n_blocks * k.n_chunks;
#pragma omp parallel if (items > 1)
  {
    std::vector<float> buf(static_cast<size_t>(scratch_floats + 16));
    float* scratch = buf.data() + ((64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64) / 4;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < items; ++t) {
      int64_t b = t / k.n_chunks;
      if (!k.grouped) {
        const int64_t n_qt = k.n_blocks / k.n_head;
        b = int64_t(b % k.n_head) * n_qt + (n_qt - 1 - b / k.n_head);
      }
      item(b, t % k.n_chunks, scratch);
    }
    if (k.n_chunks > 1) {
#pragma omp for schedule(static)
      for (int64_t b = 0; b < k.n_blocks; ++b) merge_chunks(k, b, out, out_stride);
    }
  }
  k.partial = nullptr;
}

}  // namespace longrope::kernels::attn_detail
