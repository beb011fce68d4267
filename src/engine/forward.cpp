#include "engine/forward.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "longrope/error.h"
#include "longrope/kernels.h"

namespace longrope::engine {

void build_rope_cache(const RopeTables& t, int64_t p0, int64_t n, std::vector<float>& cos_tab,
                      std::vector<float>& sin_tab) {
  const int64_t half = static_cast<int64_t>(t.inv_freq.size());
  cos_tab.resize(static_cast<size_t>(n * half));
  sin_tab.resize(static_cast<size_t>(n * half));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = p0 + i;
    const bool start = p < t.n_hat;
    const std::vector<double>& inv = start ? t.inv_freq_orig : t.inv_freq;
    const double af = start ? 1.0 : t.attn_factor;
    for (int64_t j = 0; j < half; ++j) {
      const double ang = static_cast<double>(p) * inv[j];
      cos_tab[i * half + j] = static_cast<float>(std::cos(ang) * af);
      sin_tab[i * half + j] = static_cast<float>(std::sin(ang) * af);
    }
  }
}

namespace {

void gemm(const float* A, int64_t n, const Matrix& W, float* C, float beta) {
  kernels::gemm_nt(n, W.rows, W.cols, A, W.cols, W.data, W.cols, C, W.rows, beta);
}

void resize(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

}  // namespace

void forward_layers(const Model& model, const int32_t* tokens, int64_t n, int64_t p0,
                    const RopeTables& tables, const KvView& kv, Workspace& ws, PhaseStats* stats) {
  const HParams& hp = model.hp();
  const int64_t d = hp.n_embd, hd = hp.head_dim, H = hp.n_head, KV = hp.n_head_kv, ff = hp.n_ff;
  const int64_t qdim = H * hd, kvdim = KV * hd;
  if (p0 + n > kv.cap)
    throw Error("sequence of " + std::to_string(p0 + n) + " tokens exceeds the KV cache capacity " +
                std::to_string(kv.cap));
  if (static_cast<int64_t>(tables.inv_freq.size()) * 2 != hp.n_rot)
    throw Error("rotary tables have " + std::to_string(tables.inv_freq.size()) +
                " pairs, expected n_rot/2 = " + std::to_string(hp.n_rot / 2));
  resize(ws.x, n * d);
  resize(ws.h, n * d);
  resize(ws.q, n * qdim);
  resize(ws.k, n * kvdim);
  resize(ws.v, n * kvdim);
  resize(ws.att, n * qdim);
  resize(ws.g, n * ff);
  resize(ws.u, n * ff);
  PhaseStats local;
  PhaseStats& st = stats ? *stats : local;
  double t0 = omp_get_wtime();
  auto lap = [&](double& bucket) {
    const double t1 = omp_get_wtime();
    bucket += t1 - t0;
    t0 = t1;
  };

  const Matrix& E = model.tok_embd();
  for (int64_t i = 0; i < n; ++i) {
    const int32_t tok = tokens[i];
    if (tok < 0 || tok >= E.rows)
      throw Error("token id " + std::to_string(tok) + " out of range [0, " +
                  std::to_string(E.rows) + ")");
    std::memcpy(ws.x.data() + i * d, E.data + int64_t(tok) * d, sizeof(float) * d);
  }
  build_rope_cache(tables, p0, n, ws.cos_tab, ws.sin_tab);
  lap(st.other_seconds);

  const double mm_flops_per_tok = 2.0 * (d * qdim + 2 * d * kvdim + qdim * d + 3 * d * ff);
  const double att_pairs = static_cast<double>(n) * p0 + 0.5 * double(n) * double(n + 1);
  for (int l = 0; l < hp.n_layer; ++l) {
    const LayerWeights& L = model.layers()[l];
    float* kc = kv.k + l * kv.layer_stride;
    float* vc = kv.v + l * kv.layer_stride;

    kernels::rmsnorm(ws.x.data(), L.attn_norm.data, ws.h.data(), n, d, hp.norm_eps);
    lap(st.other_seconds);
    gemm(ws.h.data(), n, L.wq, ws.q.data(), 0.0f);
    gemm(ws.h.data(), n, L.wk, ws.k.data(), 0.0f);
    gemm(ws.h.data(), n, L.wv, ws.v.data(), 0.0f);
    lap(st.matmul_seconds);
    kernels::rope_apply(ws.q.data(), n, qdim, int(H), int(hd), hp.n_rot, ws.cos_tab.data(),
                        ws.sin_tab.data());
    kernels::rope_apply(ws.k.data(), n, kvdim, int(KV), int(hd), hp.n_rot, ws.cos_tab.data(),
                        ws.sin_tab.data());
    for (int64_t h = 0; h < KV; ++h)
      for (int64_t i = 0; i < n; ++i) {
        std::memcpy(kc + (h * kv.cap + p0 + i) * hd, ws.k.data() + i * kvdim + h * hd,
                    sizeof(float) * hd);
        std::memcpy(vc + (h * kv.cap + p0 + i) * hd, ws.v.data() + i * kvdim + h * hd,
                    sizeof(float) * hd);
      }
    lap(st.other_seconds);
    kernels::AttentionArgs args{ws.q.data(),
                                qdim,
                                kc,
                                vc,
                                kv.cap,
                                ws.att.data(),
                                qdim,
                                n,
                                p0,
                                int(H),
                                int(KV),
                                int(hd),
                                1.0f / std::sqrt(float(hd))};
    kernels::attention(args);
    lap(st.attention_seconds);
    gemm(ws.att.data(), n, L.wo, ws.x.data(), 1.0f);
    lap(st.matmul_seconds);
    kernels::rmsnorm(ws.x.data(), L.ffn_norm.data, ws.h.data(), n, d, hp.norm_eps);
    lap(st.other_seconds);
    gemm(ws.h.data(), n, L.w_gate, ws.g.data(), 0.0f);
    gemm(ws.h.data(), n, L.w_up, ws.u.data(), 0.0f);
    lap(st.matmul_seconds);
    kernels::swiglu(ws.g.data(), ws.u.data(), n * ff);
    lap(st.other_seconds);
    gemm(ws.g.data(), n, L.w_down, ws.x.data(), 1.0f);
    lap(st.matmul_seconds);
    st.matmul_flops += mm_flops_per_tok * double(n);
    st.attention_flops += 4.0 * double(hd) * double(H) * att_pairs;
  }
}

}  // namespace longrope::engine
