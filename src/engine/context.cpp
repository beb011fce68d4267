// Whole-window scoring and incremental decoding on top of forward_layers.
#include "longrope/context.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/forward.h"
#include "longrope/error.h"
#include "longrope/kernels.h"

namespace longrope {

namespace {
thread_local PhaseStats g_last_stats;

int64_t model_ctx(const Model& m) {
  return m.hp().n_ctx_train;
}

RopeTables tables_for(const Model& m, const RopeScaling& s, int64_t len) {
  return s.tables(len, m.hp().n_rot, m.hp().rope_base, model_ctx(m));
}

void set_threads(int n) {
  if (n > 0) omp_set_num_threads(n);
}
}  // namespace

const PhaseStats& last_phase_stats() {
  return g_last_stats;
}

std::vector<double> score_window(const Model& model, std::span<const int32_t> tokens,
                                 const RopeScaling& scaling, const ScoreOptions& opts) {
  set_threads(opts.n_threads);
  const HParams& hp = model.hp();
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n < 2) throw Error("a window needs at least 2 tokens to score, got " + std::to_string(n));
  const RopeTables tables = tables_for(model, scaling, n);
  const int64_t kv_elems = int64_t(hp.n_head_kv) * n * hp.head_dim;
  std::unique_ptr<float[]> kbuf(new float[kv_elems]), vbuf(new float[kv_elems]);
  engine::KvView kv{kbuf.get(), vbuf.get(), n, 0};
  engine::Workspace ws;
  PhaseStats st;
  engine::forward_layers(model, tokens.data(), n, 0, tables, kv, ws, &st);

  double t0 = omp_get_wtime();
  const int64_t d = hp.n_embd;
  kernels::rmsnorm(ws.x.data(), model.output_norm().data, ws.h.data(), n, d, hp.norm_eps);
  const Matrix& W = model.output();
  const int64_t chunk = std::max<int64_t>(1, opts.lm_head_chunk);
  std::vector<float> logits(static_cast<size_t>(std::min(chunk, n) * W.rows));
  std::vector<double> nll(static_cast<size_t>(n - 1));
  for (int64_t r0 = 0; r0 < n - 1; r0 += chunk) {
    const int64_t rows = std::min(chunk, n - 1 - r0);
    kernels::gemm_nt(rows, W.rows, W.cols, ws.h.data() + r0 * d, d, W.data, W.cols, logits.data(),
                     W.rows, 0.0f);
    kernels::nll_rows(logits.data(), rows, W.rows, tokens.data() + r0 + 1, nll.data() + r0);
  }
  st.lm_head_seconds += omp_get_wtime() - t0;
  st.lm_head_flops += 2.0 * double(n - 1) * double(W.rows) * double(W.cols);
  g_last_stats = st;
  return nll;
}

struct Context::Impl {
  std::unique_ptr<float[]> k, v;
  engine::KvView kv;
  engine::Workspace ws;
  RopeTables tables;  // tables the cached keys were rotated with
  bool have_tables = false;
};

Context::Context(std::shared_ptr<const Model> model, ContextParams params, RopeScaling scaling)
    : impl_(std::make_unique<Impl>()),
      model_(std::move(model)),
      scaling_(std::move(scaling)),
      policy_(params.switch_policy) {
  const HParams& hp = model_->hp();
  n_ctx_ = params.n_ctx > 0 ? params.n_ctx : hp.n_ctx_train;
  if (n_ctx_ > (int64_t(1) << 24))
    throw Error("context of " + std::to_string(n_ctx_) + " tokens is too large (expected <= 2^24)");
  set_threads(params.n_threads);
  scaling_.validate(hp.n_rot);
  const int64_t per_layer = int64_t(hp.n_head_kv) * n_ctx_ * hp.head_dim;
  const int64_t total = per_layer * hp.n_layer;
  impl_->k.reset(new float[total]);
  impl_->v.reset(new float[total]);
  impl_->kv = engine::KvView{impl_->k.get(), impl_->v.get(), n_ctx_, per_layer};
}

Context::~Context() = default;

void Context::reset() {
  n_past_ = 0;
  history_.clear();
  impl_->have_tables = false;
}

void Context::set_scaling(const RopeScaling& scaling) {
  scaling.validate(model_->hp().n_rot);
  scaling_ = scaling;
  // Cached keys are re-rotated lazily by the next decode (which knows the new length).
}

namespace {

// Re-rotates cached keys at positions [0, n) from tables `from` to tables `to`:
// k' = (a_to/a_from) * R(p*w_to - p*w_from) k, per position and pair.
void rerotate(const HParams& hp, const engine::KvView& kv, int64_t n, const RopeTables& from,
              const RopeTables& to) {
  const int64_t half = hp.n_rot / 2, hd = hp.head_dim;
  std::vector<float> c(static_cast<size_t>(n * half)), s(static_cast<size_t>(n * half));
  for (int64_t p = 0; p < n; ++p) {
    const bool sf = p < from.n_hat, st = p < to.n_hat;
    const double af = sf ? 1.0 : from.attn_factor, at = st ? 1.0 : to.attn_factor;
    for (int64_t j = 0; j < half; ++j) {
      const double wf = sf ? from.inv_freq_orig[j] : from.inv_freq[j];
      const double wt = st ? to.inv_freq_orig[j] : to.inv_freq[j];
      const double ang = double(p) * wt - double(p) * wf;
      c[p * half + j] = static_cast<float>(std::cos(ang) * at / af);
      s[p * half + j] = static_cast<float>(std::sin(ang) * at / af);
    }
  }
  // One parallel region over (layer, kv head); rope_apply's own region then runs serially.
#pragma omp parallel for collapse(2) schedule(static)
  for (int l = 0; l < hp.n_layer; ++l)
    for (int h = 0; h < hp.n_head_kv; ++h) {
      float* base = kv.k + l * kv.layer_stride + int64_t(h) * kv.cap * hd;
      kernels::rope_apply(base, n, hd, 1, int(hd), hp.n_rot, c.data(), s.data());
    }
}

}  // namespace

void Context::advance(std::span<const int32_t> tokens) {
  const HParams& hp = model_->hp();
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) throw Error("decode needs at least one token");
  if (n_past_ + n > n_ctx_)
    throw Error("context full: " + std::to_string(n_past_ + n) +
                " tokens exceed the context size " + std::to_string(n_ctx_) +
                " (raise -c/--ctx-size)");
  RopeTables tables = (policy_ == SwitchPolicy::kKeep && impl_->have_tables)
                          ? impl_->tables
                          : tables_for(*model_, scaling_, n_past_ + n);
  std::span<const int32_t> run = tokens;
  int64_t p0 = n_past_;
  if (impl_->have_tables && n_past_ > 0 && !(tables == impl_->tables)) {
    const double t0 = omp_get_wtime();
    switch_stats_.switches++;
    switch_stats_.positions += n_past_;
    if (policy_ == SwitchPolicy::kRerotate) {
      rerotate(hp, impl_->kv, n_past_, impl_->tables, tables);
      switch_stats_.seconds += omp_get_wtime() - t0;
    } else {
      // Exact: the cached tokens go through the model again, together with the new ones.
      p0 = 0;
      history_.insert(history_.end(), tokens.begin(), tokens.end());
      run = std::span<const int32_t>(history_);
    }
  } else if (policy_ == SwitchPolicy::kRecompute) {
    history_.insert(history_.end(), tokens.begin(), tokens.end());
  }
  impl_->tables = std::move(tables);
  impl_->have_tables = true;
  const double t0 = omp_get_wtime();
  engine::forward_layers(*model_, run.data(), int64_t(run.size()), p0, impl_->tables, impl_->kv,
                         impl_->ws, nullptr);
  if (p0 == 0 && n_past_ > 0) switch_stats_.seconds += omp_get_wtime() - t0;
  // Only the rows of the new tokens matter to the caller: move them to the front.
  if (int64_t(run.size()) != n) {
    const int64_t d = hp.n_embd;
    std::memmove(impl_->ws.x.data(), impl_->ws.x.data() + (int64_t(run.size()) - n) * d,
                 sizeof(float) * n * d);
  }
  n_past_ += n;
}

std::vector<float> Context::decode_all_logits(std::span<const int32_t> tokens) {
  advance(tokens);
  const HParams& hp = model_->hp();
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t d = hp.n_embd;
  kernels::rmsnorm(impl_->ws.x.data(), model_->output_norm().data, impl_->ws.h.data(), n, d,
                   hp.norm_eps);
  const Matrix& W = model_->output();
  std::vector<float> logits(static_cast<size_t>(n * W.rows));
  kernels::gemm_nt(n, W.rows, W.cols, impl_->ws.h.data(), d, W.data, W.cols, logits.data(), W.rows,
                   0.0f);
  return logits;
}

std::vector<float> Context::decode(std::span<const int32_t> tokens) {
  advance(tokens);
  const HParams& hp = model_->hp();
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t d = hp.n_embd;
  std::vector<float> h(static_cast<size_t>(d));
  kernels::rmsnorm(impl_->ws.x.data() + (n - 1) * d, model_->output_norm().data, h.data(), 1, d,
                   hp.norm_eps);
  const Matrix& W = model_->output();
  std::vector<float> logits(static_cast<size_t>(W.rows));
  kernels::gemm_nt(1, W.rows, W.cols, h.data(), d, W.data, W.cols, logits.data(), W.rows, 0.0f);
  return logits;
}

}  // namespace longrope
