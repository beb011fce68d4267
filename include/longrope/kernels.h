// The kernel boundary: every numeric routine the forward pass calls goes through these functions,
// so another backend (CUDA, a training path) replaces them without touching the model code.
// Each optimised kernel has a plain scalar reference (`*_scalar`) that tests compare it against.
// All matrices are row-major FP32.
#pragma once
#include <cstdint>

namespace longrope::kernels {

// C[M,N] = beta*C + A[M,K] * B[N,K]^T  (B is a weight matrix stored [out][in]).
void gemm_nt(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
             int64_t ldb, float* C, int64_t ldc, float beta);
void gemm_nt_scalar(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                    int64_t ldb, float* C, int64_t ldc, float beta);

// y[i] = x[i] / sqrt(mean(x^2) + eps) * w[i], for each of n rows of length d.
void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t d, float eps);
void rmsnorm_scalar(const float* x, const float* w, float* y, int64_t n, int64_t d, float eps);

// g[i] = silu(g[i]) * u[i]
void swiglu(float* g, const float* u, int64_t n);
void swiglu_scalar(float* g, const float* u, int64_t n);

// Rotates adjacent pairs (x[2j], x[2j+1]) of each head of n rows: row r uses cos/sin row r of the
// tables (n_rot/2 values each, attention factor already folded in). Rows hold n_heads heads of
// head_dim values (stride row_stride); only the first n_rot dims of a head rotate.
void rope_apply(float* x, int64_t n, int64_t row_stride, int n_heads, int head_dim, int n_rot,
                const float* cos_tab, const float* sin_tab);
void rope_apply_scalar(float* x, int64_t n, int64_t row_stride, int n_heads, int head_dim,
                       int n_rot, const float* cos_tab, const float* sin_tab);

// Causal grouped-query attention of n new queries against a key/value cache.
//   q:   n rows, stride q_stride, n_head heads of head_dim each (query i is at position p0 + i)
//   k,v: n_head_kv blocks of kv_cap rows x head_dim (block h holds keys of kv head h by position)
//   out: n rows, stride out_stride, n_head heads of head_dim
// Query i attends to positions [0, p0 + i]. Streams keys in tiles with an online softmax:
// memory is O(tile), never O(n x positions).
struct AttentionArgs {
  const float* q;
  int64_t q_stride;
  const float* k;
  const float* v;
  int64_t kv_cap;
  float* out;
  int64_t out_stride;
  int64_t n;
  int64_t p0;
  int n_head;
  int n_head_kv;
  int head_dim;
  float scale;  // usually 1/sqrt(head_dim)
};
void attention(const AttentionArgs& a);
void attention_scalar(const AttentionArgs& a);

// For each of n rows of logits (length vocab): nll[r] = logsumexp(row) - row[target[r]].
void nll_rows(const float* logits, int64_t n, int64_t vocab, const int32_t* target, double* nll);
void nll_rows_scalar(const float* logits, int64_t n, int64_t vocab, const int32_t* target,
                     double* nll);

}  // namespace longrope::kernels
