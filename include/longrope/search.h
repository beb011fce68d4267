// The LongRoPE evolutionary search (docs/search.md): per-pair rescale factors lambda (non-
// decreasing, on a 0.01 grid, within [1, lambda_max]), the start-token count n_hat and the
// attention factor, found by minimising perplexity. The search only sees an Evaluator: it knows
// nothing of models, threads or kernels.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "longrope/kernels.h"
#include "longrope/model.h"
#include "longrope/rope.h"

namespace longrope {

// ---- the evaluator seam ---------------------------------------------------------------------
// When an evaluator may stop a candidate after its first stage (docs/search.md, "Early reject").
// One objective: the candidate is cut when its first-stage perplexity exceeds `above`. Several
// objectives (a multi-objective search): it is cut when one of `points` dominates it, each
// objective compared like with like: an objective whose evaluator has a first stage by its
// first-stage value (points[i].stage[k] true), one without by its complete value. Nothing cuts
// by default, and a double converts to the one-objective bound.
struct RejectBound {
  double above = std::numeric_limits<double>::infinity();
  struct Point {
    std::vector<double> v;    // one value per objective
    std::vector<bool> stage;  // v[k] is a first-stage value (else a complete one)
  };
  std::vector<Point> points;
  RejectBound() = default;
  RejectBound(double one_objective) : above(one_objective) {}  // NOLINT(google-explicit-*)
  bool cuts() const { return std::isfinite(above) || !points.empty(); }
  // Several objectives: whether some point dominates the candidate whose value of objective k is
  // value[k], a first-stage value where staged[k] (coordinates of another kind never compare).
  bool dominated(std::span<const double> value, const std::vector<bool>& staged) const;
};

struct EvalResult {
  // Complete evaluation: the fitness (perplexity, lower is better). Rejected: the perplexity of
  // the first stage only, kept for the log; it is NOT the candidate's fitness.
  double ppl = 0;
  bool rejected = false;  // stopped early: the candidate is known only to be worse than the bound
  int64_t tokens = 0;     // tokens scored
  // Complete evaluation: the perplexity of the tokens the first stage scores (so that the search
  // can bound children's first stages by their parents' first stages: like with like). NaN when
  // the evaluator has no stages.
  double stage_ppl = std::numeric_limits<double>::quiet_NaN();
  double seconds = 0;  // wall time of the evaluation
  // A multi-objective evaluator (MultiObjectiveEvaluator): each objective's value, lower is
  // better; ppl == objectives[0]. Empty for one objective. Rejected: the values known when the
  // candidate was cut (complete values of the objectives without a first stage, NaN elsewhere).
  std::vector<double> objectives;
  // Multi-objective: each objective's first-stage value (NaN where its evaluator has none).
  std::vector<double> stage_objectives;
  // Not evaluated (a time budget ended first): no value at all; the search leaves the candidate
  // out of its memo and population.
  bool left_out = false;
};

class Evaluator {
 public:
  virtual ~Evaluator() = default;
  // Fitness of the scaling. When reject_above is finite the evaluator may stop after a first
  // stage whose perplexity exceeds reject_above and return rejected = true. The search passes
  // the parents' worst stage_ppl when every parent has one, else their worst fitness.
  virtual EvalResult evaluate(const RopeScaling& scaling, const RejectBound& reject_above) = 0;
  // The candidates of one generation under one bound, results in batch order; done(i) is called
  // as candidate i finishes (in any order: for progress only). The default evaluates them one
  // after another; a distributed evaluator spreads them over ranks (SearchRun, dist.h).
  virtual std::vector<EvalResult> evaluate_batch(const std::vector<RopeScaling>& batch,
                                                 const RejectBound& reject_above,
                                                 const std::function<void(size_t)>& done);

  // The steady-state search (SearchSettings::steady_state) submits candidates one at a time and
  // takes each result as it finishes. slots(): how many run at once. The default runs each
  // candidate inside next(), in submission order (so one slot is deterministic).
  // A multi-objective cut (MultiObjectiveEvaluator) in two steps: has_stage() says whether this
  // evaluator has a first stage; evaluate_staged scores it, calls go_on(its value) and stops
  // there (rejected, ppl the stage's value) when go_on returns false, else completes the
  // evaluation with the same values as evaluate() and stage_ppl the stage's value. Without a
  // stage: go_on(NaN), then evaluate() whole.
  virtual bool has_stage() const { return false; }
  virtual EvalResult evaluate_staged(const RopeScaling& scaling,
                                     const std::function<bool(double)>& go_on);

  virtual int slots() const { return 1; }
  virtual void submit(size_t id, const RopeScaling& scaling, const RejectBound& reject_above);
  virtual std::pair<size_t, EvalResult> next();

  // Progress inside one evaluation, for a progress bar only: when set, the evaluator calls it on
  // the evaluating thread, layer by layer, with the share of the evaluation's model passes done
  // (by tokens, in [0, 1]; a cut candidate stops short of 1). Never changes a result.
  virtual void set_on_fraction(std::function<void(double)> f) { on_fraction_ = std::move(f); }

 protected:
  std::function<void(double)> on_fraction_;

 private:
  struct Queued {
    size_t id;
    RopeScaling scaling;
    RejectBound bound;
  };
  std::deque<Queued> queue_;
};

// The first stage of early reject (docs/search.md). It must score tokens beyond the original
// context: inside it larger factors only hurt, so a cut there would push the search towards
// under-scaling. The stage is the first `tokens` tokens of window 0: the whole window when there
// are several, else the first orig_ctx + (n - orig_ctx) / 2 (`requested` > 0 overrides); its
// perplexity is that of the predictions of tokens at positions >= orig_ctx, i.e. of the NLLs
// [first_scored, tokens - 1) of the window. tokens == 0 when the stage would score no such token
// (windows no longer than orig_ctx, or a request that ends inside it): early reject is then off.
struct FirstStage {
  int64_t tokens = 0;
  int64_t first_scored = 0;
  bool on() const { return tokens > 0; }
};
FirstStage first_stage(int64_t window_tokens, size_t windows, int64_t orig_ctx,
                       int64_t requested = 0);

// Perplexity over pre-tokenized windows (each starting with BOS), the LongRoPE fitness. The model
// is loaded once; only the rotary tables change per candidate. Early reject: the first stage
// (first_stage() above) is scored first and the candidate is rejected when its perplexity exceeds
// reject_above; otherwise every window is scored. Every complete evaluation reports its stage_ppl
// (from window 0's scores when the stage was not run separately). Without a first stage
// (stage().on() false) reject_above is ignored and stage_ppl is NaN. A NaN perplexity (a broken
// engine or model, never a property of the candidate) throws Error.
class PerplexityEvaluator : public Evaluator {
 public:
  PerplexityEvaluator(std::shared_ptr<const Model> model, std::vector<std::vector<int32_t>> windows,
                      int n_threads, int64_t orig_ctx, int64_t first_stage_tokens = 0);
  // A needle fitness: only the given NLL indices of each window are scored (NeedleWindows). With
  // answer_weight < 1 the mixed fitness instead (MixedNll in needle.h): every token is scored and
  // the answers weigh answer_weight. The first stage is window 0 (its scored positions beyond
  // orig_ctx) when there are several windows, else there is none.
  PerplexityEvaluator(std::shared_ptr<const Model> model, std::vector<std::vector<int32_t>> windows,
                      std::vector<std::vector<int64_t>> positions, int n_threads, int64_t orig_ctx,
                      double answer_weight = 1.0);
  EvalResult evaluate(const RopeScaling& scaling, const RejectBound& reject_above) override;
  bool has_stage() const override { return stage_.on(); }
  EvalResult evaluate_staged(const RopeScaling& scaling,
                             const std::function<bool(double)>& go_on) override;
  const std::vector<std::vector<int32_t>>& windows() const { return windows_; }
  const FirstStage& stage() const { return stage_; }
  // The arithmetic the windows are scored with (kernels::best_compute() until set).
  void set_compute(kernels::Compute c) { compute_ = c; }
  kernels::Compute compute() const { return compute_; }

 private:
  std::shared_ptr<const Model> model_;
  std::vector<std::vector<int32_t>> windows_;
  int n_threads_;
  kernels::Compute compute_ = kernels::best_compute();
  FirstStage stage_;
  std::vector<std::vector<int64_t>> positions_;  // needle fitness: scored NLL indices per window
  double answer_weight_ = 1.0;                   // < 1: the mixed fitness
  bool mixed() const { return !positions_.empty() && answer_weight_ < 1.0; }
  // evaluate() and evaluate_staged(): go_on decides after the stage; a stage that is window 0
  // whole runs apart only when always_stage (else window 0 is scored with the rest).
  EvalResult run(const RopeScaling& scaling, const std::function<bool(double)>& go_on,
                 bool always_stage);
};

// Several fitnesses of one candidate at once (a multi-objective search, SearchSettings::
// objectives): each part scores the candidate on its own windows. EvalResult::objectives holds
// the parts' values in order, ppl the first one, tokens and seconds the sums. Early reject
// (RejectBound::points): the parts without a first stage are scored whole first, then each part
// with one scores its stage (keeping its keys and values while the next part runs); the
// candidate is cut when a point dominates it, each objective compared like with like (stage
// with stage, complete with complete), else every staged part completes from its stage. A cut
// therefore needs at least one part with a stage, and saves the rest of those parts' windows.
class MultiObjectiveEvaluator : public Evaluator {
 public:
  explicit MultiObjectiveEvaluator(std::vector<std::unique_ptr<Evaluator>> parts);
  EvalResult evaluate(const RopeScaling& scaling, const RejectBound& reject_above) override;
  // The parts' shares, each weighing 1 / parts (they score windows of one length).
  void set_on_fraction(std::function<void(double)> f) override;

 private:
  std::vector<std::unique_ptr<Evaluator>> parts_;
  std::vector<double> part_fraction_;  // of the evaluation running
};

// ---- Pareto fronts (NSGA-II, Deb et al. 2002) ---------------------------------------------------
// Every objective is minimised. a dominates b when it is no worse in every objective and better
// in at least one.
bool dominates(std::span<const double> a, std::span<const double> b);
// Non-dominated sorting: rank 0 for the points no other point dominates, rank 1 for those
// dominated only by rank-0 points, and so on.
std::vector<int> pareto_ranks(const std::vector<std::vector<double>>& points);
// NSGA-II's crowding distance of each point within its own rank: for each objective, the points
// of a rank sorted by it; the two ends get infinity, an inner point adds the gap between its
// neighbours divided by the rank's range of that objective (nothing where the range is 0).
std::vector<double> crowding_distances(const std::vector<std::vector<double>>& points,
                                       const std::vector<int>& ranks);
// The area dominated by a two-objective front and bounded by the reference point `ref` (points
// not below ref in both objectives add nothing): the hypervolume indicator (Zitzler & Thiele).
double hypervolume_2d(std::vector<std::array<double, 2>> points, std::array<double, 2> ref);

// How a multi-objective search chooses the one set that -o gets from its front (--pick):
//   knee          the front's knee: objectives scaled to [0, 1] over the front, the point
//                 farthest below the line through the two ends; with fewer than three points
//                 or more than two objectives, the point whose objectives exceed the front's
//                 best values by the least (root sum of squares of the relative excesses);
//   OBJ           the best value of objective OBJ (e.g. ppl);
//   OBJ:B<=REF    the best OBJ among the sets whose objective B is at most REF, a number or the
//                 name of a rule seed (linear, ntk, dynamic, yarn) or seed file, whose own value
//                 of B is used (e.g. ppl:needle<=yarn).
struct PickRule {
  enum class Kind { kKnee, kBest, kBounded } kind = Kind::kKnee;
  int objective = 0;        // kBest, kBounded: the objective minimised
  int bound_objective = 0;  // kBounded
  std::string bound_ref;    // kBounded: a seed name, or empty when bound_value is a number
  double bound_value = 0;
  std::string text;  // as given
};
// Parses --pick against the objectives' names; throws Error with one line.
PickRule parse_pick(const std::string& text, const std::vector<std::string>& objective_names);
// The index of the picked point among `front` (each a vector of objective values). A bounded
// rule that no point meets picks the point with the lowest bound objective and says so in *note.
size_t pick_from_front(const std::vector<std::vector<double>>& front, const PickRule& rule,
                       std::string* note = nullptr);

// ---- the search space -------------------------------------------------------------------------
// lambda in hundredths (lambda_j = grid[j] / 100).
struct Individual {
  std::vector<int> lambda;
  int n_hat_idx = 0;  // index into SearchSpace::n_hat_candidates
  int attn_idx = 0;   // index into SearchSpace::attn_candidates
  std::string key() const;
  bool operator==(const Individual&) const = default;
};

struct SearchSpace {
  int n_pairs = 0;
  int n_rot = 0;
  double rope_base = 10000.0;
  int64_t orig_ctx = 0;                   // L_orig
  int64_t target_ctx = 0;                 // L (fitness length)
  int lambda_max = 0;                     // upper bound, hundredths (>= 100)
  std::vector<int64_t> n_hat_candidates;  // each < target_ctx
  std::vector<double> attn_candidates;    // attention factors (one when fixed)
  // Per-pair bounds in hundredths (empty: every pair in [100, lambda_max]); set by
  // apply_critical_dim().
  std::vector<int> lo, hi;
  // Factor vectors added to the initial population after the rule seeds (e.g. a previous
  // stage's factors for progressive extension); rule_seeds() rounds and clamps them.
  struct Seed {
    std::string name;
    std::vector<double> lambda;  // n_pairs factors
    int64_t n_hat = 0;           // the nearest candidate is used
    double attn_factor = 1.0;    // the nearest candidate is used
  };
  std::vector<Seed> extra_seeds;
  // For each t here (in (0, 1)), the geometric blend(a, b, t) of every two extra seeds a before b
  // joins the initial population after them: points between earlier searched sets, which the
  // crossovers of a short search rarely draw (docs/search.md, "The algorithm": initial population).
  std::vector<double> seed_blends;
  int lo_of(int j) const { return lo.empty() ? 100 : lo[static_cast<size_t>(j)]; }
  int hi_of(int j) const { return hi.empty() ? lambda_max : hi[static_cast<size_t>(j)]; }
};

// LongRoPE2's critical dimension, in rotary pairs: ceil(n_rot/2 * ln(L_orig / 2 pi) / ln(base)) -
// 1, clamped to [0, n_rot/2]. Pair j's wavelength is 2 pi base^(2j/n_rot): pairs below the critical
// dimension turn through whole periods within the original context (trained on every angle);
// those from it on never complete one there and need factors of at least s.
int critical_dim(int n_rot, int64_t orig_ctx, double base);
// Bounds the space by a critical dimension K: pairs j < K in [1, s + margin], pairs j >= K in
// [s, lambda_max] (s = L / L_orig; factors stay non-decreasing). Throws Error when the bounds
// leave no factor vector (e.g. s > lambda_max).
void apply_critical_dim(SearchSpace& space, int k, double margin);

// A factor bound in hundredths: floor(x * 100), below 100 when x < 1 (validate_space rejects it).
int lambda_hundredths(double x);

// The default space for a model's rotary dims: factors in [1, lambda_max] with lambda_max =
// 1.25 s when not given (s = L / L_orig), the default n_hat and attention-factor candidates.
SearchSpace default_search_space(const HParams& hp, int64_t orig_ctx, int64_t target_ctx,
                                 std::optional<double> lambda_max = std::nullopt);

// Defaults of the paper: n_hat in {0,1,2,4,8,12,16,20,24,28,32,64,128,256}, filtered to < L.
std::vector<int64_t> default_n_hat_candidates(int64_t target_ctx);
// 0.70, 0.75, ..., 1.10 and the rules' sqrt(1 + ln s / ln L_orig) and 0.1 ln s + 1, sorted
// (duplicates removed), s = L / L_orig; {1} when s <= 1.
std::vector<double> default_attn_candidates(int64_t orig_ctx, int64_t target_ctx);
// Checks the space; throws Error with one line (target <= original, lambda_max < 1, n_hat >= L).
void validate_space(const SearchSpace& space);

// The RoPE scaling an individual stands for.
RopeScaling to_scaling(const SearchSpace& space, const Individual& ind);

// Seeds: PI, NTK, dynamic NTK at length L and YaRN with s = L / L_orig, lambda_j = w_j / w'_j
// rounded to the grid, clamped into the bounds, made non-decreasing; n_hat 0; attention factor
// the candidate nearest to the rule's own. Then space.extra_seeds, rounded and clamped alike, with
// the candidates nearest to their n_hat and attention factor. Then, for each t of
// space.seed_blends in order, blend(a, b, t) of every two extra seeds a before b, named
// "blend(a, b, t)". Returned with their names.
std::vector<std::pair<std::string, Individual>> rule_seeds(const SearchSpace& space);

// The geometric blend of two individuals at t in [0, 1]: lambda_j = round(a_j^(1-t) * b_j^t) (in
// the grid's hundredths), n_hat and attention-factor indices round((1-t) * a + t * b). Valid
// whenever a and b are: the blend of two non-decreasing sequences is non-decreasing, and each
// value lies between its parents' values.
Individual blend(const Individual& a, const Individual& b, double t);

// True if lambda is non-decreasing and within [100, lambda_max].
bool is_valid(const SearchSpace& space, const Individual& ind);

struct SearchSettings {
  int population = 64;
  int iterations = 40;
  int parents = 32;
  int mutations = 16;
  int crossovers = 16;
  double mutation_prob = 0.3;
  double crossover_prob = 0.15;
  // Probability that a crossover child is a geometric blend of its two parents instead of the
  // pair-wise mix: lambda_j = a_j^(1-t) * b_j^t with one t uniform in [0.25, 0.75] for every
  // pair (non-decreasing and within the bounds whenever both parents are), n_hat and the
  // attention factor interpolated on their candidate grids. 0 (default) = the paper's operator
  // only. docs/search.md, "Blend crossover".
  double blend_prob = 0;
  uint64_t seed = 0;
  bool early_reject = true;
  // A child is cut only when its first stage is worse than the parents' loosest first stage by
  // more than this fraction (0.01 = 1%): near convergence, children within noise of the parents
  // are evaluated whole (docs/search.md, "Early reject").
  double reject_margin = 0.01;
  // Steady state instead of generations (after the initial population): a child is bred from the
  // current population as soon as any evaluation finishes, keeping every evaluator busy; an
  // "iteration" is then mutations + crossovers finished evaluations. Not reproducible across
  // evaluator counts (completion order changes selection); reproducible with one slot.
  bool steady_state = false;
  // Sum the evaluations' wall times into the log and checkpoint; off, they record 0 so that
  // both are byte-identical across runs (SearchRun turns it off under SOURCE_DATE_EPOCH).
  bool record_seconds = true;
  // Objectives of the fitness (EvalResult::objectives): 1 = the single-fitness search; more =
  // NSGA-II survival (non-dominated rank, then crowding distance), the front of every complete
  // evaluation kept (EvolutionSearch::front()), and early reject by the front: a child is cut
  // when a set on the front dominates it, compared like with like (RejectBound::points; first
  // stages with the margin above).
  int objectives = 1;
  // Several objectives: early reject by the front (with early_reject). Off only to continue a
  // checkpoint of a multi-objective run started without it (in its settings as "front_reject").
  bool front_reject = true;
  nlohmann::json to_json() const;  // without iterations and record_seconds
};

struct Fitness {
  double ppl = std::numeric_limits<double>::infinity();  // fitness when complete
  bool rejected = false;                                 // worse than `bound`
  double bound = 0;    // rejected: the bound its first stage exceeded (see Evaluator)
  double partial = 0;  // rejected: first-stage perplexity (for the log only)
  // Complete: first-stage perplexity (EvalResult::stage_ppl; infinity when unknown).
  double stage = std::numeric_limits<double>::infinity();
  // Complete, multi-objective: each objective's value (obj[0] == ppl).
  std::vector<double> obj;
  // Multi-objective: each objective's first-stage value (NaN where its evaluator has none; empty
  // when not recorded, as in checkpoints written before the front's early reject).
  std::vector<double> stage_obj;
  // Ordering key: rejected candidates rank after every complete one.
  bool better_than(const Fitness& o) const;
};

struct IterationLog {
  int iteration = 0;  // 0 = initial population
  double best_ppl = 0;
  double median_ppl = 0;                      // of the population's complete evaluations
  int64_t full_evals = 0, partial_evals = 0;  // cumulative
  double elapsed_seconds = 0;                 // cumulative evaluation time
  int front_size = 0;                         // multi-objective: sets on the front
};

// One search (one factor set). Deterministic for a given seed and evaluator.
class EvolutionSearch {
 public:
  EvolutionSearch(SearchSpace space, SearchSettings settings);

  // Runs the next iteration (iteration 0 evaluates the initial population).
  void step(Evaluator& ev);
  // Iterations done (initial population included); finished when > settings.iterations.
  int iterations_done() const { return done_; }
  bool finished(int iterations) const { return done_ > iterations; }

  const Individual& best() const { return best_; }
  double best_ppl() const { return best_fit_.ppl; }
  const std::vector<IterationLog>& log() const { return log_; }
  const SearchSpace& space() const { return space_; }
  const SearchSettings& settings() const { return settings_; }
  int64_t full_evals() const { return full_evals_; }
  int64_t partial_evals() const { return partial_evals_; }
  double eval_seconds() const { return eval_seconds_; }
  const std::map<std::string, Fitness>& memo() const { return memo_; }
  const std::vector<Individual>& population() const { return population_; }
  // Multi-objective: the Pareto front of every complete evaluation so far (no set that was on it
  // and is not dominated is ever dropped), in order of objective 0, then key. Empty for one
  // objective.
  const std::vector<Individual>& front() const { return front_; }

  // Operators (public for tests). They return a valid individual never seen before (and mark it
  // seen), or nullopt when none was found.
  std::optional<Individual> mutate(const Individual& parent);
  std::optional<Individual> crossover(const Individual& a, const Individual& b);

  // Checkpoint state (population, memo, best, RNG, log, counters).
  nlohmann::json to_json() const;
  void restore(const nlohmann::json& j);  // throws Error on a malformed state

  // Called as each evaluation of an iteration finishes, with the number finished so far in this
  // iteration and the iteration's total (for progress).
  std::function<void(int, int)> on_eval;

 private:
  // Evaluates the individuals not seen before under one bound and records them in order.
  void evaluate(Evaluator& ev, const std::vector<Individual>& inds, const RejectBound& bound);
  // Records one evaluation in the memo, the counters and the best.
  void record(const Individual& ind, const EvalResult& r, const RejectBound& bound);
  // The parents (best complete individuals) and their children's early-reject bound.
  std::vector<Individual> parents(RejectBound* bound) const;
  // A parent drawn at random, and a crossover of two distinct random parents (a mutation of the
  // only one when there is one).
  const Individual& pick(const std::vector<Individual>& parents);
  std::optional<Individual> cross(const std::vector<Individual>& parents);
  // One steady-state iteration (see SearchSettings::steady_state).
  void step_steady(Evaluator& ev);
  void log_iteration();
  struct InFlight {
    Individual ind;
    RejectBound bound;
  };
  std::map<size_t, InFlight> in_flight_;  // steady state: submitted, not yet recorded
  size_t next_id_ = 0;
  void sort_population();
  SearchSpace space_;
  SearchSettings settings_;
  std::mt19937_64 rng_;
  std::set<std::string> seen_;
  std::map<std::string, Fitness> memo_;
  std::vector<Individual> population_;
  Individual best_;
  Fitness best_fit_;
  std::vector<Individual> front_;
  // Adds a complete multi-objective evaluation to the front (when nothing there dominates it)
  // and drops what it dominates.
  void update_front(const Individual& ind, const Fitness& f);
  std::vector<IterationLog> log_;
  int done_ = 0;
  int64_t full_evals_ = 0, partial_evals_ = 0;
  double eval_seconds_ = 0;
};

}  // namespace longrope
