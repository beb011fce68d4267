// The whole-model loss and gradient (include/longrope/train.h): the layer code of inference
// (src/engine/layer.h) over trainable parameters, and its backward pass, layer by layer, through
// a Backend (float) or the double-precision reference ops (the gradient checks).
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "engine/forward.h"
#include "engine/layer.h"
#include "longrope/error.h"
#include "longrope/kernels.h"
#include "longrope/train.h"
#include "longrope/train_ops.h"

namespace longrope::train {

ParamLayout param_layout(const Model& model) {
  ParamLayout P;
  P.hp = model.hp();
  const HParams& hp = P.hp;
  if (hp.arch != "llama" && hp.arch != "mistral" && hp.arch != "qwen2")
    throw Error(fmt::format(
        "finetune: architecture {} is not supported (expected a Llama-architecture model: "
        "llama, mistral or qwen2)",
        hp.arch));
  const int64_t d = hp.n_embd, qdim = int64_t(hp.n_head) * hp.head_dim,
                kvdim = int64_t(hp.n_head_kv) * hp.head_dim, ff = hp.n_ff, V = hp.n_vocab;
  P.tied = model.output().data == model.tok_embd().data;
  auto add = [&](const std::string& name, int64_t rows, int64_t cols, bool decay) {
    ParamTensor t{name, P.total, rows, cols, decay};
    P.total += t.size();
    P.tensors.push_back(t);
    return t.offset;
  };
  P.tok_embd = add("token_embd.weight", V, d, true);
  for (int l = 0; l < hp.n_layer; ++l) {
    const LayerWeights& W = model.layers()[size_t(l)];
    const std::string p = fmt::format("blk.{}.", l);
    ParamLayout::Layer L{};
    L.attn_norm = add(p + "attn_norm.weight", 1, d, false);
    L.wq = add(p + "attn_q.weight", qdim, d, true);
    L.wk = add(p + "attn_k.weight", kvdim, d, true);
    L.wv = add(p + "attn_v.weight", kvdim, d, true);
    L.wo = add(p + "attn_output.weight", d, qdim, true);
    L.bq = W.bq ? add(p + "attn_q.bias", 1, qdim, false) : ParamLayout::kNone;
    L.bk = W.bk ? add(p + "attn_k.bias", 1, kvdim, false) : ParamLayout::kNone;
    L.bv = W.bv ? add(p + "attn_v.bias", 1, kvdim, false) : ParamLayout::kNone;
    L.bo = W.bo ? add(p + "attn_output.bias", 1, d, false) : ParamLayout::kNone;
    L.ffn_norm = add(p + "ffn_norm.weight", 1, d, false);
    L.w_gate = add(p + "ffn_gate.weight", ff, d, true);
    L.w_up = add(p + "ffn_up.weight", ff, d, true);
    L.w_down = add(p + "ffn_down.weight", d, ff, true);
    P.layers.push_back(L);
  }
  P.output_norm = add("output_norm.weight", 1, d, false);
  P.output = P.tied ? P.tok_embd : add("output.weight", V, d, true);
  return P;
}

template <class T>
std::vector<T> load_params(const Model& model, const ParamLayout& P) {
  std::vector<T> out(P.total);
  std::vector<float> buf;
  auto matrix = [&](const WeightView& W, size_t off) {
    buf.resize(static_cast<size_t>(W.rows * W.cols));
    const int64_t step = 256;
    const int64_t tasks = (W.rows + step - 1) / step;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t r0 = t * step, nr = std::min(step, W.rows - r0);
      kernels::dequant_rows_f32(W, r0, nr, buf.data() + r0 * W.cols, W.cols);
    }
    std::copy(buf.begin(), buf.end(), out.begin() + static_cast<std::ptrdiff_t>(off));
  };
  auto vec = [&](const float* v, size_t off, int64_t n) {
    if (off == ParamLayout::kNone) return;  // an absent bias
    std::copy(v, v + n, out.begin() + static_cast<std::ptrdiff_t>(off));
  };
  const HParams& hp = P.hp;
  const int64_t d = hp.n_embd, qdim = int64_t(hp.n_head) * hp.head_dim,
                kvdim = int64_t(hp.n_head_kv) * hp.head_dim;
  matrix(model.tok_embd(), P.tok_embd);
  for (int l = 0; l < hp.n_layer; ++l) {
    const LayerWeights& W = model.layers()[size_t(l)];
    const ParamLayout::Layer& L = P.layers[size_t(l)];
    vec(W.attn_norm, L.attn_norm, d);
    matrix(W.wq, L.wq);
    matrix(W.wk, L.wk);
    matrix(W.wv, L.wv);
    matrix(W.wo, L.wo);
    vec(W.bq, L.bq, qdim);
    vec(W.bk, L.bk, kvdim);
    vec(W.bv, L.bv, kvdim);
    vec(W.bo, L.bo, d);
    vec(W.ffn_norm, L.ffn_norm, d);
    matrix(W.w_gate, L.w_gate);
    matrix(W.w_up, L.w_up);
    matrix(W.w_down, L.w_down);
  }
  vec(model.output_norm(), P.output_norm, d);
  if (!P.tied) matrix(model.output(), P.output);
  return out;
}

template <class T>
size_t TrainWorkspace<T>::bytes() const {
  size_t b = 0;
  auto add = [&](const auto& v) { b += v.capacity() * sizeof(v[0]); };
  for (const auto* v : {&xs, &xf, &dy, &dx, &dxmid, &dh, &datt, &dq, &dk, &dv, &da, &dg, &du})
    add(*v);
  for (const LayerActs<T>& a : acts)
    for (const auto* v :
         {&a.h1, &a.q, &a.k, &a.v, &a.att, &a.lse, &a.xmid, &a.h2, &a.g, &a.u, &a.a})
      add(*v);
  add(target);
  add(cos_tab);
  add(sin_tab);
  return b;
}

namespace {

template <class T>
void grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

template <class T>
const T* at(const T* p, size_t off) {
  return off == ParamLayout::kNone ? nullptr : p + off;
}
template <class T>
T* at(T* p, size_t off) {
  return off == ParamLayout::kNone || p == nullptr ? nullptr : p + off;
}

// The double-precision reference of engine::BackendOps: the same operation table over the
// templates of longrope/train_ops.h, which the finite-difference gradient checks run through the
// one layer code (src/engine/layer.h). Tests only; training runs BackendOps.
template <class T>
struct ReferenceOps {
  using Scalar = T;
  struct Weight {
    const T* data;
    int64_t rows, cols;
  };
  static Weight weight(const T* data, int64_t rows, int64_t cols) { return {data, rows, cols}; }

  void rmsnorm(const T* x, const T* w, T* y, int64_t n, int64_t d, float eps) const {
    std::vector<T> rstd(static_cast<size_t>(n));
    train::rmsnorm_forward(x, w, n, d, T(eps), y, rstd.data());
  }
  void linear(const T* A, int64_t n, const Weight& W, T* C, float beta) const {
    if (beta == 0) {
      linear_forward(A, n, W.cols, W.data, W.rows, static_cast<const T*>(nullptr), C);
      return;
    }
    std::vector<T> y(static_cast<size_t>(n * W.rows));
    linear_forward(A, n, W.cols, W.data, W.rows, static_cast<const T*>(nullptr), y.data());
    for (size_t i = 0; i < y.size(); ++i) C[i] = T(beta) * C[i] + y[i];
  }
  void add_bias(T* x, int64_t n, int64_t cols, const T* b) const {
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < cols; ++j) x[r * cols + j] += b[j];
  }
  void rope(T* x, int64_t n, int64_t stride, int heads, int hd, int n_rot, const float* c,
            const float* s) const {
    rope_forward(x, n, stride, heads, hd, n_rot, c, s);
  }
  void swiglu(T* g, const T* u, int64_t n) const { swiglu_forward(g, u, g, n); }
  void copy(const T* src, T* dst, int64_t count) const { std::copy(src, src + count, dst); }
  void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* out,
                         T* lse) const {
    train::attention_forward(s, q, k, v, out, lse);
  }
  void linear_backward(const T* X, int64_t n, const Weight& W, const T* dY, T* dX,
                       bool accumulate_dx, T* dW, T* db) const {
    train::linear_backward(X, n, W.cols, W.data, W.rows, dY, dX, accumulate_dx, dW, db);
  }
  void rmsnorm_backward(const T* x, const T* w, float eps, const T* dy, int64_t n, int64_t d, T* dx,
                        bool accumulate_dx, T* dw) const {
    std::vector<T> rstd(static_cast<size_t>(n));
    train::rmsnorm_rstd(x, n, d, T(eps), rstd.data());
    train::rmsnorm_backward(x, w, rstd.data(), dy, n, d, dx, accumulate_dx, dw);
  }
  void rope_backward(T* dx, int64_t n, int64_t stride, int heads, int hd, int n_rot, const float* c,
                     const float* s) const {
    train::rope_backward(dx, n, stride, heads, hd, n_rot, c, s);
  }
  void swiglu_backward(const T* g, const T* u, const T* dout, T* dg, T* du, int64_t n) const {
    train::swiglu_backward(g, u, dout, dg, du, n);
  }
  void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* out,
                          const T* lse, const T* dout, T* dq, T* dk, T* dv) const {
    train::attention_backward(s, q, k, v, out, lse, dout, dq, dk, dv);
  }
  void embed(const Weight& table, const int32_t* tokens, int64_t n, T* x) const {
    for (int64_t i = 0; i < n; ++i)
      std::copy(table.data + tokens[i] * table.cols, table.data + (tokens[i] + 1) * table.cols,
                x + i * table.cols);
  }
  double lm_head_cross_entropy(const T* h, int64_t n, const Weight& W, const int32_t* target,
                               T grad_scale, T* dh, T* dW) const {
    return train::lm_head_cross_entropy(h, n, W.cols, W.data, W.rows, target, grad_scale, dh, dW);
  }
  void embedding_backward(const int32_t* tokens, int64_t n, int64_t d, const T* dx, T* dE) const {
    train::embedding_backward(tokens, n, d, dx, dE);
  }
};

template <class T>
void size_acts(LayerActs<T>& A, const engine::LayerDims& D) {
  const int64_t n = D.n;
  for (auto* v : {&A.h1, &A.xmid, &A.h2}) grow(*v, n * D.d);
  for (auto* v : {&A.q, &A.att}) grow(*v, n * D.qdim);
  for (auto* v : {&A.k, &A.v}) grow(*v, n * D.kvdim);
  grow(A.lse, n * D.H);
  for (auto* v : {&A.g, &A.u, &A.a}) grow(*v, n * D.ff);
}

template <class T>
engine::LayerRows<T> rows_of(LayerActs<T>& A) {
  return {A.h1.data(),   A.q.data(),  A.k.data(), A.v.data(), A.att.data(),
          A.xmid.data(), A.h2.data(), A.g.data(), A.u.data(), A.a.data()};
}

// Layer l's parameters in p as the layer code reads them.
template <class Ops, class T>
auto layer_params(const ParamLayout& P, const T* p, int l) {
  const ParamLayout::Layer& L = P.layers[size_t(l)];
  const HParams& hp = P.hp;
  const int64_t d = hp.n_embd, qdim = int64_t(hp.n_head) * hp.head_dim,
                kvdim = int64_t(hp.n_head_kv) * hp.head_dim, ff = hp.n_ff;
  return engine::LayerParams<typename Ops::Weight, T>{p + L.attn_norm,
                                                      p + L.ffn_norm,
                                                      Ops::weight(p + L.wq, qdim, d),
                                                      Ops::weight(p + L.wk, kvdim, d),
                                                      Ops::weight(p + L.wv, kvdim, d),
                                                      Ops::weight(p + L.wo, d, qdim),
                                                      Ops::weight(p + L.w_gate, ff, d),
                                                      Ops::weight(p + L.w_up, ff, d),
                                                      Ops::weight(p + L.w_down, d, ff),
                                                      at(p, L.bq),
                                                      at(p, L.bk),
                                                      at(p, L.bv),
                                                      at(p, L.bo)};
}

template <class T>
engine::LayerGrads<T> layer_grads(const ParamLayout& P, T* g, int l) {
  const ParamLayout::Layer& L = P.layers[size_t(l)];
  return {g + L.attn_norm, g + L.ffn_norm, g + L.wq,   g + L.wk,     g + L.wv,
          g + L.wo,        g + L.w_gate,   g + L.w_up, g + L.w_down, at(g, L.bq),
          at(g, L.bk),     at(g, L.bv),    at(g, L.bo)};
}

// The loss and gradient through the operation table `ops` (engine/layer.h).
template <class Ops, class T>
double loss_and_grad_with(const Ops& ops, const ParamLayout& P, const T* p, const int32_t* tokens,
                          int64_t n, const RopeTables& tables, T* grad, T grad_scale,
                          TrainWorkspace<T>& ws, bool checkpoint) {
  const HParams& hp = P.hp;
  const engine::LayerDims D(hp, n);
  const int64_t d = D.d, NL = hp.n_layer, V = hp.n_vocab;
  const bool ckpt = checkpoint || grad == nullptr;
  grow(ws.xs, (NL + 1) * n * d);
  if (ws.acts.size() < (ckpt ? 1u : size_t(NL))) ws.acts.resize(ckpt ? 1u : size_t(NL));
  for (size_t i = 0; i < (ckpt ? 1u : size_t(NL)); ++i) size_acts(ws.acts[i], D);
  engine::build_rope_cache(tables, 0, n, ws.cos_tab, ws.sin_tab);
  const float* cs = ws.cos_tab.data();
  const float* sn = ws.sin_tab.data();
  auto xs = [&](int64_t l) { return ws.xs.data() + l * n * d; };
  const auto no_lap = [](engine::Phase) {};
  auto forward = [&](int l, LayerActs<T>& A) {
    const auto attend = [&](const T* q, const T* k, const T* v, T* out) {
      ops.attention_forward(D.att, q, k, v, out, A.lse.data());
    };
    engine::layer_forward(ops, layer_params<Ops>(P, p, l), D, xs(l), xs(l + 1), rows_of(A), cs, sn,
                          attend, no_lap);
  };

  ops.embed(Ops::weight(p + P.tok_embd, V, d), tokens, n, xs(0));
  for (int l = 0; l < NL; ++l) forward(l, ws.acts[ckpt ? 0 : size_t(l)]);

  grow(ws.xf, n * d);
  ops.rmsnorm(xs(NL), p + P.output_norm, ws.xf.data(), n, d, D.eps);
  grow(ws.target, n);
  for (int64_t i = 0; i + 1 < n; ++i) ws.target[size_t(i)] = tokens[i + 1];
  ws.target[size_t(n - 1)] = -1;
  if (grad) {
    for (auto* v : {&ws.dy, &ws.dx, &ws.dxmid, &ws.dh}) grow(*v, n * d);
    for (auto* v : {&ws.datt, &ws.dq}) grow(*v, n * D.qdim);
    for (auto* v : {&ws.dk, &ws.dv}) grow(*v, n * D.kvdim);
    for (auto* v : {&ws.da, &ws.dg, &ws.du}) grow(*v, n * D.ff);
  }
  // dy = d(loss)/d(normed final hidden states)
  const double loss = ops.lm_head_cross_entropy(
      ws.xf.data(), n, Ops::weight(p + P.output, V, d), ws.target.data(), grad_scale,
      grad ? ws.dy.data() : nullptr, grad ? grad + P.output : nullptr);
  if (!grad) return loss;
  ops.rmsnorm_backward(xs(NL), p + P.output_norm, D.eps, ws.dy.data(), n, d, ws.dx.data(), false,
                       grad + P.output_norm);
  const engine::LayerGradRows<T> S{ws.dxmid.data(), ws.dh.data(), ws.datt.data(),
                                   ws.dq.data(),    ws.dk.data(), ws.dv.data(),
                                   ws.da.data(),    ws.dg.data(), ws.du.data()};
  // ws.dx holds d(loss)/d(output of layer l); the layer's backward writes its input's into dy.
  for (int l = int(NL) - 1; l >= 0; --l) {
    LayerActs<T>& A = ws.acts[ckpt ? 0 : size_t(l)];
    if (ckpt) forward(l, A);
    engine::layer_backward(ops, layer_params<Ops>(P, p, l), D, xs(l), rows_of(A), A.lse.data(), cs,
                           sn, ws.dx.data(), ws.dy.data(), layer_grads(P, grad, l), S);
    std::swap(ws.dx, ws.dy);
  }
  ops.embedding_backward(tokens, n, d, ws.dx.data(), grad + P.tok_embd);
  return loss;
}

}  // namespace

template <class T>
double loss_and_grad(const ParamLayout& P, const T* p, const int32_t* tokens, int64_t n,
                     const RopeTables& tables, T* grad, T grad_scale, TrainWorkspace<T>& ws,
                     const LossOptions& opts) {
  const HParams& hp = P.hp;
  if (n < 2) throw Error(fmt::format("training sequence of {} token(s); expected at least 2", n));
  if (static_cast<int64_t>(tables.inv_freq.size()) * 2 != hp.n_rot)
    throw Error(fmt::format("rotary tables have {} pairs, expected n_rot/2 = {}",
                            tables.inv_freq.size(), hp.n_rot / 2));
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= hp.n_vocab)
      throw Error(
          fmt::format("token id {} at position {} out of range [0, {})", tokens[i], i, hp.n_vocab));
  if constexpr (std::is_same_v<T, float>) {
    const std::shared_ptr<const Backend> be = backend_or_cpu(opts.backend, opts.compute);
    return loss_and_grad_with(engine::BackendOps{*be}, P, p, tokens, n, tables, grad, grad_scale,
                              ws, opts.checkpoint);
  } else {
    if (opts.backend || opts.compute != kernels::Compute::kF32)
      throw Error("loss_and_grad: a backend and bf16 compute are for float training only");
    return loss_and_grad_with(ReferenceOps<T>{}, P, p, tokens, n, tables, grad, grad_scale, ws,
                              opts.checkpoint);
  }
}

template std::vector<float> load_params<float>(const Model&, const ParamLayout&);
template std::vector<double> load_params<double>(const Model&, const ParamLayout&);
template struct TrainWorkspace<float>;
template struct TrainWorkspace<double>;
template double loss_and_grad<float>(const ParamLayout&, const float*, const int32_t*, int64_t,
                                     const RopeTables&, float*, float, TrainWorkspace<float>&,
                                     const LossOptions&);
template double loss_and_grad<double>(const ParamLayout&, const double*, const int32_t*, int64_t,
                                      const RopeTables&, double*, double, TrainWorkspace<double>&,
                                      const LossOptions&);

}  // namespace longrope::train
