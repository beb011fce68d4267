// longrope search: the LongRoPE evolutionary search for per-pair RoPE rescale factors.
#include <fmt/core.h>

#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "longrope/dist.h"
#include "longrope/error.h"
#include "longrope/fingerprint.h"
#include "longrope/interrupt.h"
#include "longrope/needle.h"
#include "longrope/search_run.h"

namespace longrope::cli {

namespace {

struct SearchArgs {
  std::string model, tokenizer;
  std::string budget;  // --budget: 90s, 20m, 1.5h or seconds
  SearchRunConfig cfg;
  bool json = false;
  bool progress = true;
  std::string compute = "auto";
  std::string critical_dim = "off";
  std::string deploy = "longrope";
  std::vector<std::string> objectives;  // --fitness split once (split_fitness)
};

// --budget: a number with an optional unit (s, m, h); throws Error with one line.
double parse_budget(const std::string& text) {
  size_t used = 0;
  const double v = number_prefix(text, &used);
  const std::string unit = used ? text.substr(used) : "";
  const double scale = unit.empty() || unit == "s" ? 1 : unit == "m" ? 60 : unit == "h" ? 3600 : 0;
  if (!used || scale == 0 || !(v > 0) || !std::isfinite(v))
    throw Error(
        fmt::format("--budget {} (expected a positive time such as 90s, 20m or 1.5h)", text));
  return v * scale;
}

int lead(const SearchArgs& a, SearchRun& run) {
  const SearchRunConfig& cfg = a.cfg;
  const SearchSpace& sp = run.space();
  const int T = cfg.settings.iterations;
  const double s = static_cast<double>(sp.target_ctx) / static_cast<double>(sp.orig_ctx);
  const dist::World& w = dist::world();
  fmt::print(
      stderr, "search: {} pairs, target {} (s = {:.3f}), {} window(s), lambda in [1, {:.2f}]{}{}\n",
      sp.n_pairs, sp.target_ctx, s, run.window_count(), sp.lambda_max / 100.0,
      sp.lo.empty()
          ? ""
          : fmt::format(", critical dimension {} (pairs below it in [1, s + {}])",
                        cfg.critical_dim == -2 ? critical_dim(sp.n_rot, sp.orig_ctx, sp.rope_base)
                                               : cfg.critical_dim,
                        cfg.critical_margin),
      w.size > 1 ? fmt::format(", {} MPI ranks x {} threads{}", w.size, cfg.n_threads,
                               cfg.root_computes ? "" : " (rank 0 only hands out work)")
                 : "");
  for (const std::string& w : run.warnings()) fmt::print(stderr, "warning: {}\n", w);
  std::unique_ptr<Progress> bar;
  std::string phase;
  const std::vector<std::string>& objectives = a.objectives;
  const bool multi = objectives.size() > 1;
  const double t0 = wall_seconds();
  const StopOnSignal stop_on_signal;  // Ctrl-C: save the checkpoint, then exit 130
  const SearchRunResult r = run.run([&](const SearchProgress& p) {
    // Counts are recorded when an iteration ends; evals_done counts the current one.
    const int64_t done = p.full_evals + p.partial_evals + p.evals_done;
    if (phase != p.phase) {
      if (bar) bar->finish();
      phase = p.phase;
      // The bar counts evaluations (the budget: the population, then the children of each
      // iteration), so that its ETA moves within an iteration.
      const SearchSettings& st = cfg.settings;
      bar = std::make_unique<Progress>(phase,
                                       st.population + int64_t(T) * (st.mutations + st.crossovers),
                                       a.progress, "evaluations");
      // The first report of a phase comes before its first evaluation: what it counts was
      // restored from a checkpoint, and the ETA follows this run's pace only.
      bar->resumed_at(done);
      if (cfg.budget_seconds > 0) bar->stop_by(t0 + cfg.budget_seconds);
    }
    const std::string best =
        std::isfinite(p.best_ppl) ? fmt::format("{:.4f}", p.best_ppl) : std::string("-");
    const double left = cfg.budget_seconds - (wall_seconds() - t0);
    bar->work(static_cast<double>(p.tokens_done), p.tokens_left);
    bar->update(
        done,
        fmt::format(
            "iteration {}/{} (candidate {}/{}){} {}", p.iteration, T, p.evals_done, p.evals_total,
            cfg.budget_seconds > 0
                ? fmt::format(" budget {} ({:.0f} s left)", a.budget, std::max(0.0, left))
                : "",
            multi ? fmt::format("front {} sets, best {} {}", p.front_size, objectives[0], best)
                  : "best " + best));
  });
  if (bar) bar->finish();
  for (const std::string& w : r.warnings) fmt::print(stderr, "warning: {}\n", w);
  const double wall = wall_seconds() - t0;
  if (r.budget_spent)
    fmt::print(stderr,
               "search: the budget of {} was spent after {} of {} iterations ({} evaluations "
               "complete); the factors file holds the best found so far, and the same command "
               "with --resume (and a new --budget) continues from {}\n",
               a.budget, std::max(0, r.iterations_done), T, r.full_evals + r.partial_evals,
               r.checkpoint_path);

  const int64_t n_eval = r.full_evals + r.partial_evals;
  const double spe = n_eval ? r.eval_seconds / static_cast<double>(n_eval) : 0.0;
  const RopeScaling& result = r.scaling;
  if (a.json) {
    nlohmann::json j = {{"output", cfg.output},           {"log", r.log_path},
                        {"best_ppl", r.best_ppl},         {"factors", result.sets.back().factors},
                        {"n_hat", result.n_hat},          {"attn_factor", *result.attn_factor},
                        {"full_evals", r.full_evals},     {"partial_evals", r.partial_evals},
                        {"eval_seconds", r.eval_seconds}, {"seconds_per_eval", spe},
                        {"wall_seconds", wall},           {"ranks", w.size},
                        {"seed_ppl", r.seed_ppl}};
    if (r.short_best_ppl) j["short_best_ppl"] = *r.short_best_ppl;
    if (multi) {
      j["objectives"] = r.objectives;
      j["picked"] = r.picked;
      j["front_size"] = r.front.size();
      if (!r.pick_note.empty()) j["pick_note"] = r.pick_note;
    }
    fmt::print("{}\n", j.dump());
  } else {
    std::string f;
    for (double x : result.sets.back().factors) f += fmt::format("{} ", x);
    if (multi) {
      // "ppl 40.1240, needle 2672.7197" from {objective: value}.
      auto values = [&](const nlohmann::json& named) {
        std::string out;
        for (const std::string& o : objectives)
          out += fmt::format("{}{} {:.4f}", out.empty() ? "" : ", ", o, named[o].get<double>());
        return out;
      };
      fmt::print("front: {} sets at {} (objectives {})\n", r.front.size(), sp.target_ctx,
                 cfg.fitness);
      std::string picked;
      for (const auto& e : r.front) {
        const bool is_picked = e.value("picked", false);
        if (is_picked) picked = values(e["objectives"]);
        fmt::print("  {} {} (n_hat {}, attn {:.4f})\n", is_picked ? "*" : " ",
                   values(e["objectives"]), e["n_hat"].get<int64_t>(),
                   e["attention_factor"].get<double>());
      }
      fmt::print("picked by --pick {}: {} (n_hat {}, attn {:.4f}); factors: {}\n", cfg.pick, picked,
                 result.n_hat, *result.attn_factor, f);
      if (!r.pick_note.empty()) fmt::print("note: {}\n", r.pick_note);
      for (const auto& [name, v] : r.seed_ppl.items())
        fmt::print("  seed {:8s} {}\n", name, values(v));
    } else {
      const std::string what = fitness_name(cfg.fitness, cfg.needle_weight);
      fmt::print("best {} {:.4f} at {} (n_hat {}, attn {:.4f}); factors: {}\n", what, r.best_ppl,
                 sp.target_ctx, result.n_hat, *result.attn_factor, f);
      for (const auto& [name, v] : r.seed_ppl.items())
        fmt::print("  seed {:8s} {} {:.4f}\n", name, what, v.get<double>());
    }
    // Evaluation time is the run's total (earlier runs of a resumed search included); wall time
    // is this process's.
    fmt::print(
        "{} full + {} partial evaluations{}; this run {:.1f}s wall\n", r.full_evals,
        r.partial_evals,
        spe > 0 ? fmt::format(" in {:.1f}s ({:.3f}s per evaluation)", r.eval_seconds, spe) : "",
        wall);
    if (r.short_best_ppl)
      fmt::print("short set (<= {}): best {} {:.4f}\n", *cfg.short_ctx, objectives[0],
                 *r.short_best_ppl);
    else if (cfg.short_ctx)
      fmt::print("short set (<= {}): the plain model (factors 1, attention factor 1)\n",
                 *cfg.short_ctx);
    fmt::print("wrote {} ({}log {}, checkpoint {})\n", cfg.output,
               multi ? "the picked set and the front; " : "", r.log_path, r.checkpoint_path);
    for (const std::string& plot : r.front_plots) fmt::print("wrote {}\n", plot);
  }
  return 0;
}

}  // namespace

Runner register_search(CLI::App& app) {
  auto a = std::make_shared<SearchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "search", "LongRoPE evolutionary search for per-pair RoPE rescale factors (docs/search.md)");
  add_model_flags(cmd, a->model, a->tokenizer);
  add_texts_option(cmd, a->cfg.texts, "text file(s), comma separated (UTF-8)");
  add_ctx_option(cmd, a->cfg.target_ctx,
                 "target context length L, the fitness window's length (required)");
  add_deprecated_alias(cmd, "--target-ctx", "-c/--ctx", a->cfg.target_ctx)
      ->check(in_range(2, double(kMaxContext)));
  add_orig_ctx_option(
      cmd, [a](int64_t v) { a->cfg.orig_ctx = v; },
      "original context (default: the model's trained one)");
  cmd->add_option("--docs", a->cfg.docs, "windows K of L tokens in the fitness")
      ->capture_default_str()
      ->check(in_range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--population", a->cfg.settings.population, "population size")
      ->capture_default_str()
      ->check(in_range(1, 1 << 20));
  cmd->add_option("--iterations", a->cfg.settings.iterations,
                  "iterations after the initial population")
      ->capture_default_str()
      ->check(in_range(0, 1 << 20));
  cmd->add_option("--parents", a->cfg.settings.parents, "parents kept per iteration")
      ->capture_default_str()
      ->check(in_range(1, 1 << 20));
  cmd->add_option("--mutations", a->cfg.settings.mutations, "mutants per iteration")
      ->capture_default_str()
      ->check(in_range(0, 1 << 20));
  cmd->add_option("--crossovers", a->cfg.settings.crossovers, "crossovers per iteration")
      ->capture_default_str()
      ->check(in_range(0, 1 << 20));
  cmd->add_option("--mutation-prob", a->cfg.settings.mutation_prob, "per-pair mutation probability")
      ->capture_default_str();
  cmd->add_option("--blend", a->cfg.settings.blend_prob,
                  "probability that a crossover child is a geometric blend of its parents "
                  "(a^(1-t) b^t per pair, t in [0.25, 0.75]) instead of a pair-wise mix")
      ->capture_default_str()
      ->check(in_range(0.0, 1.0));
  cmd->add_option("--lambda-max", a->cfg.lambda_max, "upper bound of the factors (default 1.25*s)");
  cmd->add_option("--n-hat-candidates", a->cfg.n_hat,
                  "start-token counts n_hat to search, comma separated (default "
                  "0,1,2,4,8,12,16,20,24,28,32,64,128,256 below L)")
      ->type_name("LIST")
      ->delimiter(',');
  add_deprecated_alias(cmd, "--n-hat", "--n-hat-candidates", a->cfg.n_hat)->delimiter(',');
  cmd->add_option("--attn-factor", a->cfg.attn_factor,
                  "fix the attention factor (default: searched over 0.70, 0.75, ..., 1.10 and the "
                  "rules sqrt(1+ln s/ln L_orig) and 0.1 ln s + 1)");
  cmd->add_option("--attn-candidates", a->cfg.attn_candidates,
                  "attention factors to search, comma separated (instead of the default grid)")
      ->delimiter(',');
  cmd->add_option("--short-ctx", a->cfg.short_ctx,
                  "add a short factor set serving lengths up to N: for N <= L_orig the plain model "
                  "(factors 1, attention factor 1; searched only with --short-lambda-max), "
                  "else searched with fitness at N")
      ->check(in_range(int64_t(2), int64_t(1) << 24));
  cmd->add_option("--short-lambda-max", a->cfg.short_lambda_max,
                  "upper bound of the short factors (default 1.25*N/L_orig; for N <= L_orig giving "
                  "it searches the short set instead of keeping the plain model)");
  cmd->add_option("--seed", a->cfg.settings.seed, "random seed")->capture_default_str();
  cmd->add_option("--seed-factors", a->cfg.seed_factors,
                  "factors file(s) added to the initial population, each as it is and stretched "
                  "by target / its target (progressive extension: the previous stage's factors)")
      ->delimiter(',');
  cmd->add_flag("--seed-stretched-only", a->cfg.seed_stretched_only,
                "add a --seed-factors set whose target is shorter only stretched, not also as it "
                "is (the next stage of a progressive extension)");
  cmd->add_option("--seed-blends", a->cfg.seed_blends,
                  "t values in (0, 1), comma separated: the geometric blend a^(1-t) b^t of every "
                  "two --seed-factors sets joins the initial population too")
      ->delimiter(',');
  cmd->add_option("--reject-margin", a->cfg.settings.reject_margin,
                  "early reject cuts a child only when its first stage is worse than the "
                  "parents' loosest by more than this fraction")
      ->capture_default_str();
  add_off_flag(cmd, "--no-early-reject", a->cfg.settings.early_reject,
               "evaluate every candidate on all windows");
  cmd->add_option("--reject-stage", a->cfg.reject_stage,
                  "tokens of window 0 in early reject's first stage, which is scored beyond the "
                  "original context only (default: window 0, or with --docs 1 its first L_orig + "
                  "(L - L_orig)/2 tokens; <= L_orig turns early reject off)")
      ->check(in_range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("-o,--output", a->cfg.output, "factors file to write")->capture_default_str();
  cmd->add_flag("--resume", a->cfg.resume, "continue from <output>.ckpt.json");
  add_overwrite_flag(cmd, a->cfg.overwrite,
                     "start again over an existing <output>.ckpt.json (without it, or --resume, "
                     "an earlier run's checkpoint is never replaced)");
  cmd->add_option("--budget", a->budget,
                  "time budget (90s, 20m, 1.5h): no evaluation starts after it; the checkpoint "
                  "keeps everything, the factors file holds the best so far, --resume continues");
  cmd->add_flag("--json", a->json, "print one JSON summary on stdout");
  add_no_progress_flag(cmd, a->progress);
  add_threads_option(cmd, a->cfg.n_threads);
  add_compute_flag(cmd, a->compute);

  cmd->add_option("--fitness", a->cfg.fitness,
                  "ppl: perplexity of every token of the windows; needle: perplexity of the "
                  "answers only, in windows with key facts spread over the text and questions at "
                  "the end (include/longrope/needle.h); mix: needle windows scored whole, "
                  "exp((1-w) mean NLL + w mean answer NLL), w = --needle-weight; several, comma "
                  "separated (e.g. ppl,needle): a multi-objective search (NSGA-II) that keeps "
                  "the Pareto front")
      ->capture_default_str();
  cmd->add_option("--pick", a->cfg.pick,
                  "multi-objective: the set -o gets from the front: knee (the front's knee), OBJ "
                  "(the best OBJ, e.g. ppl) or OBJ:B<=REF (the best OBJ whose B is at most REF, a "
                  "number or a seed such as yarn, e.g. ppl:needle<=yarn)")
      ->capture_default_str();
  cmd->add_option("--needle-weight", a->cfg.needle_weight,
                  "weight w of the answers in --fitness mix (0 < w < 1)")
      ->capture_default_str();
  cmd->add_option("--needles", a->cfg.needles, "key facts per needle window")
      ->capture_default_str()
      ->check(in_range(1, 8));
  cmd->add_option("--needle-seed", a->cfg.needle_seed, "seed of the needles' numbers and depths")
      ->capture_default_str();
  cmd->add_option("--critical-dim", a->critical_dim,
                  "bound the pairs by a critical dimension K (LongRoPE2): pairs below K in [1, s + "
                  "margin], from K on in [s, lambda-max]; auto = ceil(d/2 ln(L_orig/2pi)/ln(base)) "
                  "- 1; off = no bounds")
      ->default_str("off");
  cmd->add_option("--critical-margin", a->cfg.critical_margin,
                  "margin above s for the pairs below the critical dimension")
      ->capture_default_str()
      ->check(in_range(0.0, 1e6));
  add_deploy_flag(cmd, a->deploy,
                  "where the factors will run: other than longrope, the search keeps to what that "
                  "runtime expresses (n_hat 0, a short set only at L_orig, vllm's attention "
                  "factor)");
  cmd->add_flag("--async", a->cfg.settings.steady_state,
                "steady state instead of generations: breed a child as soon as any evaluation "
                "finishes (keeps many MPI ranks busy; not reproducible across rank counts)");
  add_off_flag(cmd, "--no-root-eval", a->cfg.root_computes,
               "under MPI: rank 0 only hands out candidates (by default it evaluates too)");

  return [a]() {
    SearchRunConfig& cfg = a->cfg;
    if (cfg.target_ctx <= 0) throw UsageError("search", "-c/--ctx is required");
    cfg.model_path = a->model;
    if (a->critical_dim == "off") {
      cfg.critical_dim = -1;
    } else if (a->critical_dim == "auto") {
      cfg.critical_dim = -2;
    } else {
      size_t used = 0;
      int k = -1;
      try {
        k = std::stoi(a->critical_dim, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != a->critical_dim.size() || k < 0)
        throw UsageError("search",
                         fmt::format("--critical-dim {}: expected auto, off or a pair index >= 0",
                                     a->critical_dim));
      cfg.critical_dim = k;
    }
    cfg.deploy = parse_deploy_target(a->deploy);
    cfg.n_threads = resolve_threads(cfg.n_threads);
    try {
      if (!a->budget.empty()) cfg.budget_seconds = parse_budget(a->budget);
      a->objectives = split_fitness(cfg.fitness);
      const std::vector<std::string>& objectives = a->objectives;
      cfg.settings.objectives = static_cast<int>(objectives.size());
      if (objectives.size() > 1) {
        parse_pick(cfg.pick, objectives);  // seed names are checked once the space is known
      } else if (cfg.pick != "knee") {
        throw Error(fmt::format("--pick {} needs several objectives (e.g. --fitness ppl,needle)",
                                cfg.pick));
      }
    } catch (const Error& e) {
      throw UsageError("search", e.what());
    }
    std::unique_ptr<SearchRun> run;
    return run_distributed(
        [&] {
          cfg.compute = kernels::compute_of_flag(a->compute);
          auto model = load_model_verbose(a->model, a->tokenizer, cfg.n_threads, cfg.compute);
          run = std::make_unique<SearchRun>(model, cfg);
          if (dist::world().size == 1) return nlohmann::json();  // no other rank to agree with
          return run->fingerprint();
        },
        [&] { return lead(*a, *run); }, [&] { run->serve(); });
  };
}

}  // namespace longrope::cli
