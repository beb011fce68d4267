// The operations of a Llama training step, forward and backward, as pure functions over row-major
// arrays. Each is a template over the element type: float for training, double for the
// finite-difference checks of the tests (tests/train_ops_test.cpp). The matrix products go
// through BLAS (sgemm / dgemm); the linear layers and the LM head can instead round both operands
// of each product to bf16 and accumulate in FP32 (kernels::gemm_bf16_nt: oneDNN, AMX where the
// CPU has it), `compute` = kernels::Compute::kBF16, float only and on CPUs with AVX512_BF16.
// Attention, norms, RoPE, SwiGLU and the softmax stay FP32 either way.
//
// Conventions: n rows (sequence positions); weights stored [out][in] as in the model files.
// Gradients of weights ACCUMULATE (+=) so that gradient accumulation and tied weights need no
// extra buffers; gradients of activations are WRITTEN (=) unless an `accumulate` flag says
// otherwise.
#pragma once
#include <cstdint>

#include "longrope/kernels.h"

namespace longrope::train {

// ---- Linear: Y[n][out] = X[n][in] * W[out][in]^T (+ b[out] when b is not null).
template <class T>
void linear_forward(const T* X, int64_t n, int64_t in, const T* W, int64_t out, const T* b, T* Y,
                    kernels::Compute compute = kernels::Compute::kF32);
// dX[n][in] = dY * W (or += with accumulate_dx; skipped when dX is null), dW += dY^T * X,
// db += column sums of dY (when db is not null).
template <class T>
void linear_backward(const T* X, int64_t n, int64_t in, const T* W, int64_t out, const T* dY, T* dX,
                     bool accumulate_dx, T* dW, T* db,
                     kernels::Compute compute = kernels::Compute::kF32);

// ---- RMSNorm: y = x / sqrt(mean(x^2) + eps) * w per row of d values; rstd[r] = the row's
// 1 / sqrt(mean(x^2) + eps) (saved for the backward pass).
template <class T>
void rmsnorm_forward(const T* x, const T* w, int64_t n, int64_t d, T eps, T* y, T* rstd);
// rstd alone (the backward's input, recomputed without forming y): the values rmsnorm_forward
// writes to rstd, bit for bit.
template <class T>
void rmsnorm_rstd(const T* x, int64_t n, int64_t d, T eps, T* rstd);
// dx = d(loss)/dx (or += with accumulate_dx), dw += d(loss)/dw.
template <class T>
void rmsnorm_backward(const T* x, const T* w, const T* rstd, const T* dy, int64_t n, int64_t d,
                      T* dx, bool accumulate_dx, T* dw);

// ---- RoPE on adjacent pairs (x[2j], x[2j+1]) of each head, as kernels::rope_apply:
// y0 = x0 c - x1 s, y1 = x0 s + x1 c with row r's cos/sin (n_rot/2 values per row; any scaling's
// attention factor already folded in). In place.
template <class T>
void rope_forward(T* x, int64_t n, int64_t row_stride, int n_heads, int head_dim, int n_rot,
                  const float* cos_tab, const float* sin_tab);
// The transpose: dx0 = dy0 c + dy1 s, dx1 = -dy0 s + dy1 c. In place on the gradient.
template <class T>
void rope_backward(T* dx, int64_t n, int64_t row_stride, int n_heads, int head_dim, int n_rot,
                   const float* cos_tab, const float* sin_tab);

// ---- SwiGLU: out[i] = silu(g[i]) * u[i].
template <class T>
void swiglu_forward(const T* g, const T* u, T* out, int64_t n);
// dg, du from dout (written).
template <class T>
void swiglu_backward(const T* g, const T* u, const T* dout, T* dg, T* du, int64_t n);

// ---- Causal grouped-query self-attention over one sequence of n positions.
//   q:   n rows of n_head heads x head_dim (row stride n_head * head_dim)
//   k,v: n rows of n_head_kv heads x head_dim (row stride n_head_kv * head_dim)
//   out: n rows like q
//   lse: n_head x n log-sum-exp of each query's scaled scores (saved for the backward pass)
// Query head h uses kv head h / (n_head / n_head_kv); query i attends to keys [0, i].
// Streams keys in tiles with an online softmax: memory O(tile^2), never n x n.
struct AttentionShape {
  int64_t n = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  double scale = 0;  // usually 1 / sqrt(head_dim)
};
template <class T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* out, T* lse);
// dq, dk, dv (written) from dout, recomputing the probabilities tile by tile from q, k and the
// saved lse (FlashAttention-2's backward: D_i = dout_i . out_i, dS = P o (dP - D)). Memory
// O(tile^2) besides the inputs and outputs.
template <class T>
void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* out,
                        const T* lse, const T* dout, T* dq, T* dk, T* dv);
// Plain references (an n x n score matrix per head; tests only).
template <class T>
void attention_forward_reference(const AttentionShape& s, const T* q, const T* k, const T* v,
                                 T* out);
template <class T>
void attention_backward_reference(const AttentionShape& s, const T* q, const T* k, const T* v,
                                  const T* dout, T* dq, T* dk, T* dv);

// ---- LM head + cross-entropy, streamed: for each row r with target[r] >= 0,
// nll_r = logsumexp(h_r W^T) - (h_r W^T)[target[r]]; rows with target < 0 are not scored.
// Returns the sum of nll_r. dh[n][d] = grad_scale * d(sum nll)/dh (written; zero for unscored
// rows) and dW[V][d] += grad_scale * d(sum nll)/dW. Works on `chunk` rows at a time: memory
// chunk x V, never n x V. dh and dW may be null (loss only).
template <class T>
double lm_head_cross_entropy(const T* h, int64_t n, int64_t d, const T* W, int64_t V,
                             const int32_t* target, T grad_scale, T* dh, T* dW, int64_t chunk = 256,
                             kernels::Compute compute = kernels::Compute::kF32);

// ---- Embedding: dE[tokens[r]] += dx[r] for n rows of d values.
template <class T>
void embedding_backward(const int32_t* tokens, int64_t n, int64_t d, const T* dx, T* dE);

}  // namespace longrope::train
