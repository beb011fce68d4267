// Matrix products: OpenBLAS sgemm (see docs/design.md for the choice), a scalar reference, and
// matmul_w, the projection over weights kept in their file encoding.
#include <cblas.h>

#include <algorithm>

#include "engine/kernels/panel.h"
#include "longrope/kernels.h"

namespace longrope::kernels {

void gemm_nt(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
             int64_t ldb, float* C, int64_t ldc, float beta) {
  if (M == 0 || N == 0) return;
  if (M == 1) {
    // Matrix-vector: y = B x.
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(N), static_cast<int>(K), 1.0f, B,
                static_cast<int>(ldb), A, 1, beta, C, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(M), static_cast<int>(N),
              static_cast<int>(K), 1.0f, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta,
              C, static_cast<int>(ldc));
}

void gemm_nt_scalar(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                    int64_t ldb, float* C, int64_t ldc, float beta) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) acc += double(A[i * lda + k]) * double(B[j * ldb + k]);
      float& c = C[i * ldc + j];
      c = static_cast<float>(acc + (beta == 0.0f ? 0.0 : double(beta) * c));
    }
  }
}

void decode_panel(const WeightView& W, int64_t r0, int64_t n, Compute compute, PanelBuffer& pb) {
  const int64_t K = W.cols;
  const size_t need = static_cast<size_t>(n * K);
  if (compute == Compute::kBF16) {
    if (pb.b16.size() < need) pb.b16.resize(need);
  } else if (pb.f32.size() < need) {
    pb.f32.resize(need);
  }
  constexpr int64_t kRowsPerTask = 16;
  const int64_t tasks = (n + kRowsPerTask - 1) / kRowsPerTask;
  (void)cpu_variant();  // LONGROPE_CPU's error, if any, here rather than in the parallel loop
#pragma omp parallel for schedule(static) if (tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t a = t * kRowsPerTask, b = std::min(n, a + kRowsPerTask);
    if (compute == Compute::kBF16)
      dequant_rows_bf16(W, r0 + a, b - a, pb.b16.data() + a * K, K);
    else
      dequant_rows_f32(W, r0 + a, b - a, pb.f32.data() + a * K, K);
  }
}

void rows_to_bf16(const float* A, int64_t M, int64_t K, int64_t lda, RowsBf16& out) {
  const size_t need = static_cast<size_t>(M * K);
  if (out.data.size() < need) out.data.resize(need);
  uint16_t* dst = out.data.data();
  (void)cpu_variant();  // LONGROPE_CPU's error, if any, here rather than in the parallel loop
#pragma omp parallel for schedule(static) if (M * K > 65536)
  for (int64_t i = 0; i < M; ++i) f32_to_bf16(A + i * lda, dst + i * K, K);
}

namespace {
// Products with at most this many rows read the weight blocks directly (gemv_w).
constexpr int64_t kGemvMaxRows = 8;
// Bytes of decoded weights per panel: large enough to amortise a GEMM call, small enough to stay
// in the L2/L3 caches while the activations stream past.
constexpr int64_t kPanelBytes = int64_t(4) << 20;
}  // namespace

void matmul_w(int64_t M, const float* A, int64_t lda, const WeightView& W, float* C, int64_t ldc,
              float beta, Compute compute) {
  const int64_t N = W.rows, K = W.cols;
  if (M <= 0 || N <= 0) return;
  if (M <= kGemvMaxRows) {
    gemv_w(M, A, lda, W, C, ldc, beta);
    return;
  }
  thread_local RowsBf16 a16;
  if (compute == Compute::kBF16) {
    require_compute(compute);
    rows_to_bf16(A, M, K, lda, a16);
    if (W.type == GgmlType::BF16) {
      gemm_bf16_nt(M, N, K, a16.data.data(), K, reinterpret_cast<const uint16_t*>(W.data),
                   int64_t(W.row_bytes / 2), C, ldc, beta);
      return;
    }
  } else if (W.type == GgmlType::F32 && reinterpret_cast<uintptr_t>(W.data) % alignof(float) == 0) {
    gemm_nt(M, N, K, A, lda, reinterpret_cast<const float*>(W.data), int64_t(W.row_bytes / 4), C,
            ldc, beta);
    return;
  }
  const int64_t elt = compute == Compute::kBF16 ? 2 : 4;
  const int64_t panel =
      std::min(N, std::max<int64_t>(16, kPanelBytes / (elt * std::max<int64_t>(K, 1)) / 16 * 16));
  thread_local PanelBuffer pb;
  for (int64_t n0 = 0; n0 < N; n0 += panel) {
    const int64_t pn = std::min(panel, N - n0);
    decode_panel(W, n0, pn, compute, pb);
    if (compute == Compute::kBF16)
      gemm_bf16_nt(M, pn, K, a16.data.data(), K, pb.b16.data(), K, C + n0, ldc, beta);
    else
      gemm_nt(M, pn, K, A, lda, pb.f32.data(), K, C + n0, ldc, beta);
  }
}

}  // namespace longrope::kernels
