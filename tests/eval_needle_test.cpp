// Needle windows (include/longrope/needle.h) on stories260K's tokenizer: exact length, the scored
// positions are the answers' tokens, the facts sit in depth order, the same seed gives the same
// windows; and the evaluator scores only the answers.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>

#include "longrope/eval.h"
#include "longrope/model.h"
#include "longrope/needle.h"
#include "longrope/perplexity.h"
#include "longrope/search.h"
#include "search_fixtures.h"
#include "test_paths.h"

namespace longrope {
namespace {

TEST(EvalNeedle, WindowsHoldTheFactsAndScoreTheAnswers) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("moby-dick.txt"));
  auto model = Model::load(test::stories_gguf().string());
  const Tokenizer& tok = model->tokenizer();
  const auto text = tok.encode(normalize_newlines(test::slurp(test::shared_text("moby-dick.txt"))));
  const auto w = make_needle_windows(tok, text, 1024, 2, 3, 7);
  ASSERT_EQ(w.tokens.size(), 2u);
  ASSERT_EQ(w.positions.size(), 2u);
  for (size_t k = 0; k < 2; ++k) {
    const std::vector<int32_t>& tokens = w.tokens[k];
    ASSERT_EQ(tokens.size(), 1024u);
    EXPECT_EQ(tokens[0], tok.bos());
    // The scored tokens decode to the three numbers asked for, each stated once in the text.
    std::string answers;
    for (int64_t p : w.positions[k]) {
      const int32_t id = tokens[size_t(p + 1)];
      answers += tok.decode(std::span<const int32_t>(&id, 1));
    }
    const std::string all = tok.decode(tokens);
    int found = 0;
    for (size_t at = 0;
         (at = all.find("The special magic number for the ", at)) != std::string::npos; ++at)
      ++found;
    EXPECT_EQ(found, 6);  // 3 facts + 3 answers
    const size_t blue = all.find("for the blue door is"), red = all.find("for the red lamp is");
    ASSERT_NE(blue, std::string::npos);
    ASSERT_NE(red, std::string::npos);
    EXPECT_LT(blue, red);  // depth order
    const std::string number = all.substr(blue + 21, 7);
    EXPECT_NE(answers.find(number), std::string::npos) << answers << " / " << number;
    EXPECT_GE(w.positions[k].front(), 512);  // the answers come after the text, beyond L_orig
  }
  // Same seed, same windows; another seed, other numbers.
  EXPECT_EQ(make_needle_windows(tok, text, 1024, 2, 3, 7).tokens[1], w.tokens[1]);
  EXPECT_NE(make_needle_windows(tok, text, 1024, 2, 3, 8).tokens[1], w.tokens[1]);
  test::expect_error([&] { make_needle_windows(tok, text, 60, 1, 3, 7); }, "needles");
  test::expect_error([&] { make_needle_windows(tok, text, 1024, 1, 9, 7); }, "--needles 9");
  test::expect_error(
      [&] { make_needle_windows(tok, std::span<const int32_t>(text).first(500), 1024, 1, 3, 7); },
      "too little");

  // The evaluator scores exactly the answers: its token count is theirs.
  const auto& windows = w.tokens;
  const auto& positions = w.positions;
  const int64_t answers = int64_t(positions[0].size() + positions[1].size());
  PerplexityEvaluator ev(model, windows, positions, 1, 512);
  EXPECT_TRUE(ev.stage().on());
  const RopeScaling s = test::stories_candidate_1024();
  const EvalResult r = ev.evaluate(s, std::numeric_limits<double>::infinity());
  EXPECT_EQ(r.tokens, answers);
  // The same NLLs as scoring the whole windows and picking the answers out (tolerance: the LM
  // head runs on fewer rows, otherwise the same arithmetic).
  double sum = 0;
  for (size_t k = 0; k < windows.size(); ++k) {
    const auto nll = score_window(*model, windows[k], s);
    for (int64_t p : positions[k]) sum += nll[size_t(p)];
  }
  EXPECT_NEAR(r.ppl, std::exp(sum / double(answers)), 1e-6 * r.ppl);

  // The mixed fitness scores every token of the same windows and weighs the answers by w: the
  // same NLLs as the whole windows scored directly (the same arithmetic: measured bit-identical).
  const double w8 = 0.1;
  PerplexityEvaluator mix(model, windows, positions, 1, 512, w8);
  EXPECT_TRUE(mix.stage().on());
  const EvalResult m = mix.evaluate(s, std::numeric_limits<double>::infinity());
  double all_sum = 0, ans_sum = 0;
  int64_t all = 0;
  MixedNll stage0;  // window 0 beyond the original context: the first stage
  for (size_t k = 0; k < windows.size(); ++k) {
    const auto nll = score_window(*model, windows[k], s);
    for (double x : nll) all_sum += x;
    all += int64_t(nll.size());
    for (int64_t p : positions[k]) ans_sum += nll[size_t(p)];
    if (k == 0) stage0.add(nll, positions[0], 511);
  }
  EXPECT_EQ(m.tokens, all);
  const double want = std::exp(0.9 * all_sum / double(all) + 0.1 * ans_sum / double(answers));
  EXPECT_NEAR(m.ppl, want, 1e-12 * want);
  // Its parts are nothing like each other, so the weight matters.
  EXPECT_GT(std::exp(ans_sum / double(answers)) / std::exp(all_sum / double(all)), 2.0);
  EXPECT_NEAR(m.stage_ppl, stage0.fitness(w8), 1e-12 * m.stage_ppl);
  EXPECT_GT(stage0.all, 0);
  EXPECT_LT(stage0.all, int64_t(windows[0].size()) - 1);  // only the tokens beyond 512
  // A bound below the stage cuts after window 0, on the mixed stage value.
  const EvalResult cut = mix.evaluate(s, m.stage_ppl * 0.999);
  EXPECT_TRUE(cut.rejected);
  EXPECT_NEAR(cut.ppl, m.stage_ppl, 1e-12 * m.stage_ppl);
  EXPECT_EQ(cut.tokens, int64_t(windows[0].size()) - 1);
  for (double bad : {0.0, 1.5, -0.1})
    test::expect_error([&] { PerplexityEvaluator(model, windows, positions, 1, 512, bad); },
                       "--needle-weight");
}

TEST(EvalNeedle, MixedNllCountsFromTheFirstScoredIndex) {
  MixedNll m;
  m.add({1.0, 2.0, 3.0, 4.0}, std::vector<int64_t>{1, 3}, 2);
  EXPECT_EQ(m.all, 2);
  EXPECT_DOUBLE_EQ(m.all_sum, 7.0);
  EXPECT_EQ(m.answers, 1);
  EXPECT_DOUBLE_EQ(m.answer_sum, 4.0);
  EXPECT_DOUBLE_EQ(m.fitness(0.25), std::exp(0.75 * 3.5 + 0.25 * 4.0));
  EXPECT_TRUE(std::isnan(MixedNll{}.fitness(0.1)));
  test::expect_error([&] { m.add({1.0}, std::vector<int64_t>{3}); }, "answer position 3");
}

}  // namespace
}  // namespace longrope

namespace longrope {
namespace {

TEST(EvalNeedle, EvalScoresTheAnswersAndKeepsItsCellsApart) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("moby-dick.txt"));
  auto model = Model::load(test::stories_gguf().string());
  const std::filesystem::path dir = test::fresh_temp_dir("eval_needle");
  EvalConfig cfg;
  cfg.model_path = test::stories_gguf().string();
  cfg.text_paths = {test::shared_text("moby-dick.txt").string()};
  cfg.lengths = {1024};
  cfg.methods = {"none,yarn"};
  cfg.docs = 2;
  cfg.n_threads = 1;
  cfg.out_dir = dir.string();
  cfg.fitness = "needle";
  cfg.needles = 3;
  cfg.needle_seed = 7;
  const EvalRun run = run_eval(*model, cfg);
  ASSERT_EQ(run.cells.size(), 2u);
  // The same windows as make_needle_windows: the cell scored exactly their answers.
  const auto text = model->tokenizer().encode(
      normalize_newlines(test::slurp(test::shared_text("moby-dick.txt"))));
  int64_t answers = 0;
  for (const auto& scored : make_needle_windows(model->tokenizer(), text, 1024, 2, 3, 7).positions)
    answers += int64_t(scored.size());
  for (const auto& c : run.cells) {
    EXPECT_EQ(c["fitness"], "needle");
    EXPECT_EQ(c["tokens"].get<int64_t>(), answers);
  }
  // A perplexity sweep into the same directory with --resume reuses none of them.
  cfg.fitness = "ppl";
  cfg.resume = true;
  EXPECT_EQ(run_eval(*model, cfg).computed, 2);
  cfg.fitness = "needle";
  EXPECT_EQ(run_eval(*model, cfg).computed, 0);

  // The mixed fitness: the same windows scored whole; its answers' part is the needle cells'
  // value, and the cell holds exp((1 - w) ln all + w ln needle). Another weight is another cell.
  cfg.fitness = "mix";
  cfg.needle_weight = 0.2;
  const EvalRun mixed = run_eval(*model, cfg);
  ASSERT_EQ(mixed.computed, 2);
  for (size_t i = 0; i < 2; ++i) {
    const auto& c = mixed.cells[i];
    EXPECT_EQ(c["fitness"], "mix");
    const double all = c["all_ppl"], needle = c["needle_ppl"], v = c["ppl"];
    EXPECT_NEAR(needle, run.cells[i]["ppl"].get<double>(), 1e-6 * needle);
    EXPECT_NEAR(v, std::exp(0.8 * std::log(all) + 0.2 * std::log(needle)), 1e-12 * v);
    EXPECT_EQ(c["tokens"].get<int64_t>(), 2 * 1023);
    ASSERT_EQ(c["window_ppl"].size(), 2u);
  }
  EXPECT_EQ(run_eval(*model, cfg).computed, 0);
  cfg.needle_weight = 0.3;
  EXPECT_EQ(run_eval(*model, cfg).computed, 2);
  cfg.needle_weight = 1.0;
  test::expect_error([&] { run_eval(*model, cfg); }, "--needle-weight 1");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace longrope
