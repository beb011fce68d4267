// The resumable search run (include/longrope/search_run.h).
#include "longrope/search_run.h"

#include <fmt/core.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>

#include "longrope/atomic_file.h"
#include "longrope/dist.h"
#include "longrope/error.h"
#include "longrope/eval.h"
#include "longrope/fingerprint.h"
#include "longrope/interrupt.h"
#include "longrope/kernels.h"
#include "longrope/needle.h"
#include "longrope/perplexity.h"
#include "longrope/plot.h"

namespace longrope {

namespace {

nlohmann::json space_json(const SearchSpace& sp) {
  nlohmann::json j = {{"target_ctx", sp.target_ctx},
                      {"orig_ctx", sp.orig_ctx},
                      {"lambda_max", sp.lambda_max / 100.0},
                      {"n_hat_candidates", sp.n_hat_candidates},
                      {"attn_candidates", sp.attn_candidates}};
  if (!sp.lo.empty()) {  // absent without bounds: older checkpoints still match
    j["lo"] = sp.lo;
    j["hi"] = sp.hi;
  }
  for (const SearchSpace::Seed& e : sp.extra_seeds)  // likewise
    j["seeds"].push_back({{"name", e.name},
                          {"lambda", e.lambda},
                          {"n_hat", e.n_hat},
                          {"attn_factor", e.attn_factor}});
  if (!sp.seed_blends.empty()) j["seed_blends"] = sp.seed_blends;  // likewise
  return j;
}

// The critical dimension the config asks for (-1: none).
int critical_dim_of(const SearchRunConfig& c, const HParams& hp, int64_t orig) {
  if (c.critical_dim == -2) return critical_dim(hp.n_rot, orig, hp.rope_base);
  return c.critical_dim;
}

// What a runtime other than longrope can express (SearchRunConfig::deploy): no start tokens, the
// short set at L_orig only, and for vLLM its own attention factor. A flag asking for more is an
// error, not silently dropped.
void restrict_to_deployment(const SearchRunConfig& c, int64_t orig, SearchSpace& sp) {
  const char* name = deploy_target_name(c.deploy);
  for (int64_t n : c.n_hat)
    if (n != 0)
      throw Error(
          fmt::format("search: {} has no start tokens: --n-hat-candidates {} cannot run there "
                      "(expected --n-hat-candidates 0, or --deploy longrope)",
                      name, n));
  sp.n_hat_candidates = {0};
  if (c.short_ctx && *c.short_ctx != orig)
    throw Error(
        fmt::format("search: {} switches to the short set at the original context {}: "
                    "--short-ctx {} cannot run there (expected --short-ctx {})",
                    name, orig, *c.short_ctx, orig));
  if (c.deploy != DeployTarget::kVllm) return;
  const double a = vllm_attn_factor(sp.target_ctx, orig);
  auto other = [a](double x) { return std::abs(x - a) > 1e-9; };
  if ((c.attn_factor && other(*c.attn_factor)) ||
      std::any_of(c.attn_candidates.begin(), c.attn_candidates.end(), other))
    throw Error(
        fmt::format("search: vllm computes the attention factor itself ({:.6g} at this "
                    "target): --attn-factor and --attn-candidates cannot change it",
                    a));
  sp.attn_candidates = {a};
}

// A short set up to N <= L_orig without --short-lambda-max is the plain model: nothing to search.
bool short_set_is_plain(const SearchRunConfig& c, int64_t orig) {
  return c.short_ctx && *c.short_ctx <= orig && !c.short_lambda_max;
}

nlohmann::json log_json(const EvolutionSearch& s) {
  nlohmann::json it = nlohmann::json::array();
  for (const auto& L : s.log())
    it.push_back({{"iteration", L.iteration},
                  {"best_ppl", L.best_ppl},
                  {"median_ppl", L.median_ppl},
                  {"full_evals", L.full_evals},
                  {"partial_evals", L.partial_evals},
                  {"elapsed_seconds", L.elapsed_seconds}});
  const int64_t n = s.full_evals() + s.partial_evals();
  return {{"target_ctx", s.space().target_ctx},
          {"best_ppl", s.best_ppl()},
          {"full_evals", s.full_evals()},
          {"partial_evals", s.partial_evals()},
          {"eval_seconds", s.eval_seconds()},
          {"seconds_per_eval", n ? s.eval_seconds() / static_cast<double>(n) : 0.0},
          {"iterations", it}};
}

// ---- the wire format of a candidate between ranks ---------------------------------------------
// Task: {"p": phase, "f": factors, "n": n_hat, "a": attention factor, "b": bound (null = none),
// and with the front's points (several objectives) "pts": [[values]], "pst": [[is a stage]]}.
// Result: {"ppl", "rej", "tok", "stage" (absent = none), "s", "o" and "so" (several
// objectives; null for NaN)}. JSON numbers round-trip exactly.

std::string encode_task(int phase, const RopeScaling& s, const RejectBound& bound) {
  nlohmann::json j = {
      {"p", phase},
      {"f", s.sets.at(0).factors},
      {"n", s.n_hat},
      {"a", *s.attn_factor},
      {"b", std::isfinite(bound.above) ? nlohmann::json(bound.above) : nlohmann::json()}};
  if (!bound.points.empty()) {
    nlohmann::json pts = nlohmann::json::array(), pst = nlohmann::json::array();
    for (const RejectBound::Point& p : bound.points) {
      pts.push_back(p.v);
      pst.push_back(p.stage);
    }
    j["pts"] = pts;
    j["pst"] = pst;
  }
  return j.dump();
}

nlohmann::json nullable(const std::vector<double>& v) {
  nlohmann::json j = nlohmann::json::array();
  for (double x : v) j.push_back(std::isfinite(x) ? nlohmann::json(x) : nlohmann::json());
  return j;
}
std::vector<double> from_nullable(const nlohmann::json& j) {
  std::vector<double> v;
  for (const auto& x : j)
    v.push_back(x.is_null() ? std::numeric_limits<double>::quiet_NaN() : x.get<double>());
  return v;
}

std::string encode_result(const EvalResult& r) {
  nlohmann::json j = {{"ppl", std::isfinite(r.ppl) ? nlohmann::json(r.ppl) : nlohmann::json()},
                      {"rej", r.rejected},
                      {"tok", r.tokens},
                      {"s", r.seconds}};
  if (std::isfinite(r.stage_ppl)) j["stage"] = r.stage_ppl;
  if (!r.objectives.empty()) j["o"] = nullable(r.objectives);
  if (!r.stage_objectives.empty()) j["so"] = nullable(r.stage_objectives);
  return j.dump();
}

EvalResult decode_result(const std::string& m) {
  const nlohmann::json j = nlohmann::json::parse(m);
  EvalResult r;
  r.ppl =
      j.at("ppl").is_null() ? std::numeric_limits<double>::infinity() : j.at("ppl").get<double>();
  r.rejected = j.at("rej").get<bool>();
  r.tokens = j.at("tok").get<int64_t>();
  r.seconds = j.at("s").get<double>();
  if (j.contains("stage")) r.stage_ppl = j.at("stage").get<double>();
  if (j.contains("o")) r.objectives = from_nullable(j.at("o"));
  if (j.contains("so")) r.stage_objectives = from_nullable(j.at("so"));
  return r;
}

// Every occurrence of `what` in s removed.
std::string erase_all(std::string s, const std::string& what) {
  if (what.empty()) return s;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at))
    s.erase(at, what.size());
  return s;
}

// The front of a two-objective search as a picture (OUTPUT.front.svg, and .png with PLplot): the
// sets on the front as a line of points in order of the first objective, the picked set, and each
// rule seed that was evaluated as a point of its own. Seeds far outside the front (beyond twice
// its largest value in either objective, e.g. linear interpolation) would squash it and are
// named in the title instead. Returns the files written.
std::vector<std::string> write_front_plot(const std::string& stem, const nlohmann::json& front,
                                          const nlohmann::json& seeds,
                                          const std::vector<std::string>& objectives,
                                          const std::string& pick, int64_t target_ctx) {
  if (objectives.size() != 2 || front.empty()) return {};
  const std::string& o0 = objectives[0];
  const std::string& o1 = objectives[1];
  PlotSeries line{"front (searched sets)", {}, {}, {}, {}};
  PlotSeries picked{"picked (--pick " + pick + ")", {}, {}, {}, {}};
  double max0 = 0, max1 = 0;
  for (const auto& e : front) {
    const double x = e["objectives"][o0].get<double>(), y = e["objectives"][o1].get<double>();
    line.x.push_back(x);
    line.y.push_back(y);
    max0 = std::max(max0, x);
    max1 = std::max(max1, y);
    if (e.value("picked", false)) {
      picked.x.push_back(x);
      picked.y.push_back(y);
    }
  }
  PlotSpec spec;
  spec.log_x = false;
  spec.xlabel = fitness_name(o0, 0) + " (lower is better)";
  spec.ylabel = fitness_name(o1, 0) + " (lower is better)";
  spec.series.push_back(line);
  if (!picked.x.empty()) spec.series.push_back(picked);
  std::string off;
  std::vector<std::string> names;
  for (const auto& [name, v] : seeds.items()) names.push_back(name);
  const std::vector<std::string> labels = front_plot_labels(names);
  size_t i = 0;
  for (const auto& [name, v] : seeds.items()) {
    const std::string& label = labels[i++];
    if (!v.is_object() || !v.contains(o0) || !v.contains(o1)) continue;
    const double x = v[o0].get<double>(), y = v[o1].get<double>();
    if (x > 2 * max0 || y > 2 * max1) {
      off += (off.empty() ? "" : ", ") + label;
      continue;
    }
    spec.series.push_back(PlotSeries{label, {x}, {y}, {}, {}});
  }
  spec.title = fmt::format("Pareto front at {} tokens: {} sets{}", target_ctx, front.size(),
                           off.empty() ? "" : " (off the axes: " + off + ")");
  std::vector<std::string> out = {stem + ".svg"};
  write_plot_svg(spec, out[0]);
  if (plot_png_supported()) {
    out.push_back(stem + ".png");
    write_plot_png(spec, out[1]);
  }
  return out;
}

}  // namespace

std::vector<std::string> front_plot_labels(const std::vector<std::string>& seed_names) {
  const std::string ext = ".json";
  std::vector<std::string> files;
  for (const std::string& n : seed_names)
    if (n.rfind("blend(", 0) != 0 && n.size() > ext.size() &&
        n.compare(n.size() - ext.size(), ext.size(), ext) == 0)
      files.push_back(n);
  std::string prefix;
  if (files.size() >= 2) {
    prefix = files[0];
    for (const std::string& f : files) {
      size_t k = 0;
      while (k < prefix.size() && k < f.size() && prefix[k] == f[k]) ++k;
      prefix.resize(k);
    }
    const size_t cut = prefix.find_last_of("-_/");
    prefix = cut == std::string::npos ? "" : prefix.substr(0, cut + 1);
  }
  std::vector<std::string> out;
  for (const std::string& n : seed_names) {
    std::string label = erase_all(n, ext);
    // Only the files' own prefix: a rule seed's name is left alone.
    if (label != n) label = erase_all(label, prefix);
    out.push_back(label);
  }
  return out;
}

bool reproducible_outputs() {
  return std::getenv("SOURCE_DATE_EPOCH") != nullptr;
}

std::string provenance_date() {
  std::time_t t = std::time(nullptr);
  if (const char* e = std::getenv("SOURCE_DATE_EPOCH")) t = static_cast<std::time_t>(std::atoll(e));
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// ---- the evaluator that spreads a generation over ranks ---------------------------------------

namespace {

class FarmEvaluator : public Evaluator {
 public:
  FarmEvaluator(int phase, std::string phase_name,
                std::function<std::string(const std::string&)> task, bool root_computes)
      : phase_(phase), name_(std::move(phase_name)) {
    dist::FarmOptions opt;
    opt.root_computes = root_computes;
    opt.label = [this](size_t id) {
      auto it = labels_.find(id);
      return it == labels_.end() ? fmt::format("candidate {}", id) : it->second;
    };
    pool_ = std::make_unique<dist::Pool>(std::move(task), std::move(opt));
  }
  int iteration = 0;
  // The time budget: evaluations stop once the steady clock passes it (checked as each one
  // finishes, like a stop request).
  std::optional<std::chrono::steady_clock::time_point> deadline;
  bool budget_spent() const { return deadline && std::chrono::steady_clock::now() >= *deadline; }

  EvalResult evaluate(const RopeScaling& s, const RejectBound& reject_above) override {
    return evaluate_batch({s}, reject_above, {}).at(0);
  }
  // The results of the running iteration by task (what an interrupted run saves), and results
  // read back from such a checkpoint, used instead of evaluating the same task again.
  nlohmann::json finished = nlohmann::json::object();
  std::map<std::string, std::string> cache;
  // Only the cached results: the candidates without one come back left out (EvalResult::left_out)
  // instead of being evaluated.
  bool replay_only = false;

  std::vector<EvalResult> evaluate_batch(const std::vector<RopeScaling>& batch,
                                         const RejectBound& bound,
                                         const std::function<void(size_t)>& done) override {
    const size_t base = next_id_;
    next_id_ += batch.size();
    std::vector<EvalResult> out(batch.size());
    size_t in_pool = 0;
    batch_done.clear();
    for (size_t i = 0; i < batch.size(); ++i) {
      std::string msg = encode_task(phase_, batch[i], bound);
      if (auto it = cache.find(msg); it != cache.end()) {
        out[i] = decode_result(it->second);
        batch_done.push_back(out[i]);
        finished[msg] = it->second;
        if (done) done(i);
        continue;
      }
      if (replay_only) {
        out[i].left_out = true;
        continue;
      }
      labels_[base + i] = fmt::format("candidate {} of {} in iteration {} of the {} search", i + 1,
                                      batch.size(), iteration, name_);
      pool_->submit(base + i, msg);
      tasks_[base + i] = std::move(msg);
      ++in_pool;
    }
    for (size_t k = 0; k < in_pool; ++k) {
      auto [id, m] = pool_->next();
      out[id - base] = decode_result(m);
      batch_done.push_back(out[id - base]);
      computed(out[id - base]);
      arrived(id, m);
      if (done) done(id - base);
      stop_point();
    }
    return out;
  }
  int slots() const override { return pool_->slots(); }
  void submit(size_t id, const RopeScaling& s, const RejectBound& bound) override {
    std::string msg = encode_task(phase_, s, bound);
    if (auto it = cache.find(msg); it != cache.end()) {
      finished[msg] = it->second;
      ready_.emplace_back(id, decode_result(it->second));
      return;
    }
    const size_t mine = next_id_++;
    ids_[mine] = id;
    labels_[mine] =
        fmt::format("candidate {} (iteration {} of the {} search)", id + 1, iteration, name_);
    pool_->submit(mine, msg);
    tasks_[mine] = std::move(msg);
  }
  std::pair<size_t, EvalResult> next() override {
    if (!ready_.empty()) {
      auto r = std::move(ready_.front());
      ready_.pop_front();
      return r;
    }
    stop_point();
    auto [mine, m] = pool_->next();
    arrived(mine, m);
    const size_t id = ids_.at(mine);
    ids_.erase(mine);
    EvalResult r = decode_result(m);
    computed(r);
    return {id, std::move(r)};
  }
  // Evaluations computed by this run (not read back from a checkpoint) and the tokens they
  // scored, first stages and cut candidates included: the measured cost behind the ETA.
  int64_t evals_computed = 0, tokens_computed = 0;
  // The results of the running generation so far, in the order they came: the search records
  // them (in candidate order) only when the generation ends, and progress shows them before.
  std::vector<EvalResult> batch_done;

 private:
  int phase_;
  std::string name_;
  std::unique_ptr<dist::Pool> pool_;
  void computed(const EvalResult& r) {
    ++evals_computed;
    tokens_computed += r.tokens;
  }
  // A result came back for pool id `id`: kept for a checkpoint of an interrupted iteration.
  void arrived(size_t id, const std::string& m) {
    labels_.erase(id);
    finished[tasks_.at(id)] = m;
    tasks_.erase(id);
  }
  void stop_point() const {
    if (stop_requested() || budget_spent()) throw Interrupted("interrupted");
  }

  size_t next_id_ = 0;
  std::map<size_t, std::string> labels_;             // of the candidates in the pool
  std::map<size_t, std::string> tasks_;              // pool id -> task message
  std::map<size_t, size_t> ids_;                     // pool id -> the search's id (steady state)
  std::deque<std::pair<size_t, EvalResult>> ready_;  // cached results not yet returned by next()
};

}  // namespace

// ---- SearchRun --------------------------------------------------------------------------------

struct SearchRun::Impl {
  std::shared_ptr<const Model> model;
  SearchRunConfig cfg;
  int64_t orig = 0;
  SearchSpace space;
  // The long search's evaluator (a MultiObjectiveEvaluator for several objectives) and its first
  // part, whose windows the fingerprint names; the short search's (its first objective only).
  std::unique_ptr<Evaluator> long_ev;
  PerplexityEvaluator* long_first = nullptr;
  std::unique_ptr<PerplexityEvaluator> short_ev;
  std::vector<std::string> objectives;  // the fitness names, in order
  PickRule pick;                        // several objectives: how -o's set is chosen
  nlohmann::json fingerprint;
  std::string texts_fingerprint;  // of the texts' tokens, as eval's results key them
  nlohmann::json ck_settings;
  std::vector<std::string> warnings;
  std::vector<std::string> staged_objectives;  // several objectives: those with a first stage

  // A candidate from another rank (or this one): decode, evaluate locally, encode.
  std::string evaluate_task(const std::string& m) const {
    const nlohmann::json j = nlohmann::json::parse(m);
    const int phase = j.at("p").get<int>();
    Evaluator* ev = phase == 0 ? long_ev.get() : short_ev.get();
    if (!ev) throw Error("a short-set candidate, but this rank has no --short-ctx");
    RopeScaling s;
    s.method = RopeMethod::kLongrope;
    s.sets.push_back(FactorSet{j.at("f").get<std::vector<double>>(), 0});
    s.n_hat = j.at("n").get<int64_t>();
    s.attn_factor = j.at("a").get<double>();
    s.orig_ctx = orig;
    s.target_ctx = phase == 0 ? cfg.target_ctx : *cfg.short_ctx;
    // The factors are relative to the model's own frequencies (its rope_freqs divisors, e.g.
    // Llama 3's), so lambda = 1 is the trained rotation.
    s.freq_factors = model->default_rope().freq_factors;
    RejectBound bound;
    if (!j.at("b").is_null()) bound.above = j.at("b").get<double>();
    if (j.contains("pts")) {
      const auto& pst = j.at("pst");
      for (size_t i = 0; i < j.at("pts").size(); ++i)
        bound.points.push_back(
            {j.at("pts")[i].get<std::vector<double>>(), pst.at(i).get<std::vector<bool>>()});
    }
    return encode_result(ev->evaluate(s, bound));
  }

  // The evaluation of a candidate from a farm's rank: evaluate_task, as the farms take it.
  std::function<std::string(const std::string&)> task() {
    return [this](const std::string& m) { return evaluate_task(m); };
  }

  // What run() takes from a checkpoint it resumes: the checkpoint, whether its run had the front's
  // early reject off, and the warnings on how it continues.
  struct Resumed {
    nlohmann::json ck;
    bool front_reject_off = false;
    std::vector<std::string> warnings;
  };
  // Reads the checkpoint to resume and checks it matches this run (its fingerprint and settings);
  // a run started without the front's early reject continues without it (ck_settings too).
  Resumed read_checkpoint(const std::string& ckpt_path);

  struct Run;  // one run() call (below)
};

SearchRun::SearchRun(std::shared_ptr<const Model> model, SearchRunConfig cfg)
    : p_(std::make_unique<Impl>()) {
  Impl& p = *p_;
  p.model = std::move(model);
  p.cfg = std::move(cfg);
  const SearchRunConfig& c = p.cfg;
  const HParams& hp = p.model->hp();
  const int64_t L = c.target_ctx;
  p.orig = c.orig_ctx.value_or(hp.n_ctx_train);
  if (L <= p.orig)
    throw Error(
        fmt::format("search: -c {} is not above the original context {} (expected target > "
                    "original)",
                    L, p.orig));
  if (c.short_ctx && *c.short_ctx >= L)
    throw Error(fmt::format("search: --short-ctx {} is not below -c {} (expected short < target)",
                            *c.short_ctx, L));
  if (c.texts.empty()) throw Error("search: no text file given (-f TEXT[,TEXT...])");

  // Texts -> one token stream -> windows.
  std::vector<int32_t> tokens;
  std::vector<std::vector<int32_t>> per_text;
  for (const auto& path : c.texts) {
    per_text.push_back(p.model->tokenizer().encode(normalize_newlines(read_text_file(path))));
    tokens.insert(tokens.end(), per_text.back().begin(), per_text.back().end());
  }
  // The texts' fingerprint as eval's results name it (texts_fingerprint: the same tokens).
  p.texts_fingerprint = tokens_fingerprint(per_text);
  const int32_t bos = p.model->file().vocab.bos;
  p.objectives = split_fitness(c.fitness);
  const bool multi = p.objectives.size() > 1;
  if (multi && c.settings.objectives != static_cast<int>(p.objectives.size()))
    throw Error(fmt::format("search: --fitness {} names {} objectives but the settings ask for {}",
                            c.fitness, p.objectives.size(), c.settings.objectives));
  nlohmann::json fitness;  // null for perplexity; several objectives: one key (or "ppl") each
  try {
    if (!multi) {
      fitness = fitness_key(c.fitness, c.needles, c.needle_seed, c.needle_weight);
    } else {
      for (const std::string& f : p.objectives) {
        const nlohmann::json k = fitness_key(f, c.needles, c.needle_seed, c.needle_weight);
        fitness.push_back(k.is_null() ? nlohmann::json("ppl") : k);
      }
    }
  } catch (const Error& e) {
    throw Error(fmt::format("search: {}", e.what()));
  }
  const bool needle = !fitness.is_null();  // needle windows (--fitness needle and mix)
  // The evaluator of one fitness over windows of ctx tokens (for a needle fitness, needle
  // windows and their scored positions).
  auto evaluator_of = [&](const std::string& name, int64_t ctx) {
    const bool needles = name != "ppl";
    const bool mixed = name == "mix";
    NeedleWindows w;
    try {
      if (needles) {
        w = make_needle_windows(p.model->tokenizer(), tokens, ctx, c.docs, c.needles,
                                c.needle_seed);
      } else {
        w.tokens = make_windows(tokens, bos, ctx, c.docs);
      }
    } catch (const Error& e) {
      throw Error(fmt::format("search: too little text for {} window(s) of {} tokens: {}", c.docs,
                              ctx, e.what()));
    }
    std::unique_ptr<PerplexityEvaluator> ev =
        needles ? std::make_unique<PerplexityEvaluator>(p.model, std::move(w.tokens),
                                                        std::move(w.positions), c.n_threads, p.orig,
                                                        mixed ? c.needle_weight : 1.0)
                : std::make_unique<PerplexityEvaluator>(p.model, std::move(w.tokens), c.n_threads,
                                                        p.orig, c.reject_stage);
    ev->set_compute(c.compute);
    return ev;
  };
  if (!multi) {
    auto ev = evaluator_of(p.objectives[0], L);
    p.long_first = ev.get();
    p.long_ev = std::move(ev);
  } else {
    std::vector<std::unique_ptr<Evaluator>> parts;
    for (const std::string& f : p.objectives) {
      parts.push_back(evaluator_of(f, L));
      if (parts.back()->has_stage()) p.staged_objectives.push_back(f);
      if (!p.long_first) p.long_first = static_cast<PerplexityEvaluator*>(parts.back().get());
    }
    p.long_ev = std::make_unique<MultiObjectiveEvaluator>(std::move(parts));
  }
  // The short set: its first objective only (one fitness below the long set's lengths).
  if (c.short_ctx && !short_set_is_plain(c, p.orig))
    p.short_ev = evaluator_of(p.objectives[0], *c.short_ctx);

  SearchSpace& sp = p.space;
  sp = default_search_space(hp, p.orig, L, c.lambda_max);
  if (!c.n_hat.empty()) sp.n_hat_candidates = c.n_hat;
  if (c.attn_factor && !c.attn_candidates.empty())
    throw Error(
        "search: --attn-factor fixes the attention factor and --attn-candidates lists "
        "several; expected at most one of them");
  if (c.attn_factor) sp.attn_candidates = {*c.attn_factor};
  if (!c.attn_candidates.empty()) sp.attn_candidates = c.attn_candidates;
  if (c.deploy != DeployTarget::kLongrope) restrict_to_deployment(c, p.orig, sp);
  if (const int k = critical_dim_of(c, hp, p.orig); k >= 0)
    apply_critical_dim(sp, k, c.critical_margin);
  for (const std::string& f : c.seed_factors) {
    const RopeScaling prev = read_factors_file(f);
    const std::string name = path_name(f);
    const double attn =
        prev.tables(prev.target_ctx > 0 ? prev.target_ctx : L, hp.n_rot, hp.rope_base, p.orig)
            .attn_factor;
    std::vector<double> lam = prev.sets.back().factors;
    const bool shorter = prev.target_ctx > 0 && prev.target_ctx < L;
    if (!shorter || !c.seed_stretched_only) sp.extra_seeds.push_back({name, lam, prev.n_hat, attn});
    if (shorter) {
      const double r = double(L) / double(prev.target_ctx);
      for (double& x : lam) x *= r;
      sp.extra_seeds.push_back({fmt::format("{} x {:g}", name, r), lam, prev.n_hat, attn});
    }
  }
  sp.seed_blends = c.seed_blends;
  validate_space(sp);
  if (multi) {
    try {
      p.pick = parse_pick(c.pick, p.objectives);
    } catch (const Error& e) {
      throw Error(fmt::format("search: {}", e.what()));
    }
    if (!p.pick.bound_ref.empty()) {
      // The reference must be a seed of the initial population, so that its values are known.
      const auto seeds = rule_seeds(sp);
      std::string names;
      size_t at = seeds.size();
      for (size_t i = 0; i < seeds.size(); ++i) {
        names += (i ? ", " : "") + seeds[i].first;
        if (seeds[i].first == p.pick.bound_ref) at = i;
      }
      if (at == seeds.size())
        throw Error(fmt::format("search: --pick {}: no seed named {} (the seeds are {})", c.pick,
                                p.pick.bound_ref, names));
      if (static_cast<int>(at) >= c.settings.population)
        throw Error(fmt::format(
            "search: --pick {}: seed {} is not in an initial population of {} (expected "
            "--population above {})",
            c.pick, p.pick.bound_ref, c.settings.population, at));
    }
  } else if (c.pick != "knee") {
    throw Error(
        fmt::format("search: --pick {} needs several objectives (e.g. --fitness "
                    "ppl,needle)",
                    c.pick));
  }

  p.fingerprint = {{"model", model_fingerprint(*p.model)},
                   {"text", tokens_fingerprint(p.long_first->windows())},
                   {"target_ctx", L},
                   {"orig_ctx", p.orig},
                   {"docs", c.docs},
                   // A plain short set evaluates nothing: a run may be resumed to add one.
                   {"short_ctx", p.short_ev ? *c.short_ctx : 0},
                   // bf16 and FP32 fitness values must not mix in one run.
                   {"compute", kernels::compute_name(c.compute)}};
  p.ck_settings = c.settings.to_json();
  p.ck_settings["space"] = space_json(sp);
  p.ck_settings["short_lambda_max"] = c.short_lambda_max ? *c.short_lambda_max : 0.0;
  p.ck_settings["reject_stage"] = c.reject_stage;
  // First-stage perplexities over the tokens beyond the original context: not comparable with
  // those of checkpoints written before (whole-prefix stages).
  p.ck_settings["stage"] = "beyond-orig";
  if (c.deploy != DeployTarget::kLongrope)  // absent for longrope: older checkpoints still match
    p.ck_settings["deploy"] = deploy_target_name(c.deploy);
  if (needle) {  // absent for the perplexity fitness: older checkpoints still match
    p.ck_settings["fitness"] = fitness;
    p.fingerprint["fitness"] = c.fitness;
  }
  // --pick is not here: a finished run may be resumed to pick another set from its front.

  if (c.settings.early_reject && multi && p.staged_objectives.empty())
    p.warnings.push_back(fmt::format(
        "early reject is off: none of the objectives {} has a first stage (a needle fitness "
        "cuts on window 0, which needs --docs 2 or more; perplexity on a window longer than the "
        "original context)",
        fmt::join(p.objectives, ",")));
  if (c.settings.early_reject && !multi) {
    auto check = [&](const PerplexityEvaluator& ev, int64_t len, const char* phase) {
      if (ev.stage().on()) return;
      if (needle) {
        p.warnings.push_back(fmt::format(
            "early reject is off for the {} search: a {} fitness cuts on window 0, which "
            "needs --docs 2 or more",
            phase, c.fitness));
        return;
      }
      p.warnings.push_back(fmt::format(
          "early reject is off for the {} search: its first stage ({} tokens of a {}-token "
          "window) would score no token beyond the original context {} (docs/search.md)",
          phase, c.reject_stage > 0 ? std::min(c.reject_stage, len) : len, len, p.orig));
    };
    check(*p.long_first, L, "long");
    if (p.short_ev) check(*p.short_ev, *c.short_ctx, "short");
  }
}

const std::vector<std::string>& SearchRun::warnings() const {
  return p_->warnings;
}

SearchRun::~SearchRun() = default;

const nlohmann::json& SearchRun::fingerprint() const {
  return p_->fingerprint;
}
const SearchSpace& SearchRun::space() const {
  return p_->space;
}
size_t SearchRun::window_count() const {
  return p_->long_first->windows().size();
}

void SearchRun::serve() {
  dist::serve([this](const std::string& m) { return p_->evaluate_task(m); });
}

// ---- SearchRun::run ---------------------------------------------------------------------------

namespace {

// Refuses to replace what the user owns (an input, an earlier run's checkpoint), and fails on an
// unwritable output.
void check_outputs(const SearchRunConfig& c, const std::string& ckpt_path,
                   const std::string& log_path) {
  std::vector<std::string> inputs = c.texts;
  inputs.push_back(c.model_path);
  inputs.insert(inputs.end(), c.seed_factors.begin(), c.seed_factors.end());
  for (const std::string& path :
       {c.output, ckpt_path, log_path, c.output + ".front.svg", c.output + ".front.png"})
    refuse_output_over_inputs("search", path, inputs);
  refuse_existing_state("search", ckpt_path, c.resume, c.overwrite);
  // An unwritable output fails now, not after the first iteration has been paid for.
  for (const std::string& path : {c.output, ckpt_path, log_path}) check_writable(path);
}

// The checkpoint at ckpt_path (written by a run with -o output), checked to be a search
// checkpoint.
nlohmann::json parse_checkpoint(const std::string& ckpt_path, const std::string& output) {
  std::ifstream f(ckpt_path);
  if (!f)
    throw Error(
        fmt::format("search: --resume but no checkpoint at {} (expected the file written by an "
                    "earlier run with -o {})",
                    ckpt_path, output));
  nlohmann::json ck;
  try {
    ck = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception&) {
    throw Error(fmt::format(
        "{}: corrupt checkpoint (not valid JSON); delete it and start again without --resume",
        ckpt_path));
  }
  if (!ck.is_object() || ck.value("format", "") != "longrope-search-checkpoint" ||
      !ck.contains("fingerprint") || !ck.contains("settings") || !ck.contains("long"))
    throw Error(
        fmt::format("{}: corrupt checkpoint (expected a longrope search checkpoint)", ckpt_path));
  return ck;
}

// The settings a run searches with: the config's, recording seconds unless the outputs must be
// reproducible, without the front's early reject when the resumed run had none.
SearchSettings run_settings(const SearchSettings& configured, bool front_reject_off) {
  SearchSettings settings = configured;
  settings.record_seconds = !reproducible_outputs();
  if (front_reject_off) settings.front_reject = false;
  return settings;
}

// The end of a time budget of `seconds` from now (none without a budget).
std::optional<std::chrono::steady_clock::time_point> budget_deadline(double seconds) {
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (seconds > 0)
    deadline = std::chrono::steady_clock::now() +
               std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                   std::chrono::duration<double>(seconds));
  return deadline;
}

}  // namespace

SearchRun::Impl::Resumed SearchRun::Impl::read_checkpoint(const std::string& ckpt_path) {
  Resumed r;
  r.ck = parse_checkpoint(ckpt_path, cfg.output);
  nlohmann::json& ck = r.ck;
  // Checkpoints written before the one model fingerprint name the model by its legacy one.
  if (ck["fingerprint"].value("model", "") == legacy_model_fingerprint(*model))
    ck["fingerprint"]["model"] = fingerprint["model"];
  for (const auto& [k, v] : fingerprint.items()) {
    if (ck["fingerprint"].value(k, nlohmann::json()) != v)
      throw Error(
          fmt::format("{}: checkpoint is for another {} ({} there, {} here); refusing to resume",
                      ckpt_path, k == "text" ? "text/window set" : k,
                      ck["fingerprint"].value(k, nlohmann::json()).dump(), v.dump()));
  }
  // A multi-objective run started without the front's early reject continues without it.
  if (objectives.size() > 1 && ck_settings.contains("front_reject") && ck["settings"].is_object() &&
      !ck["settings"].contains("front_reject")) {
    nlohmann::json without = ck_settings;
    without.erase("front_reject");
    if (ck["settings"] == without) {
      ck_settings = without;
      r.front_reject_off = true;
      r.warnings.push_back(
          "this checkpoint's run was started without the front's early reject; it continues "
          "without it");
    }
  }
  if (ck["settings"] != ck_settings)
    throw Error(
        fmt::format("{}: checkpoint was written with other search settings ({}); expected the "
                    "same flags except --iterations",
                    ckpt_path, ck["settings"].dump()));
  return r;
}

// One run() call: the checkpoint it resumes from, the long and short searches with their
// evaluators, the states its checkpoint is written from, and the result it makes.
struct SearchRun::Impl::Run {
  using ProgressFn = std::function<void(const SearchProgress&)>;
  // Sets up the evaluators (with the budget's deadline) and the long search, restored from the
  // checkpoint when resuming.
  Run(Impl& impl, const ProgressFn& progress_fn, std::string ckpt, std::string log,
      Resumed resumed);

  // Restores a search from its state in the checkpoint.
  void restore(EvolutionSearch& srch, const nlohmann::json& j) const;
  // Gives an interrupted iteration's finished evaluations to its evaluator, to be reused when the
  // iteration runs again.
  void restore_pending();
  // Writes the checkpoint (with phase pending_phase's finished evaluations of an interrupted
  // iteration: 0 long, 1 short) and the log.
  void save(int pending_phase = -1);
  // Reports a phase's progress (done of total evaluations of its iteration), when asked for;
  // `running`: the share done of the evaluation in progress in this process (Evaluator::
  // set_on_fraction), which moves the tokens done (never backwards) and left.
  void report(SearchProgress& pr, const EvolutionSearch& srch, const FarmEvaluator& ev, int phase,
              int done, int total, double running = 0) const;
  // Runs a phase's iterations until its last or the budget, saving as it goes (state: the
  // search's state after its last finished iteration).
  void run_phase(EvolutionSearch& srch, FarmEvaluator& ev, const char* label, nlohmann::json& state,
                 int phase);
  // The budget ended inside the initial population: makes the long search's result from the
  // candidates it evaluated (the checkpoint keeps them as they were saved, for --resume), or
  // throws when there are none.
  void close_initial_population();
  // The objectives' values by name (several objectives).
  nlohmann::json named(const std::vector<double>& v) const;
  // The pick rule, with the value of its reference seed when it has one.
  PickRule pick_rule() const;
  // Sets the result from the long search: its best set, or with several objectives the set the
  // pick rule takes from its front (kept for the factors file, the picked set marked).
  void pick_result();
  // Whether the short set has an attention factor of its own (only longrope runs one).
  bool own_short_attn() const { return c.deploy == DeployTarget::kLongrope; }
  // Makes the result's short set the plain model.
  void plain_short_set();
  // Leaves the result without a searched short set.
  void without_short_set();
  // Adds the short set (--short-ctx) to the result: plain, left out when the budget is spent, or
  // searched.
  void add_short_set();
  // The short search's space at N tokens.
  SearchSpace short_space(int64_t N) const;
  // Searches the short set, starting from the long set's n_hat and attention factor.
  void search_short_set();
  // The rule seeds' values as the long search evaluated them (the rejected left out).
  nlohmann::json seed_values() const;
  // The search's settings as the provenance records them.
  nlohmann::json search_json() const;
  // The factors file's provenance.
  nlohmann::json provenance(const nlohmann::json& seeds) const;
  // Writes the factors file and the front's plot; returns what the run found.
  SearchRunResult write_outputs();

  Impl& p;
  const SearchRunConfig& c;
  const SearchSpace& sp;
  const ProgressFn& progress;
  const std::string ckpt_path, log_path;
  nlohmann::json ck;                  // the checkpoint resumed from (null for a new run)
  std::vector<std::string> warnings;  // found while running
  const SearchSettings settings;
  FarmEvaluator long_farm, short_farm;
  const std::optional<std::chrono::steady_clock::time_point> deadline;  // of the budget
  bool budget_spent = false;
  EvolutionSearch lng;
  std::optional<EvolutionSearch> shrt;
  nlohmann::json short_basis;  // the long set's n_hat and attention factor the short search keeps
  // The states at the end of the last finished iteration (what a checkpoint holds).
  nlohmann::json long_state, short_state;
  // The result, and with several objectives the front, the picked set's values and a pick note.
  RopeScaling result;
  nlohmann::json front;
  std::vector<double> picked;
  std::string pick_note;
};

SearchRun::Impl::Run::Run(Impl& impl, const ProgressFn& progress_fn, std::string ckpt,
                          std::string log, Resumed resumed)
    : p(impl),
      c(impl.cfg),
      sp(impl.space),
      progress(progress_fn),
      ckpt_path(std::move(ckpt)),
      log_path(std::move(log)),
      ck(std::move(resumed.ck)),
      warnings(std::move(resumed.warnings)),
      settings(run_settings(c.settings, resumed.front_reject_off)),
      long_farm(0, "long", impl.task(), c.root_computes),
      short_farm(1, "short", impl.task(), c.root_computes),
      deadline(budget_deadline(c.budget_seconds)),
      lng(sp, settings) {
  long_farm.deadline = short_farm.deadline = deadline;
  if (c.resume) restore(lng, ck["long"]);
  restore_pending();
  long_state = lng.to_json();
}

void SearchRun::Impl::Run::restore(EvolutionSearch& srch, const nlohmann::json& j) const {
  try {
    srch.restore(j);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: corrupt checkpoint: {}", ckpt_path, e.what()));
  }
}

void SearchRun::Impl::Run::restore_pending() {
  if (c.resume && ck.contains("pending") && ck["pending"].is_object()) {
    try {
      FarmEvaluator& f = ck["pending"].at("phase").get<int>() == 0 ? long_farm : short_farm;
      for (const auto& [task, result] : ck["pending"].at("results").items())
        f.cache[task] = result.get<std::string>();
    } catch (const nlohmann::json::exception& e) {
      throw Error(fmt::format("{}: corrupt checkpoint: pending results: {}", ckpt_path, e.what()));
    }
  }
}

void SearchRun::Impl::Run::save(int pending_phase) {
  nlohmann::json pending;
  if (pending_phase >= 0)
    pending = {{"phase", pending_phase},
               {"results", (pending_phase == 0 ? long_farm : short_farm).finished}};
  const nlohmann::json j = {{"format", "longrope-search-checkpoint"},
                            {"version", 1},
                            {"fingerprint", p.fingerprint},
                            {"settings", p.ck_settings},
                            {"long", long_state},
                            {"short", short_state},
                            {"short_basis", short_basis},
                            {"pending", pending}};
  write_file_atomically(ckpt_path, j.dump(1) + "\n");
  nlohmann::json lg = {{"phases", nlohmann::json::array({log_json(lng)})}};
  if (shrt) lg["phases"].push_back(log_json(*shrt));
  write_file_atomically(log_path, lg.dump(1) + "\n");
}

void SearchRun::Impl::Run::report(SearchProgress& pr, const EvolutionSearch& srch,
                                  const FarmEvaluator& ev, int phase, int done, int total,
                                  double running) const {
  if (!progress) return;
  pr.iteration = srch.iterations_done();
  pr.evals_done = done;
  pr.evals_total = total;
  pr.full_evals = srch.full_evals();
  pr.partial_evals = srch.partial_evals();
  // The recorded search and the running generation's results so far (for display only: the
  // search takes them in candidate order when the generation ends).
  pr.best_ppl = srch.best_ppl();
  std::vector<std::vector<double>> points;
  for (const Individual& m : srch.front()) points.push_back(srch.memo().at(m.key()).obj);
  for (const EvalResult& r : ev.batch_done) {
    if (r.rejected || r.left_out) continue;
    if (!std::isfinite(pr.best_ppl) || r.ppl < pr.best_ppl) pr.best_ppl = r.ppl;
    if (!r.objectives.empty()) points.push_back(r.objectives);
  }
  std::sort(points.begin(), points.end());
  points.erase(std::unique(points.begin(), points.end()), points.end());
  const std::vector<int> ranks = pareto_ranks(points);
  pr.front_size = static_cast<int>(std::count(ranks.begin(), ranks.end(), 0));
  // The tokens of one complete evaluation: every objective's windows (the short set: its first
  // objective's, 0 when there is no short search).
  const int64_t long_tokens = c.docs * c.target_ctx * static_cast<int64_t>(p.objectives.size());
  const int64_t short_tokens = p.short_ev ? c.docs * *c.short_ctx : 0;
  // Tokens left: this phase's candidates at the mean cost this run has measured (the
  // nominal windows before any), then the short phase's at its nominal windows.
  const int64_t per_phase = settings.population + int64_t(settings.iterations) *
                                                      (settings.mutations + settings.crossovers);
  const int64_t left = std::max<int64_t>(0, per_phase - (pr.full_evals + pr.partial_evals + done));
  const double mean = ev.evals_computed > 0 ? double(ev.tokens_computed) / double(ev.evals_computed)
                                            : double(phase == 0 ? long_tokens : short_tokens);
  const double in_flight = running * mean;
  pr.tokens_done = std::max(pr.tokens_done, ev.tokens_computed + static_cast<int64_t>(in_flight));
  pr.tokens_left = std::max(0.0, double(left) * mean - in_flight) +
                   (phase == 0 ? double(per_phase) * double(short_tokens) : 0.0);
  progress(pr);
}

void SearchRun::Impl::Run::run_phase(EvolutionSearch& srch, FarmEvaluator& ev, const char* label,
                                     nlohmann::json& state, int phase) {
  const int T = settings.iterations;
  SearchProgress pr;
  pr.phase = label;
  pr.iterations = T;
  // Every finished evaluation reaches the checkpoint at once (pending until its iteration
  // ends, as an interrupted run saves it): a run killed without warning (a session's end, an
  // out-of-memory kill) loses only the evaluations in flight.
  srch.on_eval = [&](int done, int total) {
    if (done > 0) save(phase);
    report(pr, srch, ev, phase, done, total);
  };
  // In a one-rank world the candidates are evaluated on this thread: their progress shows layer
  // by layer (a candidate at 8x takes minutes).
  Evaluator* local = phase == 0 ? p.long_ev.get() : p.short_ev.get();
  struct Unset {
    Evaluator* e;
    ~Unset() {
      if (e) e->set_on_fraction({});
    }
  } unset{progress && dist::world().size == 1 ? local : nullptr};
  if (unset.e)
    unset.e->set_on_fraction(
        [&](double x) { report(pr, srch, ev, phase, pr.evals_done, pr.evals_total, x); });
  while (!srch.finished(T)) {
    ev.iteration = srch.iterations_done();
    if (ev.budget_spent()) {
      // The last save (or an earlier run's, with its pending evaluations) is the state.
      if (!std::filesystem::exists(ckpt_path)) save();
      budget_spent = true;
      break;
    }
    report(pr, srch, ev, phase, 0, 0);
    try {
      srch.step(ev);
    } catch (const Interrupted&) {
      save(phase);
      // The budget: the finished evaluations of this iteration wait in the checkpoint for
      // --resume; the result is made from the iterations finished.
      if (ev.budget_spent() && !stop_requested()) {
        budget_spent = true;
        break;
      }
      throw Interrupted(fmt::format(
          "search interrupted in iteration {} of the {} phase: {} finished evaluation(s) of it "
          "and every earlier iteration saved in {}; the same command with --resume continues",
          srch.iterations_done(), label, ev.finished.size(), ckpt_path));
    }
    ev.finished = nlohmann::json::object();
    state = srch.to_json();
    save();
    if (stop_requested())
      throw Interrupted(fmt::format(
          "search interrupted after iteration {} of the {} phase (saved in {}); the same "
          "command with --resume continues",
          srch.iterations_done(), label, ckpt_path));
  }
  srch.on_eval = nullptr;
}

void SearchRun::Impl::Run::close_initial_population() {
  // Its finished evaluations: this run's, and those an earlier run saved that this one did not
  // reach again.
  for (const auto& [task, result] : long_farm.finished.items())
    long_farm.cache[task] = result.get<std::string>();
  const size_t evaluated = long_farm.cache.size();
  if (evaluated == 0)  // saved where it stopped
    throw Error(fmt::format(
        "search: the budget of {:g} s ended before the initial population was evaluated (saved "
        "in {}; the same command with --resume and a larger --budget continues)",
        c.budget_seconds, ckpt_path));
  // The same initial population again, from the state before it, with only the finished results.
  EvolutionSearch partial(sp, settings);
  restore(partial, long_state);
  long_farm.replay_only = true;
  partial.step(long_farm);
  lng = std::move(partial);
  warnings.push_back(fmt::format(
      "the budget of {:g} s ended after {} of the {} candidates of the initial population: the "
      "result is the best of those {} (the checkpoint keeps them; the same command with --resume "
      "and a larger --budget continues the search)",
      c.budget_seconds, evaluated, settings.population, evaluated));
}

nlohmann::json SearchRun::Impl::Run::named(const std::vector<double>& v) const {
  nlohmann::json o = nlohmann::json::object();
  for (size_t k = 0; k < v.size(); ++k) o[p.objectives[k]] = v[k];
  return o;
}

PickRule SearchRun::Impl::Run::pick_rule() const {
  PickRule rule = p.pick;
  if (!rule.bound_ref.empty()) {
    for (const auto& [name, ind] : rule_seeds(sp))
      if (name == rule.bound_ref) {
        const auto it = lng.memo().find(ind.key());
        if (it == lng.memo().end() || it->second.obj.empty())
          throw Error(fmt::format("search: --pick {}: seed {} was not evaluated", c.pick, name));
        rule.bound_value = it->second.obj[size_t(rule.bound_objective)];
      }
  }
  return rule;
}

void SearchRun::Impl::Run::pick_result() {
  result = to_scaling(sp, lng.best());
  if (p.objectives.size() <= 1) return;
  const PickRule rule = pick_rule();
  std::vector<std::vector<double>> pts;
  for (const Individual& ind : lng.front()) pts.push_back(lng.memo().at(ind.key()).obj);
  const size_t k = pick_from_front(pts, rule, &pick_note);
  picked = pts[k];
  result = to_scaling(sp, lng.front()[k]);
  front = nlohmann::json::array();
  for (size_t i = 0; i < pts.size(); ++i) {
    const RopeScaling f = to_scaling(sp, lng.front()[i]);
    front.push_back({{"objectives", named(pts[i])},
                     {"n_hat", f.n_hat},
                     {"attention_factor", *f.attn_factor},
                     {"factors", f.sets[0].factors}});
    if (i == k) front.back()["picked"] = true;
  }
}

// Inputs up to N <= L_orig: the model as trained (factors 1, attention factor 1).
// Under another runtime the short set runs with the long set's attention factor (llama.cpp and
// transformers have one): the file says so rather than claim the plain model.
void SearchRun::Impl::Run::plain_short_set() {
  FactorSet ones{std::vector<double>(sp.n_pairs, 1.0), *c.short_ctx};
  if (own_short_attn()) ones.attn_factor = 1.0;
  result.sets = {std::move(ones), FactorSet{result.sets[0].factors, 0}};
}

// The budget left no time for a searched short set (--resume adds it): up to N <= L_orig the
// plain model, above L_orig the long set serves every length.
void SearchRun::Impl::Run::without_short_set() {
  if (*c.short_ctx <= p.orig) plain_short_set();
}

void SearchRun::Impl::Run::add_short_set() {
  if (c.short_ctx && short_set_is_plain(c, p.orig)) {
    plain_short_set();
  } else if (c.short_ctx && budget_spent) {
    without_short_set();
  } else if (c.short_ctx) {
    search_short_set();
  }
}

SearchSpace SearchRun::Impl::Run::short_space(int64_t N) const {
  SearchSpace ss = sp;
  ss.target_ctx = N;
  ss.lambda_max = lambda_hundredths(c.short_lambda_max.value_or(
      std::max(1.0, 1.25 * static_cast<double>(N) / static_cast<double>(p.orig))));
  ss.n_hat_candidates = {result.n_hat};
  // Up to L_orig the plain attention factor (1) is a candidate too, so the plain model (every
  // rule seed at s = 1) is in the first population.
  ss.attn_candidates = {*result.attn_factor};
  if (N <= p.orig && *result.attn_factor != 1.0 && own_short_attn())
    ss.attn_candidates.insert(ss.attn_candidates.begin(), 1.0);
  ss.lo.clear();
  ss.hi.clear();
  if (const int k = critical_dim_of(c, p.model->hp(), p.orig); k >= 0 && N > p.orig)
    apply_critical_dim(ss, k, c.critical_margin);
  if (result.n_hat >= N)
    throw Error(fmt::format(
        "search: the long set's n_hat {} is not below --short-ctx {} (expected n_hat < N)",
        result.n_hat, N));
  validate_space(ss);
  return ss;
}

void SearchRun::Impl::Run::search_short_set() {
  const int64_t N = *c.short_ctx;
  const SearchSpace ss = short_space(N);
  short_basis = {{"n_hat", result.n_hat}, {"attn", *result.attn_factor}};
  SearchSettings st = settings;
  st.seed = settings.seed ^ 0x9e3779b97f4a7c15ull;
  st.objectives = 1;  // the short set: the first objective only
  shrt.emplace(ss, st);
  if (c.resume && ck.contains("short") && !ck["short"].is_null() &&
      ck.value("short_basis", nlohmann::json()) == short_basis)
    restore(*shrt, ck["short"]);
  short_state = shrt->to_json();
  run_phase(*shrt, short_farm, "short", short_state, 1);
  if (shrt->best().lambda.empty()) {  // the budget ended before any short set was complete
    without_short_set();
  } else {
    const RopeScaling sr = to_scaling(ss, shrt->best());
    FactorSet short_set{sr.sets[0].factors, N};
    if (*sr.attn_factor != *result.attn_factor) short_set.attn_factor = sr.attn_factor;
    result.sets = {std::move(short_set), FactorSet{result.sets[0].factors, 0}};
  }
}

nlohmann::json SearchRun::Impl::Run::seed_values() const {
  const bool multi = p.objectives.size() > 1;
  nlohmann::json seeds = nlohmann::json::object();
  for (const auto& [name, ind] : rule_seeds(sp)) {
    auto it = lng.memo().find(ind.key());
    if (it != lng.memo().end() && !it->second.rejected)
      seeds[name] = multi ? named(it->second.obj) : nlohmann::json(it->second.ppl);
  }
  return seeds;
}

nlohmann::json SearchRun::Impl::Run::search_json() const {
  nlohmann::json search = settings.to_json();
  search["iterations"] = settings.iterations;
  search["docs"] = c.docs;
  search["space"] = space_json(sp);
  search["reject_stage"] = c.reject_stage;
  search["fitness"] = c.fitness;
  if (c.fitness != "ppl") {
    search["needles"] = c.needles;
    search["needle_seed"] = c.needle_seed;
    if (c.fitness == "mix") search["needle_weight"] = c.needle_weight;
  }
  if (!sp.lo.empty()) search["critical_dim"] = critical_dim_of(c, p.model->hp(), p.orig);
  return search;
}

// Provenance: deterministic for a given seed (the date honours SOURCE_DATE_EPOCH).
nlohmann::json SearchRun::Impl::Run::provenance(const nlohmann::json& seeds) const {
  nlohmann::json prov = {
      {"tool", "longrope search"},
      {"model", path_name(c.model_path)},
      {"model_fingerprint", p.fingerprint["model"]},
      {"texts", c.texts},
      {"texts_fingerprint", p.texts_fingerprint},
      {"target_ctx", c.target_ctx},
      {"orig_ctx", p.orig},
      {"rope_base", p.model->hp().rope_base},
      {"search", search_json()},
      {"seed", c.settings.seed},
      {"date", provenance_date()},
      {"best_ppl", lng.best_ppl()},
      {"seed_ppl", seeds},
      {"evaluations", {{"full", lng.full_evals()}, {"partial", lng.partial_evals()}}}};
  if (c.deploy != DeployTarget::kLongrope) prov["deploy"] = deploy_target_name(c.deploy);
  if (c.budget_seconds > 0)
    prov["budget"] = {{"seconds", c.budget_seconds},
                      {"spent", budget_spent},
                      {"iterations_done", lng.iterations_done() - 1}};
  if (p.objectives.size() > 1) {
    prov["objectives"] = p.objectives;
    prov["pick"] = c.pick;
    prov["picked"] = named(picked);
    prov["front_size"] = front.size();
  }
  if (c.short_ctx && !shrt) {
    prov["short"] = {{"short_ctx", *c.short_ctx}, {"plain", true}};
  } else if (shrt) {
    prov["short"] = {
        {"short_ctx", *c.short_ctx},
        {"lambda_max", shrt->space().lambda_max / 100.0},
        {"best_ppl", shrt->best_ppl()},
        {"evaluations", {{"full", shrt->full_evals()}, {"partial", shrt->partial_evals()}}}};
  }
  return prov;
}

SearchRunResult SearchRun::Impl::Run::write_outputs() {
  const nlohmann::json seeds = seed_values();
  write_factors_file(c.output, result, provenance(seeds), front);
  const std::vector<std::string> plots =
      write_front_plot(c.output + ".front", front, seeds, p.objectives, c.pick, c.target_ctx);

  SearchRunResult r;
  r.scaling = result;
  r.best_ppl = lng.best_ppl();
  if (shrt) r.short_best_ppl = shrt->best_ppl();
  r.seed_ppl = seeds;
  r.objectives = p.objectives;
  r.front = front;
  r.picked = picked;
  r.pick_note = pick_note;
  r.front_plots = plots;
  r.budget_spent = budget_spent;
  r.iterations_done = lng.iterations_done() - 1;
  r.full_evals = lng.full_evals();
  r.partial_evals = lng.partial_evals();
  r.eval_seconds = lng.eval_seconds();
  r.log_path = log_path;
  r.checkpoint_path = ckpt_path;
  r.warnings = warnings;
  return r;
}

SearchRunResult SearchRun::run(const std::function<void(const SearchProgress&)>& progress) {
  Impl& p = *p_;
  const std::string ckpt_path = p.cfg.output + ".ckpt.json";
  const std::string log_path = p.cfg.output + ".log.json";
  check_outputs(p.cfg, ckpt_path, log_path);
  Impl::Resumed resumed = p.cfg.resume ? p.read_checkpoint(ckpt_path) : Impl::Resumed{};
  Impl::Run run(p, progress, ckpt_path, log_path, std::move(resumed));
  run.run_phase(run.lng, run.long_farm, "search", run.long_state, 0);
  if (run.lng.iterations_done() == 0) run.close_initial_population();
  run.pick_result();
  run.add_short_set();
  if (!run.budget_spent) run.save();  // else saved where it stopped, with its pending evaluations
  return run.write_outputs();
}

}  // namespace longrope
