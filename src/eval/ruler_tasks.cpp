// RULER's tasks: resources (word list, essay haystack, QA sets), the seeded sample generators,
// fitting a prompt to a length in the model's tokens, and the scorers. Written from the reference
// generators' definitions (NVIDIA/RULER scripts/data/synthetic/{niah,variable_tracking,
// common_words_extraction,freq_words_extraction,qa}.py, scripts/synthetic.yaml,
// scripts/data/synthetic/constants.py, scripts/eval/synthetic/constants.py); docs/ruler.md.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "greedy.h"
#include "longrope/error.h"
#include "longrope/fingerprint.h"
#include "longrope/ruler.h"

namespace longrope {

namespace {

enum class Kind { kNiah, kVt, kCwe, kFwe, kQa };
enum class Hay { kNoise, kEssay, kNeedle, kNone };
enum class Item { kWords, kNumbers, kUuids };

// One row of RULER's task table (scripts/synthetic.yaml).
struct TaskDef {
  const char* name;
  Kind kind;
  Hay hay = Hay::kNone;
  Item key = Item::kWords, value = Item::kNumbers;
  int n_keys = 1, n_values = 1, n_queries = 1;
};

const TaskDef kTasks[] = {
    {"niah_single_1", Kind::kNiah, Hay::kNoise, Item::kWords, Item::kNumbers},
    {"niah_single_2", Kind::kNiah, Hay::kEssay, Item::kWords, Item::kNumbers},
    {"niah_single_3", Kind::kNiah, Hay::kEssay, Item::kWords, Item::kUuids},
    {"niah_multikey_1", Kind::kNiah, Hay::kEssay, Item::kWords, Item::kNumbers, 4},
    {"niah_multikey_2", Kind::kNiah, Hay::kNeedle, Item::kWords, Item::kNumbers},
    {"niah_multikey_3", Kind::kNiah, Hay::kNeedle, Item::kUuids, Item::kUuids},
    {"niah_multivalue", Kind::kNiah, Hay::kEssay, Item::kWords, Item::kNumbers, 1, 4},
    {"niah_multiquery", Kind::kNiah, Hay::kEssay, Item::kWords, Item::kNumbers, 4, 1, 4},
    {"vt", Kind::kVt, Hay::kNoise},
    {"cwe", Kind::kCwe},
    {"fwe", Kind::kFwe},
    {"qa_1", Kind::kQa},
    {"qa_2", Kind::kQa},
};

const TaskDef& task_def(const std::string& name) {
  for (const TaskDef& t : kTasks)
    if (name == t.name) return t;
  throw Error(fmt::format("unknown RULER task '{}' (expected all, niah, synthetic or {})", name,
                          fmt::join(ruler_task_names(), ", ")));
}

// RULER's noise block: one haystack unit of niah_single_1 and vt.
constexpr const char* kNoise =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

// --- Seeded choices: explicit arithmetic on mt19937_64 output (not std::uniform_* or
// std::shuffle, whose results differ between standard libraries). ---
using Rng = std::mt19937_64;

Rng sample_rng(uint64_t seed, const std::string& task, int64_t length, int64_t index) {
  const uint64_t t = fnv1a(task.data(), task.size());
  std::seed_seq seq{
      uint32_t(seed),  uint32_t(seed >> 32),  uint32_t(length), uint32_t(length >> 32),
      uint32_t(index), uint32_t(index >> 32), uint32_t(t),      uint32_t(t >> 32),
      0x72756c72u};
  return Rng(seq);
}

uint64_t below(Rng& rng, uint64_t n) {
  return n ? rng() % n : 0;
}

template <class T>
void shuffle(Rng& rng, std::vector<T>& v) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(rng, i)]);
}

// k distinct values of [0, n), in the order drawn.
std::vector<int64_t> sample_distinct(Rng& rng, int64_t n, int64_t k) {
  if (k > n) throw Error(fmt::format("cannot draw {} distinct values below {}", k, n));
  std::vector<int64_t> out;
  if (2 * k > n) {
    std::vector<int64_t> all(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) all[size_t(i)] = i;
    for (int64_t i = 0; i < k; ++i)
      std::swap(all[size_t(i)], all[size_t(i + int64_t(below(rng, uint64_t(n - i))))]);
    out.assign(all.begin(), all.begin() + k);
    return out;
  }
  std::set<int64_t> seen;
  while (int64_t(out.size()) < k) {
    const int64_t x = int64_t(below(rng, uint64_t(n)));
    if (seen.insert(x).second) out.push_back(x);
  }
  return out;
}

std::string random_letters(Rng& rng, int n, char first) {
  std::string s;
  for (int i = 0; i < n; ++i) s += char(first + below(rng, 26));
  return s;
}

// A key or value of the given type: "word-word" (RULER's adjective-noun pairs, here two words of
// the word list), a 7-digit number, or a version-4 UUID.
std::string random_item(Rng& rng, Item type, const std::vector<std::string>& words) {
  switch (type) {
    case Item::kWords:
      return words[below(rng, words.size())] + "-" + words[below(rng, words.size())];
    case Item::kNumbers:
      return std::to_string(1000000 + below(rng, 9000000));
    case Item::kUuids: {
      const uint64_t hi = (rng() & ~0xf000ull) | 0x4000ull;
      const uint64_t lo = (rng() & ~(3ull << 62)) | (2ull << 62);
      return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xffff,
                         hi & 0xffff, lo >> 48, lo & 0xffffffffffffull);
    }
  }
  return {};
}

// Distinct items (keys must not repeat).
std::vector<std::string> distinct_items(Rng& rng, Item type, int n,
                                        const std::vector<std::string>& words) {
  std::vector<std::string> out;
  while (int(out.size()) < n) {
    std::string x = random_item(rng, type, words);
    if (std::find(out.begin(), out.end(), x) == out.end()) out.push_back(std::move(x));
  }
  return out;
}

const char* item_plural(Item t) {
  return t == Item::kWords ? "words" : t == Item::kNumbers ? "numbers" : "uuids";
}

// Units joined with `sep`, with inserted[j] placed before unit at[j] (at sorted ascending; an
// index of n places it at the end). Records where each inserted sentence landed.
std::string interleave(RulerSample& s, int64_t n, const std::function<std::string(int64_t)>& unit,
                       const std::vector<int64_t>& at, const std::vector<std::string>& inserted,
                       const std::string& sep) {
  std::string out;
  size_t j = 0;
  auto add = [&](const std::string& piece) {
    if (!out.empty()) out += sep;
    out += piece;
  };
  for (int64_t i = 0; i <= n; ++i) {
    for (; j < at.size() && at[j] == i; ++j) {
      add(inserted[j]);
      s.units_before.push_back(i);
      s.depths.push_back(n > 0 ? double(i) / double(n) : 0.0);
      s.inserted.push_back(inserted[j]);
    }
    if (i < n) add(unit(i));
  }
  return out;
}

std::string join_query(const std::vector<std::string>& q) {
  if (q.size() == 1) return q[0];
  std::string out;
  for (size_t i = 0; i + 1 < q.size(); ++i) out += q[i] + ", ";
  return out + "and " + q.back();
}

// --- The generators; each fills input, answer_prefix and outputs. ---

void gen_niah(RulerSample& s, const TaskDef& d, const RulerResources& res, Rng& rng, int64_t n) {
  const std::string type = item_plural(d.value);
  const std::vector<std::string> keys = distinct_items(rng, d.key, d.n_keys, res.words);
  std::vector<std::vector<std::string>> values;
  std::vector<std::string> needles;
  auto needle = [&](const std::string& k, const std::string& v) {
    return fmt::format("One of the special magic {} for {} is: {}.", type, k, v);
  };
  for (const std::string& k : keys) {
    values.emplace_back();
    for (int v = 0; v < d.n_values; ++v) {
      values.back().push_back(random_item(rng, d.value, res.words));
      needles.push_back(needle(k, values.back().back()));
    }
  }
  shuffle(rng, needles);
  std::vector<int64_t> at;
  std::function<std::string(int64_t)> unit;
  std::vector<std::string> distractors;
  if (d.hay == Hay::kEssay) {
    // Depths from RULER's grid of 40 (round(linspace(0, 100, 40))), drawn without replacement.
    for (int64_t g : sample_distinct(rng, 40, int64_t(needles.size()))) {
      const int64_t depth = std::llround(100.0 * double(g) / 39.0);
      at.push_back(n * depth / 100);
    }
    unit = [&res](int64_t i) { return res.sentences[size_t(i) % res.sentences.size()]; };
  } else {
    at = sample_distinct(rng, n, int64_t(needles.size()));
    if (d.hay == Hay::kNeedle)
      while (int64_t(distractors.size()) < n) {
        const std::string k = random_item(rng, d.key, res.words);
        if (std::find(keys.begin(), keys.end(), k) == keys.end())
          distractors.push_back(needle(k, random_item(rng, d.value, res.words)));
      }
    unit = [&distractors](int64_t i) {
      return distractors.empty() ? std::string(kNoise) : distractors[size_t(i)];
    };
  }
  std::sort(at.begin(), at.end());
  const std::string context =
      interleave(s, n, unit, at, needles, d.hay == Hay::kEssay ? " " : "\n");
  std::vector<std::string> queries;
  for (int64_t i : sample_distinct(rng, d.n_keys, d.n_queries)) {
    queries.push_back(keys[size_t(i)]);
    for (const std::string& v : values[size_t(i)]) s.outputs.push_back(v);
  }
  const std::string q = join_query(queries);
  if (d.n_queries * d.n_values == 1) {
    const std::string one = type.substr(0, type.size() - 1);
    s.input = fmt::format(
        "A special magic {0} is hidden within the following text. Make sure to memorize it. I "
        "will quiz you about the {0} afterwards.\n{1}\nWhat is the special magic {0} for {2} "
        "mentioned in the provided text?",
        one, context, q);
    s.answer_prefix =
        fmt::format(" The special magic {} for {} mentioned in the provided text is", one, q);
  } else {
    s.input = fmt::format(
        "Some special magic {0} are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {0} afterwards.\n{1}\nWhat are all the special magic {0} for "
        "{2} mentioned in the provided text?",
        type, context, q);
    s.answer_prefix =
        fmt::format(" The special magic {} for {} mentioned in the provided text are", type, q);
  }
}

// Variable tracking: one chain of 4 hops (5 variables) among noise blocks, after one worked
// example with 3-letter variables (RULER's in-context example).
constexpr int kVtHops = 4;
std::string vt_template(const std::string& context, const std::string& value) {
  return fmt::format(
      "Memorize and track the chain(s) of variable assignment hidden in the following "
      "text.\n\n{}\nQuestion: Find all variables that are assigned the value {} in the text "
      "above.",
      context, value);
}
std::string vt_prefix(const std::string& value) {
  // RULER's wording, its spelling included.
  return fmt::format(
      " Answer: According to the chain(s) of variable assignment in the text above, {} variables "
      "are assgined the value {}, they are: ",
      kVtHops + 1, value);
}

void gen_vt(RulerSample& s, const RulerResources&, Rng& rng, int64_t n, int64_t length) {
  auto chain = [&rng](int letters, std::vector<std::string>& vars) {
    while (int(vars.size()) < kVtHops + 1) {
      std::string v = random_letters(rng, letters, 'A');
      if (std::find(vars.begin(), vars.end(), v) == vars.end()) vars.push_back(std::move(v));
    }
    std::vector<std::string> st{fmt::format("VAR {} = {}", vars[0], 10000 + below(rng, 90000))};
    for (int j = 0; j < kVtHops; ++j)
      st.push_back(fmt::format("VAR {} = VAR {} ", vars[size_t(j) + 1], vars[size_t(j)]));
    return st;
  };
  auto noise = [](int64_t) { return std::string(kNoise); };
  // The worked example: min(15, length/256) noise blocks (RULER fits it to 500 tokens, about
  // 15 blocks; shorter lengths get a smaller one).
  const int64_t n_icl = std::clamp<int64_t>(length / 256, kVtHops + 1, 15);
  std::vector<std::string> icl_vars;
  const std::vector<std::string> icl_chain = chain(3, icl_vars);
  std::vector<int64_t> at = sample_distinct(rng, n_icl, kVtHops + 1);
  std::sort(at.begin(), at.end());
  RulerSample scratch;
  const std::string icl_value = icl_chain[0].substr(icl_chain[0].rfind(' ') + 1);
  std::string icl = vt_template(interleave(scratch, n_icl, noise, at, icl_chain, "\n"), icl_value) +
                    vt_prefix(icl_value) + fmt::format("{}", fmt::join(icl_vars, " ")) + "\n";
  std::vector<std::string> vars;
  const std::vector<std::string> st = chain(5, vars);
  at = sample_distinct(rng, n, kVtHops + 1);
  std::sort(at.begin(), at.end());
  const std::string value = st[0].substr(st[0].rfind(' ') + 1);
  s.input = icl + "\n" + vt_template(interleave(s, n, noise, at, st, "\n"), value);
  s.answer_prefix = vt_prefix(value);
  s.outputs = vars;
}

// Common words: 10 words repeated often, the others rarely, as a numbered list; after one worked
// example. Below 4096 tokens RULER uses smaller repeats (example 3/1, task 6/1; else 10/3, 30/3).
constexpr int kCommonWords = 10;
void gen_cwe(RulerSample& s, const RulerResources& res, Rng& rng, int64_t n, int64_t length) {
  const bool short_len = length < 4096;
  if (n > int64_t(res.words.size()))
    throw Error(fmt::format("cwe needs {} distinct words; the word list {} has {}", n,
                            res.words_path, res.words.size()));
  auto example = [&](int64_t words, int common_rep, int rare_rep) {
    std::vector<std::string> chosen;
    for (int64_t i : sample_distinct(rng, int64_t(res.words.size()), words))
      chosen.push_back(res.words[size_t(i)]);
    std::vector<std::string> list;
    for (size_t i = 0; i < chosen.size(); ++i)
      for (int r = 0; r < (i < kCommonWords ? common_rep : rare_rep); ++r)
        list.push_back(chosen[i]);
    shuffle(rng, list);
    std::string ctx;
    for (size_t i = 0; i < list.size(); ++i)
      ctx += fmt::format("{}{}. {}", i ? " " : "", i + 1, list[i]);
    chosen.resize(kCommonWords);
    return std::make_pair(
        fmt::format("Below is a numbered list of words. In these words, some appear more often "
                    "than others. Memorize the ones that appear most often.\n{}\nQuestion: What "
                    "are the 10 most common words in the above list?",
                    ctx),
        chosen);
  };
  s.answer_prefix = " Answer: The top 10 words that appear most often in the list are:";
  const auto [ex_text, ex_words] = short_len ? example(20, 3, 1) : example(40, 10, 3);
  std::string ex_answer;
  for (size_t i = 0; i < ex_words.size(); ++i)
    ex_answer += fmt::format(" {}. {}", i + 1, ex_words[i]);
  auto [text, common] = short_len ? example(n, 6, 1) : example(n, 30, 3);
  s.input = ex_text + s.answer_prefix + ex_answer + "\n" + text;
  s.outputs = common;
}

// Frequent words: length/50 coded words of 6 letters with Zipf(2) counts floor(N k^-2 / zeta(2));
// the most frequent is "..." (noise), the answer the next three.
void gen_fwe(RulerSample& s, Rng& rng, int64_t n, int64_t length) {
  const size_t vocab_size = size_t(std::max<int64_t>(5, length / 50));
  std::vector<std::string> vocab;
  while (vocab.size() < vocab_size) {
    std::string w = random_letters(rng, 6, 'a');
    if (std::find(vocab.begin(), vocab.end(), w) == vocab.end()) vocab.push_back(std::move(w));
  }
  vocab[0] = "...";
  constexpr double kZeta2 = 1.6449340668482264;  // pi^2 / 6
  std::vector<std::string> words;
  for (size_t k = 0; k < vocab.size(); ++k) {
    const auto count = int64_t(double(n) / (double(k + 1) * double(k + 1)) / kZeta2);
    for (int64_t c = 0; c < count; ++c) words.push_back(vocab[k]);
  }
  shuffle(rng, words);
  s.input = fmt::format(
      "Read the following coded text and track the frequency of each coded word. Find the three "
      "most frequently appeared coded words. {}\nQuestion: Do not provide any explanation. Please "
      "ignore the dots '....'. What are the three most frequently appeared words in the above "
      "coded text?",
      fmt::join(words, " "));
  s.answer_prefix =
      " Answer: According to the coded text above, the three most frequently appeared words are:";
  s.outputs.assign(vocab.begin() + 1, vocab.begin() + 4);
}

// QA: the question's gold documents among others (for SQuAD first the same article's other
// paragraphs), shuffled, as "Document i:\n...".
void gen_qa(RulerSample& s, const RulerQaSet& qa, Rng& rng, int64_t n) {
  const RulerQuestion& q = qa.questions[size_t(s.index) % qa.questions.size()];
  std::vector<size_t> docs = q.gold;
  for (size_t r : q.related)
    if (int64_t(docs.size()) < n) docs.push_back(r);
  std::set<size_t> used(docs.begin(), docs.end());
  const int64_t want = std::min<int64_t>(n, int64_t(qa.docs.size()));
  while (int64_t(docs.size()) < want) {
    const size_t d = size_t(below(rng, qa.docs.size()));
    if (used.insert(d).second) docs.push_back(d);
  }
  shuffle(rng, docs);
  std::string ctx;
  for (size_t i = 0; i < docs.size(); ++i)
    ctx += fmt::format("{}Document {}:\n{}", i ? "\n\n" : "", i + 1, qa.docs[docs[i]]);
  s.input = fmt::format(
      "Answer the question based on the given documents. Only give me the answer and do not "
      "output any other words.\n\nThe following are given documents.\n\n{}\n\nAnswer the question "
      "based on the given documents. Only give me the answer and do not output any other "
      "words.\n\nQuestion: {}",
      ctx, q.query);
  s.answer_prefix = " Answer:";
  s.outputs = q.answers;
}

const RulerQaSet& qa_set(const RulerResources& res, const std::string& task) {
  const RulerQaSet& qa = task == "qa_1" ? res.qa_1 : res.qa_2;
  if (qa.questions.empty())
    throw Error(fmt::format("{} needs its data file (--qa-data {}=FILE)", task, task));
  return qa;
}

// The smallest haystack a task can have, and the most units worth trying.
int64_t min_units(const TaskDef& d) {
  switch (d.kind) {
    case Kind::kNiah:
      return d.hay == Hay::kEssay ? 1 : d.n_keys * d.n_values;
    case Kind::kVt:
      return kVtHops + 1;
    case Kind::kCwe:
      return kCommonWords;
    case Kind::kFwe:
      return 100;  // below this the Zipf counts of ranks 3-5 may tie
    case Kind::kQa:
      return 1;
  }
  return 1;
}

std::string trim(const std::string& s) {
  constexpr const char* kSpace = " \t\n\r\f\v";
  const size_t first = s.find_first_not_of(kSpace);
  return first == std::string::npos ? "" : s.substr(first, s.find_last_not_of(kSpace) - first + 1);
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// RULER's postprocess_pred: strip, control characters to newlines, strip.
std::string clean_pred(const std::string& pred) {
  std::string p = trim(pred);
  for (char& c : p)
    if (static_cast<unsigned char>(c) < 0x20) c = '\n';
  return lower(trim(p));
}

std::string read_text(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(fmt::format("cannot read {} {}", what, path));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

nlohmann::json read_json(const std::string& path) {
  try {
    return nlohmann::json::parse(read_text(path, "QA data file"));
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("QA data file {} is not JSON: {}", path, e.what()));
  }
}

// Documents deduplicated and sorted (as the reference numbers them); returns the index map.
std::map<std::string, size_t> index_docs(RulerQaSet& qa, std::set<std::string>& all) {
  qa.docs.assign(all.begin(), all.end());
  std::map<std::string, size_t> idx;
  for (size_t i = 0; i < qa.docs.size(); ++i) idx[qa.docs[i]] = i;
  return idx;
}

}  // namespace

const std::vector<std::string>& ruler_task_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const TaskDef& t : kTasks) v.push_back(t.name);
    return v;
  }();
  return names;
}

std::vector<std::string> parse_ruler_tasks(const std::string& spec) {
  std::set<std::string> want;
  std::stringstream ss(spec);
  std::string p;
  while (std::getline(ss, p, ',')) {
    p = trim(p);
    if (p.empty()) continue;
    for (const TaskDef& t : kTasks) {
      const std::string name = t.name;
      if (p == "all" || (p == "niah" && t.kind == Kind::kNiah) ||
          (p == "synthetic" && t.kind != Kind::kQa))
        want.insert(name);
    }
    if (p != "all" && p != "niah" && p != "synthetic") want.insert(task_def(p).name);
  }
  if (want.empty()) throw Error("no RULER task given (--tasks all, niah or a list of task names)");
  std::vector<std::string> out;
  for (const std::string& n : ruler_task_names())
    if (want.count(n)) out.push_back(n);
  return out;
}

int ruler_max_new(const std::string& task) {
  switch (task_def(task).kind) {
    case Kind::kNiah:
      return 128;
    case Kind::kVt:
      return 30;
    case Kind::kCwe:
      return 120;
    case Kind::kFwe:
      return 50;
    case Kind::kQa:
      return 32;
  }
  return 0;
}

bool ruler_uses_essay(const std::string& task) {
  return task_def(task).hay == Hay::kEssay;
}

RulerQaSet read_squad(const std::string& path) {
  const nlohmann::json j = read_json(path);
  RulerQaSet qa;
  qa.path = path;
  try {
    std::set<std::string> all;
    for (const auto& d : j.at("data"))
      for (const auto& p : d.at("paragraphs")) all.insert(p.at("context").get<std::string>());
    const auto idx = index_docs(qa, all);
    for (const auto& d : j.at("data")) {
      std::vector<size_t> article;
      for (const auto& p : d.at("paragraphs")) article.push_back(idx.at(p.at("context")));
      for (const auto& p : d.at("paragraphs")) {
        const size_t gold = idx.at(p.at("context"));
        for (const auto& q : p.at("qas")) {
          if (q.value("is_impossible", false)) continue;
          RulerQuestion rq;
          rq.query = q.at("question").get<std::string>();
          for (const auto& a : q.at("answers")) rq.answers.push_back(a.at("text"));
          rq.gold = {gold};
          for (size_t a : article)
            if (a != gold) rq.related.push_back(a);
          if (!rq.answers.empty()) qa.questions.push_back(std::move(rq));
        }
      }
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{} is not a SQuAD file: {}", path, e.what()));
  }
  if (qa.questions.empty()) throw Error(fmt::format("{} holds no answerable question", path));
  return qa;
}

RulerQaSet read_hotpotqa(const std::string& path) {
  const nlohmann::json j = read_json(path);
  RulerQaSet qa;
  qa.path = path;
  auto doc = [](const nlohmann::json& c) {
    std::string text = c.at(0).get<std::string>() + "\n";
    for (const auto& sent : c.at(1)) text += sent.get<std::string>();
    return text;
  };
  try {
    std::set<std::string> all;
    for (const auto& d : j)
      for (const auto& c : d.at("context")) all.insert(doc(c));
    const auto idx = index_docs(qa, all);
    for (const auto& d : j) {
      RulerQuestion rq;
      rq.query = d.at("question").get<std::string>();
      rq.answers = {d.at("answer").get<std::string>()};
      for (const auto& c : d.at("context")) rq.gold.push_back(idx.at(doc(c)));
      qa.questions.push_back(std::move(rq));
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{} is not a HotpotQA file: {}", path, e.what()));
  }
  if (qa.questions.empty()) throw Error(fmt::format("{} holds no question", path));
  return qa;
}

RulerResources load_ruler_resources(const std::string& words_path,
                                    const std::vector<std::string>& haystack_paths) {
  RulerResources r;
  r.words_path = words_path;
  r.haystack_paths = haystack_paths;
  {
    std::stringstream in(read_text(words_path, "word list"));
    std::set<std::string> seen;
    std::string w;
    while (std::getline(in, w)) {
      w = trim(w);
      const bool ok = w.size() >= 3 && w.size() <= 12 &&
                      std::all_of(w.begin(), w.end(), [](char c) { return c >= 'a' && c <= 'z'; });
      if (ok && seen.insert(w).second) r.words.push_back(w);
    }
    if (r.words.size() < 100)
      throw Error(
          fmt::format("word list {} has only {} usable words (lower-case a-z, 3-12 "
                      "letters); expected a list such as /usr/share/dict/words",
                      words_path, r.words.size()));
  }
  for (const std::string& p : haystack_paths) {
    const std::string text = read_text(p, "haystack text");
    std::string cur;
    bool space = false;
    for (size_t i = 0; i < text.size(); ++i) {
      const char c = text[i];
      if (std::isspace(static_cast<unsigned char>(c))) {
        space = !cur.empty();
        continue;
      }
      if (space) cur += ' ';
      space = false;
      cur += c;
      // A sentence ends at . ! or ? (and closing quotes or brackets) before white space.
      const bool end = c == '.' || c == '!' || c == '?';
      size_t k = i + 1;
      while (end && k < text.size() && std::strchr("\"')]", text[k])) cur += text[k++];
      if (end && (k >= text.size() || std::isspace(static_cast<unsigned char>(text[k])))) {
        r.sentences.push_back(cur);
        cur.clear();
        i = k - 1;
      }
    }
    if (!cur.empty()) r.sentences.push_back(cur);
  }
  if (!haystack_paths.empty() && r.sentences.empty())
    throw Error(
        fmt::format("the haystack texts {} hold no sentence", fmt::join(haystack_paths, ", ")));
  return r;
}

RulerSample ruler_sample_text(const RulerResources& res, const std::string& task, int64_t length,
                              uint64_t seed, int64_t index, int64_t units) {
  const TaskDef& d = task_def(task);
  if (d.hay == Hay::kEssay && res.sentences.empty())
    throw Error(fmt::format("{} needs an essay haystack (--haystack FILE)", task));
  if (units < min_units(d))
    throw Error(fmt::format("{} needs a haystack of at least {} units", task, min_units(d)));
  RulerSample s;
  s.task = task;
  s.index = index;
  s.units = units;
  s.max_new = ruler_max_new(task);
  Rng rng = sample_rng(seed, task, length, index);
  switch (d.kind) {
    case Kind::kNiah:
      gen_niah(s, d, res, rng, units);
      break;
    case Kind::kVt:
      gen_vt(s, res, rng, units, length);
      break;
    case Kind::kCwe:
      gen_cwe(s, res, rng, units, length);
      break;
    case Kind::kFwe:
      gen_fwe(s, rng, units, length);
      break;
    case Kind::kQa:
      gen_qa(s, qa_set(res, task), rng, units);
      break;
  }
  return s;
}

std::vector<int32_t> ruler_prompt_tokens(const Model& model, const RulerSample& s, bool chat) {
  const Tokenizer& tok = model.tokenizer();
  std::vector<int32_t> out;
  if (tok.add_bos() && tok.bos() >= 0) out.push_back(tok.bos());
  auto add = [&out](const std::vector<int32_t>& t) { out.insert(out.end(), t.begin(), t.end()); };
  if (chat) {
    const ChatPrompt turn = chat_prompt();
    add(tok.encode(turn.open, true));
    add(tok.encode(s.input));
    add(tok.encode(turn.close, true));
    add(tok.encode(trim(s.answer_prefix)));
  } else {
    add(tok.encode(s.input + s.answer_prefix));
  }
  return out;
}

namespace {

// The sample with `units` units and its tokens; fits when tokens + budget <= length.
bool fits(const Model& model, const RulerResources& res, const std::string& task, int64_t length,
          uint64_t seed, int64_t index, bool chat, int64_t units, RulerSample* out) {
  RulerSample s = ruler_sample_text(res, task, length, seed, index, units);
  s.tokens = ruler_prompt_tokens(model, s, chat);
  const bool ok = int64_t(s.tokens.size()) + s.max_new <= length;
  if (out) *out = std::move(s);
  return ok;
}

int64_t max_units(const TaskDef& d, const RulerResources& res, int64_t length) {
  if (d.kind == Kind::kQa) {
    const RulerQaSet& qa = d.name == std::string("qa_1") ? res.qa_1 : res.qa_2;
    return std::max<int64_t>(1, int64_t(qa.docs.size()));
  }
  if (d.kind == Kind::kCwe) return int64_t(res.words.size());
  return 4 * length;
}

}  // namespace

int64_t ruler_haystack_units(const Model& model, const RulerResources& res, const std::string& task,
                             int64_t length, uint64_t seed, bool chat) {
  const TaskDef& d = task_def(task);
  int64_t lo = min_units(d);
  RulerSample s;
  if (!fits(model, res, task, length, seed, 0, chat, lo, &s))
    throw Error(fmt::format(
        "ruler length {} is too short for {}: its smallest prompt takes {} tokens and the answer "
        "{} more",
        length, task, s.tokens.size(), s.max_new));
  const int64_t cap = max_units(d, res, length);
  // Tokens per unit from a probe, then a bracket around the estimate, then bisection: only
  // prompts near the target length are tokenized.
  const int64_t probe = std::min(cap, lo + 16);
  RulerSample p;
  fits(model, res, task, length, seed, 0, chat, probe, &p);
  const double per_unit =
      std::max(0.5, double(int64_t(p.tokens.size()) - int64_t(s.tokens.size())) /
                        double(std::max<int64_t>(1, probe - lo)));
  const double room = double(length - s.max_new - int64_t(s.tokens.size()));
  int64_t guess = std::clamp<int64_t>(lo + int64_t(room / per_unit), lo, cap);
  int64_t hi = cap + 1;  // smallest known not to fit
  if (fits(model, res, task, length, seed, 0, chat, guess, nullptr)) {
    lo = guess;
    for (int64_t step = std::max<int64_t>(1, guess / 16); lo < cap; step *= 2) {
      const int64_t t = std::min(cap, lo + step);
      if (!fits(model, res, task, length, seed, 0, chat, t, nullptr)) {
        hi = t;
        break;
      }
      lo = t;
    }
  } else {
    hi = guess;
    for (int64_t step = std::max<int64_t>(1, guess / 16);; step *= 2) {
      const int64_t t = std::max(lo, hi - step);
      if (t == lo || fits(model, res, task, length, seed, 0, chat, t, nullptr)) {
        lo = t;
        break;
      }
      hi = t;
    }
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(model, res, task, length, seed, 0, chat, mid, nullptr) ? lo : hi) = mid;
  }
  return lo;
}

RulerSample make_ruler_sample(const Model& model, const RulerResources& res,
                              const std::string& task, int64_t length, uint64_t seed, int64_t index,
                              bool chat, int64_t units) {
  const int64_t least = min_units(task_def(task));
  const int64_t step = std::max<int64_t>(1, units / 200);
  RulerSample s;
  for (int64_t n = units;; n = std::max(least, n - step)) {
    if (fits(model, res, task, length, seed, index, chat, n, &s)) return s;
    if (n == least)
      throw Error(
          fmt::format("ruler: sample {} of {} does not fit length {}", index, task, length));
  }
}

double string_match_all(const std::string& pred, const std::vector<std::string>& refs) {
  if (refs.empty()) return 0;
  const std::string p = clean_pred(pred);
  double found = 0;
  for (const std::string& r : refs) found += p.find(lower(r)) != std::string::npos ? 1 : 0;
  return found / double(refs.size());
}

double string_match_part(const std::string& pred, const std::vector<std::string>& refs) {
  const std::string p = clean_pred(pred);
  for (const std::string& r : refs)
    if (p.find(lower(r)) != std::string::npos) return 1;
  return 0;
}

double ruler_score(const std::string& task, const std::string& pred,
                   const std::vector<std::string>& refs) {
  return task_def(task).kind == Kind::kQa ? string_match_part(pred, refs)
                                          : string_match_all(pred, refs);
}

std::pair<double, double> ruler_interval(double mean, int64_t n) {
  return wilson_interval(mean * double(n), n);
}

}  // namespace longrope
