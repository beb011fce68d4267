// longrope ruler: each task's generator checked by an independent reading of its prompt text, the
// scorers on hand-made predictions, and a tiny end-to-end run on stories260K (outputs in RULER's
// layout, --resume, determinism).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>

#include "longrope/error.h"
#include "longrope/model.h"
#include "longrope/ruler.h"
#include "test_paths.h"

namespace {

using longrope::RulerResources;
using longrope::RulerSample;
using longrope::test::cli_path;
using longrope::test::run_command;
using longrope::test::slurp;
namespace fs = std::filesystem;

const char* kWords = "/usr/share/dict/words";

std::vector<std::string> novels() {
  return {longrope::test::shared_text("moby-dick.txt").string(),
          longrope::test::shared_text("pride_and_prejudice.txt").string()};
}

// Inputs every generator test needs: the model, the word list, the novels (fails with CI=true
// when one is missing).
#define REQUIRE_RULER_INPUTS()                               \
  do {                                                       \
    LONGROPE_REQUIRE_FILE(longrope::test::stories_gguf());   \
    LONGROPE_REQUIRE_FILE(kWords);                           \
    for (const auto& n : novels()) LONGROPE_REQUIRE_FILE(n); \
  } while (0)

const longrope::Model& stories() {
  static auto m = longrope::Model::load(longrope::test::stories_gguf().string());
  return *m;
}

const RulerResources& resources() {
  static const RulerResources r = longrope::load_ruler_resources(kWords, novels());
  return r;
}

// Sample `index` of task at length (seed 7), sized as plan_ruler sizes it; checks it fits.
RulerSample sample(const std::string& task, int64_t length, int64_t index = 0, uint64_t seed = 7) {
  const int64_t units =
      longrope::ruler_haystack_units(stories(), resources(), task, length, seed, false);
  RulerSample s =
      longrope::make_ruler_sample(stories(), resources(), task, length, seed, index, false, units);
  const int64_t used = int64_t(s.tokens.size()) + s.max_new;
  EXPECT_LE(used, length) << task;
  // Close to the length: within a few haystack units of it.
  EXPECT_GE(used, length - length / 8 - 40) << task << " at " << length;
  EXPECT_EQ(s.max_new, longrope::ruler_max_new(task));
  // The tokens are the text's: input then answer prefix.
  EXPECT_EQ(stories().tokenizer().decode(s.tokens), s.input + s.answer_prefix);
  return s;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string p;
  while (std::getline(ss, p, sep)) out.push_back(p);
  return out;
}

// The text between the first `from` and the next `to` after it.
std::string between(const std::string& s, const std::string& from, const std::string& to) {
  const size_t a = s.find(from);
  if (a == std::string::npos) return "";
  const size_t b = s.find(to, a + from.size());
  return s.substr(a + from.size(),
                  b == std::string::npos ? std::string::npos : b - a - from.size());
}

// The keys a NIAH question asks for: "for K mentioned" or "for K1, K2, and K3 mentioned".
std::vector<std::string> queried_keys(const RulerSample& s) {
  std::string q = between(s.input.substr(s.input.rfind('\n')), " for ", " mentioned");
  std::vector<std::string> keys;
  for (std::string k : split(q, ',')) {
    k.erase(0, k.find_first_not_of(' '));
    if (k.rfind("and ", 0) == 0) k = k.substr(4);
    keys.push_back(k);
  }
  return keys;
}

TEST(RulerTasks, NamesGroupsAndBudgets) {
  EXPECT_EQ(longrope::ruler_task_names().size(), 13u);
  EXPECT_EQ(longrope::parse_ruler_tasks("all").size(), 13u);
  EXPECT_EQ(longrope::parse_ruler_tasks("niah").size(), 8u);
  EXPECT_EQ(longrope::parse_ruler_tasks("synthetic").size(), 11u);
  EXPECT_EQ(longrope::parse_ruler_tasks("fwe,vt,vt"), (std::vector<std::string>{"vt", "fwe"}));
  longrope::test::expect_error([] { longrope::parse_ruler_tasks("niah,nope"); },
                               {"unknown RULER task 'nope'", "niah_single_1"});
  EXPECT_EQ(longrope::ruler_max_new("niah_multiquery"), 128);
  EXPECT_EQ(longrope::ruler_max_new("vt"), 30);
  EXPECT_EQ(longrope::ruler_max_new("cwe"), 120);
  EXPECT_EQ(longrope::ruler_max_new("fwe"), 50);
  EXPECT_EQ(longrope::ruler_max_new("qa_2"), 32);
}

// niah_single_1: noise blocks, one needle; the needle sits after units_before blocks and its
// value is the answer to the key the question names.
TEST(RulerTasks, NiahSingle1NeedleAtStatedDepth) {
  REQUIRE_RULER_INPUTS();
  for (int64_t len : {1024, 2048}) {
    for (int64_t i = 0; i < 3; ++i) {
      const RulerSample s = sample("niah_single_1", len, i);
      const std::string ctx = between(s.input, "afterwards.\n", "\nWhat is the special");
      const std::vector<std::string> lines = split(ctx, '\n');
      int64_t noise = 0, needles = 0, before = -1;
      std::string needle;
      for (const std::string& l : lines) {
        if (l.rfind("The grass is green.", 0) == 0) {
          ++noise;
        } else {
          ++needles;
          before = noise;
          needle = l;
        }
      }
      ASSERT_EQ(needles, 1) << ctx;
      EXPECT_EQ(noise, s.units);
      ASSERT_EQ(s.units_before.size(), 1u);
      EXPECT_EQ(before, s.units_before[0]);
      EXPECT_DOUBLE_EQ(s.depths[0], double(before) / double(noise));
      const std::vector<std::string> keys = queried_keys(s);
      ASSERT_EQ(keys.size(), 1u);
      const std::string head = "One of the special magic numbers for " + keys[0] + " is: ";
      ASSERT_EQ(needle.rfind(head, 0), 0u) << needle;
      const std::string value = needle.substr(head.size(), needle.size() - head.size() - 1);
      EXPECT_EQ(s.outputs, std::vector<std::string>{value});
      EXPECT_TRUE(std::regex_match(value, std::regex("[1-9][0-9]{6}"))) << value;
      EXPECT_NE(s.answer_prefix.find("The special magic number for " + keys[0]), std::string::npos);
    }
  }
}

// The other retrieval tasks: every queried key's needles, found by reading the context, give
// exactly the reference answers; distractor haystacks hold one line per unit; essay needles sit
// near their stated depth.
TEST(RulerTasks, NiahVariantsAnswerFromTheirNeedles) {
  REQUIRE_RULER_INPUTS();
  const std::map<std::string, std::pair<size_t, size_t>> shape = {
      // task -> (needles in the text, answers)
      {"niah_single_2", {1, 1}},   {"niah_single_3", {1, 1}},   {"niah_multikey_1", {4, 1}},
      {"niah_multikey_2", {1, 1}}, {"niah_multikey_3", {1, 1}}, {"niah_multivalue", {4, 4}},
      {"niah_multiquery", {4, 4}}};
  const std::regex needle_re("One of the special magic (numbers|uuids) for ([^ ]+) is: ([^ ]+)\\.");
  for (const auto& [task, counts] : shape) {
    const RulerSample s = sample(task, 2048, 1);
    const bool distractors = task == "niah_multikey_2" || task == "niah_multikey_3";
    std::multimap<std::string, std::string> found;  // key -> value, over the whole context
    for (auto it = std::sregex_iterator(s.input.begin(), s.input.end(), needle_re);
         it != std::sregex_iterator(); ++it)
      found.emplace((*it)[2], (*it)[3]);
    const size_t lines = distractors ? size_t(s.units) + 1 : counts.first;
    EXPECT_EQ(found.size(), lines) << task;
    EXPECT_EQ(s.inserted.size(), counts.first) << task;
    std::multiset<std::string> answers;
    for (const std::string& k : queried_keys(s)) {
      auto [a, b] = found.equal_range(k);
      for (; a != b; ++a) answers.insert(a->second);
    }
    EXPECT_EQ(answers, std::multiset<std::string>(s.outputs.begin(), s.outputs.end())) << task;
    EXPECT_EQ(s.outputs.size(), counts.second) << task;
    const std::regex uuid("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}");
    for (const std::string& v : s.outputs) {
      const bool uuids = task == "niah_single_3" || task == "niah_multikey_3";
      EXPECT_EQ(std::regex_match(v, uuid), uuids) << v;
    }
    if (!distractors) {
      // Essay: each needle follows sentence units_before - 1 of the haystack and precedes
      // sentence units_before, and units_before is floor(units * d / 100) for a depth d of
      // RULER's grid round(linspace(0, 100, 40)).
      const auto& sent = resources().sentences;
      for (size_t j = 0; j < s.inserted.size(); ++j) {
        const int64_t k = s.units_before[j];
        const size_t at = s.input.find(s.inserted[j]);
        ASSERT_NE(at, std::string::npos) << task;
        // (Needles at the same place follow one another.)
        const bool first = j == 0 || s.units_before[j - 1] != k;
        const bool last = j + 1 == s.inserted.size() || s.units_before[j + 1] != k;
        if (k > 0 && first) {
          const std::string& prev = sent[size_t(k - 1) % sent.size()];
          EXPECT_EQ(s.input.substr(at - 1 - prev.size(), prev.size()), prev) << task;
        }
        if (k < s.units && last) {
          const std::string& next = sent[size_t(k) % sent.size()];
          EXPECT_EQ(s.input.substr(at + s.inserted[j].size() + 1, next.size()), next) << task;
        }
        bool on_grid = false;
        for (int g = 0; g < 40; ++g)
          on_grid = on_grid || k == s.units * std::llround(100.0 * g / 39.0) / 100;
        EXPECT_TRUE(on_grid) << task << " " << k << "/" << s.units;
        EXPECT_DOUBLE_EQ(s.depths[j], double(k) / double(s.units));
      }
    }
  }
}

// vt: following the assignments of the task's text (after the worked example) from the queried
// value gives exactly the reference variables.
TEST(RulerTasks, VariableTrackingFollowsTheChain) {
  REQUIRE_RULER_INPUTS();
  for (int64_t len : {2048, 4096}) {
    const RulerSample s = sample("vt", len, 2);
    const std::string task_text = s.input.substr(s.input.rfind("Memorize and track"));
    const std::string value = between(task_text, "assigned the value ", " in the text");
    std::map<std::string, std::string> assigned;  // variable -> what it is assigned
    const std::regex st("VAR ([A-Z]+) = (VAR ([A-Z]+)|([0-9]+))");
    for (auto it = std::sregex_iterator(task_text.begin(), task_text.end(), st);
         it != std::sregex_iterator(); ++it)
      assigned[(*it)[1]] = (*it)[3].matched ? (*it)[3].str() : (*it)[4].str();
    std::set<std::string> holders;
    for (const auto& [var, _] : assigned) {
      std::string v = var;
      for (int hop = 0; hop < 10 && assigned.count(v); ++hop) v = assigned[v];
      if (v == value) holders.insert(var);
    }
    EXPECT_EQ(holders, std::set<std::string>(s.outputs.begin(), s.outputs.end()));
    EXPECT_EQ(s.outputs.size(), 5u);
    // The worked example uses its own chain and value.
    const std::string example = s.input.substr(0, s.input.rfind("Memorize and track"));
    EXPECT_EQ(example.find(value), std::string::npos);
    EXPECT_NE(s.answer_prefix.find("5 variables are assgined the value " + value),
              std::string::npos);
    // The statements lie between noise blocks in order: depths increase.
    EXPECT_TRUE(std::is_sorted(s.depths.begin(), s.depths.end()));
  }
}

// cwe and fwe: counting the words of the prompt's list / coded text gives the references.
TEST(RulerTasks, AggregationAnswersAreTheCountedWords) {
  REQUIRE_RULER_INPUTS();
  for (int64_t len : {2048, 8192}) {
    const RulerSample s = sample("cwe", len, 0);
    const std::string list = s.input.substr(s.input.rfind("Below is a numbered list"));
    std::map<std::string, int> count;
    const std::regex item("[0-9]+\\. ([a-z]+)");
    for (auto it = std::sregex_iterator(list.begin(), list.end(), item);
         it != std::sregex_iterator(); ++it)
      ++count[(*it)[1]];
    std::vector<std::pair<int, std::string>> by;
    for (const auto& [w, c] : count) by.emplace_back(-c, w);
    std::sort(by.begin(), by.end());
    ASSERT_GT(by.size(), 10u);
    EXPECT_LT(by[9].first, by[10].first);  // a clear top 10
    std::set<std::string> top;
    for (int i = 0; i < 10; ++i) top.insert(by[size_t(i)].second);
    EXPECT_EQ(top, std::set<std::string>(s.outputs.begin(), s.outputs.end())) << len;
    EXPECT_EQ(-by[0].first, len < 4096 ? 6 : 30);
  }
  const RulerSample f = sample("fwe", 4096, 0);
  const std::string coded = between(f.input, "coded words. ", "\nQuestion:");
  std::map<std::string, int> count;
  for (const std::string& w : split(coded, ' ')) ++count[w];
  std::vector<std::pair<int, std::string>> by;
  for (const auto& [w, c] : count) by.emplace_back(-c, w);
  std::sort(by.begin(), by.end());
  ASSERT_GE(by.size(), 5u);
  EXPECT_EQ(by[0].second, "...");
  EXPECT_LT(by[3].first, by[4].first);
  EXPECT_EQ((std::set<std::string>{by[1].second, by[2].second, by[3].second}),
            std::set<std::string>(f.outputs.begin(), f.outputs.end()));
}

// A SQuAD-style paragraph of article a.
std::string fmt_context(int a, int p) {
  return "Article " + std::to_string(a) + ", part " + std::to_string(p) + ": its colour is colour" +
         std::to_string(a * 10 + p) + ".";
}

TEST(RulerTasks, QaPutsTheGoldDocumentAmongOthers) {
  REQUIRE_RULER_INPUTS();
  const fs::path dir = longrope::test::fresh_temp_dir("ruler_qa");
  longrope::test::RemoveOnExit cleanup{dir};
  nlohmann::json squad = {{"data", nlohmann::json::array()}};
  for (int a = 0; a < 6; ++a) {
    nlohmann::json paras = nlohmann::json::array();
    for (int p = 0; p < 3; ++p)
      paras.push_back({{"context", fmt_context(a, p)},
                       {"qas",
                        {{{"question", "Which colour has article " + std::to_string(a) + " part " +
                                           std::to_string(p) + "?"},
                          {"answers", {{{"text", "colour" + std::to_string(a * 10 + p)}}}},
                          {"is_impossible", false}}}}});
    squad["data"].push_back({{"paragraphs", paras}});
  }
  std::ofstream(dir / "squad.json") << squad.dump();
  RulerResources res = longrope::load_ruler_resources(kWords, {});
  res.qa_1 = longrope::read_squad((dir / "squad.json").string());
  EXPECT_EQ(res.qa_1.docs.size(), 18u);
  EXPECT_EQ(res.qa_1.questions.size(), 18u);
  const RulerSample s = longrope::ruler_sample_text(res, "qa_1", 4096, 3, 4, 5);
  const longrope::RulerQuestion& q = res.qa_1.questions[4];
  EXPECT_NE(s.input.find(res.qa_1.docs[q.gold[0]]), std::string::npos);
  EXPECT_NE(s.input.find("Question: " + q.query), std::string::npos);
  EXPECT_NE(s.input.find("Document 5:\n"), std::string::npos);
  EXPECT_EQ(s.input.find("Document 6:\n"), std::string::npos);
  EXPECT_EQ(s.outputs, q.answers);
  EXPECT_EQ(s.answer_prefix, " Answer:");
}

TEST(RulerTasks, SameSeedSamePromptsOtherSeedOthers) {
  REQUIRE_RULER_INPUTS();
  for (const std::string task : {"niah_multikey_2", "vt", "cwe", "fwe", "niah_single_2"}) {
    const RulerSample a = longrope::ruler_sample_text(resources(), task, 4096, 11, 3, 200);
    const RulerSample b = longrope::ruler_sample_text(resources(), task, 4096, 11, 3, 200);
    const RulerSample c = longrope::ruler_sample_text(resources(), task, 4096, 12, 3, 200);
    const RulerSample d = longrope::ruler_sample_text(resources(), task, 4096, 11, 4, 200);
    EXPECT_EQ(a.input, b.input) << task;
    EXPECT_EQ(a.outputs, b.outputs) << task;
    EXPECT_NE(a.outputs, c.outputs) << task;
    EXPECT_NE(a.outputs, d.outputs) << task;
  }
  longrope::test::expect_error(
      [] { longrope::ruler_haystack_units(stories(), resources(), "cwe", 400, 1, false); },
      {"too short for cwe"});
}

TEST(RulerScore, StringMatchAllAndPart) {
  using longrope::string_match_all;
  using longrope::string_match_part;
  EXPECT_DOUBLE_EQ(string_match_all("The numbers are 1234567 and 7654321.", {"1234567", "7654321"}),
                   1.0);
  EXPECT_DOUBLE_EQ(string_match_all("only 1234567", {"1234567", "7654321", "1111111", "8"}), 0.25);
  EXPECT_DOUBLE_EQ(string_match_all("ABCDE fghij", {"abcde", "FGHIJ", "KLMNO"}), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(string_match_all("", {"x"}), 0.0);
  EXPECT_DOUBLE_EQ(string_match_all("a\x01word", {"a\nword"}), 1.0);  // control chars -> \n
  EXPECT_DOUBLE_EQ(string_match_part("It was Paris, France", {"paris", "Lyon"}), 1.0);
  EXPECT_DOUBLE_EQ(string_match_part("London", {"paris", "Lyon"}), 0.0);
  EXPECT_DOUBLE_EQ(longrope::ruler_score("qa_1", "paris", {"paris", "lyon"}), 1.0);
  EXPECT_DOUBLE_EQ(longrope::ruler_score("niah_multivalue", "paris", {"paris", "lyon"}), 0.5);
  // Wilson's interval at the mean (0/1 scores: the plain Wilson interval).
  auto [lo, hi] = longrope::ruler_interval(0.5, 10);
  EXPECT_NEAR(lo, 0.2366, 1e-4);
  EXPECT_NEAR(hi, 0.7634, 1e-4);
  std::tie(lo, hi) = longrope::ruler_interval(1.0, 20);
  EXPECT_NEAR(lo, 0.8389, 1e-4);
  EXPECT_DOUBLE_EQ(hi, 1.0);
  // Effective length: above the threshold here and at every shorter length.
  EXPECT_EQ(longrope::ruler_effective_length({4096, 8192, 16384}, {95.0, 90.0, 80.0}, 85.6), 8192);
  EXPECT_EQ(longrope::ruler_effective_length({8192, 4096, 16384}, {70.0, 95.0, 90.0}, 85.6), 4096);
  EXPECT_EQ(longrope::ruler_effective_length({4096}, {85.6}, 85.6), 0);
}

// Lines of a file.
std::vector<std::string> lines_of(const fs::path& p) {
  std::vector<std::string> out = split(slurp(p), '\n');
  if (!out.empty() && out.back().empty()) out.pop_back();
  return out;
}

// The command of a tiny run on stories260K (seed 5, one thread, the word list and one novel as
// the haystack), followed by `flags`.
std::string tiny_ruler(const std::string& flags) {
  return cli_path().string() + " ruler -m " + longrope::test::stories_gguf().string() +
         " --seed 5 -t 1 --no-progress --words " + kWords + " --haystack " + novels()[0] + " " +
         flags;
}

TEST(RulerCli, TinyRunWritesRulerLayoutResumesAndRepeats) {
  REQUIRE_RULER_INPUTS();
  const fs::path dir = longrope::test::fresh_temp_dir("ruler_cli");
  longrope::test::RemoveOnExit cleanup{dir};
  const std::string base = tiny_ruler("--lengths 1024,2048 --methods none,yarn");
  const std::string run = base + " --tasks niah_multikey_2,niah_single_1 --samples 2";
  std::string out;
  ASSERT_EQ(run_command(run + " -O " + (dir / "a").string(), &out), 0) << out;
  EXPECT_NE(out.find("| yarn |"), std::string::npos) << out;
  EXPECT_NE(out.find("Effective context length"), std::string::npos) << out;
  const auto j = nlohmann::json::parse(slurp(dir / "a" / "results.json"));
  EXPECT_EQ(j["kind"], "ruler");
  ASSERT_EQ(j["cells"].size(), 4u);
  for (const auto& c : j["cells"]) {
    ASSERT_EQ(c["tasks"].size(), 2u);
    double mean = 0;
    for (const auto& [name, t] : c["tasks"].items()) {
      ASSERT_EQ(t["results"].size(), 2u) << name;
      double sum = 0;
      for (const auto& r : t["results"]) sum += r["score"].get<double>();
      EXPECT_NEAR(t["score"].get<double>(), 50.0 * sum, 1e-9);
      EXPECT_LE(t["ci_low"].get<double>(), t["score"].get<double>());
      mean += t["score"].get<double>() / 2;
    }
    EXPECT_NEAR(c["score"].get<double>(), mean, 1e-9);
  }
  // summary.csv: one row per method and length, the tasks (RULER's order) as columns.
  const auto summary = lines_of(dir / "a" / "summary.csv");
  ASSERT_EQ(summary.size(), 5u);
  EXPECT_EQ(summary[0], "method,length,niah_single_1,niah_multikey_2,average");
  EXPECT_EQ(summary[1].rfind("none,1024,", 0), 0u) << summary[1];
  // RULER's per-length prediction folder: <task>.jsonl and its summary.csv.
  const fs::path pred = dir / "a" / "yarn" / "2048" / "pred";
  const auto ruler_summary = lines_of(pred / "summary.csv");
  ASSERT_EQ(ruler_summary.size(), 4u);
  EXPECT_EQ(ruler_summary[0], "0,1,2");
  EXPECT_EQ(ruler_summary[1], "Tasks,niah_single_1,niah_multikey_2");
  EXPECT_EQ(ruler_summary[2].rfind("Score,", 0), 0u);
  EXPECT_TRUE(std::regex_match(ruler_summary[3], std::regex("Nulls,[0-2]/2,[0-2]/2")))
      << ruler_summary[3];
  const auto jsonl = lines_of(pred / "niah_multikey_2.jsonl");
  ASSERT_EQ(jsonl.size(), 2u);
  for (size_t i = 0; i < jsonl.size(); ++i) {
    const auto line = nlohmann::json::parse(jsonl[i]);
    for (const char* f :
         {"index", "pred", "input", "outputs", "others", "truncation", "length", "answer_prefix"})
      EXPECT_TRUE(line.contains(f)) << f;
    EXPECT_EQ(line["index"], i);
    EXPECT_LE(line["length"].get<int64_t>(), 2048);
    EXPECT_EQ(line["outputs"].size(), 1u);
    EXPECT_EQ(line["others"]["score"].get<double>(),
              longrope::string_match_all(line["pred"], line["outputs"]));
  }
  EXPECT_EQ(jsonl[0].rfind("{\"index\":0,\"pred\":", 0), 0u);  // RULER's field order
  for (const char* f :
       {"results.md", "results.csv", "score.svg", "score.png", "heatmap_none.svg",
        "heatmap_yarn.png", "effective_length.json", "none/1024/pred/niah_single_1.jsonl"})
    EXPECT_TRUE(fs::exists(dir / "a" / f)) << f;
  // The same seed gives the same prompts and predictions, byte for byte.
  ASSERT_EQ(run_command(run + " -O " + (dir / "b").string(), &out), 0) << out;
  EXPECT_EQ(slurp(pred / "niah_multikey_2.jsonl"),
            slurp(dir / "b" / "yarn" / "2048" / "pred" / "niah_multikey_2.jsonl"));
  EXPECT_EQ(slurp(dir / "a" / "summary.csv"), slurp(dir / "b" / "summary.csv"));
  // --resume reuses every cell; without it the folder is refused.
  ASSERT_EQ(run_command(run + " --resume -O " + (dir / "a").string(), &out), 0) << out;
  EXPECT_NE(out.find("0 cell(s) computed, 4 reused"), std::string::npos) << out;
  // --resume with more --samples extends the stored cells: their samples are reused (an edited
  // stored prediction stays), only the new ones are computed.
  nlohmann::json stored = nlohmann::json::parse(slurp(dir / "a" / "results.json"));
  stored["cells"][0]["tasks"]["niah_single_1"]["results"][1]["pred"] = "EDITED";
  { std::ofstream(dir / "a" / "results.json") << stored.dump(); }
  ASSERT_EQ(run_command(base + " --tasks niah_multikey_2,niah_single_1 --samples 3 --resume -O " +
                            (dir / "a").string(),
                        &out),
            0)
      << out;
  const auto ext = nlohmann::json::parse(slurp(dir / "a" / "results.json"));
  const nlohmann::json* three = nullptr;
  for (const auto& c : ext["cells"])
    if (c["samples"] == 3 && c["label"] == "none" && c["length"] == 1024) three = &c;
  ASSERT_NE(three, nullptr);
  const auto& r3 = (*three)["tasks"]["niah_single_1"]["results"];
  ASSERT_EQ(r3.size(), 3u);
  EXPECT_EQ(r3[1]["pred"], "EDITED");
  EXPECT_EQ(r3[0]["pred"], j["cells"][0]["tasks"]["niah_single_1"]["results"][0]["pred"]);
  EXPECT_EQ(run_command(run + " -O " + (dir / "a").string(), &out), 2) << out;
  EXPECT_NE(out.find("ruler: "), std::string::npos) << out;
  // Unknown tasks and bad flags: exit 2, one line.
  EXPECT_EQ(run_command(base + " --tasks vt,bogus -O " + (dir / "c").string(), &out), 2) << out;
  EXPECT_NE(out.find("unknown RULER task 'bogus'"), std::string::npos) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_EQ(run_command(run + " --qa-data nope -O " + (dir / "c").string(), &out), 2) << out;
  EXPECT_FALSE(fs::exists(dir / "c" / "results.json"));
}

// --prepare-only: RULER's data files (the prompts every method would see) without a model run;
// the same prompts as a full run's prediction files, the same bytes for the same seed, and the
// output guard on the data folder.
TEST(RulerCli, PrepareOnlyWritesTheRunsPromptsAndNothingElse) {
  REQUIRE_RULER_INPUTS();
  const fs::path dir = longrope::test::fresh_temp_dir("ruler_prepare");
  longrope::test::RemoveOnExit cleanup{dir};
  const std::string head = tiny_ruler("--lengths 1024");
  const std::string base = head + " --tasks niah_single_1,niah_multikey_2 --samples 2";
  std::string out;
  ASSERT_EQ(run_command(base + " --prepare-only -O " + (dir / "p").string(), &out), 0) << out;
  EXPECT_NE(out.find("| niah_multikey_2 | 1024 | 2 |"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir / "p" / "results.json"));
  const auto lines = lines_of(dir / "p" / "data" / "1024" / "niah_multikey_2.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].rfind("{\"index\":0,\"input\":", 0), 0u);  // RULER's prepared field order
  // A full run (method none) predicts on exactly these prompts.
  ASSERT_EQ(run_command(base + " -O " + (dir / "r").string(), &out), 0) << out;
  const auto pred = lines_of(dir / "r" / "none" / "1024" / "pred" / "niah_multikey_2.jsonl");
  ASSERT_EQ(pred.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const auto d = nlohmann::json::parse(lines[i]);
    const auto p = nlohmann::json::parse(pred[i]);
    for (const char* f : {"index", "input", "outputs", "length", "answer_prefix"})
      EXPECT_EQ(d[f], p[f]) << f;
    EXPECT_LE(d["length"].get<int64_t>(), 1024);
    EXPECT_EQ(d["others"]["prompt_tokens"].get<int64_t>() + 128, d["length"].get<int64_t>());
  }
  // --data scores the prepared files: the same prompts, the same predictions as generating them.
  ASSERT_EQ(
      run_command(base + " --data " + (dir / "p").string() + " -O " + (dir / "d").string(), &out),
      0)
      << out;
  const auto from_data = lines_of(dir / "d" / "none" / "1024" / "pred" / "niah_multikey_2.jsonl");
  ASSERT_EQ(from_data.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const auto d = nlohmann::json::parse(from_data[i]);
    const auto p = nlohmann::json::parse(pred[i]);
    for (const char* f : {"index", "pred", "input", "outputs", "length", "answer_prefix"})
      EXPECT_EQ(d[f], p[f]) << f;
  }
  // A malformed line names its file and line; too few samples and a missing file say so.
  const fs::path bad = dir / "bad" / "data" / "1024";
  fs::create_directories(bad);
  { std::ofstream(bad / "niah_single_1.jsonl") << "{\"input\": \"x\"}\n"; }
  {
    std::ofstream(bad / "niah_single_3.jsonl")
        << "{\"index\": \"one\", \"input\": \"x\", \"outputs\": [\"y\"]}\n";
  }
  {
    std::ofstream(bad / "niah_multikey_2.jsonl")
        << slurp(dir / "p" / "data" / "1024" / "niah_multikey_2.jsonl");
  }
  EXPECT_NE(run_command(base + " --data " + (dir / "bad").string(), &out), 0);
  EXPECT_NE(out.find("niah_single_1.jsonl:1: a sample needs"), std::string::npos) << out;
  EXPECT_NE(run_command(
                head + " --samples 1 --tasks niah_single_3 --data " + (dir / "bad").string(), &out),
            0);
  EXPECT_NE(out.find("niah_single_3.jsonl:1: \"index\" is not an integer"), std::string::npos)
      << out;
  EXPECT_NE(
      run_command(head + " --samples 3 --tasks niah_multikey_2 --data " + (dir / "bad").string(),
                  &out),
      0);
  EXPECT_NE(out.find("holds 2 sample(s); --samples asks for 3"), std::string::npos) << out;
  EXPECT_NE(run_command(head + " --tasks vt --data " + (dir / "bad").string(), &out), 0);
  EXPECT_NE(out.find("no RULER data for vt at 1024"), std::string::npos) << out;
  // The folder is refused the second time (one line, exit 2), replaced with --overwrite, and the
  // same seed writes the same bytes.
  const std::string before = slurp(dir / "p" / "data" / "1024" / "niah_single_1.jsonl");
  EXPECT_EQ(run_command(base + " --prepare-only -O " + (dir / "p").string(), &out), 2) << out;
  EXPECT_NE(out.find("--overwrite"), std::string::npos) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  ASSERT_EQ(run_command(base + " --prepare-only --overwrite -O " + (dir / "p").string(), &out), 0)
      << out;
  EXPECT_EQ(slurp(dir / "p" / "data" / "1024" / "niah_single_1.jsonl"), before);
  // Without -O: a usage error.
  EXPECT_EQ(run_command(base + " --prepare-only", &out), 2) << out;
  EXPECT_NE(out.find("needs -O DIR"), std::string::npos) << out;
}

// Within the trained context (512) YaRN at s = 1 runs every prompt under the plain model's
// tables: its cell is a copy of none's, and its RULER prediction files are written all the same.
// A run stopped inside a cell keeps the tasks and samples done in OUTDIR/partial.json; --resume
// computes only the rest (an edited stored prediction shows the others are reused) and finishes
// the cell a run that never stopped writes.
TEST(RulerRun, StoppedCellResumesFromItsLastSample) {
  REQUIRE_RULER_INPUTS();
  const fs::path dir = longrope::test::fresh_temp_dir("ruler_partial");
  longrope::test::RemoveOnExit cleanup{dir};
  const auto model = longrope::Model::load(longrope::test::stories_gguf().string());
  longrope::RulerConfig cfg;
  cfg.model_path = longrope::test::stories_gguf().string();
  cfg.lengths = {1024};
  cfg.methods = {"yarn"};
  cfg.tasks = {"niah_single_1", "niah_multikey_2"};
  cfg.samples = 2;
  cfg.seed = 5;
  cfg.words_path = kWords;
  cfg.haystack_paths = {novels()[0]};
  cfg.n_threads = 1;
  cfg.out_dir = (dir / "a").string();
  std::vector<std::string> run;
  auto note = [&run](int64_t, int64_t, int64_t, int64_t, const std::string& m) {
    if (m.find(" sample ") != std::string::npos) run.push_back(m);
    if (m == "yarn @ 1024 niah_multikey_2 sample 2/2") throw std::runtime_error("stop");
  };
  EXPECT_THROW(longrope::run_ruler(*model, cfg, nullptr, note), std::runtime_error);
  EXPECT_EQ(run.size(), 4u);
  auto p = nlohmann::json::parse(slurp(dir / "a" / "partial.json"));
  ASSERT_EQ(p["cells"].size(), 1u);
  const auto& tasks = p["cells"][0]["tasks"];
  ASSERT_EQ(tasks["niah_single_1"]["results"].size(), 2u);
  ASSERT_EQ(tasks["niah_multikey_2"]["results"].size(), 1u);
  p["cells"][0]["tasks"]["niah_single_1"]["results"][0]["pred"] = "EDITED";
  { std::ofstream(dir / "a" / "partial.json") << p.dump(); }

  cfg.resume = true;
  run.clear();
  longrope::run_ruler(*model, cfg, nullptr,
                      [&run](int64_t, int64_t, int64_t, int64_t, const std::string& m) {
                        if (m.find(" sample ") != std::string::npos) run.push_back(m);
                      });
  EXPECT_EQ(run, std::vector<std::string>{"yarn @ 1024 niah_multikey_2 sample 2/2"});
  EXPECT_FALSE(fs::exists(dir / "a" / "partial.json"));
  cfg.resume = false;
  cfg.out_dir = (dir / "b").string();
  longrope::run_ruler(*model, cfg);
  const auto got = nlohmann::json::parse(slurp(dir / "a" / "results.json"))["cells"][0];
  const auto ref = nlohmann::json::parse(slurp(dir / "b" / "results.json"))["cells"][0];
  EXPECT_EQ(got["key"], ref["key"]);
  for (const std::string t : {"niah_single_1", "niah_multikey_2"})
    for (size_t i = 0; i < 2; ++i) {
      const bool edited = t == "niah_single_1" && i == 0;
      EXPECT_EQ(got["tasks"][t]["results"][i]["pred"],
                edited ? "EDITED" : ref["tasks"][t]["results"][i]["pred"])
          << t << " " << i;
      EXPECT_EQ(got["tasks"][t]["results"][i]["outputs"], ref["tasks"][t]["results"][i]["outputs"]);
    }
}

TEST(RulerCli, MethodWithTheSameTablesIsCopied) {
  REQUIRE_RULER_INPUTS();
  const fs::path dir = longrope::test::fresh_temp_dir("ruler_same");
  longrope::test::RemoveOnExit cleanup{dir};
  const std::string run = tiny_ruler(
      "--lengths 512 --methods none,yarn --tasks niah_single_1 --samples 2 -O " + dir.string());
  std::string out;
  ASSERT_EQ(run_command(run, &out), 0) << out;
  EXPECT_NE(out.find("1 cell(s) computed, 1 copied from a method with the same RoPE tables"),
            std::string::npos)
      << out;
  const fs::path none = dir / "none" / "512" / "pred" / "niah_single_1.jsonl";
  const fs::path yarn = dir / "yarn" / "512" / "pred" / "niah_single_1.jsonl";
  ASSERT_TRUE(fs::exists(yarn)) << out;
  EXPECT_EQ(slurp(yarn), slurp(none));
  const auto j = nlohmann::json::parse(slurp(dir / "results.json"));
  ASSERT_EQ(j["cells"].size(), 2u);
  EXPECT_FALSE(j["cells"][0].contains("same_as"));
  EXPECT_EQ(j["cells"][1]["same_as"], "none");
  EXPECT_EQ(j["cells"][1]["label"], "yarn");
  EXPECT_EQ(j["cells"][1]["tasks"], j["cells"][0]["tasks"]);
}

}  // namespace
