// One Llama layer, forward and backward, written once for inference and training.
//
// The layer code is a template over an operation table `Ops` with an element type Ops::Scalar and a
// weight type Ops::Weight:
//   - BackendOps (below): every operation through a Backend, float. The engine's forward pass
//     (forward.cpp) and the training step (src/train/model_grad.cpp) both run it, so inference and
//     training share one forward pass and one set of kernels.
//   - train::ReferenceOps<double> (src/train/reference_ops.h): the double-precision reference the
//     finite-difference gradient checks run through the same layer code.
//
// Ops provides (row-major arrays; n rows):
//   rmsnorm(x, w, y, n, d, eps)              y = x / rms(x) * w
//   linear(A, n, W, C, beta)                 C[n, W.rows] = beta*C + A[n, W.cols] W^T
//   add_bias(x, n, cols, b)                  each row += b
//   rope(x, n, stride, heads, hd, n_rot, cos, sin)     in place
//   swiglu(g, u, n)                          g = silu(g) * u, in place
//   copy(src, dst, count)
//   attention_forward(shape, q, k, v, out, lse)        dense causal attention saving lse
// and for the backward pass
//   linear_backward(X, n, W, dY, dX, accumulate_dx, dW, db)
//   rmsnorm_backward(x, w, eps, dy, n, d, dx, accumulate_dx, dw)
//   rope_backward(dx, n, stride, heads, hd, n_rot, cos, sin)
//   swiglu_backward(g, u, dout, dg, du, n)
//   attention_backward(shape, q, k, v, out, lse, dout, dq, dk, dv)
#pragma once
#include <cmath>
#include <cstdint>

#include "longrope/backend.h"
#include "longrope/model.h"
#include "longrope/train_ops.h"

namespace longrope::engine {

// One layer's parameters as the layer code reads them.
template <class W, class T>
struct LayerParams {
  const T* attn_norm = nullptr;
  const T* ffn_norm = nullptr;
  W wq, wk, wv, wo, w_gate, w_up, w_down;
  const T* bq = nullptr;  // biases: null when absent
  const T* bk = nullptr;
  const T* bv = nullptr;
  const T* bo = nullptr;
};

// Where the layer writes its intermediate rows. Inference aliases them to save memory (h1 == h2,
// xmid == x_out == the input, a == g); training keeps each for the backward pass.
template <class T>
struct LayerRows {
  T *h1, *q, *k, *v, *att, *xmid, *h2, *g, *u, *a;
};

// The phases a layer's time is charged to (PhaseStats).
enum class Phase { kOther, kMatmul, kAttention };

// The layer's sizes.
struct LayerDims {
  int64_t n, d, hd, H, KV, qdim, kvdim, ff;
  int n_rot;
  float eps;
  train::AttentionShape att;
  LayerDims(const HParams& hp, int64_t rows)
      : n(rows),
        d(hp.n_embd),
        hd(hp.head_dim),
        H(hp.n_head),
        KV(hp.n_head_kv),
        qdim(int64_t(hp.n_head) * hp.head_dim),
        kvdim(int64_t(hp.n_head_kv) * hp.head_dim),
        ff(hp.n_ff),
        n_rot(hp.n_rot),
        eps(hp.norm_eps),
        att{rows, hp.n_head, hp.n_head_kv, hp.head_dim,
            1.0 / std::sqrt(static_cast<double>(hp.head_dim))} {}
};

// x_out = layer(x) for n rows (x_out may be x). `attend(q, k, v, att)` computes the attention of
// the rotated queries and keys: over the KV cache for inference, dense with saved log-sum-exps for
// training. `lap(phase)` charges the time since the last call to a phase.
template <class Ops, class Attend, class Lap>
void layer_forward(const Ops& ops, const LayerParams<typename Ops::Weight, typename Ops::Scalar>& L,
                   const LayerDims& D, const typename Ops::Scalar* x, typename Ops::Scalar* x_out,
                   const LayerRows<typename Ops::Scalar>& R, const float* cos_tab,
                   const float* sin_tab, Attend&& attend, Lap&& lap) {
  const int64_t n = D.n, d = D.d;
  ops.rmsnorm(x, L.attn_norm, R.h1, n, d, D.eps);
  lap(Phase::kOther);
  ops.linear(R.h1, n, L.wq, R.q, 0);
  ops.linear(R.h1, n, L.wk, R.k, 0);
  ops.linear(R.h1, n, L.wv, R.v, 0);
  if (L.bq) ops.add_bias(R.q, n, D.qdim, L.bq);
  if (L.bk) ops.add_bias(R.k, n, D.kvdim, L.bk);
  if (L.bv) ops.add_bias(R.v, n, D.kvdim, L.bv);
  lap(Phase::kMatmul);
  ops.rope(R.q, n, D.qdim, int(D.H), int(D.hd), D.n_rot, cos_tab, sin_tab);
  ops.rope(R.k, n, D.kvdim, int(D.KV), int(D.hd), D.n_rot, cos_tab, sin_tab);
  lap(Phase::kOther);
  attend(R.q, R.k, R.v, R.att);
  lap(Phase::kAttention);
  // xmid = x + att Wo^T + bo
  if (R.xmid != x) ops.copy(x, R.xmid, n * d);
  ops.linear(R.att, n, L.wo, R.xmid, 1);
  if (L.bo) ops.add_bias(R.xmid, n, d, L.bo);
  lap(Phase::kMatmul);
  ops.rmsnorm(R.xmid, L.ffn_norm, R.h2, n, d, D.eps);
  lap(Phase::kOther);
  ops.linear(R.h2, n, L.w_gate, R.g, 0);
  ops.linear(R.h2, n, L.w_up, R.u, 0);
  lap(Phase::kMatmul);
  if (R.a != R.g) ops.copy(R.g, R.a, n * D.ff);
  ops.swiglu(R.a, R.u, n * D.ff);
  lap(Phase::kOther);
  // x_out = xmid + a Wd^T
  if (x_out != R.xmid) ops.copy(R.xmid, x_out, n * d);
  ops.linear(R.a, n, L.w_down, x_out, 1);
  lap(Phase::kMatmul);
}

// Gradients of one layer's weights (dense, Ops::Scalar) where they accumulate (+=); biases null
// when absent.
template <class T>
struct LayerGrads {
  T *attn_norm, *ffn_norm, *wq, *wk, *wv, *wo, *w_gate, *w_up, *w_down;
  T *bq, *bk, *bv, *bo;
};

// Scratch rows of the backward pass: dxmid, dh (n x d), datt, dq (n x qdim), dk, dv (n x kvdim),
// da, dg, du (n x ff).
template <class T>
struct LayerGradRows {
  T *dxmid, *dh, *datt, *dq, *dk, *dv, *da, *dg, *du;
};

// dx = d(loss)/d(x) from dy = d(loss)/d(x_out), for the rows R and log-sum-exps lse that
// layer_forward left (with training's attend); weight gradients accumulate into G.
template <class Ops>
void layer_backward(const Ops& ops,
                    const LayerParams<typename Ops::Weight, typename Ops::Scalar>& L,
                    const LayerDims& D, const typename Ops::Scalar* x,
                    const LayerRows<typename Ops::Scalar>& R, const typename Ops::Scalar* lse,
                    const float* cos_tab, const float* sin_tab, const typename Ops::Scalar* dy,
                    typename Ops::Scalar* dx, const LayerGrads<typename Ops::Scalar>& G,
                    const LayerGradRows<typename Ops::Scalar>& S) {
  const int64_t n = D.n, d = D.d, ff = D.ff;
  ops.copy(dy, S.dxmid, n * d);
  // x_out = xmid + swiglu(h2 Wg^T, h2 Wu^T) Wd^T
  ops.linear_backward(R.a, n, L.w_down, dy, S.da, false, G.w_down, nullptr);
  ops.swiglu_backward(R.g, R.u, S.da, S.dg, S.du, n * ff);
  ops.linear_backward(R.h2, n, L.w_gate, S.dg, S.dh, false, G.w_gate, nullptr);
  ops.linear_backward(R.h2, n, L.w_up, S.du, S.dh, true, G.w_up, nullptr);
  ops.rmsnorm_backward(R.xmid, L.ffn_norm, D.eps, S.dh, n, d, S.dxmid, true, G.ffn_norm);
  // xmid = x + attention(rope(h1 Wq^T), rope(h1 Wk^T), h1 Wv^T) Wo^T
  ops.copy(S.dxmid, dx, n * d);
  ops.linear_backward(R.att, n, L.wo, S.dxmid, S.datt, false, G.wo, G.bo);
  ops.attention_backward(D.att, R.q, R.k, R.v, R.att, lse, S.datt, S.dq, S.dk, S.dv);
  ops.rope_backward(S.dq, n, D.qdim, int(D.H), int(D.hd), D.n_rot, cos_tab, sin_tab);
  ops.rope_backward(S.dk, n, D.kvdim, int(D.KV), int(D.hd), D.n_rot, cos_tab, sin_tab);
  ops.linear_backward(R.h1, n, L.wq, S.dq, S.dh, false, G.wq, G.bq);
  ops.linear_backward(R.h1, n, L.wk, S.dk, S.dh, true, G.wk, G.bk);
  ops.linear_backward(R.h1, n, L.wv, S.dv, S.dh, true, G.wv, G.bv);
  ops.rmsnorm_backward(x, L.attn_norm, D.eps, S.dh, n, d, dx, true, G.attn_norm);
}

// The operation table of layer_forward/layer_backward over a Backend (float; weights in their
// file encoding for inference, dense FP32 for training).
struct BackendOps {
  using Scalar = float;
  using Weight = kernels::WeightView;
  const Backend& be;

  void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t d, float eps) const {
    be.rmsnorm(x, w, y, n, d, eps);
  }
  void linear(const float* A, int64_t n, const Weight& W, float* C, float beta) const {
    be.matmul_w(n, A, W.cols, W, C, W.rows, beta);
  }
  void add_bias(float* x, int64_t n, int64_t cols, const float* b) const {
    be.add_bias(x, n, cols, b);
  }
  void rope(float* x, int64_t n, int64_t stride, int heads, int hd, int n_rot, const float* c,
            const float* s) const {
    be.rope_apply(x, n, stride, heads, hd, n_rot, c, s);
  }
  void swiglu(float* g, const float* u, int64_t n) const { be.swiglu(g, u, n); }
  void copy(const float* src, float* dst, int64_t count) const { be.copy(src, dst, count); }
  void attention_forward(const train::AttentionShape& s, const float* q, const float* k,
                         const float* v, float* out, float* lse) const {
    be.attention_forward(s, q, k, v, out, lse);
  }
  void linear_backward(const float* X, int64_t n, const Weight& W, const float* dY, float* dX,
                       bool accumulate_dx, float* dW, float* db) const {
    be.linear_backward(X, n, W, dY, dX, accumulate_dx, dW, db);
  }
  void rmsnorm_backward(const float* x, const float* w, float eps, const float* dy, int64_t n,
                        int64_t d, float* dx, bool accumulate_dx, float* dw) const {
    be.rmsnorm_backward(x, w, eps, dy, n, d, dx, accumulate_dx, dw);
  }
  void rope_backward(float* dx, int64_t n, int64_t stride, int heads, int hd, int n_rot,
                     const float* c, const float* s) const {
    be.rope_backward(dx, n, stride, heads, hd, n_rot, c, s);
  }
  void swiglu_backward(const float* g, const float* u, const float* dout, float* dg, float* du,
                       int64_t n) const {
    be.swiglu_backward(g, u, dout, dg, du, n);
  }
  void attention_backward(const train::AttentionShape& s, const float* q, const float* k,
                          const float* v, const float* out, const float* lse, const float* dout,
                          float* dq, float* dk, float* dv) const {
    be.attention_backward(s, q, k, v, out, lse, dout, dq, dk, dv);
  }
  // The whole-model steps around the layers (training).
  void embed(const Weight& table, const int32_t* tokens, int64_t n, float* x) const {
    be.embed(table, tokens, n, x);
  }
  double lm_head_cross_entropy(const float* h, int64_t n, const Weight& W, const int32_t* target,
                               float grad_scale, float* dh, float* dW) const {
    return be.lm_head_cross_entropy(h, n, W, target, grad_scale, dh, dW);
  }
  void embedding_backward(const int32_t* tokens, int64_t n, int64_t d, const float* dx,
                          float* dE) const {
    be.embedding_backward(tokens, n, d, dx, dE);
  }
  // A dense FP32 matrix of rows x cols as a weight.
  static Weight weight(const float* data, int64_t rows, int64_t cols) {
    return {GgmlType::F32, reinterpret_cast<const uint8_t*>(data), rows, cols,
            sizeof(float) * size_t(cols)};
  }
};

// A layer's weights as stored in the model, for BackendOps.
inline LayerParams<kernels::WeightView, float> layer_params(const LayerWeights& L) {
  return {L.attn_norm, L.ffn_norm, L.wq, L.wk, L.wv, L.wo, L.w_gate,
          L.w_up,      L.w_down,   L.bq, L.bk, L.bv, L.bo};
}

}  // namespace longrope::engine
