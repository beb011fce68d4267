// longrope passkey: prompt construction, seeding and a tiny end-to-end run (stories260K).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>

#include "longrope/atomic_file.h"
#include "longrope/error.h"
#include "longrope/model.h"
#include "longrope/passkey.h"
#include "test_paths.h"

namespace {

using longrope::test::cli_path;
using longrope::test::run_command;
using longrope::test::shared_dir;
namespace fs = std::filesystem;

std::string stories() {
  return (shared_dir() / "models" / "stories260K.gguf").string();
}

size_t count(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) ++n;
  return n;
}

TEST(EvalPasskey, PromptHasKeyOnceAtDepthAndExactLength) {
  LONGROPE_REQUIRE_FILE(stories());
  auto model = longrope::Model::load(stories());
  for (int64_t len : {256, 512, 1000}) {
    for (double depth : {0.0, 0.25, 0.5, 0.9, 1.0}) {
      const auto p = longrope::make_passkey_prompt(*model, len, 31337, depth, false);
      EXPECT_LE(int64_t(p.tokens.size()), len);
      EXPECT_GE(int64_t(p.tokens.size()), len - 12) << "length " << len;
      const std::string text = model->tokenizer().decode(p.tokens);
      EXPECT_EQ(count(text, "31337"), 2u);  // "The pass key is N. ... N is the pass key."
      EXPECT_EQ(count(text, "The pass key is 31337."), 1u);
      EXPECT_NE(text.find("What is the pass key? The pass key is"), std::string::npos);
      // The needle sits at the requested fraction of the prompt (within one filler sentence
      // plus the fixed intro/question).
      const double pos = double(p.needle_token) / double(p.tokens.size());
      EXPECT_NEAR(pos, depth, len >= 1000 ? 0.2 : 0.35) << "length " << len << " depth " << depth;
      const std::string needle = model->tokenizer().decode(std::vector<int32_t>(
          p.tokens.begin() + p.needle_token, p.tokens.begin() + p.needle_token + p.needle_length));
      EXPECT_NE(needle.find("The pass key is 31337"), std::string::npos) << needle;
    }
  }
  // Deeper needles come later.
  const auto a = longrope::make_passkey_prompt(*model, 512, 7, 0.2, false);
  const auto b = longrope::make_passkey_prompt(*model, 512, 7, 0.8, false);
  EXPECT_LT(a.needle_token, b.needle_token);
  EXPECT_THROW(longrope::make_passkey_prompt(*model, 20, 7, 0.5, false), longrope::Error);
}

TEST(EvalPasskey, ChatPromptUsesChatMl) {
  const auto path = longrope::test::smollm_path();
  LONGROPE_REQUIRE_FILE(path);
  auto model = longrope::Model::load(path.string());
  const auto p = longrope::make_passkey_prompt(*model, 1024, 4242, 0.5, true);
  EXPECT_LE(p.tokens.size(), 1024u);
  EXPECT_GE(p.tokens.size(), 1024u - 12);
  const auto start = model->tokenizer().encode("<|im_start|>", true);
  ASSERT_EQ(start.size(), 1u);
  EXPECT_EQ(std::count(p.tokens.begin(), p.tokens.end(), start[0]), 2);
  const std::string text = model->tokenizer().decode(p.tokens);
  EXPECT_EQ(count(text, "The pass key is 4242."), 1u);
  // Control tokens decode to nothing.
  const std::string tail = "What is the pass key?\nassistant\nThe pass key is";
  ASSERT_GE(text.size(), tail.size());
  EXPECT_EQ(text.substr(text.size() - tail.size()), tail);
}

TEST(EvalPasskey, SeedDeterminesKeysAndDepths) {
  const auto a = longrope::passkey_trial_spec(42, 1024, 3, {});
  const auto b = longrope::passkey_trial_spec(42, 1024, 3, {});
  EXPECT_EQ(a.key, b.key);
  EXPECT_EQ(a.depth, b.depth);
  int differ = 0;
  for (int t = 0; t < 20; ++t) {
    const auto x = longrope::passkey_trial_spec(42, 1024, t, {});
    const auto y = longrope::passkey_trial_spec(43, 1024, t, {});
    EXPECT_GE(x.key, 1);
    EXPECT_LE(x.key, 50000);
    EXPECT_GE(x.depth, 0.0);
    EXPECT_LE(x.depth, 1.0);
    differ += x.key != y.key;
  }
  EXPECT_GT(differ, 15);
  EXPECT_EQ(longrope::passkey_trial_spec(1, 512, 5, {0.1, 0.5}).depth, 0.5);
}

TEST(EvalPasskey, WilsonIntervals) {
  // Wilson score intervals at z = 1.96 (reference values computed from the formula by hand).
  auto [lo, hi] = longrope::wilson_interval(5, 10);
  EXPECT_NEAR(lo, 0.2366, 1e-4);
  EXPECT_NEAR(hi, 0.7634, 1e-4);
  std::tie(lo, hi) = longrope::wilson_interval(0, 20);
  EXPECT_EQ(lo, 0.0);
  EXPECT_NEAR(hi, 0.1611, 1e-4);
  std::tie(lo, hi) = longrope::wilson_interval(20, 20);
  EXPECT_NEAR(lo, 0.8389, 1e-4);
  EXPECT_EQ(hi, 1.0);
  std::tie(lo, hi) = longrope::wilson_interval(0, 2);
  EXPECT_NEAR(hi, 0.6576, 1e-4);
}

TEST(EvalPasskey, TinyRunProducesTable) {
  LONGROPE_REQUIRE_FILE(stories());
  const fs::path dir =
      fs::temp_directory_path() / ("longrope_passkey_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const std::string cmd = cli_path().string() + " passkey -m " + stories() +
                          " --lengths 256,512 --methods none,yarn --trials 2 --seed 7 -t 1 -O " +
                          dir.string();
  std::string out;
  ASSERT_EQ(run_command(cmd, &out), 0) << out;
  EXPECT_NE(out.find("| yarn |"), std::string::npos) << out;
  std::ifstream in(dir / "results.json");
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["kind"], "passkey");
  ASSERT_EQ(j["cells"].size(), 4u);
  for (const auto& c : j["cells"]) {
    EXPECT_GE(c["accuracy"].get<double>(), 0.0);
    EXPECT_LE(c["accuracy"].get<double>(), 1.0);
    EXPECT_EQ(c["results"].size(), 2u);
    const auto ci = longrope::wilson_interval(c["correct"].get<int64_t>(), 2);
    EXPECT_EQ(c["ci_low"].get<double>(), ci.first);
    EXPECT_EQ(c["ci_high"].get<double>(), ci.second);
  }
  // The table shows each accuracy with its interval: 2 trials, 0 right -> [0.00, 0.66].
  EXPECT_NE(longrope::test::slurp(dir / "results.md").find(" ["), std::string::npos);
  // Same seed, same keys: the first cell's keys equal the ones passkey_trial_spec gives.
  const auto& first = j["cells"][0]["results"];
  for (int t = 0; t < 2; ++t)
    EXPECT_EQ(first[t]["key"].get<int64_t>(),
              longrope::passkey_trial_spec(7, j["cells"][0]["length"], t, {}).key);
  for (const char* f : {"results.md", "results.csv", "accuracy.svg", "accuracy.png",
                        "depth_none.svg", "depth_none.png", "depth_yarn.svg", "depth_yarn.png"})
    EXPECT_TRUE(fs::exists(dir / f)) << f;
  // The heat map: five depth bins x two lengths, and each cell's trials add up to the cell's.
  const std::string heat = longrope::test::slurp(dir / "depth_yarn.svg");
  size_t cells = 0;
  for (size_t at = heat.find("class=\"cell\""); at != std::string::npos;
       at = heat.find("class=\"cell\"", at + 1))
    ++cells;
  EXPECT_EQ(cells, 10u);
  int64_t trials_shown = 0;
  for (size_t at = heat.find("/"); at != std::string::npos; at = heat.find("/", at + 1))
    if (at > 0 && std::isdigit(static_cast<unsigned char>(heat[at - 1])) && at + 1 < heat.size() &&
        std::isdigit(static_cast<unsigned char>(heat[at + 1])))
      trials_shown += heat[at + 1] - '0';
  EXPECT_EQ(trials_shown, 4);  // 2 trials x 2 lengths
  ASSERT_EQ(run_command(cmd + " --resume", &out), 0) << out;
  EXPECT_NE(out.find("0 cell(s) computed, 4 reused"), std::string::npos) << out;
  fs::remove_all(dir);
}

// --resume with more --trials extends the stored cells: the first trials are taken from
// results.json (an edited stored output shows up in the extended cell), the new ones computed, and
// the cell equals a fresh run of all trials in everything but that edit and the timings.
TEST(EvalPasskey, ResumeWithMoreTrialsExtendsTheStoredRun) {
  LONGROPE_REQUIRE_FILE(stories());
  const fs::path dir = fs::temp_directory_path() / ("longrope_pkext_" + std::to_string(::getpid()));
  const fs::path fresh = dir.string() + "_fresh";
  fs::remove_all(dir);
  fs::remove_all(fresh);
  const std::string base = cli_path().string() + " passkey -m " + stories() +
                           " --lengths 256 --methods yarn -t 1 --no-progress --json";
  std::string out;
  ASSERT_EQ(run_command(base + " --trials 2 --seed 3 -O " + dir.string(), &out), 0) << out;
  nlohmann::json j = nlohmann::json::parse(longrope::test::slurp(dir / "results.json"));
  ASSERT_EQ(j["cells"].size(), 1u);
  j["cells"][0]["results"][1]["output"] = "EDITED";
  { std::ofstream(dir / "results.json") << j.dump(); }
  ASSERT_EQ(run_command(base + " --trials 3 --seed 3 --resume -O " + dir.string(), &out), 0) << out;
  ASSERT_EQ(run_command(base + " --trials 3 --seed 3 -O " + fresh.string(), &out), 0) << out;
  const auto ext = nlohmann::json::parse(longrope::test::slurp(dir / "results.json"));
  const auto ref = nlohmann::json::parse(longrope::test::slurp(fresh / "results.json"));
  const nlohmann::json* cell = nullptr;  // the 3-trial cell (the 2-trial one stays stored)
  for (const auto& c : ext["cells"])
    if (c["trials"] == 3) cell = &c;
  ASSERT_NE(cell, nullptr) << ext.dump();
  const auto& r3 = ref["cells"][0];
  EXPECT_EQ((*cell)["key"], r3["key"]);
  ASSERT_EQ((*cell)["results"].size(), 3u);
  EXPECT_EQ((*cell)["results"][1]["output"], "EDITED");  // reused, not recomputed
  for (int t = 0; t < 3; ++t) {
    EXPECT_EQ((*cell)["results"][t]["key"], r3["results"][t]["key"]);
    if (t != 1) {
      EXPECT_EQ((*cell)["results"][t]["output"], r3["results"][t]["output"]);
    }
  }
  EXPECT_EQ((*cell)["correct"], r3["correct"]);
  // Another seed shares no trials: the edited 2-trial cell is not reused.
  ASSERT_EQ(run_command(base + " --trials 3 --resume -O " + dir.string() + " --seed 4", &out), 0)
      << out;
  const auto other = nlohmann::json::parse(longrope::test::slurp(dir / "results.json"));
  int seed4 = 0;
  for (const auto& c : other["cells"])
    if (c["key"]["seed"] == 4) {
      ++seed4;
      for (const auto& r : c["results"]) EXPECT_NE(r["output"], "EDITED");
    }
  EXPECT_EQ(seed4, 1);
  fs::remove_all(dir);
  fs::remove_all(fresh);
}

// Methods whose RoPE tables are the same for every prompt of a length share one computation:
// within the trained context (512) yarn and linear at s = 1 are the plain model; past it they
// differ and each is computed. A copied cell names the cell it repeats and holds what a run of
// that method alone computes.
TEST(EvalPasskey, MethodsWithTheSameTablesAreComputedOnce) {
  LONGROPE_REQUIRE_FILE(stories());
  const fs::path dir =
      fs::temp_directory_path() / ("longrope_pksame_" + std::to_string(::getpid()));
  const fs::path alone = dir.string() + "_alone";
  fs::remove_all(dir);
  fs::remove_all(alone);
  const std::string base =
      cli_path().string() + " passkey -m " + stories() + " --trials 2 --seed 5 -t 1 --no-progress";
  std::string out;
  ASSERT_EQ(
      run_command(base + " --lengths 512,1024 --methods none,yarn,linear -O " + dir.string(), &out),
      0)
      << out;
  EXPECT_NE(out.find("4 cell(s) computed, 2 copied from a method with the same RoPE tables, 0 "
                     "reused"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("yarn @ 512 = none; linear @ 512 = none"), std::string::npos) << out;
  ASSERT_EQ(run_command(base + " --lengths 512 --methods yarn -O " + alone.string(), &out), 0)
      << out;
  const auto j = nlohmann::json::parse(longrope::test::slurp(dir / "results.json"));
  const auto a = nlohmann::json::parse(longrope::test::slurp(alone / "results.json"));
  ASSERT_EQ(j["cells"].size(), 6u);
  ASSERT_EQ(a["cells"].size(), 1u);
  int copies = 0;
  for (const auto& c : j["cells"]) {
    const bool short_len = c["length"] == 512;
    const bool copy = c.contains("same_as");
    EXPECT_EQ(copy, short_len && c["label"] != "none") << c.dump();
    if (!copy) continue;
    ++copies;
    EXPECT_EQ(c["same_as"], "none");
    EXPECT_EQ(c["seconds"], 0.0);
    if (c["label"] != "yarn") continue;
    const auto& own = a["cells"][0];
    EXPECT_EQ(c["rope"], own["rope"]);
    EXPECT_EQ(c["correct"], own["correct"]);
    ASSERT_EQ(c["results"].size(), own["results"].size());
    for (size_t t = 0; t < own["results"].size(); ++t)
      EXPECT_EQ(c["results"][t]["output"], own["results"][t]["output"]);
  }
  EXPECT_EQ(copies, 2);
  // Resumed, every cell (copies too) is found in results.json.
  ASSERT_EQ(run_command(
                base + " --lengths 512,1024 --methods none,yarn,linear --resume -O " + dir.string(),
                &out),
            0)
      << out;
  EXPECT_NE(out.find("0 cell(s) computed, 6 reused"), std::string::npos) << out;
  fs::remove_all(dir);
  fs::remove_all(alone);
}

// A run stopped inside a cell keeps the trials done in OUTDIR/partial.json; --resume continues
// the cell from them (an edited stored output shows that they are reused, not recomputed) and the
// finished cell equals a run that never stopped; without --resume the unfinished cell is never
// overwritten.
TEST(EvalPasskey, StoppedCellResumesFromItsLastTrial) {
  LONGROPE_REQUIRE_FILE(stories());
  const fs::path dir =
      fs::temp_directory_path() / ("longrope_pkpartial_" + std::to_string(::getpid()));
  const fs::path whole = dir.string() + "_whole";
  fs::remove_all(dir);
  fs::remove_all(whole);
  const auto model = longrope::Model::load(stories());
  longrope::PasskeyConfig cfg;
  cfg.model_path = stories();
  cfg.lengths = {256};
  cfg.methods = {"yarn"};
  cfg.trials = 4;
  cfg.seed = 3;
  cfg.n_threads = 1;
  cfg.out_dir = dir.string();
  EXPECT_THROW(longrope::run_passkey(*model, cfg,
                                     [](int64_t, int64_t, int64_t, int64_t, const std::string& m) {
                                       if (m.find("trial 4/4") != std::string::npos)
                                         throw std::runtime_error("stop");
                                     }),
               std::runtime_error);
  EXPECT_FALSE(fs::exists(dir / "results.json"));
  auto p = nlohmann::json::parse(longrope::test::slurp(dir / "partial.json"));
  ASSERT_EQ(p["cells"].size(), 1u);
  ASSERT_EQ(p["cells"][0]["results"].size(), 3u);
  p["cells"][0]["results"][1]["output"] = "EDITED";
  { std::ofstream(dir / "partial.json") << p.dump(); }
  EXPECT_THROW(longrope::run_passkey(*model, cfg), longrope::OutputRefused);

  cfg.resume = true;
  std::vector<std::string> trials_run;
  const longrope::EvalRun resumed = longrope::run_passkey(
      *model, cfg, [&](int64_t, int64_t, int64_t, int64_t, const std::string& m) {
        if (m.find(" trial ") != std::string::npos) trials_run.push_back(m);
      });
  EXPECT_EQ(resumed.computed, 1);
  EXPECT_EQ(resumed.continued, 1);
  EXPECT_EQ(trials_run, std::vector<std::string>{"yarn @ 256 trial 4/4"});
  EXPECT_FALSE(fs::exists(dir / "partial.json"));  // the cell is finished
  cfg.resume = false;
  cfg.out_dir = whole.string();
  longrope::run_passkey(*model, cfg);
  const auto got = nlohmann::json::parse(longrope::test::slurp(dir / "results.json"))["cells"][0];
  const auto ref = nlohmann::json::parse(longrope::test::slurp(whole / "results.json"))["cells"][0];
  EXPECT_EQ(got["key"], ref["key"]);
  ASSERT_EQ(got["results"].size(), 4u);
  for (size_t t = 0; t < 4; ++t) {
    EXPECT_EQ(got["results"][t]["key"], ref["results"][t]["key"]);
    EXPECT_EQ(got["results"][t]["output"], t == 1 ? "EDITED" : ref["results"][t]["output"]) << t;
  }
  fs::remove_all(dir);
  fs::remove_all(whole);
}

}  // namespace
