// Evaluation sweeps: perplexity of several RoPE methods over several lengths, with results kept
// in a JSON file that is rewritten (atomically) after every finished cell so that an interrupted
// run can be resumed, plus Markdown/CSV tables and plots. The passkey sweep (passkey.h) shares
// the method specs, the memory check and the results store.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "longrope/model.h"
#include "longrope/perplexity.h"
#include "longrope/plot.h"
#include "longrope/rope.h"

namespace longrope {

// One entry of --methods: "[LABEL=]METHOD" or "[LABEL=]longrope=FILE" or "LABEL=FILE" (a LongRoPE
// factors file). METHOD is none, linear/pi, ntk, dynamic, yarn or llama3.
//   "yarn" -> label yarn; "longrope=f.json" -> label longrope; "searched=f.json" -> label
//   searched; "pi8=linear" -> label pi8, method linear.
struct EvalMethod {
  std::string spec;   // as given
  std::string label;  // shown in tables and plots
  RopeMethod method = RopeMethod::kNone;
  std::string factors_path;  // longrope only
  RopeScaling factors;       // longrope only: the file's scaling (read by parse_eval_methods)
};

// The specs' syntax alone (labels, method names, which file each names), without reading any file:
// what a command checks as a usage error before it loads anything. Throws Error (one line) on an
// unknown method, a malformed spec or two methods with the same label.
std::vector<EvalMethod> parse_method_specs(const std::vector<std::string>& specs);

// Parses a comma-separated list (or single specs); reads and validates factors files against the
// model's rotary dims. Throws Error (one line) on an unknown method, an unreadable or invalid
// factors file, or two methods with the same label.
std::vector<EvalMethod> parse_eval_methods(const std::vector<std::string>& specs,
                                           const Model& model);

// How rule-based methods pick their scale.
struct ScaleOptions {
  std::optional<double> rope_factor;  // fixed s; unset: s = max(1, length / orig)
  std::optional<int64_t> orig_ctx;    // L_orig; unset: the model's trained context
  // Factors files run as this runtime runs them (deployed_scaling); deploy_ctx is its context size
  // (llama.cpp's n_ctx, vLLM's max_model_len; 0: the file's target context).
  DeployTarget deploy = DeployTarget::kLongrope;
  int64_t deploy_ctx = 0;
};
// The cell-key fields of ScaleOptions: orig_ctx, rope_factor and, when not longrope, deploy and
// deploy_ctx (absent for longrope, so cells of older results files still match).
void add_scale_key(nlohmann::json& key, const ScaleOptions& so);

// The scaling a method uses for sequences of `length` tokens (validated; n_hat < length).
RopeScaling eval_scaling(const EvalMethod& m, const Model& model, int64_t length,
                         const ScaleOptions& so);

// Bytes needed to run one sequence of `length` tokens: the largest of windowed scoring
// (activations of one layer, K/V of one layer, attention rows) and KV-cache decoding (K/V of all
// layers), plus a fixed margin. Deliberately generous.
int64_t estimate_run_bytes(const HParams& hp, int64_t length, int n_threads);
// MemAvailable from /proc/meminfo in bytes (0 when unknown).
int64_t available_memory_bytes();
// Throws Error when estimate_run_bytes exceeds the available memory (skipped when unknown).
void check_memory_for_length(const HParams& hp, int64_t length, int n_threads);

// Parses "512,1k,2K,4096" (k = 1024); throws Error on a malformed or non-positive length.
std::vector<int64_t> parse_lengths(const std::string& csv);

// ---------------------------------------------------------------------------------------------
// Results file: {"kind": ..., "cells": [ {...}, ... ]}. A cell is identified by its "method"
// (spec), "length" and "key" (an object with the model and the settings that change the result:
// docs or trials, texts, orig_ctx, rope_factor, ...). Cells with other keys are kept in the file
// but never reused.
class ResultsStore {
 public:
  // Loads `path` when resume is set and the file exists (a file of another kind is an error);
  // otherwise starts empty (the file is only written by put()/save()).
  ResultsStore(std::string path, std::string kind, bool resume);
  // The finished cell matching method spec + length + key, if any.
  const nlohmann::json* find(const std::string& method_spec, int64_t length,
                             const nlohmann::json& key) const;
  // A shorter run of the same cell to extend: among the cells of method spec + length whose
  // "units" count (e.g. passkey trials) is below `below`, the one with the most units whose key
  // equals key_for(its units).
  const nlohmann::json* find_prefix(const std::string& method_spec, int64_t length,
                                    const std::string& units, int64_t below,
                                    const std::function<nlohmann::json(int64_t)>& key_for) const;
  // Adds (or replaces) a cell (which must carry method, length and key) and rewrites the file
  // atomically (temp file + rename) when a path is set.
  void put(const nlohmann::json& cell);
  // Removes the cell of method spec + length + key, if stored; the file is rewritten, or removed
  // when no cell is left.
  void erase(const std::string& method_spec, int64_t length, const nlohmann::json& key);
  const nlohmann::json& doc() const { return doc_; }
  void save() const;

 private:
  std::string path_;
  nlohmann::json doc_;
};

// The keys the cells of each method are stored under: `key` plus, for a factors file, its
// content (sets, n_hat, attention factor), so that --resume never reuses a cell computed with
// other factors that happened to sit in a file of the same name. One key per method, in order.
std::vector<nlohmann::json> cell_keys(const nlohmann::json& key,
                                      const std::vector<EvalMethod>& methods);

// Creates the output directory of a sweep (nothing when dir is empty); throws Error naming it when
// it cannot be created.
void make_output_dir(const std::string& dir);

// A table: one row per method label, one column per length, `field` of each cell formatted with
// fmt_spec (e.g. "{:.3f}"); missing cells are "-".
struct ResultTable {
  std::vector<std::string> methods;  // labels, in order
  std::vector<int64_t> lengths;
  std::vector<std::vector<std::optional<double>>> values;  // [method][length]
  // 95% intervals [low, high] when the cells carry them (empty otherwise); [method][length].
  std::vector<std::vector<std::optional<std::pair<double, double>>>> intervals;
};
// `field` of each cell; with lo_field/hi_field also each cell's interval.
ResultTable make_table(const nlohmann::json& cells, const std::vector<EvalMethod>& methods,
                       const std::vector<int64_t>& lengths, const std::string& field,
                       const std::string& lo_field = "", const std::string& hi_field = "");

// The Wilson score interval of a proportion of k successes in n trials (z = 1.96: 95%). k may be
// fractional (a sum of n scores in [0, 1], as RULER's string_match_all gives): a [0, 1]-bounded
// score's variance is at most p(1 - p), so the interval is then conservative.
std::pair<double, double> wilson_interval(double k, int64_t n, double z = 1.96);
std::string table_markdown(const ResultTable& t, const std::string& corner, int decimals);
std::string table_csv(const ResultTable& t, int decimals);

// ---------------------------------------------------------------------------------------------
// Perplexity sweep.
struct EvalConfig {
  std::string model_path;               // recorded in the results (and used to match on resume)
  std::vector<std::string> text_paths;  // read, newline-normalized, tokenized
  std::vector<int64_t> lengths;
  std::vector<std::string> methods;  // specs
  int64_t docs = 1;                  // windows per text
  ScaleOptions scale;
  int n_threads = 0;
  kernels::Compute compute = kernels::best_compute();
  std::string out_dir;  // "" = write nothing
  bool resume = false;
  bool overwrite = false;  // replace out_dir's results of another run (else refused)
  // "ppl": every token of plain windows; "needle": the answers of needle windows only
  // (include/longrope/needle.h), as `longrope search --fitness needle` scores them; "mix": needle
  // windows scored whole, the answers weighing needle_weight (MixedNll), as search --fitness mix.
  std::string fitness = "ppl";
  int needles = 4;
  uint64_t needle_seed = 1234;
  double needle_weight = 0.1;
  // Short-input retention (llama.cpp's --kl-divergence measures): at lengths up to the model's
  // trained context, every scored position's next-token distribution is compared with the
  // unscaled model's on the same tokens. Plain windows only (fitness "ppl").
  bool kl_divergence = false;
  // How windows are cut and scored (include/longrope/perplexity.h); llama.cpp's convention takes
  // --fitness ppl only.
  WindowConvention convention = WindowConvention::kLongrope;
};

// Cell fields: method (spec), label, length, docs, texts, ppl, mean_nll, tokens, seconds, rope
// (describe()), factor, orig_ctx. With several texts, ppl = exp(total NLL / total scored tokens)
// over the K windows of every text. With kl_divergence, at lengths up to the trained context:
// kl_mean (nats per position), kl_lo/kl_hi (its 95% interval, mean +- 1.96 standard errors over
// positions), kl_p99, kl_max and same_top (the share of positions whose most likely next token is
// the unscaled model's).
struct EvalRun {
  std::vector<EvalMethod> methods;
  std::vector<int64_t> lengths;
  nlohmann::json cells;   // every finished cell (loaded or computed), in order
  int64_t computed = 0;   // cells computed by this run (others came from --resume)
  int64_t repeated = 0;   // cells of this run copied from another method's (SweepPlan::same_as)
  int64_t continued = 0;  // of the computed: begun by an earlier run (OUTDIR/partial.json)
};

// Writes the outputs of a sweep into out_dir: results.md, results.csv, STEM.svg and STEM.png (PNG
// only when PLplot support is built in). The table shows `field` of each cell with `decimals`
// digits; `plot` carries the title and axes, one series per method is added, and the original
// context is marked. Returns the Markdown table (nothing is written when out_dir is empty).
struct SweepOutputs {
  std::string field;               // cell field shown ("ppl", "accuracy")
  std::string lo_field, hi_field;  // the cells' interval (shown in the table and as error bars)
  int decimals = 3;                // in the Markdown table (the CSV gets 3 more)
  std::string stem;                // plot file name without extension
  PlotSpec plot;                   // title, axis labels and ranges; series are filled in
  std::string md_head;             // what the table shows, before it in results.md
};
std::string write_sweep_outputs(const EvalRun& run, const std::string& out_dir, int64_t orig_ctx,
                                SweepOutputs out);

// Called with (cells done, cells total, token work done, token work total, message).
using SweepProgress = std::function<void(int64_t, int64_t, int64_t, int64_t, const std::string&)>;

// A validated sweep, ready to run in this process or spread over MPI ranks: every rank prepares
// the same plan (plan_eval, plan_passkey); rank 0 executes it (execute_sweep) and hands out
// cells, the other ranks compute them (serve_sweep).
struct SweepPlan {
  std::string kind;  // results file kind: "perplexity" or "passkey"
  std::vector<EvalMethod> methods;
  std::vector<int64_t> lengths;
  std::vector<nlohmann::json> keys;                    // the cell key of each method (cell_keys)
  kernels::Compute compute = kernels::best_compute();  // the arithmetic of its cells
  bool length_major = false;  // order of the cells: all methods at a length, then the next
  // The cell of methods[mi] at lengths[li] (with method, label, length and key). `progress`, when
  // set, is called with the fraction of the cell done and a message. `prefix` is null, or a stored
  // cell of a shorter run (see units) or an unfinished cell of this run (save_partial) whose units
  // the cell reuses. `save_partial`, when set, may be called after each unit with the units done
  // so far, in the layout `prefix` is read in: execute_sweep adds the cell's method, length and
  // key and keeps it in OUTDIR/partial.json, so that a run stopped inside a long cell resumes
  // from its last unit.
  std::function<nlohmann::json(
      size_t mi, size_t li, const std::function<void(double, const std::string&)>& progress,
      const nlohmann::json& prefix, const std::function<void(const nlohmann::json&)>& save_partial)>
      compute_cell;
  // Cells made of independent units (passkey: trials, the first K of a run identical to a run of
  // K): the cell field that counts them, and the key a run of only the first n units stores for
  // method mi. With resume, a stored shorter run is extended instead of recomputed.
  std::string units;
  std::function<nlohmann::json(size_t mi, int64_t n)> key_for_units;
  std::function<int64_t(int64_t length)> work;  // work units of one cell, for the ETA
  // same_as[mi][li]: an earlier method whose cell at lengths[li] this one repeats exactly (every
  // prompt of the length runs under the same RoPE tables: share_identical_cells), or -1; empty
  // when no cell repeats another. A repeating cell is not computed: execute_sweep copies the
  // other's results under its own method, label and key (alias_cell).
  std::vector<std::vector<int>> same_as;
  std::function<nlohmann::json(size_t mi, size_t li, const nlohmann::json& source)> alias_cell;
  // What every rank must share before its cells can be mixed: model, tokens, cell keys, compute
  // (sweep_fingerprint). Computed on demand: only a job over several MPI ranks needs it.
  std::function<nlohmann::json()> fingerprint;
};

// A plan's fingerprint: the model (model_fingerprint), the tokens it scores (texts or prompts),
// the cell keys and lengths, and the compute mode.
nlohmann::json sweep_fingerprint(const Model& model,
                                 const std::vector<std::vector<int32_t>>& tokens,
                                 const std::vector<nlohmann::json>& keys,
                                 const std::vector<int64_t>& lengths, kernels::Compute compute);

// The start of a plan whose cells prompt the model (passkey, ruler): kind, length-major order (a
// run stopped midway has every method at the shorter lengths), the methods, the lengths (each
// checked against memory); returns each method's scaling at each length, [method][length].
std::shared_ptr<const std::vector<std::vector<RopeScaling>>> start_prompt_plan(
    SweepPlan& plan, const std::string& kind, const Model& model,
    const std::vector<std::string>& methods, const std::vector<int64_t>& lengths,
    const ScaleOptions& scale, int n_threads);

// Fills plan.same_as and plan.alias_cell for a prompt plan (passkey, ruler), whose cells differ
// between methods only in the scaling: a method's cell at a length repeats an earlier method's
// when every prompt of that length runs under the same RoPE tables (rope_tables at the prompt's
// length: a generation keeps the tables chosen at the prompt, SwitchPolicy::kKeep). Yarn or
// linear at s = 1 and a LongRoPE file's short set within the trained context are the plain
// model there, so `--methods none,yarn,searched=F.json` computes such lengths once. A copy
// carries `same_as` (the label it repeats) and seconds 0; prompt_lengths(li) gives the token
// counts of the prompts at lengths[li].
void share_identical_cells(SweepPlan& plan, const Model& model,
                           std::shared_ptr<const std::vector<std::vector<RopeScaling>>> scalings,
                           const std::function<std::vector<int64_t>(size_t li)>& prompt_lengths);

// The keys of a sweep over n prompts per cell (passkey trials, ruler samples) in which a run of
// fewer prompts holds this run's first ones, so that --resume with more extends a stored cell:
// a cell's key is base_key plus the fingerprint of the first m prompts of every length (from
// prompt_tokens(m)) and m under the name `units`. Sets plan.keys (m = n), plan.units,
// plan.key_for_units and plan.fingerprint (sweep_fingerprint over all prompts); model must
// outlive the plan.
void key_plan_by_prompts(SweepPlan& plan, const Model& model, const nlohmann::json& base_key,
                         std::function<std::vector<std::vector<int32_t>>(int64_t)> prompt_tokens,
                         int64_t n, const std::string& units);

// Runs the cells of the plan that out_dir/results.json (with resume) does not hold yet, spread
// over the MPI ranks when there are several, rewriting results.json after every finished cell.
// Cells are returned in plan order, whatever the order they finished in. An out_dir that holds
// an earlier run's results.json is refused (OutputRefused, before anything is computed or
// written) unless the run resumes it or overwrites it.
EvalRun execute_sweep(const SweepPlan& plan, const std::string& out_dir, bool resume,
                      bool overwrite, const SweepProgress& progress = {});
// Ranks other than 0: computes the cells rank 0 sends until it stops.
void serve_sweep(const SweepPlan& plan);

// Validates everything (methods, factors files, lengths vs memory, enough text for every
// length) and tokenizes the texts: the plan of a perplexity sweep. The model must outlive it.
SweepPlan plan_eval(const Model& model, const EvalConfig& cfg);
// plan_eval + execute_sweep: each (method, length) cell, with results.json written after each
// when out_dir is set.
EvalRun run_eval(const Model& model, const EvalConfig& cfg, const SweepProgress& progress = {});

// Writes the tables and the plot of a perplexity sweep into dir; returns the Markdown table.
std::string write_eval_outputs(const EvalRun& run, const Model& model, const EvalConfig& cfg);

}  // namespace longrope
