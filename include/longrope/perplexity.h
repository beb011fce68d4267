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

// A whole text file as bytes; throws Error naming the file when it cannot be read, is empty, or
// is not text (check_text).
std::string read_text_file(const std::string& path);

// Throws Error ("NAME: ...", one line) unless `bytes` is UTF-8 text: valid UTF-8 (no overlong
// forms, surrogates or code points above U+10FFFF; a leading byte order mark is allowed) in which
// control characters other than tab, newline, carriage return and form feed make up at most 1% of
// the characters (a binary file given as text would otherwise score a meaningless perplexity).
void check_text(std::string_view bytes, const std::string& name);

// Text as a text-mode reader sees it: "\r\n" and lone "\r" become "\n" (the convention of the
// reference perplexities; a file with Windows line endings scores the same as its Unix copy).
std::string normalize_newlines(std::string_view text);

// How windows are cut from a text and which of their tokens are scored.
//  kLongrope (the default; the LongRoPE papers' convention): the text with "\r\n" and "\r" read as
//    "\n"; window k = BOS + text tokens [k(L-1), (k+1)(L-1)), every text token scored (L - 1 per
//    window).
//  kLlamaCpp (llama-perplexity's): the text bytes as they are; tokens = BOS (only when the
//    tokenizer adds one: GGUF tokenizer.ggml.add_bos_token) + the text's tokens; window k =
//    tokens [kL, (k+1)L) with its first token replaced by BOS when the tokenizer adds one; the
//    predictions at positions L/2 .. L-2 are scored (L - L/2 - 1 per window: the second half).
enum class WindowConvention { kLongrope, kLlamaCpp };
const char* window_convention_name(WindowConvention c);  // "longrope", "llama.cpp"
// How the convention cuts windows and which tokens it scores, in a few words for tables and
// result lines: "longrope convention: BOS + CTX-1 text tokens, all scored, CRLF read as LF".
std::string window_convention_description(WindowConvention c);
WindowConvention parse_window_convention(const std::string& name);

// The text as the convention reads it (newlines normalised for kLongrope, untouched otherwise).
std::string text_for_convention(std::string_view text, WindowConvention c);

// A text's windows under a convention, with the positions each scores (empty = every position).
struct TextWindows {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<int64_t>> positions;
};
// How many text tokens K windows of ctx need under the convention.
int64_t tokens_needed(WindowConvention c, const Tokenizer& tok, int64_t ctx, int64_t docs);
// Throws Error (as make_windows) when the text is too short.
TextWindows cut_windows(WindowConvention c, std::span<const int32_t> text_tokens,
                        const Tokenizer& tok, int64_t ctx, int64_t docs);

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

// The windows are cut and scored by `convention` (text_tokens: the tokens of
// text_for_convention's text, without BOS). `within`, when set, receives the windows done as a
// fraction after every layer (a single window of SmolLM2 at 16k takes over a minute).
PerplexityResult perplexity(const Model& model, std::span<const int32_t> text_tokens, int64_t ctx,
                            int64_t docs, const RopeScaling& scaling, int n_threads = 0,
                            const ProgressFn& progress = {},
                            const std::function<void(double)>& within = {},
                            WindowConvention convention = WindowConvention::kLongrope,
                            kernels::Compute compute = kernels::best_compute());

}  // namespace longrope
