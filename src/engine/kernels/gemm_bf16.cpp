// bf16 GEMM with FP32 accumulation (AVX512_BF16 vdpbf16ps): C = beta*C + A * B^T.
//
// Micro-kernel: kMR x 16*kNV = 6 x 64 of C in 24 zmm accumulators. Each step takes one pair of K
// (k, k+1): a 32-bit broadcast of A[i][k..k+1] read straight from A's rows (A is not packed) times
// 4 vectors of packed B holding, for 16 columns each, the pair B[j][k..k+1] (packing B is a
// 16 x 16 transpose of 32-bit words).
// Blocking: K in the fewest blocks of at most kKC (C is read back once per further block).
// M > kSmallM: N in blocks of kNC columns whose packed B block is shared by the threads, then
// work items of kMC rows x a group of micro-panels; each micro-panel (in L2) meets the item's rows
// of A (in L2) in turn. M <= kSmallM (LM head chunks): each thread packs one micro-panel at a
// time and runs all M rows against it, with no barrier between the threads.
// Every C element is computed by one thread, K block after K block in order: results do not
// depend on the thread count. Measured (one core, M = 8192, SmolLM2 shapes): 6x64 and 8x48 run
// 3-6% faster than 14x32 and 12x32; K blocks of 576-1024 run 3-5% faster than 288-384.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "engine/kernels/bf16_internal.h"  // first: it includes immintrin.h
#include "longrope/kernels.h"

namespace longrope::kernels {

namespace {

using bf16_detail::imax;
using bf16_detail::imin;
using bf16_detail::load_u32;

using bf16_detail::bf16_to_f32;

constexpr int kMR = 6;             // rows of the micro-kernel
constexpr int kNV = 4;             // 16-column vectors of the micro-kernel
constexpr int kNR = 16 * kNV;      // columns of the micro-kernel
constexpr int64_t kKC = 768;       // largest K block
constexpr int64_t kNC = 2048;      // N block (multiple of kNR)
constexpr int64_t kMC = kMR * 16;  // rows per work item
constexpr int64_t kSmallM = 512;   // up to this M, threads pack their own micro-panels

struct GemmJob {
  int64_t M, N, K;
  const uint16_t* A;
  int64_t lda;
  const uint16_t* B;
  int64_t ldb;
  float* C;
  int64_t ldc;
  float beta;
  uint32_t* bp;          // packed B block shared by the threads: up to kNC / kNR micro-panels
  uint32_t* bp_private;  // M <= kSmallM: one micro-panel per thread
  int64_t private_stride;
};

// Packs columns [j0, j0 + nc) and K range [k0, k0 + kc) of B into micro-panels of kNR columns:
// panel p, pair q, column c holds (B[j][k0+2q], B[j][k0+2q+1]) as one 32-bit word, j = j0+p*kNR+c.
// Columns past nc and the odd K element past kc are zero. Per 16 columns x 16 pairs: a 16 x 16
// transpose of 32-bit words.
LONGROPE_BF16_TARGET void pack_b_panel(const GemmJob& g, int64_t j0, int64_t nc, int64_t k0,
                                       int64_t kc, int64_t p, uint32_t* dst) {
  const int64_t kcp = (kc + 1) / 2;
  const int64_t jp = j0 + p * kNR;
  const int64_t ncols = imin(kNR, j0 + nc - jp);
  for (int c0 = 0; c0 < kNR; c0 += 16) {
    for (int64_t t = 0; t * 16 < kcp; ++t) {
      const int64_t left = kc - 32 * t;  // bf16 values of this block of 16 pairs
      const __mmask32 mk = left >= 32 ? ~__mmask32(0) : ((__mmask32(1) << left) - 1);
      __m512i r[16];
#pragma GCC unroll 16
      for (int c = 0; c < 16; ++c)
        r[c] = c0 + c < ncols
                   ? _mm512_maskz_loadu_epi16(mk, g.B + (jp + c0 + c) * g.ldb + k0 + 32 * t)
                   : _mm512_setzero_si512();
      __m512i o[16];
      bf16_detail::transpose16_epi32(r, o);
      const int64_t nq = imin(16, kcp - 16 * t);
      uint32_t* d = dst + 16 * t * kNR + c0;
      for (int q = 0; q < nq; ++q) _mm512_store_si512(d + q * kNR, o[q]);
    }
  }
}

// C tile (m <= kMR rows, n <= kNR columns) from kp pairs of K (+ one odd element when `odd`).
// first: the tile's first K block, C = beta*C + acc (C not read when beta == 0); else C += acc.
LONGROPE_BF16_TARGET inline void micro_kernel(int64_t kp, bool odd, const uint16_t* A, int64_t lda,
                                              int m, const uint32_t* bp, float* C, int64_t ldc,
                                              int n, bool first, float beta) {
  __m512 acc[kMR][kNV];
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_setzero_ps();
  const uint16_t* a[kMR];
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r) a[r] = A + (r < m ? r : m - 1) * lda;  // rows past m: recomputed

  for (int64_t q = 0; q < kp; ++q) {
    __m512bh b[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) b[v] = (__m512bh)_mm512_load_si512(bp + q * kNR + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < kMR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(load_u32(a[r] + 2 * q)));
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, b[v]);
    }
  }
  if (odd) {
    __m512bh b[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) b[v] = (__m512bh)_mm512_load_si512(bp + kp * kNR + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < kMR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(a[r][2 * kp]);
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, b[v]);
    }
  }

  __mmask16 mask[kNV];
#pragma GCC unroll 4
  for (int v = 0; v < kNV; ++v) {
    const int w = n - 16 * v;
    mask[v] = w >= 16 ? __mmask16(0xffff) : (w <= 0 ? __mmask16(0) : __mmask16((1u << w) - 1));
  }
  const __m512 vbeta = _mm512_set1_ps(beta);
  const int mode = !first ? 1 : (beta == 0.0f ? 0 : (beta == 1.0f ? 1 : 2));
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r) {
    if (r >= m) break;
    float* c = C + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) {
      __m512 x = acc[r][v];
      if (mode == 1)
        x = _mm512_add_ps(_mm512_maskz_loadu_ps(mask[v], c + 16 * v), x);
      else if (mode == 2)
        x = _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(mask[v], c + 16 * v), x);
      _mm512_mask_storeu_ps(c + 16 * v, mask[v], x);
    }
  }
}

// K blocks: the fewest blocks of at most kKC, of equal even length but the last.
inline int64_t k_block(int64_t K) {
  const int64_t nkb = (K + kKC - 1) / kKC;
  const int64_t kcb = (K + nkb - 1) / nkb;
  return kcb + (kcb & 1);
}

// The body of the parallel region: every thread runs it.
LONGROPE_BF16_TARGET void gemm_worker(const GemmJob& g) {
  const int nth = omp_get_num_threads();
  const int64_t kcb = k_block(g.K);
  if (g.M <= kSmallM) {
    // Few rows (LM head chunks): each thread packs its own micro-panels and runs all M rows
    // against each; the threads share nothing, so packing overlaps the other thread's compute.
    uint32_t* mine = g.bp_private + omp_get_thread_num() * g.private_stride;
    const int64_t npan = (g.N + kNR - 1) / kNR;
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < npan; ++p) {
      const int64_t jc = p * kNR;
      const int n = static_cast<int>(imin(kNR, g.N - jc));
      for (int64_t k0 = 0; k0 < g.K; k0 += kcb) {
        const int64_t kc = imin(kcb, g.K - k0);
        pack_b_panel(g, 0, g.N, k0, kc, p, mine);
        for (int64_t ir = 0; ir < g.M; ir += kMR) {
          const int m = static_cast<int>(imin(kMR, g.M - ir));
          micro_kernel(kc / 2, (kc & 1) != 0, g.A + ir * g.lda + k0, g.lda, m, mine,
                       g.C + ir * g.ldc + jc, g.ldc, n, k0 == 0, g.beta);
        }
      }
    }
    return;
  }
  for (int64_t j0 = 0; j0 < g.N; j0 += kNC) {
    const int64_t nc = imin(kNC, g.N - j0);
    const int64_t npan = (nc + kNR - 1) / kNR;
    for (int64_t k0 = 0; k0 < g.K; k0 += kcb) {
      const int64_t kc = imin(kcb, g.K - k0);
      const int64_t kcp = (kc + 1) / 2;
#pragma omp for schedule(static)
      for (int64_t p = 0; p < npan; ++p) pack_b_panel(g, j0, nc, k0, kc, p, g.bp + p * kcp * kNR);

      // Work items: row blocks x groups of panels, at least ~4 items per thread.
      const int64_t n_ic = (g.M + kMC - 1) / kMC;
      const int64_t want_groups = imax(1, (4 * nth + n_ic - 1) / n_ic);
      const int64_t per_group = (npan + want_groups - 1) / imin(want_groups, npan);
      const int64_t n_jg = (npan + per_group - 1) / per_group;
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < n_ic * n_jg; ++t) {
        const int64_t i0 = (t / n_jg) * kMC, mc = imin(kMC, g.M - i0);
        const int64_t pg0 = (t % n_jg) * per_group, pg1 = imin(npan, pg0 + per_group);
        for (int64_t p = pg0; p < pg1; ++p) {
          const uint32_t* bpp = g.bp + p * kcp * kNR;
          const int64_t jc = j0 + p * kNR;
          const int n = static_cast<int>(imin(kNR, j0 + nc - jc));
          for (int64_t ir = 0; ir < mc; ir += kMR) {
            const int m = static_cast<int>(imin(kMR, mc - ir));
            micro_kernel(kc / 2, (kc & 1) != 0, g.A + (i0 + ir) * g.lda + k0, g.lda, m, bpp,
                         g.C + (i0 + ir) * g.ldc + jc, g.ldc, n, k0 == 0, g.beta);
          }
        }
      }
    }
  }
}

}  // namespace

void gemm_bf16_nt(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                  const uint16_t* B, int64_t ldb, float* C, int64_t ldc, float beta) {
  // oneDNN where the build has it (it uses AMX tiles on CPUs that have them, 6-11x this kernel
  // there; the same speed as this kernel on AVX512_BF16 alone: docs/design.md).
  if (bf16_detail::gemm_bf16_onednn(M, N, K, A, lda, B, ldb, C, ldc, beta)) return;
  gemm_bf16_nt_own(M, N, K, A, lda, B, ldb, C, ldc, beta);
}

void gemm_bf16_nt_own(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                      const uint16_t* B, int64_t ldb, float* C, int64_t ldc, float beta) {
  bf16_detail::require_avx512_bf16("gemm_bf16_nt");
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  const int64_t panel = (k_block(K) + 1) / 2 * kNR;  // uint32 words of one packed micro-panel
  const int64_t work = M * N * K;
  const int threads = work > (int64_t(1) << 18) ? omp_get_max_threads() : 1;
  const int64_t shared = M <= kSmallM ? 0 : (std::min(kNC, N) + kNR - 1) / kNR * panel;
  const int64_t priv = M <= kSmallM ? panel : 0;
  // Packed B lives in a buffer of the calling thread, kept between calls (64-byte aligned: the
  // micro-kernel uses aligned loads).
  static thread_local std::vector<uint32_t> buf;
  const size_t need = size_t(shared + threads * priv + 16);
  if (buf.size() < need) buf.assign(need, 0);
  uint32_t* bp = buf.data();
  bp += ((64 - reinterpret_cast<uintptr_t>(bp) % 64) % 64) / sizeof(uint32_t);
  const GemmJob job{M, N, K, A, lda, B, ldb, C, ldc, beta, bp, bp + shared, priv};
#pragma omp parallel num_threads(threads)
  gemm_worker(job);
}

void gemm_bf16_nt_scalar(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                         const uint16_t* B, int64_t ldb, float* C, int64_t ldc, float beta) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k)
        acc += double(bf16_to_f32(A[i * lda + k])) * double(bf16_to_f32(B[j * ldb + k]));
      float& c = C[i * ldc + j];
      c = static_cast<float>(acc + (beta == 0.0f ? 0.0 : double(beta) * c));
    }
  }
}

}  // namespace longrope::kernels
