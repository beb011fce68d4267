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
  RopeScaling s;
  s.method = RopeMethod::kLongrope;
  s.orig_ctx = 512;
  s.target_ctx = 1024;
  s.attn_factor = 1.0;
  s.sets.push_back(FactorSet{{1.0, 1.5, 2.0, 2.0}, 0});
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
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace longrope
