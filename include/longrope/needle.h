// Needle documents for a needle-driven fitness (LongRoPE2's "needle-driven perplexity"): a long
// text with short key facts inserted at depths spread over the window and, at its end, the
// questions and their answers; only the answers' tokens are scored, so the fitness rewards
// retrieving from far context rather than local prediction.
//
//   window = BOS  haystack[0..a1) needle_1 haystack[a1..a2) needle_2 ... haystack[..)  qa_1 ...
//   qa_K needle_k = " The special magic number for the <name_k> is <N_k>." qa_k     = " What is the
//   special magic number for the <name_k>? The special magic number for
//               the <name_k> is" + " <N_k>."   (the tokens of " <N_k>" are scored)
// Needle k sits at depth (k + u_k) / K of the haystack (u_k uniform in [0.1, 0.9)); N_k has 7
// digits; both come from (seed, window, k). Pieces are tokenized separately and concatenated; the
// window has exactly `length` tokens.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "longrope/tokenizer.h"

namespace longrope {

// The windows of a needle fitness and, per window, the NLL indices scored (i predicts
// tokens[w][i + 1]: the answers), in the shape PerplexityEvaluator and score_windows take.
struct NeedleWindows {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<int64_t>> positions;
};

// Window w takes its haystack from text_tokens after the haystacks of windows 0..w-1. Throws
// Error when the text or the length is too short.
NeedleWindows make_needle_windows(const Tokenizer& tok, std::span<const int32_t> text_tokens,
                                  int64_t length, int64_t windows, int needles, uint64_t seed);

// The mixed fitness (`--fitness mix`): needle windows scored whole, and
//   fitness = exp((1 - w) * mean NLL of every token + w * mean NLL of the answers),
// the weighted geometric mean of their perplexity and their needle perplexity. Perplexity alone
// rewards local prediction and trades retrieval away; the needle fitness alone pays for retrieval
// with perplexity; a small w (the default 0.1) makes the search keep both (docs/search.md).
struct MixedNll {
  double all_sum = 0, answer_sum = 0;
  int64_t all = 0, answers = 0;
  // Adds the NLLs of one window scored whole (nll[i] predicts token i + 1) from index `from` on,
  // and those of its answers (positions, as NeedleWindows holds them) from `from` on.
  void add(const std::vector<double>& nll, std::span<const int64_t> positions, int64_t from = 0);
  // Adds another accumulator's sums (e.g. a window's into its text's).
  void add(const MixedNll& o);
  // exp((1 - w) * all_sum / all + w * answer_sum / answers); NaN when either count is 0.
  double fitness(double w) const;
};

// What a fitness's values are, for people: "perplexity", "needle perplexity" (the answers only)
// or "mixed fitness (w W)".
std::string fitness_name(const std::string& fitness, double needle_weight);

// Throws Error naming the flag unless 0 < w < 1 (w = 0 is --fitness ppl, w = 1 --fitness needle).
void check_needle_weight(double w);

// A fitness ("ppl", "needle" or "mix") checked, as search checkpoints and eval cells key it:
// null for "ppl" (so keys written before the needle fitnesses still match), else {kind, needles,
// seed} and, for "mix", the weight. Throws Error for another fitness or (mix) a bad weight.
nlohmann::json fitness_key(const std::string& fitness, int needles, uint64_t seed, double weight);

// A --fitness value split at commas: one name (the single-fitness search) or several distinct
// ones (the objectives of a multi-objective search), each ppl, needle or mix. Throws Error with
// one line for an empty, unknown or repeated name.
std::vector<std::string> split_fitness(const std::string& fitness);

}  // namespace longrope
