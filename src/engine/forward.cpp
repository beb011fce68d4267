#include "engine/forward.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/layer.h"
#include "longrope/error.h"

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

std::string nonfinite_where(int at, int n_layer) {
  if (at == 0) return "the token embeddings";
  if (at > 0) return "layer " + std::to_string(at - 1) + " (of " + std::to_string(n_layer) + ")";
  return "the output norm or LM head (every layer's output is finite)";
}

int first_nonfinite_at(const Backend& be, const Model& model, const int32_t* tokens, int64_t n,
                       const RopeTables& tables) {
  const std::unique_ptr<KvStorage> kv = be.make_kv(model.hp(), n, 1);
  const std::unique_ptr<Workspace> ws = be.make_workspace();
  int at = -1;
  forward_layers(be, model, tokens, n, 0, tables, kv->view, *ws, nullptr, &at);
  return at;
}

void forward_layers(const Backend& be, const Model& model, const int32_t* tokens, int64_t n,
                    int64_t p0, const RopeTables& tables, const KvView& kv, Workspace& ws,
                    PhaseStats* stats, int* nonfinite_at,
                    const std::function<void(int, int)>& on_layer) {
  const HParams& hp = model.hp();
  const int64_t d = hp.n_embd, hd = hp.head_dim, H = hp.n_head, KV = hp.n_head_kv, ff = hp.n_ff;
  const int64_t qdim = H * hd, kvdim = KV * hd;
  if (p0 + n > kv.cap)
    throw Error("sequence of " + std::to_string(p0 + n) + " tokens exceeds the KV cache capacity " +
                std::to_string(kv.cap));
  if (static_cast<int64_t>(tables.inv_freq.size()) * 2 != hp.n_rot)
    throw Error("rotary tables have " + std::to_string(tables.inv_freq.size()) +
                " pairs, expected n_rot/2 = " + std::to_string(hp.n_rot / 2));
  be.reserve_workspace(ws, hp, n);
  PhaseStats local;
  PhaseStats& st = stats ? *stats : local;
  double t0 = omp_get_wtime();
  auto lap = [&](double& bucket) {
    const double t1 = omp_get_wtime();
    bucket += t1 - t0;
    t0 = t1;
  };
  be.embed(model.tok_embd(), tokens, n, ws.x);
  if (nonfinite_at) {
    *nonfinite_at = -1;
    if (!be.all_finite(ws.x, n * d)) {
      *nonfinite_at = 0;
      return;
    }
  }
  build_rope_cache(tables, p0, n, ws.cos_tab, ws.sin_tab);
  lap(st.other_seconds);

  const double mm_flops_per_tok = 2.0 * (d * qdim + 2 * d * kvdim + qdim * d + 3 * d * ff);
  const double att_pairs = static_cast<double>(n) * p0 + 0.5 * double(n) * double(n + 1);
  const AttentionCall att{ws.q, qdim,   ws.att,  qdim,    n,
                          p0,   int(H), int(KV), int(hd), 1.0f / std::sqrt(float(hd))};
  const BackendOps ops{be};
  const LayerDims D(hp, n);
  // In place: the layer's input, middle residual and output share ws.x, both norms ws.h, and the
  // SwiGLU overwrites ws.g.
  const LayerRows<float> rows{ws.h, ws.q, ws.k, ws.v, ws.att, ws.x, ws.h, ws.g, ws.u, ws.g};
  const auto phase = [&](Phase p) {
    lap(p == Phase::kMatmul      ? st.matmul_seconds
        : p == Phase::kAttention ? st.attention_seconds
                                 : st.other_seconds);
  };
  for (int l = 0; l < hp.n_layer; ++l) {
    const auto attend = [&](const float*, const float* k, const float* v, float*) {
      be.store_kv(kv, l, p0, n, int(KV), int(hd), k, v);
      be.attention(kv, l, att);
    };
    layer_forward(ops, layer_params(model.layers()[size_t(l)]), D, ws.x, ws.x, rows,
                  ws.cos_tab.data(), ws.sin_tab.data(), attend, phase);
    st.matmul_flops += mm_flops_per_tok * double(n);
    st.attention_flops += 4.0 * double(hd) * double(H) * att_pairs;
    if (nonfinite_at && !be.all_finite(ws.x, n * d)) {
      *nonfinite_at = l + 1;
      return;
    }
    if (on_layer) on_layer(l + 1, hp.n_layer);
  }
}

namespace {
// Vocabulary panels of 2048 rows, each decoded once per call.
constexpr int64_t kVocabPanel = 2048;

// The rows' logits streamed over the vocabulary: for each panel (decoded once) and each chunk of
// `chunk` rows, body(v0, pv, r0, rows, panel). Checks the targets first.
template <class Body>
void stream_vocabulary(const Backend& be, const Model& model, int64_t n, int64_t chunk,
                       const int32_t* target, Body body) {
  const WeightView& W = model.output();
  const int64_t V = W.rows;
  for (int64_t r = 0; r < n; ++r)
    if (target[r] < 0 || target[r] >= V)
      throw Error("target token id " + std::to_string(target[r]) + " out of range [0, " +
                  std::to_string(V) + ")");
  const std::unique_ptr<HeadPanel> panel = be.make_head_panel();
  for (int64_t v0 = 0; v0 < V; v0 += kVocabPanel) {
    const int64_t pv = std::min(kVocabPanel, V - v0);
    be.decode_head_panel(W, v0, pv, *panel);
    for (int64_t r0 = 0; r0 < n; r0 += chunk) body(v0, pv, r0, std::min(chunk, n - r0), *panel);
  }
}
}  // namespace

void lm_head_nll(const Backend& be, const Model& model, const float* h, int64_t n,
                 const int32_t* target, double* nll) {
  // Row chunks of 1024: an 8 MB logits block, large enough for an efficient GEMM, independent of
  // n and of the vocabulary.
  const int64_t chunk = 1024;
  std::vector<float> m(static_cast<size_t>(n), -std::numeric_limits<float>::infinity());
  std::vector<double> s(static_cast<size_t>(n), 0.0);
  std::vector<float> tl(static_cast<size_t>(n), 0.0f);
  std::vector<float> logits(
      static_cast<size_t>(std::min(chunk, n) * std::min(kVocabPanel, model.output().rows)));
  const std::unique_ptr<HeadRows> rows_h = be.head_rows(h, n, model.output().cols);
  stream_vocabulary(be, model, n, chunk, target,
                    [&](int64_t v0, int64_t pv, int64_t r0, int64_t rows, const HeadPanel& p) {
                      be.head_logits(*rows_h, r0, rows, p, pv, logits.data());
                      be.lse_update_rows(logits.data(), rows, pv, v0, target + r0, m.data() + r0,
                                         s.data() + r0, tl.data() + r0);
                    });
  for (int64_t r = 0; r < n; ++r) nll[r] = double(m[r]) + std::log(s[r]) - double(tl[r]);
}

void lm_head_kl(const Backend& be, const Model& model, const float* h_ref, const float* h,
                int64_t n, const int32_t* target, kernels::KlRow* out) {
  const int64_t chunk = 512;  // two logits blocks of 4 MB
  std::vector<kernels::KlState> st(static_cast<size_t>(n));
  const size_t block =
      static_cast<size_t>(std::min(chunk, n) * std::min(kVocabPanel, model.output().rows));
  std::vector<float> la(block), lb(block);
  const int64_t d = model.output().cols;
  const std::unique_ptr<HeadRows> ref = be.head_rows(h_ref, n, d), cur = be.head_rows(h, n, d);
  stream_vocabulary(be, model, n, chunk, target,
                    [&](int64_t v0, int64_t pv, int64_t r0, int64_t rows, const HeadPanel& p) {
                      be.head_logits(*ref, r0, rows, p, pv, la.data());
                      be.head_logits(*cur, r0, rows, p, pv, lb.data());
                      be.kl_update_rows(la.data(), lb.data(), rows, pv, v0, target + r0,
                                        st.data() + r0);
                    });
  be.kl_finish_rows(st.data(), n, out);
}

}  // namespace longrope::engine
