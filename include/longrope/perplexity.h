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

#include "longrope/model.h"
#include "longrope/rope.h"

namespace longrope {

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

// Called after each window with (windows done, windows total, running ppl).
using ProgressFn = std::function<void(int64_t, int64_t, double)>;

PerplexityResult perplexity(const Model& model, std::span<const int32_t> text_tokens, int64_t ctx,
                            int64_t docs, const RopeScaling& scaling, int n_threads = 0,
                            const ProgressFn& progress = {});

}  // namespace longrope
