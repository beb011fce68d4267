// RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your Long-Context Language
// Models?"): synthetic long-context tasks built from the reference generators' public definitions
// (NVIDIA/RULER scripts/data/synthetic/*.py, scripts/synthetic.yaml, scripts/eval), scored as the
// reference scores them, over methods x lengths through the sweep machinery of eval and passkey.
//
// Tasks (docs/ruler.md has the details):
//   niah_single_1/2/3, niah_multikey_1/2/3, niah_multivalue, niah_multiquery  retrieval
//   vt                                                                          multi-hop tracing
//   cwe, fwe                                                                    aggregation
//   qa_1 (SQuAD), qa_2 (HotpotQA)                            question answering (--qa-data only)
// A sample's prompt is [BOS] [ChatML user] input [ChatML assistant] answer_prefix; its tokens plus
// the task's generation budget never exceed the length. Every random choice comes from the seed:
// sample i of task T at length L is a function of (seed, T, L, i) only, so every method sees the
// same prompts and a run of n samples is the first n of a run of more.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "longrope/eval.h"
#include "longrope/model.h"

namespace longrope {

// The 13 task names in RULER's order (summary.csv columns).
const std::vector<std::string>& ruler_task_names();
// "all", "niah" (the eight retrieval tasks), "synthetic" (all but QA) or a comma-separated list of
// task names and those groups; duplicates dropped, RULER's order kept. Throws Error (one line) on
// an unknown name.
std::vector<std::string> parse_ruler_tasks(const std::string& spec);
// The task's generation budget in tokens (niah 128, vt 30, cwe 120, fwe 50, qa 32).
int ruler_max_new(const std::string& task);
// Whether the task's haystack is the essay text (niah_single_2/3, niah_multikey_1,
// niah_multivalue, niah_multiquery).
bool ruler_uses_essay(const std::string& task);

// One QA question: the question, its reference answers, the indices of its gold documents (and,
// for SQuAD, of the other paragraphs of the same article) into the set's documents.
struct RulerQuestion {
  std::string query;
  std::vector<std::string> answers;
  std::vector<size_t> gold, related;
};
struct RulerQaSet {
  std::string path;
  std::vector<std::string> docs;
  std::vector<RulerQuestion> questions;
};
// SQuAD v2 JSON (data[].paragraphs[].{context, qas[].{question, answers[].text, is_impossible}})
// and HotpotQA JSON ([{question, answer, context: [[title, [sentences...]], ...]}]); documents
// deduplicated and sorted as the reference does. Throws Error on an unreadable or malformed file.
RulerQaSet read_squad(const std::string& path);
RulerQaSet read_hotpotqa(const std::string& path);

// What the generators draw from.
struct RulerResources {
  std::vector<std::string> words;      // keys and words: lower-case ASCII words of the word list
  std::vector<std::string> sentences;  // the essay haystack, split into sentences
  RulerQaSet qa_1, qa_2;               // empty unless given
  std::string words_path;
  std::vector<std::string> haystack_paths;
};
// Reads the word list (one word a line; lower-case ASCII words of 3 to 12 letters are kept) and
// the haystack texts (whitespace collapsed, split into sentences after . ! or ? followed by a
// space). Throws Error when a file cannot be read or yields nothing.
RulerResources load_ruler_resources(const std::string& words_path,
                                    const std::vector<std::string>& haystack_paths);

// A generated sample (text only; tokens are added by make_ruler_sample).
struct RulerSample {
  std::string task;
  int64_t index = 0;
  std::string input;                 // the task text before the answer prefix (RULER's "input")
  std::string answer_prefix;         // e.g. " The special magic number for ... is"
  std::vector<std::string> outputs;  // the reference answers (RULER's "outputs")
  // Where the inserted facts sit: for each needle (niah) or chain statement (vt), in the order
  // they appear, the number of haystack units before it and that number over the haystack's
  // units (its depth in [0, 1]).
  std::vector<int64_t> units_before;
  std::vector<double> depths;
  std::vector<std::string> inserted;  // the inserted sentences, in order of appearance
  int64_t units = 0;                  // haystack units used (sentences, noise blocks, words, docs)
  std::vector<int32_t> tokens;        // the prompt
  int max_new = 0;                    // generation budget
};

// The text of sample `index` of `task` with a haystack of `units` units (no tokens); `length` is
// the target length (cwe uses RULER's smaller repeats below 4096, fwe its vocabulary of
// length/50 words). Deterministic in (seed, task, length, index, units).
RulerSample ruler_sample_text(const RulerResources& res, const std::string& task, int64_t length,
                              uint64_t seed, int64_t index, int64_t units);
// The prompt tokens of a sample: [BOS] [ChatML user turn] input [end of turn, assistant turn]
// answer prefix (with chat, the prefix's leading space is dropped).
std::vector<int32_t> ruler_prompt_tokens(const Model& model, const RulerSample& s, bool chat);
// The largest haystack for which sample 0's prompt plus the generation budget fits `length`
// (binary search, as the reference sizes a task once per length). Throws Error when not even the
// smallest haystack fits.
int64_t ruler_haystack_units(const Model& model, const RulerResources& res, const std::string& task,
                             int64_t length, uint64_t seed, bool chat);
// Sample `index` with its tokens: starts from `units` and shrinks the haystack until the prompt
// plus the budget fits (throws Error when it never does).
RulerSample make_ruler_sample(const Model& model, const RulerResources& res,
                              const std::string& task, int64_t length, uint64_t seed, int64_t index,
                              bool chat, int64_t units);

// RULER's scoring of one prediction (0..1): the prediction is stripped and its control characters
// read as newlines; string_match_all = the share of references found in it, case-insensitively;
// string_match_part = 1 when any reference is found. ruler_score picks the task's metric (part
// for qa_*, all for the others).
double string_match_all(const std::string& pred, const std::vector<std::string>& refs);
double string_match_part(const std::string& pred, const std::vector<std::string>& refs);
double ruler_score(const std::string& task, const std::string& pred,
                   const std::vector<std::string>& refs);
// The 95% interval of a mean of scores in [0, 1] over n samples: Wilson's score interval with the
// mean in place of the proportion (a [0, 1]-bounded score's variance is at most p(1 - p), so this
// is conservative for fractional scores and exact Wilson for 0/1 ones).
std::pair<double, double> ruler_interval(double mean, int64_t n);

// The first `samples` prepared samples of `task` at `length` from `dir` (RulerConfig::data_dir):
// `input`, `outputs` and `answer_prefix` (or lm-eval-harness's `gen_prefix`) of each JSON line,
// tokenized as ruler_prompt_tokens does, with the task's budget. Throws Error (file and line) on a
// missing file, a malformed line or too few samples.
std::vector<RulerSample> read_ruler_data(const Model& model, const std::string& dir,
                                         const std::string& task, int64_t length, int64_t samples,
                                         bool chat);

struct RulerConfig {
  std::string model_path;
  std::vector<int64_t> lengths;
  std::vector<std::string> methods;
  std::vector<std::string> tasks;  // parse_ruler_tasks; qa_* without its data is "not run"
  int64_t samples = 20;
  uint64_t seed = 42;
  bool chat = false;
  double threshold = 85.6;  // effective length: score above this
  std::string words_path = "/usr/share/dict/words";
  std::vector<std::string> haystack_paths;  // essay haystack (novels)
  std::string squad_path, hotpot_path;      // --qa-data
  // Prepared prompts (--data DIR): the first `samples` lines of DIR/data/<length>/<task>.jsonl
  // (what --prepare-only writes) or of RULER's DIR/<length>/data/<task>/validation.jsonl, in place
  // of generating them; words, haystack and QA files are then not read.
  std::string data_dir;
  ScaleOptions scale;
  int n_threads = 0;
  kernels::Compute compute = kernels::best_compute();
  std::string out_dir;
  bool resume = false;
  bool overwrite = false;
};

// Every prompt of a sweep: [length][task][sample], tasks as in tasks (the ones that run).
struct RulerPrompts {
  std::vector<std::string> tasks;                              // tasks that run
  std::vector<std::string> not_run;                            // qa_* without data
  std::vector<std::vector<std::vector<RulerSample>>> samples;  // [length][task][sample]
};

// Validates everything (methods, lengths vs memory, tasks, resources, every prompt fits) and
// builds every prompt: the plan of a RULER sweep (cells: method x length, each holding every task's
// samples). Cell fields: method, label, length, key, samples, score (mean over tasks, 0..100),
// ci_low/ci_high, seconds, rope, tasks {name: {score, ci_low, ci_high, nulls, seconds, results
// [{index, pred, outputs, score, prompt_tokens, depths, seconds}]}}. With prompts_out, the prompts
// are handed back (for write_ruler_outputs).
SweepPlan plan_ruler(const Model& model, const RulerConfig& cfg,
                     std::shared_ptr<const RulerPrompts>* prompts_out = nullptr);
EvalRun run_ruler(const Model& model, const RulerConfig& cfg,
                  std::shared_ptr<const RulerPrompts>* prompts_out = nullptr,
                  const SweepProgress& progress = {});

// Effective context length: the longest tested length whose score, and the score at every shorter
// tested length, is above `threshold` (0 when the shortest is not).
int64_t ruler_effective_length(const std::vector<int64_t>& lengths,
                               const std::vector<std::optional<double>>& scores, double threshold);

// Writes into cfg.out_dir: results.md (mean score per method and length with its interval, a task
// x length table per method, effective lengths), results.csv, score.{svg,png}, heatmap_<label>.
// {svg,png} (tasks x lengths), summary.csv (one row per method and length, tasks as columns) and
// per method and length <label>/<length>/pred/<task>.jsonl (RULER's prediction files: index,
// input, outputs, pred, length, answer_prefix, others, truncation) and summary.csv in RULER's
// layout. Returns the Markdown.
std::string write_ruler_outputs(const EvalRun& run, const Model& model, const RulerConfig& cfg,
                                const RulerPrompts& prompts);

// RULER's data files without running the model (`ruler --prepare-only`): per length and task
// cfg.out_dir/data/<length>/<task>.jsonl, one line per sample with RULER's prepared fields
// (index, input, outputs, length = prompt tokens + budget, answer_prefix) and `others` (id, task,
// seed, prompt_tokens, max_new_tokens, haystack_units, depths); the same seed gives the same bytes.
// Returns a Markdown table of what was written (prompt tokens and haystack units per task and
// length). Throws Error without an output folder.
std::string write_ruler_data(const RulerPrompts& prompts, const RulerConfig& cfg);

}  // namespace longrope
