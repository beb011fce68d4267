// Whole-window scoring and incremental decoding on top of forward_layers.
#include "longrope/context.h"

#include <fmt/core.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "engine/forward.h"
#include "longrope/backend.h"
#include "longrope/error.h"

namespace longrope {

namespace {
thread_local PhaseStats g_last_stats;

void set_threads(int n) {
  if (n > 0) omp_set_num_threads(n);
}
}  // namespace

RopeTables rope_tables(const Model& model, const RopeScaling& scaling, int64_t len) {
  return scaling.tables(len, model.hp().n_rot, model.hp().rope_base, model.hp().n_ctx_train);
}

const PhaseStats& last_phase_stats() {
  return g_last_stats;
}

namespace {
// The scored positions of a window (opts.positions, or every i = 0..n-2), checked.
std::vector<int64_t> scored_positions(const ScoreOptions& opts, int64_t n) {
  if (n < 2) throw Error("a window needs at least 2 tokens to score, got " + std::to_string(n));
  std::vector<int64_t> pos = opts.positions;
  if (pos.empty()) {
    pos.resize(static_cast<size_t>(n - 1));
    for (int64_t i = 0; i < n - 1; ++i) pos[i] = i;
  }
  for (int64_t p : pos)
    if (p < 0 || p >= n - 1)
      throw Error("scored position " + std::to_string(p) + " out of range [0, " +
                  std::to_string(n - 1) + ") for a window of " + std::to_string(n) + " tokens");
  return pos;
}

// The final-normed rows of `pos` (positions relative to the rows of x) gathered densely.
std::vector<float> gather_normed(const Backend& be, const Model& model, const float* x,
                                 const std::vector<int64_t>& pos) {
  const HParams& hp = model.hp();
  const int64_t d = hp.n_embd, m = static_cast<int64_t>(pos.size());
  std::vector<float> h(static_cast<size_t>(m * d));
  be.rmsnorm_rows(x, pos.data(), m, model.output_norm(), h.data(), d, hp.norm_eps);
  return h;
}

// Runs the window through every layer and gathers the final-normed rows of `pos` densely.
std::vector<float> normed_rows(const Backend& be, const Model& model,
                               std::span<const int32_t> tokens, const RopeTables& tables,
                               const ScoreOptions& opts, const std::vector<int64_t>& pos,
                               PhaseStats& st) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const std::unique_ptr<KvStorage> kv = be.make_kv(model.hp(), n, 1);
  const std::unique_ptr<Workspace> ws = be.make_workspace();
  engine::forward_layers(be, model, tokens.data(), n, 0, tables, kv->view, *ws, &st, nullptr,
                         opts.on_layer);
  return gather_normed(be, model, ws->x, pos);
}

// One line naming where a non-finite loss first appears (a checked pass of the prefix).
void check_finite_losses(const Backend& be, const Model& model, std::span<const int32_t> tokens,
                         const RopeTables& tables, const std::vector<int64_t>& pos,
                         const std::vector<double>& nll) {
  for (size_t r = 0; r < nll.size(); ++r) {
    if (std::isfinite(nll[r])) continue;
    const int at = engine::first_nonfinite_at(be, model, tokens.data(), pos[r] + 1, tables);
    throw Error(fmt::format(
        "the loss of token {} of {} is {} (non-finite); the first non-finite values appear in {} "
        "(expected finite weights and RoPE tables: check the model file)",
        pos[r] + 1, tokens.size(), nll[r], engine::nonfinite_where(at, model.hp().n_layer)));
  }
}

std::vector<int32_t> targets_of(std::span<const int32_t> tokens, const std::vector<int64_t>& pos) {
  std::vector<int32_t> target(pos.size());
  for (size_t r = 0; r < pos.size(); ++r) target[r] = tokens[pos[r] + 1];
  return target;
}

// The NLLs of the rows h (final-normed, one per position of `pos`) of the window `tokens`.
std::vector<double> head_nll(const Backend& be, const Model& model, std::span<const int32_t> tokens,
                             const RopeTables& tables, const std::vector<int64_t>& pos,
                             const std::vector<float>& h, PhaseStats& st) {
  const double t0 = omp_get_wtime();
  const int64_t m = static_cast<int64_t>(pos.size());
  const std::vector<int32_t> target = targets_of(tokens, pos);
  std::vector<double> nll(static_cast<size_t>(m));
  engine::lm_head_nll(be, model, h.data(), m, target.data(), nll.data());
  check_finite_losses(be, model, tokens, tables, pos, nll);
  st.lm_head_seconds += omp_get_wtime() - t0;
  st.lm_head_flops += 2.0 * double(m) * double(model.output().rows) * double(model.hp().n_embd);
  return nll;
}
}  // namespace

std::vector<double> score_window(const Model& model, std::span<const int32_t> tokens,
                                 const RopeScaling& scaling, const ScoreOptions& opts) {
  set_threads(opts.n_threads);
  const int64_t n = static_cast<int64_t>(tokens.size());
  const std::vector<int64_t> pos = scored_positions(opts, n);
  const RopeTables tables = rope_tables(model, scaling, n);
  const std::shared_ptr<const Backend> be = backend_or_cpu(opts.backend, opts.compute);
  PhaseStats st;
  const std::vector<float> h = normed_rows(*be, model, tokens, tables, opts, pos, st);
  std::vector<double> nll = head_nll(*be, model, tokens, tables, pos, h, st);
  g_last_stats = st;
  return nll;
}

std::vector<double> score_window_staged(
    const Model& model, std::span<const int32_t> tokens, const RopeScaling& scaling,
    const ScoreOptions& opts, int64_t prefix,
    const std::function<bool(const std::vector<double>&)>& go_on) {
  set_threads(opts.n_threads);
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (!opts.positions.empty())
    throw Error("a window scored in two steps scores every position (expected no positions list)");
  if (prefix < 1 || prefix >= n - 1)
    throw Error(fmt::format("first step of {} tokens for a window of {} (expected 1 to {})", prefix,
                            n, n - 2));
  // The tables of the whole window in both steps: the first step is the start of the same
  // computation, not a shorter window.
  const RopeTables tables = rope_tables(model, scaling, n);
  const HParams& hp = model.hp();
  const std::shared_ptr<const Backend> be = backend_or_cpu(opts.backend, opts.compute);
  const std::unique_ptr<KvStorage> kv = be->make_kv(hp, n, hp.n_layer);  // every layer's K, V
  const std::unique_ptr<Workspace> ws = be->make_workspace();
  PhaseStats st;
  std::vector<double> nll;
  nll.reserve(static_cast<size_t>(n - 1));
  // Positions [p0, p0 + len) through every layer, then the NLLs of those that have a next token.
  auto step = [&](int64_t p0, int64_t len) {
    engine::forward_layers(*be, model, tokens.data() + p0, len, p0, tables, kv->view, *ws, &st,
                           nullptr, opts.on_layer);
    const int64_t m = std::min(len, n - 1 - p0);
    std::vector<int64_t> rel(static_cast<size_t>(m)), pos(static_cast<size_t>(m));
    for (int64_t r = 0; r < m; ++r) {
      rel[r] = r;
      pos[r] = p0 + r;
    }
    const std::vector<double> part =
        head_nll(*be, model, tokens, tables, pos, gather_normed(*be, model, ws->x, rel), st);
    nll.insert(nll.end(), part.begin(), part.end());
  };
  step(0, prefix);
  if (go_on(nll)) step(prefix, n - prefix);
  g_last_stats = st;
  return nll;
}

std::vector<float> window_states(const Model& model, std::span<const int32_t> tokens,
                                 const RopeScaling& scaling, const ScoreOptions& opts) {
  set_threads(opts.n_threads);
  const int64_t n = static_cast<int64_t>(tokens.size());
  const std::vector<int64_t> pos = scored_positions(opts, n);
  PhaseStats st;
  return normed_rows(*backend_or_cpu(opts.backend, opts.compute), model, tokens,
                     rope_tables(model, scaling, n), opts, pos, st);
}

WindowKl score_window_kl(const Model& model, std::span<const int32_t> tokens,
                         const RopeScaling& scaling, const std::vector<float>& reference_states,
                         const ScoreOptions& opts) {
  set_threads(opts.n_threads);
  const int64_t n = static_cast<int64_t>(tokens.size());
  const std::vector<int64_t> pos = scored_positions(opts, n);
  const int64_t m = static_cast<int64_t>(pos.size()), d = model.hp().n_embd;
  if (static_cast<int64_t>(reference_states.size()) != m * d)
    throw Error(fmt::format("the reference states hold {} values, expected {} positions x {}",
                            reference_states.size(), m, d));
  const RopeTables tables = rope_tables(model, scaling, n);
  const std::shared_ptr<const Backend> be = backend_or_cpu(opts.backend, opts.compute);
  PhaseStats st;
  const std::vector<float> h = normed_rows(*be, model, tokens, tables, opts, pos, st);
  const std::vector<int32_t> target = targets_of(tokens, pos);
  std::vector<kernels::KlRow> rows(static_cast<size_t>(m));
  engine::lm_head_kl(*be, model, reference_states.data(), h.data(), m, target.data(), rows.data());
  WindowKl out;
  out.nll.resize(size_t(m));
  out.kl.resize(size_t(m));
  out.same_top.resize(size_t(m));
  for (int64_t r = 0; r < m; ++r) {
    out.nll[r] = rows[r].nll;
    out.kl[r] = rows[r].kl;
    out.same_top[r] = rows[r].same_top ? 1 : 0;
  }
  check_finite_losses(*be, model, tokens, tables, pos, out.nll);
  return out;
}

struct Context::Impl {
  std::shared_ptr<const Backend> backend;
  std::unique_ptr<KvStorage> kv;
  std::unique_ptr<Workspace> ws;
  int64_t x_row0 = 0;  // the rows of ws->x that hold the tokens of the last advance start here
  RopeTables tables;   // tables the cached keys were rotated with
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
  impl_->backend = backend_or_cpu(std::move(params.backend), params.compute);
  impl_->kv = impl_->backend->make_kv(hp, n_ctx_, hp.n_layer);
  impl_->ws = impl_->backend->make_workspace();
}

Context::~Context() = default;

const Backend& Context::backend() const {
  return *impl_->backend;
}

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
void rerotate(const Backend& be, const HParams& hp, const KvView& kv, int64_t n,
              const RopeTables& from, const RopeTables& to) {
  const int64_t half = hp.n_rot / 2;
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
  be.rerotate_keys(kv, hp.n_layer, hp.n_head_kv, hp.head_dim, hp.n_rot, n, c.data(), s.data());
}

}  // namespace

const char* switch_policy_name(SwitchPolicy p) {
  switch (p) {
    case SwitchPolicy::kRecompute:
      return "recompute";
    case SwitchPolicy::kRerotate:
      return "rerotate";
    case SwitchPolicy::kKeep:
      return "keep";
    case SwitchPolicy::kNewTokens:
      return "new-tokens";
    case SwitchPolicy::kAuto:
      return "auto";
  }
  return "?";
}

void Context::advance(std::span<const int32_t> tokens,
                      const std::function<void(double)>& on_progress) {
  const HParams& hp = model_->hp();
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) throw Error("decode needs at least one token");
  if (n_past_ + n > n_ctx_)
    throw Error("context full: " + std::to_string(n_past_ + n) +
                " tokens exceed the context size " + std::to_string(n_ctx_) +
                " (raise -c/--ctx-size)");
  SwitchPolicy policy = policy_;
  if (policy == SwitchPolicy::kAuto)
    policy = scaling_.method == RopeMethod::kDynamic ? SwitchPolicy::kNewTokens
                                                     : SwitchPolicy::kRecompute;
  RopeTables tables = (policy == SwitchPolicy::kKeep && impl_->have_tables)
                          ? impl_->tables
                          : rope_tables(*model_, scaling_, n_past_ + n);
  history_.insert(history_.end(), tokens.begin(), tokens.end());
  std::span<const int32_t> run = tokens;
  int64_t p0 = n_past_;
  if (impl_->have_tables && n_past_ > 0 && !(tables == impl_->tables)) {
    const double t0 = omp_get_wtime();
    switch_stats_.switches++;
    if (policy == SwitchPolicy::kNewTokens) {
      // Cached keys stay as written; only the new tokens see the new tables.
    } else if (policy == SwitchPolicy::kRerotate) {
      switch_stats_.positions += n_past_;
      rerotate(*impl_->backend, hp, impl_->kv->view, n_past_, impl_->tables, tables);
      switch_stats_.seconds += omp_get_wtime() - t0;
    } else {
      switch_stats_.positions += n_past_;
      // Exact: the cached tokens go through the model again, together with the new ones.
      p0 = 0;
      run = std::span<const int32_t>(history_);
    }
  }
  impl_->tables = std::move(tables);
  impl_->have_tables = true;
  const double t0 = omp_get_wtime();
  std::function<void(int, int)> on_layer;
  if (on_progress) on_layer = [&](int done, int all) { on_progress(double(done) / all); };
  engine::forward_layers(*impl_->backend, *model_, run.data(), int64_t(run.size()), p0,
                         impl_->tables, impl_->kv->view, *impl_->ws, nullptr, nullptr, on_layer);
  if (p0 == 0 && n_past_ > 0) switch_stats_.seconds += omp_get_wtime() - t0;
  // Only the rows of the new tokens (the last n) matter to the caller.
  impl_->x_row0 = int64_t(run.size()) - n;
  n_past_ += n;
}

std::vector<float> Context::decode_all_logits(std::span<const int32_t> tokens) {
  advance(tokens, {});
  const HParams& hp = model_->hp();
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t d = hp.n_embd;
  const Backend& be = *impl_->backend;
  Workspace& ws = *impl_->ws;
  // h has rows for every row of x, so the n rows of the new tokens fit.
  be.rmsnorm(ws.x + impl_->x_row0 * d, model_->output_norm(), ws.h, n, d, hp.norm_eps);
  const WeightView& W = model_->output();
  std::vector<float> logits(static_cast<size_t>(n * W.rows));
  be.matmul_w(n, ws.h, d, W, logits.data(), W.rows, 0.0f);
  return logits;
}

std::vector<float> Context::decode(std::span<const int32_t> tokens,
                                   const std::function<void(double)>& on_progress) {
  advance(tokens, on_progress);
  const HParams& hp = model_->hp();
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t d = hp.n_embd;
  const Backend& be = *impl_->backend;
  std::vector<float> h(static_cast<size_t>(d));
  be.rmsnorm(impl_->ws->x + (impl_->x_row0 + n - 1) * d, model_->output_norm(), h.data(), 1, d,
             hp.norm_eps);
  const WeightView& W = model_->output();
  std::vector<float> logits(static_cast<size_t>(W.rows));
  be.gemv_w(1, h.data(), d, W, logits.data(), W.rows, 0.0f);
  for (float x : logits) {
    if (std::isfinite(x)) continue;
    // Where did it start? Everything fed so far again, checked layer by layer.
    const int at = engine::first_nonfinite_at(be, *model_, history_.data(),
                                              int64_t(history_.size()), impl_->tables);
    throw Error(fmt::format(
        "the logits after {} token(s) are non-finite; the first non-finite values appear in {} "
        "(expected finite weights and RoPE tables: check the model file)",
        n_past_, engine::nonfinite_where(at, hp.n_layer)));
  }
  return logits;
}

}  // namespace longrope
