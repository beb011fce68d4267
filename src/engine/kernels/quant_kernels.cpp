// Kernels on weights in their file encoding (F32, F16, BF16 and the GGML block formats):
// row decoding for the prefill GEMM panels (dequant_rows_*), decode-sized products straight from
// the blocks (gemv_w) and FP32 -> bf16 conversion.
//
// Three paths:
//  - int8 activations (AVX512_VNNI, gemv_w with one activation row on Q4_0, Q4_1 and Q8_0, the
//    decode case): x quantized to int8 per block of 32, integer dots with vpdpbusd (see below);
//    about 1e-3 relative error. quant_internal::gemv_w_f32 is gemv_w without it.
//  - AVX-512 (functions with a target attribute, picked at run time by cpu_has_avx512()): each
//    type has a row decoder that turns 32 weights at a time into two __m512 of FP32 values equal
//    to io's dequantize(); a "sink" consumes them: FMAs against up to 8 activation rows (gemv_w)
//    or stores (dequant_rows_*). Activations stay FP32; nothing is quantized. The 4- and 5-bit
//    types look their weights up in per-block tables of the 16 or 32 possible values (vpermps /
//    vpermt2ps); Q8_0 and Q6_K convert integers. Legacy block scales are gathered and converted
//    16 blocks at a time. Types without a decoder (Q8_1, Q2_K, Q3_K, Q8_K) are dequantized a row
//    at a time with io's dequantize() into a thread-local buffer, then go through the F32 row.
//  - Portable (plain C++, quant_kernels.h): io's dequantize() per row and a 16-lane dot.
// gemv_w is parallel over tiles of rows with schedule(static); each output is reduced by one
// thread in a fixed order, so results do not depend on the number of threads. It prefetches the
// weights a few KiB ahead and works on a 64-byte aligned copy of the activations.
#include "engine/kernels/quant_kernels.h"

#include <string>
#include <vector>

#include "io/bytes.h"
#include "longrope/error.h"
#include "longrope/kernels.h"
#include "longrope/quant.h"

#if defined(__x86_64__) || defined(__i386__)
// GCC 12 reports the self-initialised _mm512_undefined_*() of its own intrinsics headers as
// (maybe-)uninitialized once they are inlined (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#define LONGROPE_QK_X86 1
#else
#define LONGROPE_QK_X86 0
#endif

namespace longrope::kernels {

namespace {

// Rows per work item of gemv_w's parallel loop.
constexpr int64_t kTileRows = 8;
// Most activation vectors one pass over the weights serves (larger m is done in groups).
constexpr int64_t kMaxM = 8;

std::string type_name(GgmlType t) {
  return ggml_type_name(static_cast<uint32_t>(t));
}

// Checks the view and returns its block size.
int64_t check_view(const char* fn, const WeightView& W) {
  if (!ggml_type_supported(static_cast<uint32_t>(W.type))) {
    throw Error(std::string(fn) + ": unsupported weight type " + type_name(W.type) +
                " (expected F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, "
                "Q4_K, Q5_K, Q6_K or Q8_K)");
  }
  const int64_t bs = ggml_block_size(W.type);
  if (W.rows < 0 || W.cols < 0 || W.cols % bs != 0) {
    throw Error(std::string(fn) + ": " + type_name(W.type) + " matrix of " +
                std::to_string(W.rows) + " x " + std::to_string(W.cols) +
                " (row length must be a multiple of " + std::to_string(bs) + ")");
  }
  if (W.rows > 0 && W.row_bytes < ggml_row_size(W.type, W.cols)) {
    throw Error(std::string(fn) + ": row stride of " + std::to_string(W.row_bytes) +
                " bytes for a " + type_name(W.type) + " row of " + std::to_string(W.cols) +
                " elements (expected at least " + std::to_string(ggml_row_size(W.type, W.cols)) +
                ")");
  }
  if (W.rows > 0 && W.cols > 0 && W.data == nullptr) {
    throw Error(std::string(fn) + ": null weight data");
  }
  return bs;
}

void check_rows(const char* fn, const WeightView& W, int64_t r0, int64_t n, int64_t ld) {
  check_view(fn, W);
  if (r0 < 0 || n < 0 || r0 + n > W.rows || ld < W.cols) {
    throw Error(std::string(fn) + ": rows [" + std::to_string(r0) + ", " + std::to_string(r0 + n) +
                ") with stride " + std::to_string(ld) + " of a " + std::to_string(W.rows) + " x " +
                std::to_string(W.cols) + " matrix");
  }
}

// A row-sized FP32 buffer per thread (for types decoded with io's dequantize()).
float* scratch_row(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// X (m rows of n floats, stride ld) itself if 64-byte aligned with a stride of whole cache lines,
// else a copy in a per-thread buffer that is; ld becomes the stride of what is returned.
const float* aligned_rows(const float* X, int64_t m, int64_t n, int64_t& ld) {
  if (reinterpret_cast<uintptr_t>(X) % 64 == 0 && (m == 1 || ld % 16 == 0)) return X;
  thread_local std::vector<float> buf;
  const int64_t lda = (n + 15) & ~int64_t{15};
  const size_t need = static_cast<size_t>(m * lda) + 16;
  if (buf.size() < need) buf.resize(need);
  float* p = buf.data();
  p += (16 - (reinterpret_cast<uintptr_t>(p) / sizeof(float)) % 16) % 16;
  for (int64_t i = 0; i < m; ++i) std::memcpy(p + i * lda, X + i * ld, sizeof(float) * n);
  ld = lda;
  return p;
}

bool row_is_float_aligned(const uint8_t* p) {
  return (reinterpret_cast<uintptr_t>(p) & (alignof(float) - 1)) == 0;
}

struct GemvArgs {
  int64_t m;
  const float* X;
  int64_t ldx;
  const WeightView* W;
  float* Y;
  int64_t ldy;
  float beta;
};

// Per-thread context handed to a tile: the scratch row for io-decoded types.
struct RowCtx {
  GgmlType type;
  float* scratch;
};

using TileFn = void (*)(const GemvArgs&, int64_t, int64_t, const RowCtx&);

// Runs fn over all rows of the matrix in tiles of kTileRows rows, in parallel.
void run_tiles(const GemvArgs& a, TileFn fn, bool needs_scratch) {
  const int64_t rows = a.W->rows;
  const int64_t ntiles = (rows + kTileRows - 1) / kTileRows;
  const int64_t cols = a.W->cols;
  const GgmlType type = a.W->type;
#pragma omp parallel for schedule(static) if (ntiles > 1)
  for (int64_t t = 0; t < ntiles; ++t) {
    const RowCtx rc{type, needs_scratch ? scratch_row(cols) : nullptr};
    const int64_t r0 = t * kTileRows;
    const int64_t r1 = r0 + kTileRows < rows ? r0 + kTileRows : rows;
    fn(a, r0, r1, rc);
  }
}

inline void store_out(float& y, float v, float beta) {
  y = beta == 0.0f ? v : beta * y + v;
}

// ---- portable path ---------------------------------------------------------------------------

// Dot product with 16 partial sums reduced pairwise (a fixed order the compiler vectorises).
float dot_generic(const float* w, const float* x, int64_t n) {
  float s[16] = {};
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    for (int j = 0; j < 16; ++j) s[j] += w[k + j] * x[k + j];
  }
  for (int j = 0; k + j < n; ++j) s[j] += w[k + j] * x[k + j];
  for (int h = 8; h >= 1; h /= 2) {
    for (int j = 0; j < h; ++j) s[j] += s[j + h];
  }
  return s[0];
}

// A row of W as FP32: the row itself for aligned F32 data, else decoded into scratch.
const float* row_f32_generic(const WeightView& W, int64_t r, float* scratch) {
  const uint8_t* p = W.data + static_cast<size_t>(r) * W.row_bytes;
  if (W.type == GgmlType::F32 && row_is_float_aligned(p)) return reinterpret_cast<const float*>(p);
  dequantize(W.type, p, scratch, W.cols);
  return scratch;
}

void gemv_tile_generic(const GemvArgs& a, int64_t r0, int64_t r1, const RowCtx& rc) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* w = row_f32_generic(*a.W, r, rc.scratch);
    for (int64_t i = 0; i < a.m; ++i) {
      store_out(a.Y[i * a.ldy + r], dot_generic(w, a.X + i * a.ldx, a.W->cols), a.beta);
    }
  }
}

}  // namespace

namespace quant_internal {

void f32_to_bf16_generic(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_round(x[i]);
}

void dequant_rows_f32_generic(const WeightView& W, int64_t r0, int64_t n, float* dst, int64_t ld) {
  check_rows("dequant_rows_f32", W, r0, n, ld);
  if (W.cols == 0) return;
  for (int64_t i = 0; i < n; ++i) {
    dequantize(W.type, W.data + static_cast<size_t>(r0 + i) * W.row_bytes, dst + i * ld, W.cols);
  }
}

void dequant_rows_bf16_generic(const WeightView& W, int64_t r0, int64_t n, uint16_t* dst,
                               int64_t ld) {
  check_rows("dequant_rows_bf16", W, r0, n, ld);
  if (W.cols == 0) return;
  float* buf = scratch_row(W.cols);
  for (int64_t i = 0; i < n; ++i) {
    dequantize(W.type, W.data + static_cast<size_t>(r0 + i) * W.row_bytes, buf, W.cols);
    f32_to_bf16_generic(buf, dst + i * ld, W.cols);
  }
}

void gemv_w_generic(int64_t m, const float* X, int64_t ldx, const WeightView& W, float* Y,
                    int64_t ldy, float beta) {
  check_view("gemv_w", W);
  if (m <= 0 || W.rows == 0) return;
  const GemvArgs a{m, X, ldx, &W, Y, ldy, beta};
  run_tiles(a, &gemv_tile_generic, true);
}

bool has_fast_path(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

}  // namespace quant_internal

#if LONGROPE_QK_X86

// ---- AVX-512 path ----------------------------------------------------------------------------
// Everything below is compiled for AVX-512 through target attributes and only called after
// cpu_has_avx512(); no std templates are instantiated in these functions.

#define LR_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

namespace {

// Blocks whose scales are converted at once (stack buffers).
constexpr int kChunk = 64;
// How far ahead of the current row gemv_w prefetches weights (measured best between 2 and 8 KiB
// on one SmolLM2 token's matrices).
constexpr size_t kPrefetchBytes = 4096;

using io::rd16;
using io::rd32;

// Ternary-logic truth table of c ? a : b (operands a, b, c of vpternlogd).
constexpr int kTernA = 0xf0, kTernB = 0xcc, kTernC = 0xaa;
constexpr int kSelect = (kTernC & kTernA) | (~kTernC & kTernB & 0xff);

LR_AVX512 inline __m512i load_u8x16(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Lanes [0, n) of 16 (all for n >= 16).
LR_AVX512 inline __mmask16 tail_mask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

// The halves at base + j * stride (j < n <= kChunk) to FP32 in d[0, n), and those 2 bytes further
// in m[0, n) if m is not null: one gather of 32-bit words per 16 blocks.
LR_AVX512 inline void load_scales(const uint8_t* base, int stride, int64_t n, float* d, float* m) {
  const __m512i idx =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(stride));
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = tail_mask(n - j);
    const __m512i g =
        _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, idx, base + j * stride, 1);
    _mm512_store_ps(d + j, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g)));
    if (m) _mm512_store_ps(m + j, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16))));
  }
}

// Makes the compiler read back values just stored instead of keeping them in registers, so that
// per-block scales are broadcast straight from memory (a load) rather than shuffled out of a
// register (two shuffle-port operations each).
inline void reload_barrier() {
  __asm__ volatile("" ::: "memory");
}

LR_AVX512 inline float half_to_float(const uint8_t* p) {
  return _cvtsh_ss(rd16(p));
}

// FP32 -> bf16 of 16 lanes, round to nearest even, nan made quiet (as fp32_to_bf16).
LR_AVX512 inline __m256i bf16_round16(__m512 v) {
  const __m512i x = _mm512_castps_si512(v);
  const __m512i top = _mm512_srli_epi32(x, 16);
  const __m512i bias =
      _mm512_add_epi32(_mm512_and_si512(top, _mm512_set1_epi32(1)), _mm512_set1_epi32(0x7fff));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(x, bias), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, top, _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

// ---- sinks: what happens to each 32 decoded weights ------------------------------------------
// put(e, w0, w1): weights e..e+15 and e+16..e+31 of the row; put_scaled(e, q0, q1, d): weights
// q0 * d and q1 * d; put16(e, w, k): lanes k of e..e+15.

// Dot products with M activation rows. Each row has accumulators for w0 and w1; with M <= 2 a
// second set takes every other 32-element group, so an FMA does not wait on the previous one.
template <int M>
struct DotSink {
  static constexpr bool kTwoSets = M <= 2;
  const float* x;
  int64_t ldx;
  __m512 a[M], b[M], c[M], d[M];

  LR_AVX512 void init(const float* x_, int64_t ldx_) {
    x = x_;
    ldx = ldx_;
    for (int i = 0; i < M; ++i) a[i] = b[i] = c[i] = d[i] = _mm512_setzero_ps();
  }
  LR_AVX512 void put(int64_t e, __m512 w0, __m512 w1) {
    // Every put is a whole 32-element group, so bit 5 of e alternates between calls.
    const bool second = kTwoSets && (e & 32) != 0;
    for (int i = 0; i < M; ++i) {
      const float* xi = x + i * ldx + e;
      if (second) {
        c[i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xi), c[i]);
        d[i] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xi + 16), d[i]);
      } else {
        a[i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xi), a[i]);
        b[i] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xi + 16), b[i]);
      }
    }
  }
  // Weights q0 * d, q1 * d: with one row, d multiplies the partial dot instead of the weights.
  LR_AVX512 void put_scaled(int64_t e, __m512 q0, __m512 q1, __m512 d) {
    if constexpr (M == 1) {
      const __m512 t = _mm512_fmadd_ps(q1, _mm512_loadu_ps(x + e + 16),
                                       _mm512_mul_ps(q0, _mm512_loadu_ps(x + e)));
      if (e & 32) {
        c[0] = _mm512_fmadd_ps(t, d, c[0]);
      } else {
        a[0] = _mm512_fmadd_ps(t, d, a[0]);
      }
    } else {
      put(e, _mm512_mul_ps(q0, d), _mm512_mul_ps(q1, d));
    }
  }
  LR_AVX512 void put16(int64_t e, __m512 w, __mmask16 k) {
    for (int i = 0; i < M; ++i) {
      a[i] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(k, x + i * ldx + e), a[i]);
    }
  }
  LR_AVX512 float result(int i) const {
    return _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(a[i], b[i]), _mm512_add_ps(c[i], d[i])));
  }
};

struct F32Sink {
  float* y;
  LR_AVX512 void put(int64_t e, __m512 w0, __m512 w1) {
    _mm512_storeu_ps(y + e, w0);
    _mm512_storeu_ps(y + e + 16, w1);
  }
  LR_AVX512 void put_scaled(int64_t e, __m512 q0, __m512 q1, __m512 d) {
    put(e, _mm512_mul_ps(q0, d), _mm512_mul_ps(q1, d));
  }
  LR_AVX512 void put16(int64_t e, __m512 w, __mmask16 k) { _mm512_mask_storeu_ps(y + e, k, w); }
};

struct Bf16Sink {
  uint16_t* y;
  LR_AVX512 void put(int64_t e, __m512 w0, __m512 w1) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + e), bf16_round16(w0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + e + 16), bf16_round16(w1));
  }
  LR_AVX512 void put_scaled(int64_t e, __m512 q0, __m512 q1, __m512 d) {
    put(e, _mm512_mul_ps(q0, d), _mm512_mul_ps(q1, d));
  }
  LR_AVX512 void put16(int64_t e, __m512 w, __mmask16 k) {
    _mm256_mask_storeu_epi16(y + e, k, bf16_round16(w));
  }
};

// ---- row decoders: Dec::row(p, cols, sink, ctx) decodes one row -------------------------------

// F32, F16, BF16: 32 weights at a time, masked tail (rows of any length).
struct DecF32 {
  template <class S>
  LR_AVX512 static void row(const uint8_t* p, int64_t n, S& s, const RowCtx&) {
    const float* w = reinterpret_cast<const float*>(p);
    int64_t e = 0;
    for (; e + 32 <= n; e += 32) s.put(e, _mm512_loadu_ps(w + e), _mm512_loadu_ps(w + e + 16));
    for (; e < n; e += 16) {
      const __mmask16 k = tail_mask(n - e);
      s.put16(e, _mm512_maskz_loadu_ps(k, w + e), k);
    }
  }
};

struct DecF16 {
  template <class S>
  LR_AVX512 static void row(const uint8_t* p, int64_t n, S& s, const RowCtx&) {
    const auto* h = reinterpret_cast<const uint16_t*>(p);
    int64_t e = 0;
    for (; e + 32 <= n; e += 32) {
      s.put(e, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + e))),
            _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + e + 16))));
    }
    for (; e < n; e += 16) {
      const __mmask16 k = tail_mask(n - e);
      s.put16(e, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, h + e)), k);
    }
  }
};

LR_AVX512 inline __m512 bf16x16_to_f32(__m256i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

struct DecBF16 {
  template <class S>
  LR_AVX512 static void row(const uint8_t* p, int64_t n, S& s, const RowCtx&) {
    const auto* h = reinterpret_cast<const uint16_t*>(p);
    int64_t e = 0;
    for (; e + 32 <= n; e += 32) {
      s.put(e, bf16x16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + e))),
            bf16x16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + e + 16))));
    }
    for (; e < n; e += 16) {
      const __mmask16 k = tail_mask(n - e);
      s.put16(e, bf16x16_to_f32(_mm256_maskz_loadu_epi16(k, h + e)), k);
    }
  }
};

// Types without a decoder: io's dequantize() into the thread's scratch row, then as F32.
struct DecViaIo {
  template <class S>
  LR_AVX512 static void row(const uint8_t* p, int64_t n, S& s, const RowCtx& rc) {
    dequantize(rc.type, p, rc.scratch, n);
    DecF32::row(reinterpret_cast<const uint8_t*>(rc.scratch), n, s, rc);
  }
};

// The 4- and 5-bit types decode through per-block tables: the 16 (or 32) possible weights of
// a block, computed with the reference's arithmetic (q * d, or q * d + m as one FMA; the products
// are exact, so this equals an uncontracted reference too), are looked up with vpermps, which
// reads only the low 4 bits of each 32-bit index lane. The fifth bit selects the upper table with
// a masked permute (Q5_0, Q5_1) or indexes a 32-entry table pair with vpermt2ps (Q5_K).

// 0..15 as floats, plus an offset.
LR_AVX512 inline __m512 iota_ps(float off) {
  return _mm512_add_ps(_mm512_setr_ps(0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f, 9.0f,
                                      10.0f, 11.0f, 12.0f, 13.0f, 14.0f, 15.0f),
                       _mm512_set1_ps(off));
}

// Weights of the two halves of a 32-element block whose 16 bytes at qs hold element j (low
// nibble) and j + 16 (high nibble), from a 16-entry table.
LR_AVX512 inline void lookup4(const uint8_t* qs, __m512 tab, __m512& w0, __m512& w1) {
  const __m512i v = load_u8x16(qs);
  w0 = _mm512_permutexvar_ps(v, tab);
  w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab);
}

// The same with a fifth bit per element (bit j of qh for element j) choosing table hi over lo.
LR_AVX512 inline void lookup5(const uint8_t* qs, uint32_t qh, __m512 lo, __m512 hi, __m512& w0,
                              __m512& w1) {
  const __m512i v = load_u8x16(qs);
  const __m512i vh = _mm512_srli_epi32(v, 4);
  w0 = _mm512_mask_permutexvar_ps(_mm512_permutexvar_ps(v, lo),
                                  static_cast<__mmask16>(qh & 0xffffu), v, hi);
  w1 = _mm512_mask_permutexvar_ps(_mm512_permutexvar_ps(vh, lo), static_cast<__mmask16>(qh >> 16),
                                  vh, hi);
}

// Q4_0 {f16 d; u8 qs[16]}: w = (nibble - 8) * d.
struct DecQ4_0 {
  template <class S>
  LR_AVX512 static void row(const uint8_t* p, int64_t n, S& s, const RowCtx&) {
    alignas(64) float dbuf[kChunk];
    const __m512 q = iota_ps(-8.0f);
    const int64_t nb = n / 32;
    for (int64_t b0 = 0; b0 < nb; b0 += kChunk) {
      const int64_t cnt = nb - b0 < kChunk ? nb - b0 : kChunk;
      const uint8_t* blk = p + b0 * 18;
      load_scales(blk, 18, cnt, dbuf, nullptr);
      for (int64_t j = 0; j < cnt; ++j, blk += 18) {
        __m512 w0, w1;
        lookup4(blk + 2, _mm512_mul_ps(q, _mm512_set1_ps(dbuf[j])), w0, w1);
        s.put((b0 + j) * 32, w0, w1);
      }
    }
  }
};

// Q4_1 {f16 d; f16 m; u8 qs[16]}: w = nibble * d + m.
struct DecQ4_1 {
  template <class S>
  LR_AVX512 static void row(const uint8_t* p, int64_t n, S& s, const RowCtx&) {
    alignas(64) float dbuf[kChunk];
    alignas(64) float mbuf[kChunk];
    const __m512 q = iota_ps(0.0f);
    const int64_t nb = n / 32;
    for (int64_t b0 = 0; b0 < nb; b0 += kChunk) {
      const int64_t cnt = nb - b0 < kChunk ? nb - b0 : kChunk;
      const uint8_t* blk = p + b0 * 20;
      load_scales(blk, 20, cnt, dbuf, mbuf);
      for (int64_t j = 0; j < cnt; ++j, blk += 20) {
        __m512 w0, w1;
        lookup4(blk + 4, _mm512_fmadd_ps(q, _mm512_set1_ps(dbuf[j]), _mm512_set1_ps(mbuf[j])), w0,
                w1);
        s.put((b0 + j) * 32, w0, w1);
      }
    }
  }
};

// Q5_0 {f16 d; u8 qh[4]; u8 qs[16]}: w = (q5 - 16) * d.
struct DecQ5_0 {
  template <class S>
  LR_AVX512 static void row(const uint8_t* p, int64_t n, S& s, const RowCtx&) {
    alignas(64) float dbuf[kChunk];
    const __m512 qlo = iota_ps(-16.0f), qhi = iota_ps(0.0f);
    const int64_t nb = n / 32;
    for (int64_t b0 = 0; b0 < nb; b0 += kChunk) {
      const int64_t cnt = nb - b0 < kChunk ? nb - b0 : kChunk;
      const uint8_t* blk = p + b0 * 22;
      load_scales(blk, 22, cnt, dbuf, nullptr);
      for (int64_t j = 0; j < cnt; ++j, blk += 22) {
        const __m512 d = _mm512_set1_ps(dbuf[j]);
        __m512 w0, w1;
        lookup5(blk + 6, rd32(blk + 2), _mm512_mul_ps(qlo, d), _mm512_mul_ps(qhi, d), w0, w1);
        s.put((b0 + j) * 32, w0, w1);
      }
    }
  }
};

// Q5_1 {f16 d; f16 m; u8 qh[4]; u8 qs[16]}: w = q5 * d + m.
struct DecQ5_1 {
  template <class S>
  LR_AVX512 static void row(const uint8_t* p, int64_t n, S& s, const RowCtx&) {
    alignas(64) float dbuf[kChunk];
    alignas(64) float mbuf[kChunk];
    const __m512 qlo = iota_ps(0.0f), qhi = iota_ps(16.0f);
    const int64_t nb = n / 32;
    for (int64_t b0 = 0; b0 < nb; b0 += kChunk) {
      const int64_t cnt = nb - b0 < kChunk ? nb - b0 : kChunk;
      const uint8_t* blk = p + b0 * 24;
      load_scales(blk, 24, cnt, dbuf, mbuf);
      for (int64_t j = 0; j < cnt; ++j, blk += 24) {
        const __m512 d = _mm512_set1_ps(dbuf[j]), m = _mm512_set1_ps(mbuf[j]);
        __m512 w0, w1;
        lookup5(blk + 8, rd32(blk + 4), _mm512_fmadd_ps(qlo, d, m), _mm512_fmadd_ps(qhi, d, m), w0,
                w1);
        s.put((b0 + j) * 32, w0, w1);
      }
    }
  }
};

// Q8_0 {f16 d; i8 qs[32]}: w = q * d.
struct DecQ8_0 {
  template <class S>
  LR_AVX512 static void row(const uint8_t* p, int64_t n, S& s, const RowCtx&) {
    alignas(64) float dbuf[kChunk];
    const int64_t nb = n / 32;
    for (int64_t b0 = 0; b0 < nb; b0 += kChunk) {
      const int64_t cnt = nb - b0 < kChunk ? nb - b0 : kChunk;
      const uint8_t* blk = p + b0 * 34;
      load_scales(blk, 34, cnt, dbuf, nullptr);
      for (int64_t j = 0; j < cnt; ++j, blk += 34) {
        const __m512 d = _mm512_set1_ps(dbuf[j]);
        const __m512 q0 = _mm512_cvtepi32_ps(
            _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2))));
        const __m512 q1 = _mm512_cvtepi32_ps(
            _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18))));
        s.put_scaled((b0 + j) * 32, q0, q1, d);
      }
    }
  }
};

// Per sub-block multiplier d * sc and additive -(dmin * mn) of a Q4_K/Q5_K super-block (the
// reference computes d1 * q - m1 with these products rounded to float first). The 12 scale bytes
// as three little-endian words u0, u1, u2 give the 6-bit values byte-wise: scales 0-3 = u0 & 63,
// mins 0-3 = u1 & 63, scales 4-7 = low nibbles of u2 with the top two bits of u0 above them,
// mins 4-7 = high nibbles of u2 with the top two bits of u1.
LR_AVX512 inline void k4_scales(const uint8_t* b, float* dj, float* mj) {
  const uint32_t u0 = rd32(b + 4), u1 = rd32(b + 8), u2 = rd32(b + 12);
  const uint32_t sc_lo = u0 & 0x3f3f3f3fu, mn_lo = u1 & 0x3f3f3f3fu;
  const uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);
  const uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);
  const __m256 sc = _mm256_cvtepi32_ps(
      _mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, static_cast<int>(sc_hi), static_cast<int>(sc_lo))));
  const __m256 mn = _mm256_cvtepi32_ps(
      _mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, static_cast<int>(mn_hi), static_cast<int>(mn_lo))));
  _mm256_storeu_ps(dj, _mm256_mul_ps(_mm256_set1_ps(half_to_float(b)), sc));
  _mm256_storeu_ps(mj, _mm256_xor_ps(_mm256_mul_ps(_mm256_set1_ps(half_to_float(b + 2)), mn),
                                     _mm256_set1_ps(-0.0f)));
  reload_barrier();
}

// Q4_K {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}: 32 bytes of qs hold sub-block 2c (low
// nibbles) and 2c + 1 (high nibbles); w = d*sc * q - dmin*mn.
struct DecQ4_K {
  template <class S>
  LR_AVX512 static void row(const uint8_t* p, int64_t n, S& s, const RowCtx&) {
    const __m512 q = iota_ps(0.0f);
    const int64_t nb = n / 256;
    const uint8_t* b = p;
    for (int64_t i = 0; i < nb; ++i, b += 144) {
      float dj[8], mj[8];
      k4_scales(b, dj, mj);
      const uint8_t* qs = b + 16;
      for (int c = 0; c < 4; ++c, qs += 32) {
        const int64_t e = i * 256 + c * 64;
        const __m512i v0 = load_u8x16(qs);
        const __m512i v1 = load_u8x16(qs + 16);
        const __m512 t1 = _mm512_fmadd_ps(q, _mm512_set1_ps(dj[2 * c]), _mm512_set1_ps(mj[2 * c]));
        s.put(e, _mm512_permutexvar_ps(v0, t1), _mm512_permutexvar_ps(v1, t1));
        const __m512 t2 =
            _mm512_fmadd_ps(q, _mm512_set1_ps(dj[2 * c + 1]), _mm512_set1_ps(mj[2 * c + 1]));
        s.put(e + 32, _mm512_permutexvar_ps(_mm512_srli_epi32(v0, 4), t2),
              _mm512_permutexvar_ps(_mm512_srli_epi32(v1, 4), t2));
      }
    }
  }
};

// Q5_K {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: as Q4_K with bit j of qh[l] as
// the fifth bit of element l of sub-block j. The 5-bit values of two sub-blocks are assembled in
// bytes (nibbles of the 32 qs bytes in the two 256-bit halves, plus 16 where qh has the bit), then
// widened 16 at a time from a stack buffer to index a 32-entry table (vpermt2ps).
struct DecQ5_K {
  template <class S>
  LR_AVX512 static void row(const uint8_t* p, int64_t n, S& s, const RowCtx&) {
    const __m512 qlo = iota_ps(0.0f), qhi = iota_ps(16.0f);
    const __m512i low4 = _mm512_set1_epi8(0x0f), sixteen = _mm512_set1_epi8(16);
    // Nibble shift per 16-bit lane: none in the lower 256 bits (sub-block 2c), 4 in the upper.
    const __m512i nib_shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    alignas(64) uint8_t q[64];
    const int64_t nb = n / 256;
    const uint8_t* b = p;
    for (int64_t i = 0; i < nb; ++i, b += 176) {
      alignas(32) float dj[8], mj[8];
      k4_scales(b, dj, mj);
      const __m512i qh =
          _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16)));
      const uint8_t* qs = b + 48;
      for (int c = 0; c < 4; ++c, qs += 32) {
        const __m512i v =
            _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs)));
        const __m512i nib = _mm512_and_si512(_mm512_srlv_epi16(v, nib_shift), low4);
        // Bit 2c of qh for the lower half, bit 2c + 1 for the upper.
        const __m512i bit =
            _mm512_inserti64x4(_mm512_set1_epi8(static_cast<char>(1 << (2 * c))),
                               _mm256_set1_epi8(static_cast<char>(2 << (2 * c))), 1);
        const __mmask64 k = _mm512_test_epi8_mask(qh, bit);
        _mm512_store_si512(q, _mm512_mask_add_epi8(nib, k, nib, sixteen));  // bit 4 is clear
        reload_barrier();
        for (int half = 0; half < 2; ++half) {
          const int j = 2 * c + half;
          const __m512 d = _mm512_set1_ps(dj[j]), m = _mm512_set1_ps(mj[j]);
          const __m512 lo = _mm512_fmadd_ps(qlo, d, m), hi = _mm512_fmadd_ps(qhi, d, m);
          s.put(i * 256 + 64 * c + 32 * half,
                _mm512_permutex2var_ps(lo, load_u8x16(q + 32 * half), hi),
                _mm512_permutex2var_ps(lo, load_u8x16(q + 32 * half + 16), hi));
        }
      }
    }
  }
};

// Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: each half of 128 elements uses 64 bytes of
// ql and 32 of qh; element l (< 32) of the four 32-element groups k = 0..3 of a half is
//   k=0: ql[l] & 15,      qh[l] bits 0-1      k=1: ql[l+32] & 15, qh[l] bits 2-3
//   k=2: ql[l] >> 4,      qh[l] bits 4-5      k=3: ql[l+32] >> 4, qh[l] bits 6-7
// as the low and high bits of a 6-bit q; w = (d * scales[g]) * (q - 32) with g = element / 16.
// The 6-bit values of a half are assembled 64 at a time in bytes (ql as is for k = 0, 1 and
// shifted for k = 2, 3; qh repeated in both 256-bit halves, shifted per half), then widened 16 at
// a time from a stack buffer.
struct DecQ6_K {
  template <class S>
  LR_AVX512 static void row(const uint8_t* p, int64_t n, S& s, const RowCtx&) {
    const int64_t nb = n / 256;
    const __m512i low4 = _mm512_set1_epi8(0x0f), bits45 = _mm512_set1_epi8(0x30);
    const __m512i k32 = _mm512_set1_epi8(32);
    // Shift counts per 16-bit lane bringing qh's bit pair for k to bits 4-5: the lower 256 bits
    // serve k = 0 (left 4) or k = 2 (none), the upper k = 1 (left 2) or k = 3 (right 2).
    const __m512i sh01 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i sh23 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    alignas(64) int8_t q[128];
    alignas(64) float sc[16];
    const uint8_t* b = p;
    for (int64_t i = 0; i < nb; ++i, b += 210) {
      const __m512 d = _mm512_set1_ps(half_to_float(b + 208));
      _mm512_store_ps(sc, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                                               reinterpret_cast<const __m128i*>(b + 192))))));
      for (int h = 0; h < 2; ++h) {
        const __m512i L = _mm512_loadu_si512(b + 64 * h);
        const __m512i Q = _mm512_broadcast_i64x4(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * h)));
        const __m512i q01 = _mm512_ternarylogic_epi32(
            L, _mm512_and_si512(_mm512_sllv_epi16(Q, sh01), bits45), low4, kSelect);
        const __m512i q23 = _mm512_ternarylogic_epi32(
            _mm512_srli_epi16(L, 4), _mm512_and_si512(_mm512_srlv_epi16(Q, sh23), bits45), low4,
            kSelect);
        _mm512_store_si512(q, _mm512_sub_epi8(q01, k32));
        _mm512_store_si512(q + 64, _mm512_sub_epi8(q23, k32));
        reload_barrier();
        for (int k = 0; k < 4; ++k) {
          const __m512 q0 = _mm512_cvtepi32_ps(
              _mm512_cvtepi8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(q + 32 * k))));
          const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
              _mm_load_si128(reinterpret_cast<const __m128i*>(q + 32 * k + 16))));
          s.put(i * 256 + h * 128 + k * 32, _mm512_mul_ps(q0, _mm512_set1_ps(sc[8 * h + 2 * k])),
                _mm512_mul_ps(q1, _mm512_set1_ps(sc[8 * h + 2 * k + 1])));
        }
      }
    }
  }
};

// ---- drivers -----------------------------------------------------------------------------------

template <int M, class Dec>
LR_AVX512 void gemv_tile_avx512(const GemvArgs& a, int64_t r0, int64_t r1, const RowCtx& rc) {
  const WeightView& W = *a.W;
  const size_t total = static_cast<size_t>(W.rows) * W.row_bytes;
  for (int64_t r = r0; r < r1; ++r) {
    // Software prefetch kPrefetchBytes ahead of the row being read: the hardware prefetchers alone
    // leave a single core well short of its streaming bandwidth here.
    const size_t ahead = static_cast<size_t>(r + 1) * W.row_bytes + kPrefetchBytes;
    const size_t end = ahead + W.row_bytes < total ? ahead + W.row_bytes : total;
    for (size_t off = ahead & ~size_t{63}; off < end; off += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(W.data + off), _MM_HINT_T0);
    }
    DotSink<M> s;
    s.init(a.X, a.ldx);
    Dec::row(W.data + static_cast<size_t>(r) * W.row_bytes, W.cols, s, rc);
    for (int i = 0; i < M; ++i) store_out(a.Y[i * a.ldy + r], s.result(i), a.beta);
  }
}

template <class Dec>
TileFn gemv_fn(int64_t m) {
  switch (m) {
    case 1:
      return &gemv_tile_avx512<1, Dec>;
    case 2:
      return &gemv_tile_avx512<2, Dec>;
    case 3:
      return &gemv_tile_avx512<3, Dec>;
    case 4:
      return &gemv_tile_avx512<4, Dec>;
    case 5:
      return &gemv_tile_avx512<5, Dec>;
    case 6:
      return &gemv_tile_avx512<6, Dec>;
    case 7:
      return &gemv_tile_avx512<7, Dec>;
    default:
      return &gemv_tile_avx512<8, Dec>;
  }
}

TileFn gemv_avx512_fn(GgmlType t, int64_t m) {
  switch (t) {
    case GgmlType::F32:
      return gemv_fn<DecF32>(m);
    case GgmlType::F16:
      return gemv_fn<DecF16>(m);
    case GgmlType::BF16:
      return gemv_fn<DecBF16>(m);
    case GgmlType::Q4_0:
      return gemv_fn<DecQ4_0>(m);
    case GgmlType::Q4_1:
      return gemv_fn<DecQ4_1>(m);
    case GgmlType::Q5_0:
      return gemv_fn<DecQ5_0>(m);
    case GgmlType::Q5_1:
      return gemv_fn<DecQ5_1>(m);
    case GgmlType::Q8_0:
      return gemv_fn<DecQ8_0>(m);
    case GgmlType::Q4_K:
      return gemv_fn<DecQ4_K>(m);
    case GgmlType::Q5_K:
      return gemv_fn<DecQ5_K>(m);
    case GgmlType::Q6_K:
      return gemv_fn<DecQ6_K>(m);
    default:
      return gemv_fn<DecViaIo>(m);
  }
}

template <class Dec>
LR_AVX512 void dequant_f32_avx512(const WeightView& W, int64_t r0, int64_t n, float* dst,
                                  int64_t ld, const RowCtx& rc) {
  for (int64_t i = 0; i < n; ++i) {
    F32Sink s{dst + i * ld};
    Dec::row(W.data + static_cast<size_t>(r0 + i) * W.row_bytes, W.cols, s, rc);
  }
}

template <class Dec>
LR_AVX512 void dequant_bf16_avx512(const WeightView& W, int64_t r0, int64_t n, uint16_t* dst,
                                   int64_t ld, const RowCtx& rc) {
  for (int64_t i = 0; i < n; ++i) {
    Bf16Sink s{dst + i * ld};
    Dec::row(W.data + static_cast<size_t>(r0 + i) * W.row_bytes, W.cols, s, rc);
  }
}

template <class T>
using DequantFn = void (*)(const WeightView&, int64_t, int64_t, T*, int64_t, const RowCtx&);

template <class Dec>
DequantFn<float> dequant_fn(float*) {
  return &dequant_f32_avx512<Dec>;
}
template <class Dec>
DequantFn<uint16_t> dequant_fn(uint16_t*) {
  return &dequant_bf16_avx512<Dec>;
}

template <class T>
DequantFn<T> dequant_avx512_fn(GgmlType t) {
  T* const tag = nullptr;
  switch (t) {
    case GgmlType::F32:
      return dequant_fn<DecF32>(tag);
    case GgmlType::F16:
      return dequant_fn<DecF16>(tag);
    case GgmlType::BF16:
      return dequant_fn<DecBF16>(tag);
    case GgmlType::Q4_0:
      return dequant_fn<DecQ4_0>(tag);
    case GgmlType::Q4_1:
      return dequant_fn<DecQ4_1>(tag);
    case GgmlType::Q5_0:
      return dequant_fn<DecQ5_0>(tag);
    case GgmlType::Q5_1:
      return dequant_fn<DecQ5_1>(tag);
    case GgmlType::Q8_0:
      return dequant_fn<DecQ8_0>(tag);
    case GgmlType::Q4_K:
      return dequant_fn<DecQ4_K>(tag);
    case GgmlType::Q5_K:
      return dequant_fn<DecQ5_K>(tag);
    case GgmlType::Q6_K:
      return dequant_fn<DecQ6_K>(tag);
    default:
      return dequant_fn<DecViaIo>(tag);
  }
}

LR_AVX512 void f32_to_bf16_avx512(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), bf16_round16(_mm512_loadu_ps(x + i)));
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    _mm256_mask_storeu_epi16(y + i, k, bf16_round16(_mm512_maskz_loadu_ps(k, x + i)));
  }
}

}  // namespace

// ---- int8 activations (AVX512_VNNI), gemv_w with m == 1 on Q4_0, Q4_1 and Q8_0 -----------------
// x is quantized once per call to int8 per block of 32 (round to nearest, d = max|x| / 127) and
// each weight block is dotted with it in integers (vpdpbusd: unsigned bytes x signed bytes):
//   Q4_0  d_w * (d_x * sum(q * xq) - 8 * d_x * sum(xq))   (q the unsigned nibble)
//   Q4_1  d_w * d_x * sum(q * xq) + m_w * sum(x)          (sum(x) the FP32 sum of the block)
//   Q8_0  d_w * d_x * sum(|q| * (xq * sign(q)))
// The 4-bit types take four blocks per zmm: their 16 qs bytes in the four 128-bit lanes, the low
// nibbles dotted with elements 0-15 of each block and the high ones with 16-31, so xq is stored
// per group of four blocks as [elements 0-15 of blocks 0..3][elements 16-31 of blocks 0..3]. The
// int32 lanes of a group (four per block) become FP32 and meet their block's d_w * d_x through a
// permute of the 16 products of a chunk of 16 blocks. Q8_0 takes two blocks per zmm.

#define LR_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))

namespace {

// Blocks per chunk of the int8 kernels (one gather of scales, one vector of products).
constexpr int64_t kQ8Chunk = 16;

// x quantized for one weight type: q (blocks padded to a multiple of 4 with zeros, in the
// type's order), d the per-block scale and s the per-block offset term (Q4_1: sum(x); Q4_0:
// -8 * d * sum(xq); Q8_0: unused), both padded to a multiple of kQ8Chunk with zeros.
struct QuantX {
  const int8_t* q;
  const float* d;
  const float* s;
};

// A per-thread buffer of n floats, 64-byte aligned.
float* aligned_scratch(int64_t n) {
  thread_local std::vector<float> buf;
  const size_t need = static_cast<size_t>(n) + 16;
  if (buf.size() < need) buf.resize(need);
  float* p = buf.data();
  return p + (16 - (reinterpret_cast<uintptr_t>(p) / sizeof(float)) % 16) % 16;
}

LR_VNNI QuantX quantize_x(GgmlType t, const float* x, int64_t n) {
  const int64_t nb = n / 32;
  const int64_t nq = (nb + 3) / 4 * 4;
  const int64_t nd = (nb + kQ8Chunk - 1) / kQ8Chunk * kQ8Chunk;
  // d and s (nd floats each), then the bytes of q.
  float* d = aligned_scratch(2 * nd + nq * 8);
  float* s = d + nd;
  auto* q = reinterpret_cast<int8_t*>(s + nd);
  const bool grouped = t != GgmlType::Q8_0;
  // The padding blocks of the last group of 4 (interleaved with real ones for the 4-bit types).
  if (nq > nb) std::memset(q + nb / 4 * 128, 0, static_cast<size_t>((nq - nb / 4 * 4) * 32));
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 v0 = _mm512_loadu_ps(x + 32 * b), v1 = _mm512_loadu_ps(x + 32 * b + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const float db = amax / 127.0f;
    const __m512 id = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    const __m512i q0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v0, id),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i q1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v1, id),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    int8_t* lo = grouped ? q + (b / 4) * 128 + (b % 4) * 16 : q + 32 * b;
    int8_t* hi = grouped ? lo + 64 : lo + 16;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(lo), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(hi), _mm512_cvtepi32_epi8(q1));
    d[b] = db;
    if (t == GgmlType::Q4_1) {
      s[b] = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
    } else if (t == GgmlType::Q4_0) {
      s[b] = -8.0f * db * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)));
    } else {
      s[b] = 0.0f;
    }
  }
  for (int64_t b = nb; b < nd; ++b) d[b] = s[b] = 0.0f;
  return QuantX{q, d, s};
}

// The qs bytes of blocks j < cnt (of 4) at blk + j * stride + off in the 128-bit lanes, zeros
// beyond cnt.
template <int Stride, int Off>
LR_VNNI inline __m512i load_qs4(const uint8_t* blk, int64_t cnt) {
  if (cnt >= 4) {
    __m512i v =
        _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + Off)));
    v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + Stride + Off)),
                           1);
    v = _mm512_inserti32x4(
        v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2 * Stride + Off)), 2);
    return _mm512_inserti32x4(
        v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 3 * Stride + Off)), 3);
  }
  // Only whole blocks of the row are read (no stack round trip: rows of 18 blocks end here).
  __m512i v = _mm512_zextsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + Off)));
  if (cnt > 1) {
    v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + Stride + Off)),
                           1);
  }
  if (cnt > 2) {
    v = _mm512_inserti32x4(
        v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2 * Stride + Off)), 2);
  }
  return v;
}

// One row of a 4-bit type (Q4_0: Stride 18, Off 2; Q4_1: Stride 20, Off 4).
template <int Stride, int Off, bool HasMin>
LR_VNNI float dot_row_q4(const uint8_t* p, int64_t nb, const QuantX& x) {
  alignas(64) float dw[kQ8Chunk];
  alignas(64) float mw[kQ8Chunk];
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  // Lane l of group g (blocks 4g..4g+3 of a chunk) belongs to block 4g + l / 4.
  const __m512i lane_blk =
      _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 2);
  __m512 acc = _mm512_setzero_ps(), acc_s = _mm512_setzero_ps();
  for (int64_t b0 = 0; b0 < nb; b0 += kQ8Chunk) {
    const int64_t cnt = nb - b0 < kQ8Chunk ? nb - b0 : kQ8Chunk;
    const uint8_t* blk = p + b0 * Stride;
    load_scales(blk, Stride, cnt, dw, HasMin ? mw : nullptr);
    const __m512 dwv = _mm512_load_ps(dw);
    const __m512 prod = _mm512_mul_ps(dwv, _mm512_load_ps(x.d + b0));
    acc_s = _mm512_fmadd_ps(HasMin ? _mm512_load_ps(mw) : dwv, _mm512_load_ps(x.s + b0), acc_s);
    const int8_t* xq = x.q + b0 * 32;
    for (int64_t g = 0; g < cnt; g += 4, blk += 4 * Stride, xq += 128) {
      const __m512i v = load_qs4<Stride, Off>(blk, cnt - g);
      const __m512i lo = _mm512_and_si512(v, low4);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
      __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_load_si512(xq));
      dot = _mm512_dpbusd_epi32(dot, hi, _mm512_load_si512(xq + 64));
      const __m512 sc = _mm512_permutexvar_ps(
          _mm512_add_epi32(lane_blk, _mm512_set1_epi32(static_cast<int>(g))), prod);
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc);
    }
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc, acc_s));
}

// One Q8_0 row {f16 d; i8 qs[32]}, two blocks per zmm.
LR_VNNI float dot_row_q8_0(const uint8_t* p, int64_t nb, const QuantX& x) {
  alignas(64) float dw[kQ8Chunk];
  // Lane l of pair j belongs to block 2j + l / 8.
  const __m512i lane_blk =
      _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 3);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t b0 = 0; b0 < nb; b0 += kQ8Chunk) {
    const int64_t cnt = nb - b0 < kQ8Chunk ? nb - b0 : kQ8Chunk;
    const uint8_t* blk = p + b0 * 34;
    load_scales(blk, 34, cnt, dw, nullptr);
    const __m512 prod = _mm512_mul_ps(_mm512_load_ps(dw), _mm512_load_ps(x.d + b0));
    const int8_t* xq = x.q + b0 * 32;
    for (int64_t j = 0; j < cnt; j += 2, blk += 68, xq += 64) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
      const __m256i w1 = j + 1 < cnt
                             ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 36))
                             : _mm256_setzero_si256();
      const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1);
      const __m512i xv = _mm512_load_si512(xq);
      const __m512i xs =
          _mm512_mask_sub_epi8(xv, _mm512_movepi8_mask(w), _mm512_setzero_si512(), xv);
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), xs);
      const __m512 sc = _mm512_permutexvar_ps(
          _mm512_add_epi32(lane_blk, _mm512_set1_epi32(static_cast<int>(j))), prod);
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc);
    }
  }
  return _mm512_reduce_add_ps(acc);
}

template <GgmlType T>
LR_VNNI float dot_row_q8act(const uint8_t* p, int64_t nb, const QuantX& x) {
  if constexpr (T == GgmlType::Q4_0) return dot_row_q4<18, 2, false>(p, nb, x);
  if constexpr (T == GgmlType::Q4_1) return dot_row_q4<20, 4, true>(p, nb, x);
  return dot_row_q8_0(p, nb, x);
}

template <GgmlType T>
LR_VNNI void gemv_tile_q8act(const WeightView& W, const QuantX& x, float* Y, float beta, int64_t r0,
                             int64_t r1) {
  const size_t total = static_cast<size_t>(W.rows) * W.row_bytes;
  const int64_t nb = W.cols / 32;
  for (int64_t r = r0; r < r1; ++r) {
    // Prefetch as gemv_tile_avx512.
    const size_t ahead = static_cast<size_t>(r + 1) * W.row_bytes + kPrefetchBytes;
    const size_t end = ahead + W.row_bytes < total ? ahead + W.row_bytes : total;
    for (size_t off = ahead & ~size_t{63}; off < end; off += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(W.data + off), _MM_HINT_T0);
    }
    store_out(Y[r], dot_row_q8act<T>(W.data + static_cast<size_t>(r) * W.row_bytes, nb, x), beta);
  }
}

template <GgmlType T>
void gemv_q8act(const WeightView& W, const QuantX& x, float* Y, float beta) {
  const int64_t rows = W.rows;
  const int64_t ntiles = (rows + kTileRows - 1) / kTileRows;
#pragma omp parallel for schedule(static) if (ntiles > 1)
  for (int64_t t = 0; t < ntiles; ++t) {
    const int64_t r0 = t * kTileRows;
    gemv_tile_q8act<T>(W, x, Y, beta, r0, r0 + kTileRows < rows ? r0 + kTileRows : rows);
  }
}

bool q8act_type(GgmlType t) {
  return t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q8_0;
}

// gemv_w for one activation row on a q8act_type() matrix (callers check cpu_has_avx512_vnni()).
void gemv_w_q8act(const float* x, const WeightView& W, float* Y, float beta) {
  const QuantX xq = quantize_x(W.type, x, W.cols);
  switch (W.type) {
    case GgmlType::Q4_0:
      return gemv_q8act<GgmlType::Q4_0>(W, xq, Y, beta);
    case GgmlType::Q4_1:
      return gemv_q8act<GgmlType::Q4_1>(W, xq, Y, beta);
    default:
      return gemv_q8act<GgmlType::Q8_0>(W, xq, Y, beta);
  }
}

}  // namespace

#endif  // LONGROPE_QK_X86

// ---- public entry points ---------------------------------------------------------------------

void dequant_rows_f32(const WeightView& W, int64_t r0, int64_t n, float* dst, int64_t ld) {
#if LONGROPE_QK_X86
  if (cpu_has_avx512() && quant_internal::has_fast_path(W.type)) {
    check_rows("dequant_rows_f32", W, r0, n, ld);
    if (W.cols == 0) return;
    dequant_avx512_fn<float>(W.type)(W, r0, n, dst, ld, RowCtx{W.type, nullptr});
    return;
  }
#endif
  quant_internal::dequant_rows_f32_generic(W, r0, n, dst, ld);
}

void dequant_rows_bf16(const WeightView& W, int64_t r0, int64_t n, uint16_t* dst, int64_t ld) {
#if LONGROPE_QK_X86
  if (cpu_has_avx512()) {
    check_rows("dequant_rows_bf16", W, r0, n, ld);
    if (W.cols == 0) return;
    const bool fast = quant_internal::has_fast_path(W.type);
    dequant_avx512_fn<uint16_t>(W.type)(W, r0, n, dst, ld,
                                        RowCtx{W.type, fast ? nullptr : scratch_row(W.cols)});
    return;
  }
#endif
  quant_internal::dequant_rows_bf16_generic(W, r0, n, dst, ld);
}

namespace quant_internal {

void gemv_w_f32(int64_t m, const float* X, int64_t ldx, const WeightView& W, float* Y, int64_t ldy,
                float beta) {
#if LONGROPE_QK_X86
  if (cpu_has_avx512()) {
    check_view("gemv_w", W);
    if (m <= 0 || W.rows == 0) return;
    const bool fast = quant_internal::has_fast_path(W.type);
    // The activation rows go to a 64-byte aligned copy unless already aligned (split loads cost
    // about 10% on the 4-bit types); the copy is m * cols floats, small beside the weights.
    int64_t ldxa = ldx;
    const float* Xa = aligned_rows(X, m, W.cols, ldxa);
    for (int64_t g = 0; g < m; g += kMaxM) {
      const int64_t mg = m - g < kMaxM ? m - g : kMaxM;
      const GemvArgs a{mg, Xa + g * ldxa, ldxa, &W, Y + g * ldy, ldy, beta};
      run_tiles(a, gemv_avx512_fn(W.type, mg), !fast);
    }
    return;
  }
#endif
  gemv_w_generic(m, X, ldx, W, Y, ldy, beta);
}

}  // namespace quant_internal

void gemv_w(int64_t m, const float* X, int64_t ldx, const WeightView& W, float* Y, int64_t ldy,
            float beta) {
#if LONGROPE_QK_X86
  if (m == 1 && q8act_type(W.type) && cpu_has_avx512_vnni()) {
    check_view("gemv_w", W);
    if (W.rows == 0) return;
    gemv_w_q8act(X, W, Y, beta);
    return;
  }
#endif
  quant_internal::gemv_w_f32(m, X, ldx, W, Y, ldy, beta);
}

void gemv_w_scalar(int64_t m, const float* X, int64_t ldx, const WeightView& W, float* Y,
                   int64_t ldy, float beta) {
  check_view("gemv_w_scalar", W);
  std::vector<float> w(static_cast<size_t>(W.cols));
  for (int64_t r = 0; r < W.rows; ++r) {
    if (W.cols > 0)
      dequantize(W.type, W.data + static_cast<size_t>(r) * W.row_bytes, w.data(), W.cols);
    for (int64_t i = 0; i < m; ++i) {
      double acc = 0.0;
      for (int64_t k = 0; k < W.cols; ++k) acc += double(w[k]) * double(X[i * ldx + k]);
      float& y = Y[i * ldy + r];
      y = static_cast<float>(acc + (beta == 0.0f ? 0.0 : double(beta) * y));
    }
  }
}

void f32_to_bf16(const float* x, uint16_t* y, int64_t n) {
#if LONGROPE_QK_X86
  if (cpu_has_avx512()) return f32_to_bf16_avx512(x, y, n);
#endif
  quant_internal::f32_to_bf16_generic(x, y, n);
}

}  // namespace longrope::kernels
