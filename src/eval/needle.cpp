// Needle documents (include/longrope/needle.h).
#include "longrope/needle.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>

#include "longrope/error.h"

namespace longrope {

namespace {

constexpr const char* kNames[] = {"blue door",   "red lamp",    "old bridge", "silver key",
                                  "green field", "north tower", "iron gate",  "quiet lake"};
constexpr int kMaxNeedles = static_cast<int>(sizeof(kNames) / sizeof(kNames[0]));

}  // namespace

NeedleWindows make_needle_windows(const Tokenizer& tok, std::span<const int32_t> text_tokens,
                                  int64_t length, int64_t windows, int needles, uint64_t seed) {
  if (needles < 1 || needles > kMaxNeedles)
    throw Error(fmt::format("--needles {} (expected 1 to {})", needles, kMaxNeedles));
  if (windows < 1) throw Error(fmt::format("{} needle windows (expected >= 1)", windows));
  if (tok.bos() < 0)
    throw Error("the model's vocabulary has no BOS token (needed to start each window)");
  NeedleWindows out;
  size_t offset = 0;
  for (int64_t w = 0; w < windows; ++w) {
    std::mt19937_64 rng(seed * 1000003ull + static_cast<uint64_t>(w));
    std::uniform_int_distribution<int64_t> number(1000000, 9999999);
    std::uniform_real_distribution<double> jitter(0.1, 0.9);
    std::vector<std::vector<int32_t>> facts, questions, answers;
    std::vector<double> depths;
    const std::vector<int32_t> dot = tok.encode(".");
    int64_t fixed = 1;  // BOS
    for (int k = 0; k < needles; ++k) {
      const std::string name = kNames[k];
      const int64_t n = number(rng);
      facts.push_back(
          tok.encode(fmt::format(" The special magic number for the {} is {}.", name, n)));
      questions.push_back(tok.encode(fmt::format(
          " What is the special magic number for the {}? The special magic number for the {} is",
          name, name)));
      answers.push_back(tok.encode(fmt::format(" {}", n)));
      depths.push_back((k + jitter(rng)) / needles);
      fixed += static_cast<int64_t>(facts.back().size() + questions.back().size() +
                                    answers.back().size() + dot.size());
    }
    const int64_t hay = length - fixed;
    if (hay < 16)
      throw Error(
          fmt::format("needle window of {} tokens: {} needles and their questions take {} "
                      "(expected a longer window or fewer --needles)",
                      length, needles, fixed));
    if (offset + static_cast<size_t>(hay) > text_tokens.size())
      throw Error(fmt::format(
          "text has {} tokens: too little for {} needle window(s) of {} (needs about {}); use a "
          "longer text or fewer --docs",
          text_tokens.size(), windows, length, static_cast<int64_t>(offset) + hay * (windows - w)));
    const auto haystack = text_tokens.subspan(offset, static_cast<size_t>(hay));
    offset += static_cast<size_t>(hay);
    std::vector<int32_t>& win = out.tokens.emplace_back();
    std::vector<int64_t>& scored = out.positions.emplace_back();
    win.reserve(static_cast<size_t>(length));
    win.push_back(tok.bos());
    size_t at = 0;
    for (int k = 0; k < needles; ++k) {
      const size_t cut = std::clamp<size_t>(
          static_cast<size_t>(depths[static_cast<size_t>(k)] * static_cast<double>(hay)), at,
          haystack.size());
      win.insert(win.end(), haystack.begin() + static_cast<std::ptrdiff_t>(at),
                 haystack.begin() + static_cast<std::ptrdiff_t>(cut));
      at = cut;
      win.insert(win.end(), facts[static_cast<size_t>(k)].begin(),
                 facts[static_cast<size_t>(k)].end());
    }
    win.insert(win.end(), haystack.begin() + static_cast<std::ptrdiff_t>(at), haystack.end());
    for (int k = 0; k < needles; ++k) {
      const auto& q = questions[static_cast<size_t>(k)];
      const auto& a = answers[static_cast<size_t>(k)];
      win.insert(win.end(), q.begin(), q.end());
      for (size_t i = 0; i < a.size(); ++i) {
        scored.push_back(static_cast<int64_t>(win.size()) - 1);
        win.push_back(a[i]);
      }
      win.insert(win.end(), dot.begin(), dot.end());
    }
    if (static_cast<int64_t>(win.size()) != length)
      throw Error(
          fmt::format("needle window has {} tokens, expected {} (internal)", win.size(), length));
  }
  return out;
}

void MixedNll::add(const std::vector<double>& nll, std::span<const int64_t> positions,
                   int64_t from) {
  for (size_t i = static_cast<size_t>(std::max<int64_t>(from, 0)); i < nll.size(); ++i) {
    all_sum += nll[i];
    ++all;
  }
  for (int64_t p : positions) {
    if (p < from) continue;
    if (p < 0 || static_cast<size_t>(p) >= nll.size())
      throw Error(fmt::format("mixed fitness: answer position {} outside a window of {} NLLs", p,
                              nll.size()));
    answer_sum += nll[static_cast<size_t>(p)];
    ++answers;
  }
}

void MixedNll::add(const MixedNll& o) {
  all_sum += o.all_sum;
  all += o.all;
  answer_sum += o.answer_sum;
  answers += o.answers;
}

double MixedNll::fitness(double w) const {
  if (all == 0 || answers == 0) return std::numeric_limits<double>::quiet_NaN();
  return std::exp((1.0 - w) * all_sum / static_cast<double>(all) +
                  w * answer_sum / static_cast<double>(answers));
}

std::string fitness_name(const std::string& fitness, double needle_weight) {
  if (fitness == "needle") return "needle perplexity";
  if (fitness == "mix") return fmt::format("mixed fitness (w {:g})", needle_weight);
  return "perplexity";
}

void check_needle_weight(double w) {
  if (!(w > 0.0 && w < 1.0))
    throw Error(fmt::format(
        "--needle-weight {} (expected 0 < w < 1; --fitness ppl is w = 0, --fitness needle w = 1)",
        w));
}

nlohmann::json fitness_key(const std::string& fitness, int needles, uint64_t seed, double weight) {
  if (fitness == "ppl") return nullptr;
  if (fitness != "needle" && fitness != "mix")
    throw Error(fmt::format("--fitness {} (expected ppl, needle or mix)", fitness));
  nlohmann::json key = {{"kind", fitness}, {"needles", needles}, {"seed", seed}};
  if (fitness == "mix") {
    check_needle_weight(weight);
    key["weight"] = weight;
  }
  return key;
}

std::vector<std::string> split_fitness(const std::string& fitness) {
  std::vector<std::string> out;
  size_t at = 0;
  while (true) {
    const size_t comma = fitness.find(',', at);
    const std::string f = fitness.substr(at, comma == std::string::npos ? comma : comma - at);
    if (f != "ppl" && f != "needle" && f != "mix")
      throw Error(fmt::format(
          "--fitness {}: '{}' (expected ppl, needle or mix, or several of them comma separated "
          "for a multi-objective search, e.g. ppl,needle)",
          fitness, f));
    if (std::find(out.begin(), out.end(), f) != out.end())
      throw Error(
          fmt::format("--fitness {}: {} given twice (expected distinct objectives)", fitness, f));
    out.push_back(f);
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

}  // namespace longrope
