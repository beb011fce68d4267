#include "engine/forward.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/kernels/panel.h"
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

void gemm(const float* A, int64_t n, const WeightView& W, float* C, float beta,
          kernels::Compute c) {
  kernels::matmul_w(n, A, W.cols, W, C, W.rows, beta, c);
}

// Adds a bias row (cols values) to each of n rows; nothing when the layer has none.
void add_bias(float* x, int64_t n, int64_t cols, const float* bias) {
  if (!bias) return;
#pragma omp parallel for schedule(static) if (n * cols > 65536)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < cols; ++j) x[i * cols + j] += bias[j];
}

void resize(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

// Copies the new keys/values (n rows of KV heads) into layer l of the cache at positions p0..,
// converting to bf16 for a bf16 cache.
void store_kv(const KvView& kv, int l, int64_t p0, int64_t n, int64_t KV, int64_t hd,
              const Workspace& ws) {
  const int64_t kvdim = KV * hd;
#pragma omp parallel for collapse(2) schedule(static) if (n * kvdim > 65536)
  for (int64_t h = 0; h < KV; ++h)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t off = l * kv.layer_stride + (h * kv.cap + p0 + i) * hd;
      const float* ks = ws.k.data() + i * kvdim + h * hd;
      const float* vs = ws.v.data() + i * kvdim + h * hd;
      if (kv.compute == kernels::Compute::kBF16) {
        kernels::f32_to_bf16(ks, kv.k16 + off, hd);
        kernels::f32_to_bf16(vs, kv.v16 + off, hd);
      } else {
        std::memcpy(kv.k + off, ks, sizeof(float) * hd);
        std::memcpy(kv.v + off, vs, sizeof(float) * hd);
      }
    }
}

}  // namespace

namespace {
bool all_finite(const std::vector<float>& v, int64_t count) {
  bool ok = true;
#pragma omp parallel for reduction(&& : ok) schedule(static)
  for (int64_t i = 0; i < count; ++i) ok = ok && std::isfinite(v[static_cast<size_t>(i)]);
  return ok;
}
}  // namespace

std::string nonfinite_where(int at, int n_layer) {
  if (at == 0) return "the token embeddings";
  if (at > 0) return "layer " + std::to_string(at - 1) + " (of " + std::to_string(n_layer) + ")";
  return "the output norm or LM head (every layer's output is finite)";
}

int first_nonfinite_at(const Model& model, const int32_t* tokens, int64_t n,
                       const RopeTables& tables, kernels::Compute compute) {
  KvStorage kv(model.hp(), n, 1, compute);
  Workspace ws;
  int at = -1;
  forward_layers(model, tokens, n, 0, tables, kv.view, ws, nullptr, &at);
  return at;
}

void forward_layers(const Model& model, const int32_t* tokens, int64_t n, int64_t p0,
                    const RopeTables& tables, const KvView& kv, Workspace& ws, PhaseStats* stats,
                    int* nonfinite_at, const std::function<void(int, int)>& on_layer) {
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
  const kernels::Compute cm = kv.compute;
  PhaseStats local;
  PhaseStats& st = stats ? *stats : local;
  double t0 = omp_get_wtime();
  auto lap = [&](double& bucket) {
    const double t1 = omp_get_wtime();
    bucket += t1 - t0;
    t0 = t1;
  };

  for (int64_t i = 0; i < n; ++i) model.embed(tokens[i], ws.x.data() + i * d);
  if (nonfinite_at) {
    *nonfinite_at = -1;
    if (!all_finite(ws.x, n * d)) {
      *nonfinite_at = 0;
      return;
    }
  }
  build_rope_cache(tables, p0, n, ws.cos_tab, ws.sin_tab);
  lap(st.other_seconds);

  const double mm_flops_per_tok = 2.0 * (d * qdim + 2 * d * kvdim + qdim * d + 3 * d * ff);
  const double att_pairs = static_cast<double>(n) * p0 + 0.5 * double(n) * double(n + 1);
  for (int l = 0; l < hp.n_layer; ++l) {
    const LayerWeights& L = model.layers()[l];
    kernels::rmsnorm(ws.x.data(), L.attn_norm, ws.h.data(), n, d, hp.norm_eps);
    lap(st.other_seconds);
    gemm(ws.h.data(), n, L.wq, ws.q.data(), 0.0f, cm);
    gemm(ws.h.data(), n, L.wk, ws.k.data(), 0.0f, cm);
    gemm(ws.h.data(), n, L.wv, ws.v.data(), 0.0f, cm);
    add_bias(ws.q.data(), n, qdim, L.bq);
    add_bias(ws.k.data(), n, kvdim, L.bk);
    add_bias(ws.v.data(), n, kvdim, L.bv);
    lap(st.matmul_seconds);
    kernels::rope_apply(ws.q.data(), n, qdim, int(H), int(hd), hp.n_rot, ws.cos_tab.data(),
                        ws.sin_tab.data());
    kernels::rope_apply(ws.k.data(), n, kvdim, int(KV), int(hd), hp.n_rot, ws.cos_tab.data(),
                        ws.sin_tab.data());
    store_kv(kv, l, p0, n, KV, hd, ws);
    lap(st.other_seconds);
    const float scale = 1.0f / std::sqrt(float(hd));
    const int64_t off = l * kv.layer_stride;
    const auto args = [&]<class T>(const T* kc, const T* vc) {
      return kernels::AttentionArgsT<T>{ws.q.data(),   qdim,    kc,   vc, kv.cap,
                                        ws.att.data(), qdim,    n,    p0, int(H),
                                        int(KV),       int(hd), scale};
    };
    if (cm == kernels::Compute::kBF16)
      kernels::attention_bf16(args(kv.k16 + off, kv.v16 + off));
    else
      kernels::attention(args(kv.k + off, kv.v + off));
    lap(st.attention_seconds);
    gemm(ws.att.data(), n, L.wo, ws.x.data(), 1.0f, cm);
    add_bias(ws.x.data(), n, d, L.bo);
    lap(st.matmul_seconds);
    kernels::rmsnorm(ws.x.data(), L.ffn_norm, ws.h.data(), n, d, hp.norm_eps);
    lap(st.other_seconds);
    gemm(ws.h.data(), n, L.w_gate, ws.g.data(), 0.0f, cm);
    gemm(ws.h.data(), n, L.w_up, ws.u.data(), 0.0f, cm);
    lap(st.matmul_seconds);
    kernels::swiglu(ws.g.data(), ws.u.data(), n * ff);
    lap(st.other_seconds);
    gemm(ws.g.data(), n, L.w_down, ws.x.data(), 1.0f, cm);
    lap(st.matmul_seconds);
    st.matmul_flops += mm_flops_per_tok * double(n);
    st.attention_flops += 4.0 * double(hd) * double(H) * att_pairs;
    if (nonfinite_at && !all_finite(ws.x, n * d)) {
      *nonfinite_at = l + 1;
      return;
    }
    if (on_layer) on_layer(l + 1, hp.n_layer);
  }
}

KvStorage::KvStorage(const HParams& hp, int64_t cap, int layers, kernels::Compute compute) {
  kernels::require_compute(compute);
  const int64_t per_layer = int64_t(hp.n_head_kv) * cap * hp.head_dim;
  const int64_t total = per_layer * layers;
  if (compute == kernels::Compute::kBF16) {
    k16.reset(new uint16_t[total]);
    v16.reset(new uint16_t[total]);
  } else {
    k.reset(new float[total]);
    v.reset(new float[total]);
  }
  view = KvView{k.get(), v.get(), k16.get(), v16.get(), cap, layers > 1 ? per_layer : 0, compute};
}

namespace {
// Vocabulary panels of 2048 rows, each decoded once per call.
constexpr int64_t kVocabPanel = 2048;

// The rows' logits streamed over the vocabulary: for each panel (decoded once) and each chunk of
// `chunk` rows, body(v0, pv, r0, rows, panel). Checks the targets first.
template <class Body>
void stream_vocabulary(const Model& model, kernels::Compute compute, int64_t n, int64_t chunk,
                       const int32_t* target, Body body) {
  const WeightView& W = model.output();
  const int64_t V = W.rows;
  for (int64_t r = 0; r < n; ++r)
    if (target[r] < 0 || target[r] >= V)
      throw Error("target token id " + std::to_string(target[r]) + " out of range [0, " +
                  std::to_string(V) + ")");
  kernels::PanelBuffer pb;
  for (int64_t v0 = 0; v0 < V; v0 += kVocabPanel) {
    const int64_t pv = std::min(kVocabPanel, V - v0);
    kernels::decode_panel(W, v0, pv, compute, pb);
    for (int64_t r0 = 0; r0 < n; r0 += chunk) body(v0, pv, r0, std::min(chunk, n - r0), pb);
  }
}

// Final states as the LM head's GEMM reads them: FP32, or a bf16 copy made once.
struct HeadRows {
  const float* h;
  int64_t d;
  kernels::Compute compute;
  kernels::RowsBf16 b16;
  HeadRows(const float* h_, int64_t n, int64_t d_, kernels::Compute c) : h(h_), d(d_), compute(c) {
    if (compute == kernels::Compute::kBF16) kernels::rows_to_bf16(h, n, d, d, b16);
  }
  // Logits of rows [r0, r0 + rows) against a decoded panel of pv vocabulary rows.
  void logits(int64_t r0, int64_t rows, int64_t pv, const kernels::PanelBuffer& pb,
              float* out) const {
    if (compute == kernels::Compute::kBF16)
      kernels::gemm_bf16_nt(rows, pv, d, b16.data.data() + r0 * d, d, pb.b16.data(), d, out, pv,
                            0.0f);
    else
      kernels::gemm_nt(rows, pv, d, h + r0 * d, d, pb.f32.data(), d, out, pv, 0.0f);
  }
};
}  // namespace

void lm_head_nll(const Model& model, const float* h, int64_t n, const int32_t* target,
                 kernels::Compute compute, double* nll) {
  // Row chunks of 1024: an 8 MB logits block, large enough for an efficient GEMM, independent of
  // n and of the vocabulary.
  const int64_t chunk = 1024;
  std::vector<float> m(static_cast<size_t>(n), -std::numeric_limits<float>::infinity());
  std::vector<double> s(static_cast<size_t>(n), 0.0);
  std::vector<float> tl(static_cast<size_t>(n), 0.0f);
  std::vector<float> logits(
      static_cast<size_t>(std::min(chunk, n) * std::min(kVocabPanel, model.output().rows)));
  const HeadRows rows_h(h, n, model.output().cols, compute);
  stream_vocabulary(
      model, compute, n, chunk, target,
      [&](int64_t v0, int64_t pv, int64_t r0, int64_t rows, const kernels::PanelBuffer& pb) {
        rows_h.logits(r0, rows, pv, pb, logits.data());
        kernels::lse_update_rows(logits.data(), rows, pv, v0, target + r0, m.data() + r0,
                                 s.data() + r0, tl.data() + r0);
      });
  for (int64_t r = 0; r < n; ++r) nll[r] = double(m[r]) + std::log(s[r]) - double(tl[r]);
}

void lm_head_kl(const Model& model, const float* h_ref, const float* h, int64_t n,
                const int32_t* target, kernels::Compute compute, kernels::KlRow* out) {
  const int64_t chunk = 512;  // two logits blocks of 4 MB
  std::vector<kernels::KlState> st(static_cast<size_t>(n));
  const size_t block =
      static_cast<size_t>(std::min(chunk, n) * std::min(kVocabPanel, model.output().rows));
  std::vector<float> la(block), lb(block);
  const int64_t d = model.output().cols;
  const HeadRows ref(h_ref, n, d, compute), cur(h, n, d, compute);
  stream_vocabulary(
      model, compute, n, chunk, target,
      [&](int64_t v0, int64_t pv, int64_t r0, int64_t rows, const kernels::PanelBuffer& pb) {
        ref.logits(r0, rows, pv, pb, la.data());
        cur.logits(r0, rows, pv, pb, lb.data());
        kernels::kl_update_rows(la.data(), lb.data(), rows, pv, v0, target + r0, st.data() + r0);
      });
  for (int64_t r = 0; r < n; ++r) out[r] = kernels::kl_finish(st[r]);
}

}  // namespace longrope::engine
