// Windowed long-document perplexity (the LongRoPE convention).
//   tokens = encode(text) without BOS; window k = BOS + tokens[k*(ctx-1), (k+1)*(ctx-1));
//   all ctx-1 text tokens of each window are scored; ppl = exp(mean NLL over all scored tokens).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "longrope/context.h"
#include "longrope/model.h"
#include "longrope/rope.h"

namespace longrope {

// A whole text file as bytes; throws Error naming the file when it cannot be read or is empty.
std::string read_text_file(const std::string& path);

// Text as a text-mode reader sees it: "\r\n" and lone "\r" become "\n" (the convention of the
// reference perplexities; a file with Windows line endings scores the same as its Unix copy).
std::string normalize_newlines(std::string_view text);

// The K windows (each ctx tokens long, starting with bos). Throws Error when the text has fewer
// than K*(ctx-1) tokens: a shorter run would silently measure something else.
std::vector<std::vector<int32_t>> make_windows(std::span<const int32_t> text_tokens, int32_t bos,
                                               int64_t ctx, int64_t docs);

struct PerplexityResult {
  double ppl = 0;
  double mean_nll = 0;
  int64_t tokens = 0;  // scored tokens
  double seconds = 0;
  double tokens_per_second = 0;
  int64_t ctx = 0;
  int64_t docs = 0;
  std::vector<double> window_ppl;
};

// The window loop shared by perplexity() and the search's evaluator: scores each window (window 0
// is taken from `first_nll` when that holds its NLLs already) and calls on_window(k, nll) after
// window k. With `positions` (one list per window) only those NLL indices of each window are
// scored (ScoreOptions::positions; a needle fitness scores the answers only). Returns the NLL sum
// and the count of scored tokens over all windows, and how many tokens this call scored itself.
struct WindowLoop {
  double nll_sum = 0;
  int64_t tokens = 0;
  int64_t computed_tokens = 0;
  double ppl() const;  // exp(nll_sum / tokens)
};
WindowLoop score_windows(const Model& model, const std::vector<std::vector<int32_t>>& windows,
                         const RopeScaling& scaling, const ScoreOptions& opts,
                         const std::function<void(size_t, const std::vector<double>&)>& on_window,
                         std::vector<double> first_nll = {},
                         const std::vector<std::vector<int64_t>>* positions = nullptr);

// Called after each window with (windows done, windows total, running ppl).
using ProgressFn = std::function<void(int64_t, int64_t, double)>;

// `within`, when set, receives the windows done as a fraction after every layer (a single window
// of SmolLM2 at 16k takes over a minute).
PerplexityResult perplexity(const Model& model, std::span<const int32_t> text_tokens, int64_t ctx,
                            int64_t docs, const RopeScaling& scaling, int n_threads = 0,
                            const ProgressFn& progress = {},
                            const std::function<void(double)>& within = {});

}  // namespace longrope
