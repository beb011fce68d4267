#include "longrope/perplexity.h"

#include <fmt/core.h>
#include <omp.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "longrope/context.h"
#include "longrope/error.h"

namespace longrope {

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw Error(path + ": is a directory (expected a text file)");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open text file (expected a readable UTF-8 text file)");
  std::ostringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  if (s.empty()) throw Error(path + ": text file is empty (expected text to tokenize)");
  check_text(s, path);
  return s;
}

void check_text(std::string_view b, const std::string& name) {
  const size_t n = b.size();
  size_t i = (n >= 3 && b.substr(0, 3) == "\xEF\xBB\xBF") ? 3 : 0;  // byte order mark
  int64_t chars = 0, controls = 0;
  while (i < n) {
    const auto c = static_cast<unsigned char>(b[i]);
    size_t len = 1;
    uint32_t cp = c;
    if (c >= 0x80) {
      if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
      } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
      } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
      } else {
        len = 0;
      }
      for (size_t k = 1; len && k < len; ++k) {
        if (i + k >= n || (static_cast<unsigned char>(b[i + k]) & 0xC0) != 0x80) {
          len = 0;
          break;
        }
        cp = (cp << 6) | (static_cast<unsigned char>(b[i + k]) & 0x3F);
      }
      // Overlong forms, UTF-16 surrogates and code points beyond Unicode.
      if (len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) len = 0;
      if (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) len = 0;
      if (len == 0)
        throw Error(fmt::format(
            "{}: not UTF-8 text (invalid byte 0x{:02X} at offset {}; expected a UTF-8 text file)",
            name, c, i));
    } else if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r' && c != '\f') || c == 0x7F) {
      ++controls;
    }
    ++chars;
    i += len;
  }
  if (controls * 100 > chars)
    throw Error(fmt::format(
        "{}: not text ({} of its {} characters are control characters; expected a UTF-8 text "
        "file)",
        name, controls, chars));
}

std::string normalize_newlines(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < text.size() && text[i + 1] == '\n') ++i;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

const char* window_convention_name(WindowConvention c) {
  return c == WindowConvention::kLlamaCpp ? "llama.cpp" : "longrope";
}

std::string window_convention_description(WindowConvention c) {
  return c == WindowConvention::kLongrope
             ? "longrope convention: BOS + CTX-1 text tokens, all scored, CRLF read as LF"
             : "llama.cpp convention: chunks of CTX tokens, BOS only where the model adds one, "
               "the second half scored, the text bytes as they are";
}

WindowConvention parse_window_convention(const std::string& name) {
  if (name == "longrope") return WindowConvention::kLongrope;
  if (name == "llama.cpp") return WindowConvention::kLlamaCpp;
  throw Error("unknown window convention '" + name + "' (expected longrope or llama.cpp)");
}

std::string text_for_convention(std::string_view text, WindowConvention c) {
  return c == WindowConvention::kLongrope ? normalize_newlines(text) : std::string(text);
}

namespace {
bool adds_bos(const Tokenizer& tok) {
  return tok.add_bos() && tok.bos() >= 0;
}
}  // namespace

int64_t tokens_needed(WindowConvention c, const Tokenizer& tok, int64_t ctx, int64_t docs) {
  if (c == WindowConvention::kLongrope) return docs * (ctx - 1);
  return docs * ctx - (adds_bos(tok) ? 1 : 0);
}

TextWindows cut_windows(WindowConvention c, std::span<const int32_t> text_tokens,
                        const Tokenizer& tok, int64_t ctx, int64_t docs) {
  TextWindows w;
  if (c == WindowConvention::kLongrope) {
    w.tokens = make_windows(text_tokens, tok.bos(), ctx, docs);
    return w;
  }
  if (ctx < 4) throw Error("context size " + std::to_string(ctx) + " is too small (expected >= 4)");
  if (docs < 1) throw Error("--docs must be >= 1, got " + std::to_string(docs));
  const int64_t need = tokens_needed(c, tok, ctx, docs);
  const int64_t have = static_cast<int64_t>(text_tokens.size());
  if (have < need)
    throw Error("text has " + std::to_string(have) + " tokens but " + std::to_string(docs) +
                " windows of ctx " + std::to_string(ctx) + " need " + std::to_string(need) +
                " (llama.cpp convention; expected a longer text, fewer --docs or a smaller ctx)");
  std::vector<int32_t> all;
  all.reserve(static_cast<size_t>(docs * ctx));
  if (adds_bos(tok)) all.push_back(tok.bos());
  all.insert(all.end(), text_tokens.begin(),
             text_tokens.begin() + (docs * ctx - int64_t(all.size())));
  std::vector<int64_t> scored;
  for (int64_t i = ctx / 2; i < ctx - 1; ++i) scored.push_back(i);
  for (int64_t k = 0; k < docs; ++k) {
    std::vector<int32_t> win(all.begin() + k * ctx, all.begin() + (k + 1) * ctx);
    if (adds_bos(tok)) win[0] = tok.bos();
    w.tokens.push_back(std::move(win));
    w.positions.push_back(scored);
  }
  return w;
}

std::vector<std::vector<int32_t>> make_windows(std::span<const int32_t> text_tokens, int32_t bos,
                                               int64_t ctx, int64_t docs) {
  if (ctx < 2) throw Error("context size " + std::to_string(ctx) + " is too small (expected >= 2)");
  if (docs < 1) throw Error("--docs must be >= 1, got " + std::to_string(docs));
  if (bos < 0) throw Error("the model's vocabulary has no BOS token (needed to start each window)");
  const int64_t need = docs * (ctx - 1);
  const int64_t have = static_cast<int64_t>(text_tokens.size());
  if (have < need)
    throw Error("text has " + std::to_string(have) + " tokens but " + std::to_string(docs) +
                " windows of ctx " + std::to_string(ctx) + " need " + std::to_string(need) +
                " (expected a longer text, fewer --docs or a smaller ctx)");
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(docs));
  for (int64_t k = 0; k < docs; ++k) {
    auto& w = out[k];
    w.reserve(static_cast<size_t>(ctx));
    w.push_back(bos);
    w.insert(w.end(), text_tokens.begin() + k * (ctx - 1),
             text_tokens.begin() + (k + 1) * (ctx - 1));
  }
  return out;
}

double WindowLoop::ppl() const {
  return std::exp(nll_sum / static_cast<double>(tokens));
}

WindowLoop score_windows(const Model& model, const std::vector<std::vector<int32_t>>& windows,
                         const RopeScaling& scaling, const ScoreOptions& opts,
                         const std::function<void(size_t, const std::vector<double>&)>& on_window,
                         std::vector<double> first_nll,
                         const std::vector<std::vector<int64_t>>* positions) {
  WindowLoop r;
  ScoreOptions o = opts;
  for (size_t k = 0; k < windows.size(); ++k) {
    std::vector<double> nll;
    if (k == 0 && !first_nll.empty()) {
      nll.swap(first_nll);
    } else {
      if (positions) o.positions = positions->at(k);
      try {
        nll = score_window(model, windows[k], scaling, o);
      } catch (const Error& e) {
        throw Error("window " + std::to_string(k + 1) + " of " + std::to_string(windows.size()) +
                    ": " + e.what());
      }
      r.computed_tokens += static_cast<int64_t>(nll.size());
    }
    for (double x : nll) r.nll_sum += x;
    r.tokens += static_cast<int64_t>(nll.size());
    if (on_window) on_window(k, nll);
  }
  return r;
}

PerplexityResult perplexity(const Model& model, std::span<const int32_t> text_tokens, int64_t ctx,
                            int64_t docs, const RopeScaling& scaling, int n_threads,
                            const ProgressFn& progress, const std::function<void(double)>& within,
                            WindowConvention convention, kernels::Compute compute) {
  scaling.validate(model.hp().n_rot);
  if (scaling.n_hat >= ctx && scaling.method == RopeMethod::kLongrope)
    throw Error("n_hat " + std::to_string(scaling.n_hat) + " must be smaller than the context " +
                std::to_string(ctx));
  const TextWindows windows = cut_windows(convention, text_tokens, model.tokenizer(), ctx, docs);
  PerplexityResult r;
  r.ctx = ctx;
  r.docs = docs;
  const double t0 = omp_get_wtime();
  ScoreOptions so;
  so.n_threads = n_threads;
  so.compute = compute;
  double total = 0.0;
  int64_t tokens = 0;
  int64_t done = 0;
  if (within) so.on_layer = [&](int l, int n) { within(double(done) + double(l) / double(n)); };
  const WindowLoop loop = score_windows(
      model, windows.tokens, scaling, so,
      [&](size_t k, const std::vector<double>& nll) {
        double s = 0.0;
        for (double x : nll) s += x;
        total += s;
        tokens += static_cast<int64_t>(nll.size());
        r.window_ppl.push_back(std::exp(s / double(nll.size())));
        done = int64_t(k + 1);
        if (progress) progress(int64_t(k + 1), docs, std::exp(total / double(tokens)));
      },
      {}, windows.positions.empty() ? nullptr : &windows.positions);
  r.seconds = omp_get_wtime() - t0;
  r.tokens = loop.tokens;
  r.mean_nll = loop.nll_sum / double(r.tokens);
  r.ppl = std::exp(r.mean_nll);
  r.tokens_per_second = double(docs * ctx) / r.seconds;  // tokens run through the model
  return r;
}

}  // namespace longrope
