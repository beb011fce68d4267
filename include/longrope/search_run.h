// A whole LongRoPE search as a library call: fitness windows from texts, the long search at the
// target length and optionally the short one, a checkpoint after every iteration (resumable),
// the log, and the factors file with its provenance (docs/search.md). The CLI's `search` is a
// thin layer over this.
//
// Under MPI (dist.h) every rank builds the same SearchRun; rank 0 calls run() and its
// evaluations are spread over the ranks, which call serve(). The evolution never learns about
// ranks: it hands each generation to Evaluator::evaluate_batch and records the results in
// candidate order, so the result is the same for any number of ranks.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "longrope/kernels.h"
#include "longrope/model.h"
#include "longrope/rope.h"
#include "longrope/search.h"

namespace longrope {

struct SearchRunConfig {
  std::string model_path;           // provenance (its file name) only
  std::vector<std::string> texts;   // UTF-8 text files, concatenated into one token stream
  int64_t target_ctx = 0;           // L
  std::optional<int64_t> orig_ctx;  // default: the model's trained context
  int64_t docs = 1;                 // fitness windows
  SearchSettings settings;
  std::optional<double> lambda_max;   // default 1.25 s
  std::vector<int64_t> n_hat;         // default: default_n_hat_candidates(L)
  std::optional<double> attn_factor;  // fixed; default: searched
  // The attention factors searched (default: 1 and the two rules' values at s); not with
  // attn_factor.
  std::vector<double> attn_candidates;
  // A short set serving lengths up to short_ctx: for short_ctx <= L_orig the plain model (factors
  // 1, attention factor 1, no evaluations) unless short_lambda_max is given; otherwise searched
  // with fitness at short_ctx and factors in [1, short_lambda_max].
  std::optional<int64_t> short_ctx;
  std::optional<double> short_lambda_max;
  int64_t reject_stage = 0;  // PerplexityEvaluator's first_stage_tokens
  // Bound the pairs by a critical dimension (apply_critical_dim): -1 = off, -2 = auto
  // (critical_dim()), else the pair index.
  int critical_dim = -1;
  // "ppl": perplexity of every token; "needle": of the answers of needle windows only
  // (include/longrope/needle.h), `needles` per window, built from needle_seed; "mix": needle
  // windows scored whole, the answers weighing needle_weight (MixedNll). Several, comma
  // separated (e.g. "ppl,needle"): a multi-objective search (settings.objectives must be their
  // number) that keeps the Pareto front and writes the set `pick` chooses from it.
  std::string fitness = "ppl";
  std::string pick = "knee";  // parse_pick(); several objectives only
  int needles = 4;
  uint64_t needle_seed = 1234;
  double needle_weight = 0.1;
  double critical_margin = 0.25;  // pairs below it in [1, s + margin]
  // Factors files added to the initial population (progressive extension: the previous stage's
  // factors), each twice: as it is, and with every factor times target_ctx / its own target
  // (position interpolation on top, the previous stage stretched to this length).
  std::vector<std::string> seed_factors;
  // Only the stretched version of a seed file whose target is shorter than target_ctx (as it
  // is, it leaves every position beyond its own target out of distribution: at the next stage
  // of a progressive extension that costs an evaluation at the longest length for a set that
  // is almost never on the front). Files at target_ctx are added as they are either way.
  bool seed_stretched_only = false;
  // Blends of every two seed sets at each t (SearchSpace::seed_blends), after them.
  std::vector<double> seed_blends;
  // The runtime the factors are for (DeployTarget): other than longrope, the search keeps to what
  // it can express: n_hat 0; a short set only at L_orig, with the long set's attention factor;
  // for vllm the attention factor vLLM computes (vllm_attn_factor).
  DeployTarget deploy = DeployTarget::kLongrope;
  std::string output = "factors.json";  // checkpoint OUTPUT.ckpt.json, log OUTPUT.log.json
  bool resume = false;
  // Without resume, an existing checkpoint (an earlier run's evaluations) is refused unless
  // overwrite is set (OutputRefused); outputs that are inputs always are.
  bool overwrite = false;
  // A time budget in seconds (0: none): no evaluation starts after it, the checkpoint keeps the
  // finished ones (a running iteration's as pending), and the factors file is written from the
  // iterations finished (a short set there was no time for: the plain model up to N <= L_orig,
  // else none, the long set serving every length); --resume continues.
  double budget_seconds = 0;
  int n_threads = 0;
  // The arithmetic of every evaluation (bf16 and FP32 values never mix in one checkpoint).
  kernels::Compute compute = kernels::best_compute();
  bool root_computes = true;  // under MPI: rank 0 evaluates candidates too
};

struct SearchProgress {
  const char* phase = "search";         // "search" (the long set) or "short"
  int iteration = 0;                    // the one being evaluated (0 = initial population)
  int iterations = 0;                   // SearchSettings::iterations
  int evals_done = 0, evals_total = 0;  // in this iteration
  int64_t full_evals = 0, partial_evals = 0;
  double best_ppl = 0;  // the best value of the first objective
  int front_size = 0;   // several objectives: sets on the front
  // The work behind the ETA, in tokens scored: this phase's so far in this run (first stages
  // and cut candidates included), and an estimate of what is left of this phase and the next
  // (this run's mean per candidate for this phase; nominal windows for the short phase).
  int64_t tokens_done = 0;
  double tokens_left = 0;
};

struct SearchRunResult {
  RopeScaling scaling;  // as written to the factors file
  double best_ppl = 0;
  std::optional<double> short_best_ppl;
  nlohmann::json seed_ppl;  // {method: ppl} of the rule-based seeds ({method: {objective: value}})
  // Several objectives: their names, the front as written to the factors file ("front"), the
  // picked set's values, and a note when the pick rule could not be met.
  std::vector<std::string> objectives;
  nlohmann::json front;
  std::vector<double> picked;
  std::string pick_note;
  std::vector<std::string> front_plots;  // two objectives: OUTPUT.front.svg (and .png)
  bool budget_spent = false;             // the run stopped at SearchRunConfig::budget_seconds
  int iterations_done = 0;               // of the long search, after its initial population
  int64_t full_evals = 0, partial_evals = 0;
  double eval_seconds = 0;  // summed evaluation wall times (0 under SOURCE_DATE_EPOCH)
  std::string log_path, checkpoint_path;
  std::vector<std::string> warnings;  // found while running (e.g. how a checkpoint continues)
};

// Labels of the seeds in the front plot: the seed names with ".json" and the prefix shared by the
// seed files' names (up to its last '-', '_' or '/') removed, so that e.g.
// "blend(smollm2-32k-ppl.json, smollm2-32k-needle.json, 0.5)" reads "blend(ppl, needle, 0.5)".
// Rule seeds ("yarn") are unchanged. The factors file keeps the full names.
std::vector<std::string> front_plot_labels(const std::vector<std::string>& seed_names);

class SearchRun {
 public:
  // Reads and tokenizes the texts, makes the fitness windows (long and short), the search space
  // and the fingerprint. Throws Error with one line on bad settings or too little text.
  SearchRun(std::shared_ptr<const Model> model, SearchRunConfig cfg);
  ~SearchRun();
  SearchRun(const SearchRun&) = delete;
  SearchRun& operator=(const SearchRun&) = delete;

  // What every rank must agree on, and what a checkpoint must match: the model, the token
  // windows, the lengths, the docs and the compute mode.
  const nlohmann::json& fingerprint() const;
  const SearchSpace& space() const;
  size_t window_count() const;
  // One line each, for the user (e.g. early reject turned off because its first stage would not
  // reach beyond the original context).
  const std::vector<std::string>& warnings() const;

  // Runs the search to the end (resuming from the checkpoint when cfg.resume), writing the
  // checkpoint and the log after every iteration and the factors file at the end. Under MPI:
  // rank 0 only, while the other ranks serve().
  SearchRunResult run(const std::function<void(const SearchProgress&)>& progress = {});
  // Ranks other than 0: evaluates the candidates rank 0 sends until it stops.
  void serve();

 private:
  struct Impl;
  std::unique_ptr<Impl> p_;
};

// The date for provenance: now, or SOURCE_DATE_EPOCH when set (ISO 8601, UTC).
std::string provenance_date();
// True when SOURCE_DATE_EPOCH is set: outputs must not depend on the clock.
bool reproducible_outputs();

}  // namespace longrope
