// SearchRun, the search as a library call, on stories260K: a run stopped after one iteration and
// resumed to three writes the same files as three iterations straight, without the CLI.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "longrope/error.h"
#include "longrope/eval.h"
#include "longrope/interrupt.h"
#include "longrope/model.h"
#include "longrope/perplexity.h"
#include "longrope/rope.h"
#include "longrope/search_run.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;

SearchRunConfig tiny(const fs::path& out, int iterations) {
  SearchRunConfig c;
  c.model_path = test::stories_gguf().string();
  c.texts = {test::shared_text("pride_and_prejudice.txt").string()};
  c.target_ctx = 1024;
  c.docs = 1;
  c.settings.population = 8;
  c.settings.parents = 4;
  c.settings.mutations = 2;
  c.settings.crossovers = 2;
  c.settings.seed = 5;
  c.settings.iterations = iterations;
  c.short_ctx = 768;
  c.output = out.string();
  c.n_threads = 1;
  return c;
}

TEST(SearchRunLib, ResumedRunWritesTheUninterruptedFiles) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  ::setenv("SOURCE_DATE_EPOCH", "0", 1);
  const fs::path d = test::fresh_temp_dir("searchrun");
  auto model = Model::load(test::stories_gguf().string());
  const SearchRunResult whole = SearchRun(model, tiny(d / "a.json", 3)).run();
  SearchRun(model, tiny(d / "b.json", 1)).run();
  SearchRunConfig more = tiny(d / "b.json", 3);
  more.resume = true;
  int reports = 0;
  const SearchRunResult resumed =
      SearchRun(model, more).run([&](const SearchProgress&) { ++reports; });
  ::unsetenv("SOURCE_DATE_EPOCH");
  EXPECT_GT(reports, 0);
  EXPECT_EQ(whole.best_ppl, resumed.best_ppl);
  ASSERT_TRUE(whole.short_best_ppl.has_value());
  EXPECT_EQ(whole.scaling.sets.size(), 2u);
  EXPECT_EQ(whole.eval_seconds, 0.0);  // SOURCE_DATE_EPOCH: no wall-clock in the outputs
  for (const char* ext : {"", ".log.json", ".ckpt.json"}) {
    const std::string a = test::slurp(d / (std::string("a.json") + ext));
    ASSERT_FALSE(a.empty()) << ext;
    EXPECT_EQ(a, test::slurp(d / (std::string("b.json") + ext))) << ext;
  }
  // A checkpoint written with other settings is refused with one line.
  SearchRunConfig other = tiny(d / "b.json", 3);
  other.resume = true;
  other.settings.seed = 6;
  test::expect_error([&] { SearchRun(model, other).run(); }, "other search settings");
  fs::remove_all(d);
}

// --short-ctx L_orig: the short set is the plain model (no evaluations), so inputs up to L_orig
// score bit for bit as without scaling while the long set serves the rest.
TEST(SearchRunLib, ShortSetAtOrigIsThePlainModel) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  const fs::path d = test::fresh_temp_dir("searchplain");
  auto model = Model::load(test::stories_gguf().string());
  SearchRunConfig c = tiny(d / "p.json", 1);
  c.short_ctx.reset();
  c.attn_factor = 1.1;  // the long set's, fixed: the short set must not inherit it
  const SearchRunResult first = SearchRun(model, c).run();
  ASSERT_EQ(first.scaling.sets.size(), 1u);
  // Nothing to evaluate: the finished run resumes to add the plain short set.
  c.short_ctx = 512;
  c.resume = true;
  const SearchRunResult r = SearchRun(model, c).run();
  EXPECT_EQ(r.full_evals, first.full_evals);
  EXPECT_EQ(r.scaling.sets.back().factors, first.scaling.sets[0].factors);
  EXPECT_FALSE(r.short_best_ppl.has_value());
  ASSERT_EQ(r.scaling.sets.size(), 2u);
  EXPECT_EQ(r.scaling.sets[0], FactorSet(std::vector<double>(4, 1.0), 512, 1.0));
  EXPECT_EQ(r.scaling.attn_factor, 1.1);
  nlohmann::json prov;
  const RopeScaling back = read_factors_file((d / "p.json").string(), &prov);
  EXPECT_EQ(back, r.scaling);
  EXPECT_EQ(prov["short"]["plain"], true);

  const std::vector<int32_t> toks = model->tokenizer().encode(
      normalize_newlines(read_text_file(test::shared_text("moby-dick.txt").string())));
  for (int64_t len : {200, 512}) {
    const double plain = perplexity(*model, toks, len, 2, RopeScaling{}, 1).ppl;
    EXPECT_EQ(perplexity(*model, toks, len, 2, back, 1).ppl, plain) << len;
  }
  // Above L_orig the long set (and its attention factor) takes over.
  EXPECT_NE(perplexity(*model, toks, 1024, 1, back, 1).ppl,
            perplexity(*model, toks, 1024, 1, RopeScaling{}, 1).ppl);
  fs::remove_all(d);
}

// Ctrl-C in the middle of an iteration (request_stop() is what the signal handler does): the
// checkpoint keeps the finished evaluations of that iteration, and the resumed run reuses them
// (they are not evaluated again) and ends with the files of an uninterrupted run.
TEST(SearchRunLib, InterruptedMidIterationResumesToTheSameFiles) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  ::setenv("SOURCE_DATE_EPOCH", "0", 1);
  const fs::path d = test::fresh_temp_dir("searchstop");
  auto model = Model::load(test::stories_gguf().string());
  SearchRun(model, tiny(d / "a.json", 3)).run();
  for (const char* phase : {"search", "short"}) {
    const fs::path out = d / (std::string("b_") + phase + ".json");
    clear_stop();
    auto stop_in_phase = [&](const SearchProgress& pr) {
      if (pr.phase == std::string(phase) && pr.iteration == 1 && pr.evals_done == 2) request_stop();
    };
    test::expect_error([&] { SearchRun(model, tiny(out, 3)).run(stop_in_phase); },
                       "search interrupted in iteration 1");
    const auto ck = nlohmann::json::parse(test::slurp(out.string() + ".ckpt.json"));
    ASSERT_TRUE(ck["pending"].is_object()) << phase;
    EXPECT_EQ(ck["pending"]["phase"], std::string(phase) == "search" ? 0 : 1);
    EXPECT_EQ(ck["pending"]["results"].size(), 2u);
    clear_stop();
    SearchRunConfig more = tiny(out, 3);
    more.resume = true;
    SearchRun(model, more).run();
    for (const char* ext : {"", ".log.json", ".ckpt.json"}) {
      const std::string a = test::slurp(d / (std::string("a.json") + ext));
      ASSERT_FALSE(a.empty()) << ext;
      EXPECT_EQ(a, test::slurp(out.string() + ext)) << phase << ext;
    }
  }
  // The saved results are used, not recomputed: one edited to an unbeatable fitness wins.
  const fs::path out = d / "c.json";
  clear_stop();
  test::expect_error(
      [&] {
        SearchRun(model, tiny(out, 3)).run([](const SearchProgress& pr) {
          if (pr.iteration == 1 && pr.evals_done == 1) request_stop();
        });
      },
      "search interrupted");
  clear_stop();
  auto ck = nlohmann::json::parse(test::slurp(out.string() + ".ckpt.json"));
  ASSERT_EQ(ck["pending"]["results"].size(), 1u);
  for (auto& [task, result] : ck["pending"]["results"].items()) {
    auto r = nlohmann::json::parse(result.get<std::string>());
    ASSERT_FALSE(r["rej"].get<bool>());
    r["ppl"] = 1.25;
    result = r.dump();
  }
  std::ofstream(out.string() + ".ckpt.json") << ck.dump(1);
  SearchRunConfig more = tiny(out, 3);
  more.resume = true;
  EXPECT_EQ(SearchRun(model, more).run().best_ppl, 1.25);
  ::unsetenv("SOURCE_DATE_EPOCH");
  fs::remove_all(d);
}

// A run killed without warning (no signal handler runs: a session's end, an out-of-memory kill)
// leaves on disk every evaluation that had finished: the checkpoint is written after each one.
// The files as they were at that moment resume to the files of an uninterrupted run.
TEST(SearchRunLib, KilledRunLosesOnlyEvaluationsInFlight) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  ::setenv("SOURCE_DATE_EPOCH", "0", 1);
  const fs::path d = test::fresh_temp_dir("searchkill");
  const test::RemoveOnExit clean{d};
  auto model = Model::load(test::stories_gguf().string());
  SearchRun(model, tiny(d / "a.json", 3)).run();
  const fs::path out = d / "b.json", killed = d / "k.json";
  size_t pending_seen = 0;
  clear_stop();
  SearchRun(model, tiny(out, 3)).run([&](const SearchProgress& pr) {
    if (pr.phase != std::string("search") || pr.iteration != 1 || pr.evals_done != 2) return;
    // What a kill at this moment leaves: the files as they are now.
    const auto ck = nlohmann::json::parse(test::slurp(out.string() + ".ckpt.json"));
    pending_seen = ck["pending"]["results"].size();
    for (const char* ext : {"", ".ckpt.json", ".log.json"})
      if (fs::exists(out.string() + ext))
        fs::copy_file(out.string() + ext, killed.string() + ext,
                      fs::copy_options::overwrite_existing);
  });
  EXPECT_EQ(pending_seen, 2u);  // both finished evaluations of the running iteration
  SearchRunConfig more = tiny(killed, 3);
  more.resume = true;
  SearchRun(model, more).run();
  for (const char* ext : {"", ".log.json", ".ckpt.json"}) {
    const std::string a = test::slurp(d / (std::string("a.json") + ext));
    ASSERT_FALSE(a.empty()) << ext;
    EXPECT_EQ(a, test::slurp(out.string() + ext)) << ext;  // the saves change no result
    EXPECT_EQ(a, test::slurp(killed.string() + ext)) << ext;
  }
  ::unsetenv("SOURCE_DATE_EPOCH");
}

// --fitness mix: the best fitness the search records is what `eval --fitness mix` measures for
// its factors file (same needle windows, every token scored, the answers weighing w), the file
// says how it was found, and a resume with another weight is refused.
TEST(SearchRunLib, MixedFitnessIsWhatEvalMeasures) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  const fs::path d = test::fresh_temp_dir("searchmix");
  auto model = Model::load(test::stories_gguf().string());
  SearchRunConfig c = tiny(d / "mix.json", 1);
  c.short_ctx.reset();
  c.fitness = "mix";
  c.needles = 3;
  c.needle_weight = 0.2;
  const SearchRunResult r = SearchRun(model, c).run();
  const auto file = nlohmann::json::parse(test::slurp(d / "mix.json"));
  const auto& search = file["provenance"]["search"];
  EXPECT_EQ(search["fitness"], "mix");
  EXPECT_EQ(search["needle_weight"].get<double>(), 0.2);
  EXPECT_EQ(search["needles"].get<int>(), 3);

  EvalConfig e;
  e.model_path = c.model_path;
  e.text_paths = c.texts;
  e.lengths = {c.target_ctx};
  e.methods = {"best=" + (d / "mix.json").string()};
  e.n_threads = 1;
  e.fitness = "mix";
  e.needles = 3;
  e.needle_weight = 0.2;
  const EvalRun run = run_eval(*model, e);
  ASSERT_EQ(run.cells.size(), 1u);
  EXPECT_NEAR(run.cells[0]["ppl"].get<double>(), r.best_ppl, 1e-12 * r.best_ppl);
  // The mixed value lies between its parts (every token, the answers only).
  const double all = run.cells[0]["all_ppl"], needle = run.cells[0]["needle_ppl"];
  EXPECT_GT(r.best_ppl, std::min(all, needle));
  EXPECT_LT(r.best_ppl, std::max(all, needle));

  SearchRunConfig other = tiny(d / "mix.json", 2);
  other.short_ctx.reset();
  other.fitness = "mix";
  other.needles = 3;
  other.needle_weight = 0.3;
  other.resume = true;
  test::expect_error([&] { SearchRun(model, other).run(); }, "other search settings");
  other.needle_weight = 0;
  other.resume = false;
  test::expect_error([&] { SearchRun(model, other); }, "--needle-weight 0");
  fs::remove_all(d);
}

// --fitness ppl,needle: the factors file holds the picked set and the whole front (each set
// with both values, which eval measures again), the checkpoint holds the front, a resumed run
// writes the same files, and --pick chooses another set of the same front.
TEST(SearchRunLib, MultiObjectiveRunWritesTheFrontAndThePick) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  ::setenv("SOURCE_DATE_EPOCH", "0", 1);
  const fs::path d = test::fresh_temp_dir("searchfront");
  auto model = Model::load(test::stories_gguf().string());
  auto cfg = [&](const fs::path& out, int iterations) {
    SearchRunConfig c = tiny(out, iterations);
    c.short_ctx.reset();
    c.fitness = "ppl,needle";
    c.settings.objectives = 2;
    c.needles = 3;
    c.pick = "ppl:needle<=yarn";
    return c;
  };
  std::vector<SearchProgress> seen;
  const SearchRunResult r =
      SearchRun(model, cfg(d / "a.json", 2)).run([&](const SearchProgress& p) {
        seen.push_back(p);
      });
  // Progress shows the front and the best value as the candidates finish, before their
  // generation ends (the search records a generation at its end), and ends at the written front.
  bool in_first_generation = false;
  for (const SearchProgress& p : seen)
    if (p.iteration == 0 && p.evals_done >= 1) {
      in_first_generation = true;
      EXPECT_GE(p.front_size, 1) << p.evals_done;
      EXPECT_TRUE(std::isfinite(p.best_ppl)) << p.evals_done;
    }
  EXPECT_TRUE(in_first_generation);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(size_t(seen.back().front_size), r.front.size());
  SearchRun(model, cfg(d / "b.json", 1)).run();
  SearchRunConfig more = cfg(d / "b.json", 2);
  more.resume = true;
  SearchRun(model, more).run();
  ::unsetenv("SOURCE_DATE_EPOCH");
  for (const char* ext : {"", ".log.json", ".ckpt.json"})
    EXPECT_EQ(test::slurp(d / (std::string("a.json") + ext)),
              test::slurp(d / (std::string("b.json") + ext)))
        << ext;

  const auto file = nlohmann::json::parse(test::slurp(d / "a.json"));
  ASSERT_TRUE(file.contains("front"));
  const auto& front = file["front"];
  ASSERT_GE(front.size(), 1u);
  EXPECT_EQ(front.size(), r.front.size());
  EXPECT_EQ(file["provenance"]["objectives"], nlohmann::json({"ppl", "needle"}));
  EXPECT_NE(test::slurp(d / "a.json.front.svg").find("front (searched sets)"), std::string::npos);
  EXPECT_EQ(r.front_plots.at(0), (d / "a.json.front.svg").string());
  const auto ckpt = nlohmann::json::parse(test::slurp(d / "a.json.ckpt.json"));
  EXPECT_EQ(ckpt["long"]["front"].size(), front.size());
  // No set on the front dominates another, and exactly one is picked: the file's own set.
  int picked = 0;
  for (const auto& e : front) {
    for (const auto& o : front)
      EXPECT_FALSE(o["objectives"]["ppl"] <= e["objectives"]["ppl"] &&
                   o["objectives"]["needle"] <= e["objectives"]["needle"] && o != e);
    if (e.value("picked", false)) {
      ++picked;
      EXPECT_EQ(e["factors"], file["long_factor"]);
      EXPECT_EQ(e["n_hat"], file["n_hat"]);
      EXPECT_EQ(e["objectives"]["ppl"], file["provenance"]["picked"]["ppl"]);
    }
  }
  EXPECT_EQ(picked, 1);
  // The rule: the best perplexity among the sets whose needle value is at most the yarn seed's
  // (or, when none is, the lowest needle value).
  const double yarn = file["provenance"]["seed_ppl"]["yarn"]["needle"];
  const double picked_ppl = r.picked[0];
  bool any = false;
  for (const auto& e : front)
    if (e["objectives"]["needle"].get<double>() <= yarn) {
      any = true;
      EXPECT_LE(picked_ppl, e["objectives"]["ppl"].get<double>());
    }
  if (any) {
    EXPECT_LE(r.picked[1], yarn);
    EXPECT_TRUE(r.pick_note.empty());
  }

  // The front's values are what eval measures for the picked set (perplexity fitness).
  EvalConfig e;
  e.model_path = test::stories_gguf().string();
  e.text_paths = {test::shared_text("pride_and_prejudice.txt").string()};
  e.lengths = {1024};
  e.methods = {"best=" + (d / "a.json").string()};
  e.n_threads = 1;
  const EvalRun run = run_eval(*model, e);
  ASSERT_EQ(run.cells.size(), 1u);
  EXPECT_NEAR(run.cells[0]["ppl"].get<double>(), picked_ppl, 1e-9 * picked_ppl);

  // Another rule on the finished run: the same front, the set with the best perplexity.
  SearchRunConfig best = cfg(d / "a.json", 2);
  best.resume = true;
  best.pick = "ppl";
  const SearchRunResult rb = SearchRun(model, best).run();
  EXPECT_EQ(rb.front.size(), r.front.size());
  EXPECT_DOUBLE_EQ(rb.picked[0], rb.front[0]["objectives"]["ppl"].get<double>());
  EXPECT_EQ(rb.best_ppl, rb.picked[0]);

  // Bad rules fail before any work.
  SearchRunConfig bad = cfg(d / "c.json", 1);
  bad.pick = "ppl:needle<=nope";
  test::expect_error([&] { SearchRun(model, bad); }, {"--pick ppl:needle<=nope", "no seed named"});
  bad.pick = "mix";
  test::expect_error([&] { SearchRun(model, bad); }, "no objective mix");
  bad = tiny(d / "c.json", 1);
  bad.pick = "ppl";
  test::expect_error([&] { SearchRun(model, bad); }, "needs several objectives");
  bad = cfg(d / "c.json", 1);
  bad.fitness = "ppl,ppl";
  test::expect_error([&] { SearchRun(model, bad); }, "ppl given twice");
  fs::remove_all(d);
}

// The front's early reject in a real run (perplexity has a first stage at 1024 on a model
// trained at 512; the needle fitness on one window has none): children that the front dominates
// are cut. A checkpoint of a run started without it ("front_reject" absent from its settings)
// continues without it, with a warning, to the files of a run that never had it.
TEST(SearchRunLib, MultiObjectiveFrontRejectAndRunsStartedWithoutIt) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  ::setenv("SOURCE_DATE_EPOCH", "0", 1);
  const fs::path d = test::fresh_temp_dir("searchfrontcut");
  auto model = Model::load(test::stories_gguf().string());
  auto cfg = [&](const fs::path& out, int iterations, bool front_reject) {
    SearchRunConfig c = tiny(out, iterations);
    c.short_ctx.reset();
    c.fitness = "ppl,needle";
    c.settings.objectives = 2;
    c.settings.front_reject = front_reject;
    c.needles = 3;
    return c;
  };
  const SearchRunResult cut = SearchRun(model, cfg(d / "cut.json", 3, true)).run();
  EXPECT_GT(cut.partial_evals, 0);
  EXPECT_TRUE(cut.warnings.empty());
  const SearchRunResult whole = SearchRun(model, cfg(d / "a.json", 2, false)).run();
  EXPECT_EQ(whole.partial_evals, 0);
  SearchRun(model, cfg(d / "b.json", 1, false)).run();
  SearchRunConfig more = cfg(d / "b.json", 2, true);  // today's default, on an older checkpoint
  more.resume = true;
  const SearchRunResult resumed = SearchRun(model, more).run();
  ::unsetenv("SOURCE_DATE_EPOCH");
  ASSERT_EQ(resumed.warnings.size(), 1u);
  EXPECT_NE(resumed.warnings[0].find("without the front's early reject"), std::string::npos);
  for (const char* ext : {"", ".log.json", ".ckpt.json"})
    EXPECT_EQ(test::slurp(d / (std::string("a.json") + ext)),
              test::slurp(d / (std::string("b.json") + ext)))
        << ext;
  fs::remove_all(d);
}

// The progress reports the work behind the ETA in tokens: this run's tokens so far grow with
// every report, and the estimate of what is left includes the short phase until it starts and
// reaches 0 at the end.
TEST(SearchRunLib, ProgressCountsTheTokensLeft) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  const fs::path d = test::fresh_temp_dir("searchprogress");
  auto model = Model::load(test::stories_gguf().string());
  SearchRunConfig c = tiny(d / "p.json", 1);  // 8 + 4 long candidates, then 8 + 4 short ones
  std::vector<SearchProgress> seen;
  SearchRun(model, c).run([&](const SearchProgress& p) { seen.push_back(p); });
  ASSERT_FALSE(seen.empty());
  const SearchProgress& first = seen.front();
  EXPECT_STREQ(first.phase, "search");
  // Before any evaluation: nominal windows, 12 long candidates of 1024 and 12 short of 768.
  EXPECT_EQ(first.tokens_done, 0);
  EXPECT_DOUBLE_EQ(first.tokens_left, 12.0 * 1024 + 12.0 * 768);
  int64_t last_done = -1;
  std::string phase;
  for (const SearchProgress& p : seen) {
    if (phase != p.phase) last_done = -1;  // each phase counts its own tokens
    phase = p.phase;
    EXPECT_GE(p.tokens_done, last_done);
    last_done = p.tokens_done;
    if (phase == "search") {
      EXPECT_GE(p.tokens_left, 12.0 * 768);  // the short phase is ahead
    }
  }
  EXPECT_EQ(phase, "short");
  EXPECT_GT(seen.back().tokens_done, 0);
  EXPECT_DOUBLE_EQ(seen.back().tokens_left, 0.0);
  fs::remove_all(d);
}

// --budget: the run stops where the budget ends (after the evaluation that is running), writes
// the best so far and a checkpoint, and the same search resumed without a budget ends with the
// files of a run that never stopped, wherever the budget cut it.
TEST(SearchRunLib, BudgetStopsAndResumesToTheUninterruptedFiles) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  ::setenv("SOURCE_DATE_EPOCH", "0", 1);
  const fs::path d = test::fresh_temp_dir("searchbudget");
  auto model = Model::load(test::stories_gguf().string());
  constexpr int kIterations = 6;
  SearchRun(model, tiny(d / "a.json", kIterations)).run();

  // A budget far too small for the whole run: it stops early, wherever the clock says.
  SearchRunConfig cut = tiny(d / "b.json", kIterations);
  cut.budget_seconds = 0.3;
  try {
    const SearchRunResult r = SearchRun(model, cut).run();
    EXPECT_TRUE(r.budget_spent);
    EXPECT_LT(r.iterations_done, kIterations);
    const auto file = nlohmann::json::parse(test::slurp(d / "b.json"));
    EXPECT_EQ(file["provenance"]["budget"]["spent"], true);
    EXPECT_EQ(file["provenance"]["budget"]["iterations_done"].get<int>(), r.iterations_done);
  } catch (const Error& e) {  // a slow build: the budget ended inside the initial population
    EXPECT_NE(std::string(e.what()).find("before the initial population"), std::string::npos)
        << e.what();
  }
  ASSERT_TRUE(fs::exists(d / "b.json.ckpt.json"));
  SearchRunConfig more = tiny(d / "b.json", kIterations);
  more.resume = true;
  const SearchRunResult done = SearchRun(model, more).run();
  EXPECT_FALSE(done.budget_spent);
  for (const char* ext : {"", ".log.json", ".ckpt.json"})
    EXPECT_EQ(test::slurp(d / (std::string("a.json") + ext)),
              test::slurp(d / (std::string("b.json") + ext)))
        << ext;

  // A budget that ends before the first evaluation: one line, and a checkpoint to resume.
  SearchRunConfig none = tiny(d / "c.json", 1);
  none.budget_seconds = 1e-9;
  test::expect_error([&] { SearchRun(model, none).run(); }, "before the initial population");
  EXPECT_TRUE(fs::exists(d / "c.json.ckpt.json"));
  ::unsetenv("SOURCE_DATE_EPOCH");
  fs::remove_all(d);
}

// A budget that ends inside the initial population: the result is the best of the candidates it
// evaluated (with a warning that says how many), the checkpoint keeps them, and the same search
// resumed without a budget ends with the files of a run that never stopped.
TEST(SearchRunLib, BudgetInsideTheInitialPopulationGivesTheBestEvaluated) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  ::setenv("SOURCE_DATE_EPOCH", "0", 1);
  const fs::path d = test::fresh_temp_dir("searchbudget0");
  auto model = Model::load(test::stories_gguf().string());
  SearchRunConfig whole = tiny(d / "a.json", 2);
  whole.short_ctx.reset();
  SearchRun(model, whole).run();
  const auto a_ckpt = nlohmann::json::parse(test::slurp(d / "a.json.ckpt.json"));

  // The clock passes the budget while the third candidate is due: two were evaluated.
  SearchRunConfig cut = whole;
  cut.output = (d / "b.json").string();
  cut.budget_seconds = 3;
  const SearchRunResult r = SearchRun(model, cut).run([](const SearchProgress& p) {
    if (p.iteration == 0 && p.evals_done == 2)
      std::this_thread::sleep_for(std::chrono::milliseconds(3100));
  });
  EXPECT_TRUE(r.budget_spent);
  EXPECT_EQ(r.iterations_done, 0);
  ASSERT_GE(r.full_evals, 1);
  EXPECT_LE(r.full_evals, 2);  // 1 only where one evaluation took the whole budget
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find(fmt::format("after {} of the 8 candidates", r.full_evals)),
            std::string::npos)
      << r.warnings[0];
  // Its set is one the uninterrupted run evaluated, with the same perplexity, and no better than
  // that run's initial population.
  const auto b = nlohmann::json::parse(test::slurp(d / "b.json"));
  EXPECT_EQ(b["provenance"]["budget"]["spent"], true);
  bool found = false;
  for (const auto& [key, fit] : a_ckpt["long"]["memo"].items())
    if (fit.contains("ppl") && fit["ppl"].is_number() && fit["ppl"].get<double>() == r.best_ppl)
      found = true;
  EXPECT_TRUE(found) << r.best_ppl;
  EXPECT_GE(r.best_ppl, a_ckpt["long"]["log"][0]["best_ppl"].get<double>());

  SearchRunConfig more = whole;
  more.output = cut.output;
  more.resume = true;
  EXPECT_FALSE(SearchRun(model, more).run().budget_spent);
  for (const char* ext : {"", ".log.json", ".ckpt.json"})
    EXPECT_EQ(test::slurp(d / (std::string("a.json") + ext)),
              test::slurp(d / (std::string("b.json") + ext)))
        << ext;
  ::unsetenv("SOURCE_DATE_EPOCH");
  fs::remove_all(d);
}

// Progressive extension: a seed file for a shorter target joins as it is and stretched to the
// new target; with seed_stretched_only only stretched (its factors times 2048 / 1024).
TEST(SearchRunLib, SeedStretchedOnlyLeavesOutTheShorterSetAsItIs) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  const fs::path d = test::fresh_temp_dir("searchstretch");
  auto model = Model::load(test::stories_gguf().string());
  SearchRunConfig first = tiny(d / "f1024.json", 0);
  first.short_ctx.reset();
  SearchRun(model, first).run();
  const auto prev = nlohmann::json::parse(test::slurp(d / "f1024.json"));
  auto seeds_of = [&](bool stretched_only, const std::string& out) {
    SearchRunConfig c = tiny(d / out, 0);
    c.short_ctx.reset();
    c.target_ctx = 2048;
    c.settings.population = 6;
    c.seed_factors = {(d / "f1024.json").string()};
    c.seed_stretched_only = stretched_only;
    SearchRun(model, c).run();
    return nlohmann::json::parse(
        test::slurp(d / (out + ".ckpt.json")))["settings"]["space"]["seeds"];
  };
  const auto both = seeds_of(false, "both.json");
  ASSERT_EQ(both.size(), 2u);
  EXPECT_EQ(both[0]["name"], "f1024.json");
  EXPECT_EQ(both[1]["name"], "f1024.json x 2");
  const auto only = seeds_of(true, "only.json");
  ASSERT_EQ(only.size(), 1u);
  EXPECT_EQ(only[0]["name"], "f1024.json x 2");
  const auto& lam = prev.at("long_factor");
  ASSERT_EQ(only[0]["lambda"].size(), lam.size());
  for (size_t j = 0; j < lam.size(); ++j)
    EXPECT_DOUBLE_EQ(only[0]["lambda"][j].get<double>(), 2 * lam[j].get<double>()) << j;
  fs::remove_all(d);
}

TEST(SearchRunLib, BadSettingsFailAtConstruction) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  auto model = Model::load(test::stories_gguf().string());
  SearchRunConfig c = tiny("unused.json", 1);
  c.target_ctx = 512;
  test::expect_error([&] { SearchRun(model, c); }, "not above the original context");
  c = tiny("unused.json", 1);
  c.short_ctx = 2048;
  test::expect_error([&] { SearchRun(model, c); }, "is not below -c");
  c = tiny("unused.json", 1);
  c.docs = 100000;
  test::expect_error([&] { SearchRun(model, c); }, "too little text");
}

}  // namespace
}  // namespace longrope

// The front plot's seed labels: ".json" and the seed files' shared prefix dropped, rule seeds kept.
TEST(SearchRunLib, FrontPlotLabelsAreShort) {
  const std::vector<std::string> names = {
      "yarn", "smollm2-32k-ppl.json", "smollm2-32k-needle.json",
      "blend(smollm2-32k-ppl.json, smollm2-32k-needle.json, 0.5)", "dynamic"};
  EXPECT_EQ(
      longrope::front_plot_labels(names),
      (std::vector<std::string>{"yarn", "ppl", "needle", "blend(ppl, needle, 0.5)", "dynamic"}));
  // One seed file: only its extension goes; no shared prefix before a separator: names kept.
  EXPECT_EQ(longrope::front_plot_labels({"ntk", "dir/a-b.json"}),
            (std::vector<std::string>{"ntk", "dir/a-b"}));
  EXPECT_EQ(longrope::front_plot_labels({"abc.json", "abd.json"}),
            (std::vector<std::string>{"abc", "abd"}));
}
