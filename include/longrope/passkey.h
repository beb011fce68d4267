// Passkey retrieval: a number hidden at some depth of filler text, asked for at the end and read
// back by greedy decoding.
//   prompt = [BOS] [chat prefix] intro filler[0..d) needle filler[d..) question [chat suffix]
//   filler  = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back
//              again." repeated, one sentence at a time, until the prompt has `length` tokens
//   needle  = "The pass key is N. Remember it. N is the pass key."
//   question = "What is the pass key? The pass key is" (with --chat: the question ends the user
//              turn and the assistant turn starts with "The pass key is")
// Pieces are tokenized separately and concatenated, so the prompt length is exact up to one
// filler sentence (the prompt is never longer than `length`).
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "longrope/eval.h"
#include "longrope/model.h"
#include "longrope/rope.h"

namespace longrope {

struct PasskeyPrompt {
  std::vector<int32_t> tokens;
  int64_t key = 0;
  double depth = 0;           // requested depth in [0, 1]
  int64_t needle_token = 0;   // index of the first needle token in tokens
  int64_t needle_length = 0;  // tokens of the needle sentence
};

// Builds the prompt for a key at `depth` (0 = right after the intro, 1 = just before the
// question) with at most `length` tokens. Throws Error when length is too short for the intro,
// needle and question.
PasskeyPrompt make_passkey_prompt(const Model& model, int64_t length, int64_t key, double depth,
                                  bool chat);

// The key and depth of trial `trial` at `length`: a function of (seed, length, trial) only, so
// every method sees the same keys. key in [1, 50000]; depth uniform in [0, 1] unless depths is
// non-empty, in which case trial t uses depths[t % depths.size()].
struct PasskeyTrialSpec {
  int64_t key = 0;
  double depth = 0;
};
PasskeyTrialSpec passkey_trial_spec(uint64_t seed, int64_t length, int64_t trial,
                                    const std::vector<double>& depths);

struct PasskeyAnswer {
  std::string output;  // decoded new tokens
  bool correct = false;
  double seconds = 0;
};
// Greedy decoding of up to max_new tokens after the prompt (KV cache; the RoPE tables chosen at
// the prompt are kept while generating: SwitchPolicy::kKeep). Correct when the decimal key
// appears in the output (and is not part of a longer number).
PasskeyAnswer run_passkey_trial(const Model& model, const PasskeyPrompt& prompt,
                                const RopeScaling& scaling, int n_threads, int max_new = 10,
                                kernels::Compute compute = kernels::best_compute());

struct PasskeyConfig {
  std::string model_path;
  std::vector<int64_t> lengths;
  std::vector<std::string> methods;
  int64_t trials = 20;
  uint64_t seed = 1234;
  std::vector<double> depths;  // empty = random depths
  bool chat = false;
  int max_new = 10;
  ScaleOptions scale;
  int n_threads = 0;
  kernels::Compute compute = kernels::best_compute();
  std::string out_dir;
  bool resume = false;
  bool overwrite = false;  // replace out_dir's results of another run (else refused)
};

// Cells: method, label, length, key {model, trials, seed, depths, chat, ...}, trials, correct,
// accuracy, ci_low/ci_high (its 95% Wilson interval), seconds, rope, and the per-trial list (key,
// depth, output, correct). Everything is validated before the first trial; results.json is
// rewritten after every cell.
SweepPlan plan_passkey(const Model& model, const PasskeyConfig& cfg);  // validates, builds prompts
EvalRun run_passkey(const Model& model, const PasskeyConfig& cfg,
                    const SweepProgress& progress = {});
// results.md (accuracy and its interval), results.csv (accuracy), accuracy.svg/.png (with error
// bars) and per method a depth x length heat map depth_<label>.svg/.png (rows: the --depths, or
// five bins of the random depths; each cell "right/trials"); returns the Markdown table.
std::string write_passkey_outputs(const EvalRun& run, const Model& model, const PasskeyConfig& cfg);
// The heat maps alone (file names written, in out_dir).
std::vector<std::string> write_passkey_heatmaps(const EvalRun& run, const PasskeyConfig& cfg);

}  // namespace longrope
