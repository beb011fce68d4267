// The LongRoPE evolutionary search (include/longrope/search.h, docs/search.md).
#include "longrope/search.h"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <sstream>

#include "longrope/context.h"
#include "longrope/error.h"
#include "longrope/needle.h"
#include "longrope/perplexity.h"

namespace longrope {

// ---- PerplexityEvaluator ------------------------------------------------------------------------

FirstStage first_stage(int64_t n, size_t windows, int64_t orig_ctx, int64_t requested) {
  FirstStage st;
  int64_t tokens = requested > 0
                       ? std::min(requested, n)
                       : (windows > 1 ? n : orig_ctx + std::max<int64_t>(0, n - orig_ctx) / 2);
  if (tokens >= n - 1) tokens = n;  // a prefix of n - 1 tokens leaves nothing to continue
  // Predictions of tokens at positions >= orig_ctx: NLL indices [orig_ctx - 1, tokens - 1).
  if (orig_ctx < 1 || tokens - 1 <= orig_ctx - 1) return st;
  st.tokens = tokens;
  st.first_scored = orig_ctx - 1;
  return st;
}

PerplexityEvaluator::PerplexityEvaluator(std::shared_ptr<const Model> model,
                                         std::vector<std::vector<int32_t>> windows, int n_threads,
                                         int64_t orig_ctx, int64_t first_stage_tokens)
    : model_(std::move(model)), windows_(std::move(windows)), n_threads_(n_threads) {
  if (windows_.empty()) throw Error("perplexity evaluator: no windows (expected at least one)");
  for (const auto& w : windows_) {
    if (w.size() < 2) throw Error("perplexity evaluator: a window has fewer than 2 tokens");
  }
  stage_ = first_stage(static_cast<int64_t>(windows_[0].size()), windows_.size(), orig_ctx,
                       first_stage_tokens);
}

PerplexityEvaluator::PerplexityEvaluator(std::shared_ptr<const Model> model,
                                         std::vector<std::vector<int32_t>> windows,
                                         std::vector<std::vector<int64_t>> positions, int n_threads,
                                         int64_t orig_ctx, double answer_weight)
    : PerplexityEvaluator(std::move(model), std::move(windows), n_threads, orig_ctx) {
  if (answer_weight != 1.0) check_needle_weight(answer_weight);
  answer_weight_ = answer_weight;
  if (positions.size() != windows_.size())
    throw Error("perplexity evaluator: one list of scored positions per window expected");
  for (size_t k = 0; k < positions.size(); ++k) {
    if (positions[k].empty()) throw Error("perplexity evaluator: a window scores no position");
    for (int64_t p : positions[k])
      if (p < 0 || p + 1 >= static_cast<int64_t>(windows_[k].size()))
        throw Error("perplexity evaluator: a scored position outside its window");
  }
  positions_ = std::move(positions);
  // The stage: window 0 whole, over its scored positions beyond orig_ctx; none with one window
  // (a prefix would cut the answers off) or when window 0 scores nothing beyond orig_ctx.
  stage_ = FirstStage{};
  if (windows_.size() > 1 && orig_ctx >= 1 &&
      std::any_of(positions_[0].begin(), positions_[0].end(),
                  [&](int64_t p) { return p >= orig_ctx - 1; })) {
    stage_.tokens = static_cast<int64_t>(windows_[0].size());
    stage_.first_scored = orig_ctx - 1;
  }
}

bool RejectBound::dominated(std::span<const double> value, const std::vector<bool>& staged) const {
  for (const Point& p : points) {
    if (p.v.size() != value.size() || p.stage != staged) continue;
    if (dominates(p.v, value)) return true;
  }
  return false;
}

EvalResult Evaluator::evaluate_staged(const RopeScaling& scaling,
                                      const std::function<bool(double)>& go_on) {
  if (!go_on(std::numeric_limits<double>::quiet_NaN())) {
    EvalResult r;
    r.ppl = std::numeric_limits<double>::quiet_NaN();
    r.rejected = true;
    return r;
  }
  return evaluate(scaling, RejectBound{});
}

std::vector<EvalResult> Evaluator::evaluate_batch(const std::vector<RopeScaling>& batch,
                                                  const RejectBound& reject_above,
                                                  const std::function<void(size_t)>& done) {
  std::vector<EvalResult> out;
  out.reserve(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    out.push_back(evaluate(batch[i], reject_above));
    if (done) done(i);
  }
  return out;
}

void Evaluator::submit(size_t id, const RopeScaling& scaling, const RejectBound& reject_above) {
  queue_.push_back({id, scaling, reject_above});
}

std::pair<size_t, EvalResult> Evaluator::next() {
  if (queue_.empty()) throw Error("search: next() with no candidate submitted");
  Queued q = std::move(queue_.front());
  queue_.pop_front();
  return {q.id, evaluate(q.scaling, q.bound)};
}

EvalResult PerplexityEvaluator::evaluate(const RopeScaling& scaling,
                                         const RejectBound& reject_above) {
  const double above = reject_above.above;
  return run(
      scaling, [&](double stage) { return !std::isfinite(above) || stage <= above; },
      std::isfinite(above));
}

EvalResult PerplexityEvaluator::evaluate_staged(const RopeScaling& scaling,
                                                const std::function<bool(double)>& go_on) {
  if (!stage_.on()) return Evaluator::evaluate_staged(scaling, go_on);
  return run(scaling, go_on, true);
}

EvalResult PerplexityEvaluator::run(const RopeScaling& scaling,
                                    const std::function<bool(double)>& go_on, bool always_stage) {
  const auto t0 = std::chrono::steady_clock::now();
  ScoreOptions opts;
  opts.n_threads = n_threads_;
  opts.compute = compute_;
  EvalResult r;
  const auto& w0 = windows_[0];
  const int64_t n = static_cast<int64_t>(w0.size());
  const int64_t fs = stage_.tokens;
  // The stage's perplexity: of the NLLs [first_scored, fs - 1) of window 0 (or of its prefix);
  // with scored positions, of window 0's scored positions from first_scored on.
  auto stage_ppl_of = [&](const std::vector<double>& nll) {
    if (mixed()) {
      MixedNll m;
      m.add(nll, positions_[0], stage_.first_scored);
      return m.fitness(answer_weight_);
    }
    double sum = 0;
    int64_t count = 0;
    if (!positions_.empty()) {
      for (size_t i = 0; i < positions_[0].size(); ++i)
        if (positions_[0][i] >= stage_.first_scored) {
          sum += nll[i];
          ++count;
        }
    } else {
      for (int64_t i = stage_.first_scored; i < fs - 1; ++i) sum += nll[static_cast<size_t>(i)];
      count = fs - 1 - stage_.first_scored;
    }
    return std::exp(sum / static_cast<double>(count));
  };
  auto finish = [&](EvalResult& res) {
    if (std::isnan(res.ppl))
      throw Error(fmt::format("perplexity is NaN after {} scored tokens (a broken model or engine)",
                              res.tokens));
    res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return res;
  };
  // The model passes of a complete evaluation, in tokens and in order (the stage's prefix and
  // its continuation count as two): on_fraction_ follows them layer by layer.
  std::vector<int64_t> model_passes;
  if (stage_.on() && fs < n) model_passes = {fs, n - fs};
  for (size_t k = model_passes.empty() ? 0 : 1; k < windows_.size(); ++k)
    model_passes.push_back(static_cast<int64_t>(windows_[k].size()));
  int64_t all = 0;
  for (int64_t t : model_passes) all += t;
  size_t pass = 0;
  int last_layer = 0;
  double before = 0;  // tokens of the passes finished
  if (on_fraction_)
    opts.on_layer = [&](int layer, int layers) {
      if (layer <= last_layer && pass + 1 < model_passes.size())
        before += double(model_passes[pass++]);
      last_layer = layer;
      on_fraction_((before + double(model_passes[pass]) * layer / layers) / double(all));
    };
  std::vector<double> first;  // NLLs of window 0 when the first stage scored all of it
  // The stage decides whether the rest is scored; NaN stops (finish throws).
  auto passes = [&](const std::vector<double>& nll) {
    r.stage_ppl = stage_ppl_of(nll);
    if (std::isnan(r.stage_ppl)) return false;
    r.rejected = !go_on(r.stage_ppl);
    return !r.rejected;
  };
  // After the stage: a NaN (finish throws) or a cut ends here, with the stage's value.
  auto stopped = [&] {
    if (!std::isnan(r.stage_ppl) && !r.rejected) return false;
    r.ppl = r.stage_ppl;
    return true;
  };
  if (stage_.on() && fs < n) {
    // A prefix stage: window 0 in two steps, the second continuing from the first's keys and
    // values, whatever the bound (the fitness is the same bit for bit with or without a cut, and
    // a child that passes costs one window).
    first = score_window_staged(*model_, w0, scaling, opts, fs, passes);
    r.tokens += static_cast<int64_t>(first.size());
    if (stopped()) return finish(r);
  } else if (stage_.on() && always_stage) {
    // The stage is window 0 whole (several windows, or scored positions).
    ScoreOptions so = opts;
    if (!positions_.empty() && !mixed()) so.positions = positions_[0];
    first = score_window(*model_, w0, scaling, so);
    r.tokens += static_cast<int64_t>(first.size());
    passes(first);
    if (stopped()) return finish(r);
  }
  MixedNll mix;
  const WindowLoop loop = score_windows(
      *model_, windows_, scaling, opts,
      [&](size_t k, const std::vector<double>& nll) {
        if (k == 0 && stage_.on() && std::isnan(r.stage_ppl)) r.stage_ppl = stage_ppl_of(nll);
        if (mixed()) mix.add(nll, positions_[k]);
      },
      std::move(first), positions_.empty() || mixed() ? nullptr : &positions_);
  r.tokens += loop.computed_tokens;
  r.ppl = mixed() ? mix.fitness(answer_weight_) : loop.ppl();
  return finish(r);
}

// ---- MultiObjectiveEvaluator
// ---------------------------------------------------------------------

MultiObjectiveEvaluator::MultiObjectiveEvaluator(std::vector<std::unique_ptr<Evaluator>> parts)
    : parts_(std::move(parts)) {
  if (parts_.size() < 2)
    throw Error(fmt::format("multi-objective evaluator: {} objective(s) (expected at least two)",
                            parts_.size()));
}

void MultiObjectiveEvaluator::set_on_fraction(std::function<void(double)> f) {
  on_fraction_ = std::move(f);
  part_fraction_.assign(parts_.size(), 0.0);
  for (size_t k = 0; k < parts_.size(); ++k) {
    if (!on_fraction_) {
      parts_[k]->set_on_fraction({});
      continue;
    }
    parts_[k]->set_on_fraction([this, k](double x) {
      part_fraction_[k] = x;
      double sum = 0;
      for (double y : part_fraction_) sum += y;
      on_fraction_(sum / double(part_fraction_.size()));
    });
  }
}

EvalResult MultiObjectiveEvaluator::evaluate(const RopeScaling& scaling,
                                             const RejectBound& reject_above) {
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  const size_t n = parts_.size();
  std::fill(part_fraction_.begin(), part_fraction_.end(), 0.0);
  std::vector<EvalResult> res(n);
  std::vector<bool> staged(n, false);
  std::vector<size_t> stage_parts;
  // A cut saves only the rest of staged parts: with none, every part is scored whole.
  const bool cuts =
      !reject_above.points.empty() &&
      std::any_of(parts_.begin(), parts_.end(), [](auto& p) { return p->has_stage(); });
  for (size_t k = 0; k < n; ++k) {
    staged[k] = cuts && parts_[k]->has_stage();
    if (staged[k]) {
      stage_parts.push_back(k);
    } else {
      res[k] = parts_[k]->evaluate(scaling, RejectBound{});  // complete: known before any cut
    }
  }
  // The staged parts one inside the other: part i's stage, then (its keys and values kept) the
  // next part's, and after the last stage the decision; each part then completes, or stops.
  bool cut = false;
  std::function<bool(size_t)> stages = [&](size_t i) {
    if (i == stage_parts.size()) {
      std::vector<double> v(n);
      for (size_t k = 0; k < n; ++k) v[k] = staged[k] ? res[k].stage_ppl : res[k].ppl;
      cut = reject_above.dominated(v, staged);
      return !cut;
    }
    const size_t k = stage_parts[i];
    res[k] = parts_[k]->evaluate_staged(scaling, [&](double stage) {
      res[k].stage_ppl = stage;  // read by the decision, inside this call
      return stages(i + 1);
    });
    return !cut;
  };
  if (cuts) stages(0);
  EvalResult out;
  out.rejected = cut;
  for (size_t k = 0; k < n; ++k) {
    out.objectives.push_back(cut && staged[k] ? kNaN : res[k].ppl);
    // Recorded whenever the part has a stage (also without a bound: later children's points).
    out.stage_objectives.push_back(parts_[k]->has_stage() ? res[k].stage_ppl : kNaN);
    out.tokens += res[k].tokens;
    out.seconds += res[k].seconds;
  }
  out.ppl = cut ? out.stage_objectives[0] : out.objectives[0];
  return out;
}

// ---- Pareto fronts
// ---------------------------------------------------------------------------------

bool dominates(std::span<const double> a, std::span<const double> b) {
  bool better = false;
  for (size_t k = 0; k < a.size(); ++k) {
    if (a[k] > b[k]) return false;
    if (a[k] < b[k]) better = true;
  }
  return better;
}

std::vector<int> pareto_ranks(const std::vector<std::vector<double>>& pts) {
  const size_t n = pts.size();
  std::vector<int> rank(n, -1);
  // Deb's fast non-dominated sort: how many points dominate each one, and whom each dominates.
  std::vector<int> count(n, 0);
  std::vector<std::vector<size_t>> dominated(n);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = i + 1; j < n; ++j) {
      if (dominates(pts[i], pts[j])) {
        dominated[i].push_back(j);
        ++count[j];
      } else if (dominates(pts[j], pts[i])) {
        dominated[j].push_back(i);
        ++count[i];
      }
    }
  std::vector<size_t> current;
  for (size_t i = 0; i < n; ++i)
    if (count[i] == 0) current.push_back(i);
  for (int r = 0; !current.empty(); ++r) {
    std::vector<size_t> next;
    for (size_t i : current) {
      rank[i] = r;
      for (size_t j : dominated[i])
        if (--count[j] == 0) next.push_back(j);
    }
    current = std::move(next);
  }
  return rank;
}

std::vector<double> crowding_distances(const std::vector<std::vector<double>>& pts,
                                       const std::vector<int>& ranks) {
  const size_t n = pts.size();
  std::vector<double> d(n, 0.0);
  if (n == 0) return d;
  const size_t m = pts[0].size();
  std::map<int, std::vector<size_t>> by_rank;
  for (size_t i = 0; i < n; ++i) by_rank[ranks[i]].push_back(i);
  for (auto& [r, idx] : by_rank) {
    for (size_t k = 0; k < m; ++k) {
      // Ties broken by index: the same input gives the same distances.
      std::stable_sort(idx.begin(), idx.end(),
                       [&](size_t a, size_t b) { return pts[a][k] < pts[b][k]; });
      const double lo = pts[idx.front()][k], hi = pts[idx.back()][k];
      d[idx.front()] = d[idx.back()] = std::numeric_limits<double>::infinity();
      if (!(hi > lo)) continue;
      for (size_t t = 1; t + 1 < idx.size(); ++t)
        d[idx[t]] += (pts[idx[t + 1]][k] - pts[idx[t - 1]][k]) / (hi - lo);
    }
  }
  return d;
}

double hypervolume_2d(std::vector<std::array<double, 2>> pts, std::array<double, 2> ref) {
  std::erase_if(pts, [&](const auto& p) { return !(p[0] < ref[0] && p[1] < ref[1]); });
  std::sort(pts.begin(), pts.end());
  // Sweep by the first objective: each point adds the strip up to the next point's first
  // objective, as high as the best second objective so far lies below ref.
  double area = 0, best = ref[1];
  for (size_t i = 0; i < pts.size(); ++i) {
    best = std::min(best, pts[i][1]);
    const double right = i + 1 < pts.size() ? pts[i + 1][0] : ref[0];
    area += (right - pts[i][0]) * (ref[1] - best);
  }
  return area;
}

PickRule parse_pick(const std::string& text, const std::vector<std::string>& names) {
  PickRule r;
  r.text = text;
  auto objective = [&](const std::string& name) {
    for (size_t k = 0; k < names.size(); ++k)
      if (names[k] == name) return static_cast<int>(k);
    std::string all;
    for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
    throw Error(
        fmt::format("--pick {}: no objective {} (the objectives are {}; expected knee, OBJ "
                    "or OBJ:B<=REF, e.g. ppl:needle<=yarn)",
                    text, name, all));
  };
  if (text == "knee") return r;
  const size_t colon = text.find(':');
  if (colon == std::string::npos) {
    r.kind = PickRule::Kind::kBest;
    r.objective = objective(text);
    return r;
  }
  const size_t le = text.find("<=", colon);
  if (le == std::string::npos || le + 2 >= text.size())
    throw Error(
        fmt::format("--pick {} (expected knee, OBJ or OBJ:B<=REF, e.g. ppl:needle<=yarn)", text));
  r.kind = PickRule::Kind::kBounded;
  r.objective = objective(text.substr(0, colon));
  r.bound_objective = objective(text.substr(colon + 1, le - colon - 1));
  const std::string ref = text.substr(le + 2);
  size_t used = 0;
  try {
    r.bound_value = std::stod(ref, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != ref.size()) r.bound_ref = ref;
  return r;
}

size_t pick_from_front(const std::vector<std::vector<double>>& front, const PickRule& rule,
                       std::string* note) {
  if (front.empty()) throw Error("--pick: the front is empty (no complete evaluation)");
  auto best_of = [&](int k, const std::vector<size_t>& among) {
    size_t b = among.at(0);
    for (size_t i : among)
      if (front[i][size_t(k)] < front[b][size_t(k)]) b = i;
    return b;
  };
  std::vector<size_t> all(front.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  switch (rule.kind) {
    case PickRule::Kind::kBest:
      return best_of(rule.objective, all);
    case PickRule::Kind::kBounded: {
      std::vector<size_t> ok;
      for (size_t i : all)
        if (front[i][size_t(rule.bound_objective)] <= rule.bound_value) ok.push_back(i);
      if (!ok.empty()) return best_of(rule.objective, ok);
      if (note)
        *note = fmt::format(
            "no set on the front meets {} ({} <= {:.4f}); picked the one nearest to it", rule.text,
            rule.bound_ref.empty() ? "the bound" : rule.bound_ref, rule.bound_value);
      return best_of(rule.bound_objective, all);
    }
    case PickRule::Kind::kKnee:
      break;
  }
  const size_t m = front[0].size();
  std::vector<double> lo(m, std::numeric_limits<double>::infinity()), hi(m, -lo[0]);
  for (const auto& p : front)
    for (size_t k = 0; k < m; ++k) {
      lo[k] = std::min(lo[k], p[k]);
      hi[k] = std::max(hi[k], p[k]);
    }
  auto scaled = [&](size_t i, size_t k) {
    return hi[k] > lo[k] ? (front[i][k] - lo[k]) / (hi[k] - lo[k]) : 0.0;
  };
  size_t pick = 0;
  if (front.size() >= 3 && m == 2) {
    // The ends of a two-objective front are its best points in each objective; the knee is the
    // point farthest below the line through them (scaled: from (0, 1) to (1, 0)).
    double far = -std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < front.size(); ++i) {
      const double dist = (1.0 - scaled(i, 0) - scaled(i, 1)) / std::sqrt(2.0);
      if (dist > far) {
        far = dist;
        pick = i;
      }
    }
    return pick;
  }
  // Otherwise the point nearest to the ideal one in relative terms: each objective's excess over
  // the front's best, as a fraction of that best (min-max scaling would tie two points).
  auto relative = [&](size_t i, size_t k) {
    return lo[k] > 0 ? front[i][k] / lo[k] - 1.0 : scaled(i, k);
  };
  double nearest = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < front.size(); ++i) {
    double d = 0;
    for (size_t k = 0; k < m; ++k) d += relative(i, k) * relative(i, k);
    if (d < nearest) {
      nearest = d;
      pick = i;
    }
  }
  return pick;
}

// ---- the search space
// -----------------------------------------------------------------------------

std::string Individual::key() const {
  std::string k;
  for (int v : lambda) {
    k += std::to_string(v);
    k += ',';
  }
  k += fmt::format("n{}a{}", n_hat_idx, attn_idx);
  return k;
}

int lambda_hundredths(double x) {
  const int v = static_cast<int>(std::floor(x * 100.0 + 1e-9));
  return x < 1.0 ? std::min(v, 99) : v;
}

SearchSpace default_search_space(const HParams& hp, int64_t orig_ctx, int64_t target_ctx,
                                 std::optional<double> lambda_max) {
  SearchSpace sp;
  sp.n_rot = hp.n_rot;
  sp.n_pairs = hp.n_rot / 2;
  sp.rope_base = hp.rope_base;
  sp.orig_ctx = orig_ctx;
  sp.target_ctx = target_ctx;
  const double x =
      lambda_max.value_or(1.25 * static_cast<double>(target_ctx) / static_cast<double>(orig_ctx));
  sp.lambda_max = lambda_hundredths(x);
  sp.n_hat_candidates = default_n_hat_candidates(target_ctx);
  sp.attn_candidates = default_attn_candidates(orig_ctx, target_ctx);
  return sp;
}

std::vector<int64_t> default_n_hat_candidates(int64_t target_ctx) {
  std::vector<int64_t> out;
  for (int64_t n : {0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256})
    if (n < target_ctx) out.push_back(n);
  return out;
}

std::vector<double> default_attn_candidates(int64_t orig_ctx, int64_t target_ctx) {
  const double s = static_cast<double>(target_ctx) / static_cast<double>(orig_ctx);
  if (s <= 1.0) return {1.0};
  // A grid on both sides of 1 (0.70 to 1.10 in steps of 0.05: a small model may want softer
  // attention, docs/search.md) and the two rules' values at s, so that the rule seeds (YaRN's
  // 0.1 ln s + 1) run exactly. Sorted: crossover takes the index between its parents'.
  std::vector<double> out;
  for (int k = 14; k <= 22; ++k) out.push_back(k / 20.0);
  for (double a : {sqrt_log_attn_factor(s, orig_ctx), yarn_mscale(s)}) {
    bool near = false;
    for (double& x : out)
      if (std::abs(x - a) < 1e-9) near = true;
    if (!near) out.push_back(a);
  }
  std::sort(out.begin(), out.end());
  return out;
}

void validate_space(const SearchSpace& sp) {
  if (sp.n_pairs <= 0 || sp.n_rot != 2 * sp.n_pairs)
    throw Error(fmt::format("search: {} rotary pairs for n_rot {} (expected n_rot/2 >= 1)",
                            sp.n_pairs, sp.n_rot));
  if (sp.orig_ctx <= 0)
    throw Error(fmt::format("search: original context {} (expected > 0)", sp.orig_ctx));
  if (sp.target_ctx < 2)
    throw Error(fmt::format("search: fitness length {} (expected >= 2)", sp.target_ctx));
  if (sp.lambda_max < 100)
    throw Error(fmt::format(
        "search: lambda-max {:.2f} < 1 admits no factor vector (factors must lie in [1, "
        "lambda-max]; expected lambda-max >= 1)",
        sp.lambda_max / 100.0));
  for (double t : sp.seed_blends)
    if (!(t > 0 && t < 1))
      throw Error(fmt::format("search: seed blend {:g} (expected t in (0, 1), e.g. 0.5)", t));
  if (!sp.seed_blends.empty() && sp.extra_seeds.size() < 2)
    throw Error(fmt::format(
        "search: seed blends need at least two seed factor sets to blend, got {} (expected "
        "--seed-factors A,B[,...])",
        sp.extra_seeds.size()));
  if (!sp.lo.empty() || !sp.hi.empty()) {
    if (sp.lo.size() != static_cast<size_t>(sp.n_pairs) ||
        sp.hi.size() != static_cast<size_t>(sp.n_pairs))
      throw Error("search: per-pair bounds for another number of rotary pairs");
    int lo_max = 100;
    for (int j = 0; j < sp.n_pairs; ++j) {
      lo_max = std::max(lo_max, sp.lo_of(j));
      if (sp.lo_of(j) < 100 || sp.hi_of(j) > sp.lambda_max || lo_max > sp.hi_of(j))
        throw Error(fmt::format(
            "search: pair {} cannot take a factor in [{:.2f}, {:.2f}] after the pairs before it "
            "(expected feasible non-decreasing bounds)",
            j, lo_max / 100.0, sp.hi_of(j) / 100.0));
    }
  }
  if (sp.n_hat_candidates.empty())
    throw Error("search: no n_hat candidate (expected at least one value < the target length)");
  for (int64_t n : sp.n_hat_candidates) {
    if (n < 0 || n >= sp.target_ctx)
      throw Error(
          fmt::format("search: n_hat candidate {} is not in [0, {}) (expected n_hat < "
                      "the target length {})",
                      n, sp.target_ctx, sp.target_ctx));
  }
  if (sp.attn_candidates.empty())
    throw Error("search: no attention factor candidate (expected at least one)");
  for (double a : sp.attn_candidates) {
    if (!(std::isfinite(a) && a > 0))
      throw Error(fmt::format("search: attention factor {} (expected a finite number > 0)", a));
  }
}

RopeScaling to_scaling(const SearchSpace& sp, const Individual& ind) {
  RopeScaling s;
  s.method = RopeMethod::kLongrope;
  FactorSet set;
  set.factors.reserve(ind.lambda.size());
  for (int v : ind.lambda) set.factors.push_back(v / 100.0);
  set.max_len = 0;
  s.sets.push_back(std::move(set));
  s.n_hat = sp.n_hat_candidates.at(static_cast<size_t>(ind.n_hat_idx));
  s.attn_factor = sp.attn_candidates.at(static_cast<size_t>(ind.attn_idx));
  s.orig_ctx = sp.orig_ctx;
  s.target_ctx = sp.target_ctx;
  return s;
}

int critical_dim(int n_rot, int64_t orig_ctx, double base) {
  const double k =
      std::ceil(0.5 * n_rot *
                std::log(static_cast<double>(orig_ctx) / (2.0 * 3.14159265358979323846)) /
                std::log(base)) -
      1.0;
  return static_cast<int>(std::clamp(k, 0.0, 0.5 * n_rot));
}

void apply_critical_dim(SearchSpace& sp, int k, double margin) {
  if (k < 0 || k > sp.n_pairs)
    throw Error(fmt::format("search: critical dimension {} is not in [0, {}] (rotary pairs)", k,
                            sp.n_pairs));
  const double s = static_cast<double>(sp.target_ctx) / static_cast<double>(sp.orig_ctx);
  const int s100 = std::max(100, static_cast<int>(std::ceil(s * 100.0 - 1e-9)));
  const int below = std::clamp(lambda_hundredths(s + margin), 100, sp.lambda_max);
  if (k < sp.n_pairs && s100 > sp.lambda_max)
    throw Error(fmt::format(
        "search: the pairs from the critical dimension {} on need factors >= s = {:.2f}, above "
        "--lambda-max {:.2f} (expected lambda-max >= s)",
        k, s, sp.lambda_max / 100.0));
  sp.lo.assign(static_cast<size_t>(sp.n_pairs), 100);
  sp.hi.assign(static_cast<size_t>(sp.n_pairs), sp.lambda_max);
  for (int j = 0; j < sp.n_pairs; ++j) {
    if (j < k) {
      sp.hi[static_cast<size_t>(j)] = below;
    } else {
      sp.lo[static_cast<size_t>(j)] = s100;
    }
  }
}

bool is_valid(const SearchSpace& sp, const Individual& ind) {
  if (static_cast<int>(ind.lambda.size()) != sp.n_pairs) return false;
  int prev = 100;
  for (int j = 0; j < sp.n_pairs; ++j) {
    const int v = ind.lambda[static_cast<size_t>(j)];
    if (v < prev || v > sp.lambda_max || v < sp.lo_of(j) || v > sp.hi_of(j)) return false;
    prev = v;
  }
  return ind.n_hat_idx >= 0 && ind.n_hat_idx < static_cast<int>(sp.n_hat_candidates.size()) &&
         ind.attn_idx >= 0 && ind.attn_idx < static_cast<int>(sp.attn_candidates.size());
}

namespace {
// An individual from factors: rounded to the grid, clamped into the bounds, non-decreasing; the
// candidates nearest to n_hat and the attention factor.
Individual seed_individual(const SearchSpace& sp, const std::vector<double>& lambda, int64_t n_hat,
                           double attn) {
  Individual ind;
  int prev = 100;
  for (int j = 0; j < sp.n_pairs; ++j) {
    int v = static_cast<int>(std::lround(lambda[static_cast<size_t>(j)] * 100.0));
    v = std::clamp(v, std::max(prev, sp.lo_of(j)), std::min(sp.lambda_max, sp.hi_of(j)));
    ind.lambda.push_back(v);
    prev = v;
  }
  auto nearest = [](const auto& cands, double x) {
    size_t best = 0;
    for (size_t k = 1; k < cands.size(); ++k)
      if (std::abs(double(cands[k]) - x) < std::abs(double(cands[best]) - x)) best = k;
    return static_cast<int>(best);
  };
  ind.n_hat_idx = nearest(sp.n_hat_candidates, double(n_hat));
  ind.attn_idx = nearest(sp.attn_candidates, attn);
  return ind;
}
}  // namespace

std::vector<std::pair<std::string, Individual>> rule_seeds(const SearchSpace& sp) {
  const double s =
      std::max(1.0, static_cast<double>(sp.target_ctx) / static_cast<double>(sp.orig_ctx));
  const std::vector<double> w = default_inv_freq(sp.n_rot, sp.rope_base);
  std::vector<std::pair<std::string, Individual>> out;
  for (RopeMethod m :
       {RopeMethod::kLinear, RopeMethod::kNtk, RopeMethod::kDynamic, RopeMethod::kYarn}) {
    RopeScaling r;
    r.method = m;
    r.factor = s;
    r.orig_ctx = sp.orig_ctx;
    const RopeTables t = r.tables(sp.target_ctx, sp.n_rot, sp.rope_base, sp.orig_ctx);
    std::vector<double> lam(static_cast<size_t>(sp.n_pairs));
    for (int j = 0; j < sp.n_pairs; ++j) lam[size_t(j)] = w[size_t(j)] / t.inv_freq[size_t(j)];
    out.emplace_back(rope_method_name(m), seed_individual(sp, lam, 0, t.attn_factor));
  }
  for (const SearchSpace::Seed& e : sp.extra_seeds) {
    if (static_cast<int>(e.lambda.size()) != sp.n_pairs)
      throw Error(fmt::format("seed factors {} have {} values, expected {} (one per rotary pair)",
                              e.name, e.lambda.size(), sp.n_pairs));
    out.emplace_back(e.name, seed_individual(sp, e.lambda, e.n_hat, e.attn_factor));
  }
  const size_t first = out.size() - sp.extra_seeds.size(), end = out.size();
  for (double t : sp.seed_blends)
    for (size_t a = first; a < end; ++a)
      for (size_t b = a + 1; b < end; ++b)
        out.emplace_back(fmt::format("blend({}, {}, {:g})", out[a].first, out[b].first, t),
                         blend(out[a].second, out[b].second, t));
  return out;
}

nlohmann::json SearchSettings::to_json() const {
  nlohmann::json j = {{"population", population},
                      {"parents", parents},
                      {"mutations", mutations},
                      {"crossovers", crossovers},
                      {"mutation_prob", mutation_prob},
                      {"crossover_prob", crossover_prob},
                      {"seed", seed},
                      {"early_reject", early_reject}};
  if (steady_state) j["steady_state"] = true;  // absent when off: older checkpoints still match
  if (reject_margin != 0.0) j["reject_margin"] = reject_margin;  // likewise
  if (blend_prob != 0.0) j["blend_prob"] = blend_prob;           // likewise
  if (objectives != 1) j["objectives"] = objectives;             // likewise
  // Absent for runs started without the front's early reject: their checkpoints still match.
  if (objectives > 1 && early_reject && front_reject) j["front_reject"] = true;
  return j;
}

bool Fitness::better_than(const Fitness& o) const {
  if (rejected != o.rejected) return !rejected;
  if (rejected) return false;
  return ppl < o.ppl;
}

// ---- EvolutionSearch
// ------------------------------------------------------------------------------

EvolutionSearch::EvolutionSearch(SearchSpace space, SearchSettings settings)
    : space_(std::move(space)), settings_(settings), rng_(settings.seed) {
  validate_space(space_);
  if (settings_.population < 1 || settings_.parents < 1 || settings_.mutations < 0 ||
      settings_.crossovers < 0 || settings_.iterations < 0)
    throw Error(
        fmt::format("search: population {}, parents {}, mutations {}, crossovers {}, iterations {} "
                    "(expected population, parents >= 1 and the others >= 0)",
                    settings_.population, settings_.parents, settings_.mutations,
                    settings_.crossovers, settings_.iterations));
  if (settings_.objectives < 1)
    throw Error(fmt::format("search: {} objectives (expected at least one)", settings_.objectives));
  if (!(settings_.reject_margin >= 0 && settings_.reject_margin <= 1))
    throw Error(fmt::format("search: reject margin {} (expected a fraction in [0, 1], e.g. 0.01)",
                            settings_.reject_margin));
  if (!(settings_.mutation_prob > 0 && settings_.mutation_prob <= 1) ||
      !(settings_.crossover_prob >= 0 && settings_.crossover_prob <= 1) ||
      !(settings_.blend_prob >= 0 && settings_.blend_prob <= 1))
    throw Error(fmt::format(
        "search: mutation probability {} / crossover probability {} / blend probability {} "
        "(expected in (0, 1], [0, 1] and [0, 1])",
        settings_.mutation_prob, settings_.crossover_prob, settings_.blend_prob));
}

std::optional<Individual> EvolutionSearch::mutate(const Individual& parent) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const int n = space_.n_pairs;
  const int n_nhat = static_cast<int>(space_.n_hat_candidates.size());
  const int n_attn = static_cast<int>(space_.attn_candidates.size());
  for (int tries = 0; tries < 100; ++tries) {
    Individual c = parent;
    for (int j = 0; j < n; ++j) {
      if (u(rng_) >= settings_.mutation_prob) continue;
      const int lo = std::max(space_.lo_of(j), j == 0 ? 100 : c.lambda[j - 1]);
      const int hi = std::min(space_.hi_of(j), j == n - 1 ? space_.lambda_max : c.lambda[j + 1]);
      if (hi <= lo) {
        c.lambda[j] = lo;
        continue;
      }
      c.lambda[j] = std::uniform_int_distribution<int>(lo, hi)(rng_);
    }
    if (n_nhat > 1 && u(rng_) < settings_.mutation_prob)
      c.n_hat_idx = std::uniform_int_distribution<int>(0, n_nhat - 1)(rng_);
    if (n_attn > 1 && u(rng_) < settings_.mutation_prob)
      c.attn_idx = std::uniform_int_distribution<int>(0, n_attn - 1)(rng_);
    if (!is_valid(space_, c)) continue;
    if (seen_.insert(c.key()).second) return c;
  }
  return std::nullopt;
}

Individual blend(const Individual& a, const Individual& b, double t) {
  Individual c = a;
  for (size_t j = 0; j < c.lambda.size(); ++j)
    c.lambda[j] =
        static_cast<int>(std::lround(std::exp((1 - t) * std::log(static_cast<double>(a.lambda[j])) +
                                              t * std::log(static_cast<double>(b.lambda[j])))));
  auto mid = [t](int x, int y) {
    return static_cast<int>(std::lround((1 - t) * static_cast<double>(x) + t * y));
  };
  c.n_hat_idx = mid(a.n_hat_idx, b.n_hat_idx);
  c.attn_idx = mid(a.attn_idx, b.attn_idx);
  return c;
}

std::optional<Individual> EvolutionSearch::crossover(const Individual& a, const Individual& b) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  // No draw when blending is off: runs without it keep their random stream (and results).
  const bool blending = settings_.blend_prob > 0 && u(rng_) < settings_.blend_prob;
  // A blend of a and b, or a pair-wise mix: parent a with each pair taken from b with
  // probability crossover_prob, n_hat and the attention factor each with probability 0.5.
  auto child = [&] {
    if (blending) return blend(a, b, std::uniform_real_distribution<double>(0.25, 0.75)(rng_));
    Individual c = a;
    for (size_t j = 0; j < c.lambda.size(); ++j)
      if (u(rng_) < settings_.crossover_prob) c.lambda[j] = b.lambda[j];
    if (u(rng_) < 0.5) c.n_hat_idx = b.n_hat_idx;
    if (u(rng_) < 0.5) c.attn_idx = b.attn_idx;
    return c;
  };
  for (int tries = 0; tries < 20; ++tries) {
    Individual c = child();
    if (!is_valid(space_, c)) continue;
    if (seen_.insert(c.key()).second) return c;
  }
  return mutate(a);
}

void EvolutionSearch::evaluate(Evaluator& ev, const std::vector<Individual>& inds,
                               const RejectBound& bound) {
  std::vector<const Individual*> todo;
  std::vector<RopeScaling> batch;
  for (const auto& ind : inds) {
    if (memo_.count(ind.key())) continue;
    todo.push_back(&ind);
    batch.push_back(to_scaling(space_, ind));
  }
  int finished = 0;
  const int total = static_cast<int>(batch.size());
  const std::vector<EvalResult> results = ev.evaluate_batch(batch, bound, [&](size_t) {
    ++finished;
    if (on_eval) on_eval(finished, total);
  });
  if (results.size() != batch.size())
    throw Error(fmt::format("search: the evaluator returned {} results for {} candidates",
                            results.size(), batch.size()));
  // Recorded in candidate order, whatever the completion order: the search stays deterministic.
  for (size_t i = 0; i < todo.size(); ++i) record(*todo[i], results[i], bound);
}

void EvolutionSearch::record(const Individual& ind, const EvalResult& r, const RejectBound& bound) {
  if (r.left_out) return;
  if (settings_.record_seconds) eval_seconds_ += r.seconds;
  Fitness f;
  if (settings_.objectives > 1) f.stage_obj = r.stage_objectives;
  if (r.rejected) {
    // Several objectives: the values known when it was cut (NaN for the staged ones).
    if (settings_.objectives > 1) f.obj = r.objectives;
    f.rejected = true;
    f.bound = bound.above;
    f.partial = r.ppl;
    ++partial_evals_;
  } else {
    f.ppl = r.ppl;
    if (std::isfinite(r.stage_ppl)) f.stage = r.stage_ppl;
    if (settings_.objectives > 1) {
      if (static_cast<int>(r.objectives.size()) != settings_.objectives)
        throw Error(fmt::format("search: the evaluator returned {} objective(s), expected {}",
                                r.objectives.size(), settings_.objectives));
      f.obj = r.objectives;
      update_front(ind, f);
    }
    ++full_evals_;
    if (!best_fit_.rejected && (best_.lambda.empty() || f.ppl < best_fit_.ppl)) {
      best_ = ind;
      best_fit_ = f;
    }
  }
  memo_.emplace(ind.key(), f);
  seen_.insert(ind.key());
}

void EvolutionSearch::update_front(const Individual& ind, const Fitness& f) {
  for (const Individual& m : front_)
    if (dominates(memo_.at(m.key()).obj, f.obj)) return;
  std::erase_if(front_,
                [&](const Individual& m) { return dominates(f.obj, memo_.at(m.key()).obj); });
  // Recorded before its memo entry: compare with the new values directly.
  auto it = std::find_if(front_.begin(), front_.end(), [&](const Individual& m) {
    const Fitness& g = memo_.at(m.key());
    return f.obj[0] < g.obj[0] || (f.obj[0] == g.obj[0] && ind.key() < m.key());
  });
  front_.insert(it, ind);
}

std::vector<Individual> EvolutionSearch::parents(RejectBound* bound) const {
  std::vector<Individual> out;
  for (const auto& ind : population_) {
    if (static_cast<int>(out.size()) >= settings_.parents) break;
    if (!memo_.at(ind.key()).rejected) out.push_back(ind);
  }
  if (out.empty()) throw Error("search: no complete individual to breed from");
  *bound = RejectBound{};
  // Several objectives: a child is cut when a set on the front dominates it (RejectBound), first
  // stages compared with first stages (with the margin) and complete values with complete ones.
  if (settings_.early_reject && settings_.front_reject && settings_.objectives > 1) {
    for (const Individual& m : front_) {
      const Fitness& f = memo_.at(m.key());
      if (f.stage_obj.size() != f.obj.size()) continue;  // recorded before stages were kept
      RejectBound::Point pt;
      for (size_t k = 0; k < f.obj.size(); ++k) {
        const bool st = std::isfinite(f.stage_obj[k]);
        pt.v.push_back(st ? f.stage_obj[k] * (1.0 + settings_.reject_margin) : f.obj[k]);
        pt.stage.push_back(st);
      }
      bound->points.push_back(std::move(pt));
    }
  }
  if (settings_.early_reject && settings_.objectives == 1) {
    // Children's first stages are compared with the parents' first stages (the loosest of
    // them): a child is cut only when its first stage is worse than every parent's. Without
    // stage scores (an evaluator without stages) the bound is the worst parent's fitness.
    double stage_bound = 0;
    for (const auto& p : out) stage_bound = std::max(stage_bound, memo_.at(p.key()).stage);
    bound->above = (std::isfinite(stage_bound) ? stage_bound : memo_.at(out.back().key()).ppl) *
                   (1.0 + settings_.reject_margin);
  }
  return out;
}

void EvolutionSearch::sort_population() {
  if (settings_.objectives > 1) {
    // NSGA-II: by non-dominated rank, then by crowding distance (larger first), then by key;
    // rejected candidates (none without early reject) last.
    std::vector<Individual> done, cut;
    for (auto& ind : population_) (memo_.at(ind.key()).rejected ? cut : done).push_back(ind);
    std::vector<std::vector<double>> pts;
    for (const auto& ind : done) pts.push_back(memo_.at(ind.key()).obj);
    const std::vector<int> rank = pareto_ranks(pts);
    const std::vector<double> crowd = crowding_distances(pts, rank);
    std::vector<size_t> order(done.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      if (rank[a] != rank[b]) return rank[a] < rank[b];
      if (crowd[a] != crowd[b]) return crowd[a] > crowd[b];
      return done[a].key() < done[b].key();
    });
    std::sort(cut.begin(), cut.end(),
              [](const Individual& a, const Individual& b) { return a.key() < b.key(); });
    population_.clear();
    for (size_t i : order) population_.push_back(std::move(done[i]));
    for (auto& c : cut) population_.push_back(std::move(c));
    return;
  }
  std::vector<std::pair<Fitness, Individual>> v;
  for (auto& ind : population_) v.emplace_back(memo_.at(ind.key()), std::move(ind));
  std::stable_sort(v.begin(), v.end(), [](const auto& x, const auto& y) {
    if (x.first.better_than(y.first)) return true;
    if (y.first.better_than(x.first)) return false;
    return x.second.key() < y.second.key();
  });
  population_.clear();
  for (auto& p : v) population_.push_back(std::move(p.second));
}

const Individual& EvolutionSearch::pick(const std::vector<Individual>& parents) {
  return parents[std::uniform_int_distribution<size_t>(0, parents.size() - 1)(rng_)];
}

std::optional<Individual> EvolutionSearch::cross(const std::vector<Individual>& parents) {
  const size_t np = parents.size();
  if (np < 2) return mutate(parents[0]);
  const size_t a = std::uniform_int_distribution<size_t>(0, np - 1)(rng_);
  size_t b = std::uniform_int_distribution<size_t>(0, np - 2)(rng_);
  if (b >= a) ++b;
  return crossover(parents[a], parents[b]);
}

void EvolutionSearch::step(Evaluator& ev) {
  std::vector<Individual> children;
  RejectBound bound;
  if (done_ == 0) {
    const auto seeds = rule_seeds(space_);
    std::vector<Individual> base;
    for (const auto& [name, ind] : seeds) {
      if (static_cast<int>(children.size()) >= settings_.population) break;
      if (seen_.insert(ind.key()).second) {
        children.push_back(ind);
        base.push_back(ind);
      }
    }
    int failures = 0;
    while (static_cast<int>(children.size()) < settings_.population && failures < 100) {
      const auto& p = base[std::uniform_int_distribution<size_t>(0, base.size() - 1)(rng_)];
      if (auto c = mutate(p)) {
        children.push_back(std::move(*c));
      } else {
        ++failures;
      }
    }
  } else {
    if (settings_.steady_state) return step_steady(ev);
    std::vector<Individual> parents = this->parents(&bound);
    for (int i = 0; i < settings_.mutations; ++i)
      if (auto c = mutate(pick(parents))) children.push_back(std::move(*c));
    for (int i = 0; i < settings_.crossovers; ++i)
      if (auto c = cross(parents)) children.push_back(std::move(*c));
    population_ = std::move(parents);
  }
  evaluate(ev, children, bound);
  for (const auto& c : children)
    if (memo_.count(c.key())) population_.push_back(c);  // the left out have no fitness
  sort_population();
  log_iteration();
}

void EvolutionSearch::log_iteration() {
  IterationLog L;
  L.iteration = done_;
  L.best_ppl = best_fit_.ppl;
  std::vector<double> ppl;
  for (const auto& ind : population_) {
    const Fitness& f = memo_.at(ind.key());
    if (!f.rejected) ppl.push_back(f.ppl);
  }
  if (!ppl.empty()) {
    std::sort(ppl.begin(), ppl.end());
    const size_t m = ppl.size() / 2;
    L.median_ppl = ppl.size() % 2 ? ppl[m] : 0.5 * (ppl[m - 1] + ppl[m]);
  }
  L.full_evals = full_evals_;
  L.partial_evals = partial_evals_;
  L.elapsed_seconds = eval_seconds_;
  L.front_size = static_cast<int>(front_.size());
  log_.push_back(L);
  ++done_;
}

void EvolutionSearch::step_steady(Evaluator& ev) {
  const int per_iteration = settings_.mutations + settings_.crossovers;
  const bool last = done_ >= settings_.iterations;
  const int slots = std::max(1, ev.slots());
  const size_t keep = static_cast<size_t>(std::max(settings_.population, settings_.parents));
  std::uniform_real_distribution<double> u(0.0, 1.0);
  // Breeds one child from the current population and submits it; false when none was found.
  auto breed = [&]() {
    RejectBound bound;
    const std::vector<Individual> par = parents(&bound);
    const bool mutation = settings_.crossovers == 0 ||
                          u(rng_) * per_iteration < static_cast<double>(settings_.mutations) ||
                          par.size() < 2;
    std::optional<Individual> c = mutation ? mutate(pick(par)) : cross(par);
    if (!c) return false;
    const size_t id = next_id_++;
    ev.submit(id, to_scaling(space_, *c), bound);
    in_flight_.emplace(id, InFlight{std::move(*c), bound});
    return true;
  };
  int finished = 0;
  bool exhausted = false;
  // Evaluations still running when an iteration ends count in the next one; no more are
  // submitted than the budget of the remaining iterations allows, and the last iteration waits
  // for everything it started.
  const int budget = (settings_.iterations - done_ + 1) * per_iteration;
  while (last || finished < per_iteration) {
    while (!exhausted && static_cast<int>(in_flight_.size()) < slots &&
           finished + static_cast<int>(in_flight_.size()) < budget)
      exhausted = !breed();
    if (in_flight_.empty()) break;
    auto [id, r] = ev.next();
    auto it = in_flight_.find(id);
    if (it == in_flight_.end()) throw Error("search: a result for a candidate never submitted");
    const InFlight f = std::move(it->second);
    in_flight_.erase(it);
    record(f.ind, r, f.bound);
    population_.push_back(f.ind);
    sort_population();
    if (population_.size() > keep) population_.resize(keep);
    ++finished;
    if (on_eval) on_eval(finished, per_iteration);
  }
  log_iteration();
}

// ---- checkpoint state
// -----------------------------------------------------------------------------

namespace {

nlohmann::json ind_json(const Individual& i) {
  return {{"l", i.lambda}, {"n", i.n_hat_idx}, {"a", i.attn_idx}};
}
Individual ind_from(const nlohmann::json& j) {
  Individual i;
  i.lambda = j.at("l").get<std::vector<int>>();
  i.n_hat_idx = j.at("n").get<int>();
  i.attn_idx = j.at("a").get<int>();
  return i;
}
nlohmann::json num(double x) {
  return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json();
}
double num_from(const nlohmann::json& j) {
  return j.is_null() ? std::numeric_limits<double>::infinity() : j.get<double>();
}

}  // namespace

nlohmann::json EvolutionSearch::to_json() const {
  std::ostringstream rs;
  rs << rng_;
  nlohmann::json memo = nlohmann::json::object();
  for (const auto& [k, f] : memo_) {
    memo[k] = {{"ppl", num(f.ppl)},
               {"rejected", f.rejected},
               {"bound", num(f.bound)},
               {"partial", num(f.partial)},
               {"stage", num(f.stage)}};
    // Multi-objective only (other files unchanged); null for NaN (unknown: no first stage, or
    // a cut child's staged objectives).
    auto nums = [](const std::vector<double>& v) {
      nlohmann::json a = nlohmann::json::array();
      for (double x : v) a.push_back(num(x));
      return a;
    };
    if (!f.obj.empty()) memo[k]["obj"] = nums(f.obj);
    if (!f.stage_obj.empty()) memo[k]["stage_obj"] = nums(f.stage_obj);
  }
  nlohmann::json pop = nlohmann::json::array();
  for (const auto& i : population_) pop.push_back(ind_json(i));
  nlohmann::json log = nlohmann::json::array();
  for (const auto& L : log_) {
    log.push_back({{"iteration", L.iteration},
                   {"best_ppl", num(L.best_ppl)},
                   {"median_ppl", num(L.median_ppl)},
                   {"full_evals", L.full_evals},
                   {"partial_evals", L.partial_evals},
                   {"elapsed_seconds", L.elapsed_seconds}});
    if (settings_.objectives > 1) log.back()["front_size"] = L.front_size;
  }
  nlohmann::json out = {{"iterations_done", done_},
                        {"rng", rs.str()},
                        {"population", pop},
                        {"memo", memo},
                        {"best", best_.lambda.empty() ? nlohmann::json() : ind_json(best_)},
                        {"best_ppl", num(best_fit_.ppl)},
                        {"full_evals", full_evals_},
                        {"partial_evals", partial_evals_},
                        {"eval_seconds", eval_seconds_},
                        {"log", log}};
  if (settings_.objectives > 1) {
    nlohmann::json front = nlohmann::json::array();
    for (const auto& i : front_) front.push_back(ind_json(i));
    out["front"] = front;
  }
  return out;
}

void EvolutionSearch::restore(const nlohmann::json& j) {
  in_flight_.clear();  // candidates in flight when the checkpoint was written are bred again
  try {
    done_ = j.at("iterations_done").get<int>();
    std::istringstream rs(j.at("rng").get<std::string>());
    rs >> rng_;
    if (rs.fail()) throw Error("bad RNG state");
    population_.clear();
    for (const auto& p : j.at("population")) population_.push_back(ind_from(p));
    memo_.clear();
    seen_.clear();
    for (const auto& [k, f] : j.at("memo").items()) {
      Fitness x;
      x.ppl = num_from(f.at("ppl"));
      x.rejected = f.at("rejected").get<bool>();
      x.bound = num_from(f.at("bound"));
      x.partial = num_from(f.at("partial"));
      if (f.contains("stage")) x.stage = num_from(f.at("stage"));
      auto nums = [](const nlohmann::json& a) {
        std::vector<double> v;
        for (const auto& x : a)
          v.push_back(x.is_null() ? std::numeric_limits<double>::quiet_NaN() : x.get<double>());
        return v;
      };
      if (f.contains("obj")) x.obj = nums(f.at("obj"));
      if (f.contains("stage_obj")) x.stage_obj = nums(f.at("stage_obj"));
      if (settings_.objectives > 1 && !x.rejected &&
          static_cast<int>(x.obj.size()) != settings_.objectives)
        throw Error(fmt::format("memo entry with {} objective value(s), expected {}", x.obj.size(),
                                settings_.objectives));
      memo_.emplace(k, x);
      seen_.insert(k);
    }
    best_ = j.at("best").is_null() ? Individual{} : ind_from(j.at("best"));
    best_fit_ = Fitness{};
    best_fit_.ppl = num_from(j.at("best_ppl"));
    full_evals_ = j.at("full_evals").get<int64_t>();
    partial_evals_ = j.at("partial_evals").get<int64_t>();
    eval_seconds_ = j.at("eval_seconds").get<double>();
    log_.clear();
    for (const auto& L : j.at("log")) {
      IterationLog x;
      x.iteration = L.at("iteration").get<int>();
      x.best_ppl = num_from(L.at("best_ppl"));
      x.median_ppl = num_from(L.at("median_ppl"));
      x.full_evals = L.at("full_evals").get<int64_t>();
      x.partial_evals = L.at("partial_evals").get<int64_t>();
      x.elapsed_seconds = L.at("elapsed_seconds").get<double>();
      x.front_size = L.value("front_size", 0);
      log_.push_back(x);
    }
    front_.clear();
    if (settings_.objectives > 1)
      for (const auto& p : j.at("front")) {
        front_.push_back(ind_from(p));
        if (!memo_.count(front_.back().key()) || memo_.at(front_.back().key()).obj.empty())
          throw Error("front holds an individual that was not evaluated");
      }
    for (const auto& p : population_) {
      if (!is_valid(space_, p) || !memo_.count(p.key()))
        throw Error("population holds an individual outside the search space or not evaluated");
    }
    if (!best_.lambda.empty() && !is_valid(space_, best_))
      throw Error("best individual outside the search space");
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("search state: {} (expected a checkpoint written by longrope search)",
                            e.what()));
  }
}

}  // namespace longrope
