// Matrix products: OpenBLAS sgemm (see docs/design.md for the choice) and a scalar reference.
#include <cblas.h>

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

}  // namespace longrope::kernels
