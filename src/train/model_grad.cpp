// The whole-model loss and gradient (include/longrope/train.h): the Llama forward pass of
// src/engine/forward.cpp in trainable form, and its backward pass, layer by layer.
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/forward.h"
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
  for (const auto* v :
       {&xs, &xf, &rstd_f, &dy, &dx, &dxmid, &dh, &datt, &dq, &dk, &dv, &da, &dg, &du})
    add(*v);
  for (const LayerActs<T>& a : acts)
    for (const auto* v : {&a.h1, &a.rstd1, &a.q, &a.k, &a.v, &a.att, &a.lse, &a.xmid, &a.h2,
                          &a.rstd2, &a.g, &a.u, &a.a})
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

struct Dims {
  int64_t n, d, hd, H, KV, qdim, kvdim, ff, n_rot;
  AttentionShape att;
};

Dims dims_of(const HParams& hp, int64_t n) {
  Dims D{};
  D.n = n;
  D.d = hp.n_embd;
  D.hd = hp.head_dim;
  D.H = hp.n_head;
  D.KV = hp.n_head_kv;
  D.qdim = D.H * D.hd;
  D.kvdim = D.KV * D.hd;
  D.ff = hp.n_ff;
  D.n_rot = hp.n_rot;
  D.att = AttentionShape{n, hp.n_head, hp.n_head_kv, hp.head_dim,
                         1.0 / std::sqrt(static_cast<double>(hp.head_dim))};
  return D;
}

template <class T>
void size_acts(LayerActs<T>& A, const Dims& D) {
  const int64_t n = D.n;
  for (auto* v : {&A.h1, &A.xmid, &A.h2}) grow(*v, n * D.d);
  for (auto* v : {&A.rstd1, &A.rstd2}) grow(*v, n);
  for (auto* v : {&A.q, &A.att}) grow(*v, n * D.qdim);
  for (auto* v : {&A.k, &A.v}) grow(*v, n * D.kvdim);
  grow(A.lse, n * D.H);
  for (auto* v : {&A.g, &A.u, &A.a}) grow(*v, n * D.ff);
}

// x_out = layer l (x); A receives what the backward pass needs.
template <class T>
void layer_forward(const ParamLayout& P, const T* p, int l, const Dims& D, const T* x,
                   const float* cos_tab, const float* sin_tab, T eps, kernels::Compute cm,
                   LayerActs<T>& A, T* x_out) {
  const ParamLayout::Layer& L = P.layers[size_t(l)];
  const int64_t n = D.n, d = D.d;
  rmsnorm_forward(x, p + L.attn_norm, n, d, eps, A.h1.data(), A.rstd1.data());
  linear_forward(A.h1.data(), n, d, p + L.wq, D.qdim, at(p, L.bq), A.q.data(), cm);
  linear_forward(A.h1.data(), n, d, p + L.wk, D.kvdim, at(p, L.bk), A.k.data(), cm);
  linear_forward(A.h1.data(), n, d, p + L.wv, D.kvdim, at(p, L.bv), A.v.data(), cm);
  rope_forward(A.q.data(), n, D.qdim, int(D.H), int(D.hd), int(D.n_rot), cos_tab, sin_tab);
  rope_forward(A.k.data(), n, D.kvdim, int(D.KV), int(D.hd), int(D.n_rot), cos_tab, sin_tab);
  attention_forward(D.att, A.q.data(), A.k.data(), A.v.data(), A.att.data(), A.lse.data());
  linear_forward(A.att.data(), n, D.qdim, p + L.wo, d, at(p, L.bo), A.xmid.data(), cm);
  for (int64_t i = 0; i < n * d; ++i) A.xmid[size_t(i)] += x[i];
  rmsnorm_forward(A.xmid.data(), p + L.ffn_norm, n, d, eps, A.h2.data(), A.rstd2.data());
  linear_forward(A.h2.data(), n, d, p + L.w_gate, D.ff, static_cast<const T*>(nullptr), A.g.data(),
                 cm);
  linear_forward(A.h2.data(), n, d, p + L.w_up, D.ff, static_cast<const T*>(nullptr), A.u.data(),
                 cm);
  swiglu_forward(A.g.data(), A.u.data(), A.a.data(), n * D.ff);
  linear_forward(A.a.data(), n, D.ff, p + L.w_down, d, static_cast<const T*>(nullptr), x_out, cm);
  for (int64_t i = 0; i < n * d; ++i) x_out[i] += A.xmid[size_t(i)];
}

// dx = d(loss)/d(layer input) from dy = d(loss)/d(layer output); weight gradients += into g.
template <class T>
void layer_backward(const ParamLayout& P, const T* p, int l, const Dims& D, const T* x,
                    const float* cos_tab, const float* sin_tab, kernels::Compute cm,
                    const LayerActs<T>& A, const T* dy, T* dx, T* g, TrainWorkspace<T>& ws) {
  const ParamLayout::Layer& L = P.layers[size_t(l)];
  const int64_t n = D.n, d = D.d, ff = D.ff;
  T* dxmid = ws.dxmid.data();
  std::copy(dy, dy + n * d, dxmid);
  // x_out = xmid + swiglu(h2 Wg, h2 Wu) Wd^T
  linear_backward(A.a.data(), n, ff, p + L.w_down, d, dy, ws.da.data(), false, g + L.w_down,
                  static_cast<T*>(nullptr), cm);
  swiglu_backward(A.g.data(), A.u.data(), ws.da.data(), ws.dg.data(), ws.du.data(), n * ff);
  linear_backward(A.h2.data(), n, d, p + L.w_gate, ff, ws.dg.data(), ws.dh.data(), false,
                  g + L.w_gate, static_cast<T*>(nullptr), cm);
  linear_backward(A.h2.data(), n, d, p + L.w_up, ff, ws.du.data(), ws.dh.data(), true, g + L.w_up,
                  static_cast<T*>(nullptr), cm);
  rmsnorm_backward(A.xmid.data(), p + L.ffn_norm, A.rstd2.data(), ws.dh.data(), n, d, dxmid, true,
                   g + L.ffn_norm);
  // xmid = x + attention(rope(h1 Wq), rope(h1 Wk), h1 Wv) Wo^T
  std::copy(dxmid, dxmid + n * d, dx);
  linear_backward(A.att.data(), n, D.qdim, p + L.wo, d, dxmid, ws.datt.data(), false, g + L.wo,
                  at(g, L.bo), cm);
  attention_backward(D.att, A.q.data(), A.k.data(), A.v.data(), A.att.data(), A.lse.data(),
                     ws.datt.data(), ws.dq.data(), ws.dk.data(), ws.dv.data());
  rope_backward(ws.dq.data(), n, D.qdim, int(D.H), int(D.hd), int(D.n_rot), cos_tab, sin_tab);
  rope_backward(ws.dk.data(), n, D.kvdim, int(D.KV), int(D.hd), int(D.n_rot), cos_tab, sin_tab);
  linear_backward(A.h1.data(), n, d, p + L.wq, D.qdim, ws.dq.data(), ws.dh.data(), false, g + L.wq,
                  at(g, L.bq), cm);
  linear_backward(A.h1.data(), n, d, p + L.wk, D.kvdim, ws.dk.data(), ws.dh.data(), true, g + L.wk,
                  at(g, L.bk), cm);
  linear_backward(A.h1.data(), n, d, p + L.wv, D.kvdim, ws.dv.data(), ws.dh.data(), true, g + L.wv,
                  at(g, L.bv), cm);
  rmsnorm_backward(x, p + L.attn_norm, A.rstd1.data(), ws.dh.data(), n, d, dx, true,
                   g + L.attn_norm);
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
  kernels::require_compute(opts.compute);
  const Dims D = dims_of(hp, n);
  const int64_t d = D.d, NL = hp.n_layer;
  const T eps = static_cast<T>(hp.norm_eps);
  const bool ckpt = opts.checkpoint || grad == nullptr;
  grow(ws.xs, (NL + 1) * n * d);
  if (ws.acts.size() < (ckpt ? 1u : size_t(NL))) ws.acts.resize(ckpt ? 1u : size_t(NL));
  for (size_t i = 0; i < (ckpt ? 1u : size_t(NL)); ++i) size_acts(ws.acts[i], D);
  engine::build_rope_cache(tables, 0, n, ws.cos_tab, ws.sin_tab);
  const float* cs = ws.cos_tab.data();
  const float* sn = ws.sin_tab.data();
  auto xs = [&](int64_t l) { return ws.xs.data() + l * n * d; };

  for (int64_t i = 0; i < n; ++i)
    std::copy(p + P.tok_embd + size_t(tokens[i]) * size_t(d),
              p + P.tok_embd + size_t(tokens[i] + 1) * size_t(d), xs(0) + i * d);
  for (int l = 0; l < NL; ++l)
    layer_forward(P, p, l, D, xs(l), cs, sn, eps, opts.compute, ws.acts[ckpt ? 0 : size_t(l)],
                  xs(l + 1));

  grow(ws.xf, n * d);
  grow(ws.rstd_f, n);
  rmsnorm_forward(xs(NL), p + P.output_norm, n, d, eps, ws.xf.data(), ws.rstd_f.data());
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
  const double loss = lm_head_cross_entropy(
      ws.xf.data(), n, d, p + P.output, int64_t(hp.n_vocab), ws.target.data(), grad_scale,
      grad ? ws.dy.data() : nullptr, grad ? grad + P.output : nullptr, 256, opts.compute);
  if (!grad) return loss;
  rmsnorm_backward(xs(NL), p + P.output_norm, ws.rstd_f.data(), ws.dy.data(), n, d, ws.dx.data(),
                   false, grad + P.output_norm);
  // ws.dx holds d(loss)/d(output of layer l); the layer's backward writes its input's into dy.
  for (int l = int(NL) - 1; l >= 0; --l) {
    LayerActs<T>& A = ws.acts[ckpt ? 0 : size_t(l)];
    if (ckpt) layer_forward(P, p, l, D, xs(l), cs, sn, eps, opts.compute, A, xs(l + 1));
    layer_backward(P, p, l, D, xs(l), cs, sn, opts.compute, A, ws.dx.data(), ws.dy.data(), grad,
                   ws);
    std::swap(ws.dx, ws.dy);
  }
  embedding_backward(tokens, n, d, ws.dx.data(), grad + P.tok_embd);
  return loss;
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
