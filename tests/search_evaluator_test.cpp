// PerplexityEvaluator on stories260K: with a prefix stage, window 0 is scored in two steps
// whatever the bound, so the fitness and the stage's perplexity are the same bit for bit with or
// without a cut; a child that passes costs one window (no recomputation), and a cut at the
// stage's value rejects with exactly the first step's tokens scored.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "longrope/model.h"
#include "longrope/needle.h"
#include "longrope/perplexity.h"
#include "longrope/search.h"
#include "search_fixtures.h"
#include "test_paths.h"

namespace longrope {
namespace {

// The first `chars` characters of Moby-Dick in the model's tokens.
std::vector<int32_t> moby_ids(const Model& model, size_t chars) {
  const auto text = normalize_newlines(test::slurp(test::shared_text("moby-dick.txt")));
  return model.tokenizer().encode(text.substr(0, chars));
}

TEST(SearchEvaluator, StagePerplexityIsTheSameEitherWayAndCutsThere) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("moby-dick.txt"));
  auto model = Model::load(test::stories_gguf().string());
  const auto ids = moby_ids(*model, 40000);
  const int64_t L = 1024;
  PerplexityEvaluator ev(model, make_windows(ids, model->tokenizer().bos(), L, 1), 1, 512);
  // One window of 1024 on a model trained at 512: the stage is its first 768 tokens, scored over
  // the predictions of positions 512..766.
  ASSERT_TRUE(ev.stage().on());
  EXPECT_EQ(ev.stage().tokens, 768);
  EXPECT_EQ(ev.stage().first_scored, 511);

  const RopeScaling s = test::stories_candidate_1024();

  const double inf = std::numeric_limits<double>::infinity();
  const EvalResult whole = ev.evaluate(s, inf);  // no stage run: stage from window 0's scores
  ASSERT_FALSE(whole.rejected);
  EXPECT_EQ(whole.tokens, L - 1);
  ASSERT_TRUE(std::isfinite(whole.stage_ppl));
  EXPECT_GT(whole.stage_ppl, 1.0);

  const EvalResult staged = ev.evaluate(s, 1e9);  // the stage passes; the window continues
  ASSERT_FALSE(staged.rejected);
  EXPECT_EQ(staged.tokens, L - 1);  // one window: the stage's tokens are not scored again
  EXPECT_EQ(staged.stage_ppl, whole.stage_ppl);
  EXPECT_EQ(staged.ppl, whole.ppl);
  const EvalResult at_bound = ev.evaluate(s, whole.stage_ppl);  // not above the bound: passes
  EXPECT_FALSE(at_bound.rejected);
  EXPECT_EQ(at_bound.ppl, whole.ppl);

  const EvalResult cut = ev.evaluate(s, whole.stage_ppl * 0.99);
  EXPECT_TRUE(cut.rejected);
  EXPECT_EQ(cut.tokens, 768);  // positions 0..767 (the last predicts token 768)
  EXPECT_EQ(cut.ppl, whole.stage_ppl);
  EXPECT_EQ(cut.stage_ppl, whole.stage_ppl);
}

// The two-step API of a multi-objective cut (Evaluator::evaluate_staged) and the cut itself, on
// stories260K: perplexity (with a prefix stage) and a needle fitness on one window (no stage).
// Passing gives evaluate()'s values bit for bit; a cut stops the perplexity window at its stage
// after the needle window was scored whole.
TEST(SearchEvaluator, MultiObjectiveCutStopsTheStagedPartAtItsStage) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("moby-dick.txt"));
  auto model = Model::load(test::stories_gguf().string());
  const auto ids = moby_ids(*model, 80000);
  const int64_t L = 1024;
  auto ppl = std::make_unique<PerplexityEvaluator>(
      model, make_windows(ids, model->tokenizer().bos(), L, 1), 1, 512);
  NeedleWindows nw = make_needle_windows(model->tokenizer(), ids, L, 1, 2, 3);
  auto needle = std::make_unique<PerplexityEvaluator>(model, nw.tokens, nw.positions, 1, 512);
  ASSERT_TRUE(ppl->has_stage());
  ASSERT_FALSE(needle->has_stage());  // its answers are at the window's end

  const RopeScaling s = test::stories_candidate_1024();
  const EvalResult whole = ppl->evaluate(s, RejectBound{});
  const EvalResult needle_whole = needle->evaluate(s, RejectBound{});
  double seen = 0;
  const EvalResult passed = ppl->evaluate_staged(s, [&](double st) {
    seen = st;
    return true;
  });
  EXPECT_EQ(seen, whole.stage_ppl);
  EXPECT_EQ(passed.ppl, whole.ppl);
  EXPECT_EQ(passed.stage_ppl, whole.stage_ppl);
  EXPECT_EQ(passed.tokens, L - 1);
  const EvalResult stopped = ppl->evaluate_staged(s, [](double) { return false; });
  EXPECT_TRUE(stopped.rejected);
  EXPECT_EQ(stopped.ppl, whole.stage_ppl);
  EXPECT_EQ(stopped.tokens, 768);

  std::vector<std::unique_ptr<Evaluator>> parts;
  parts.push_back(std::move(ppl));
  parts.push_back(std::move(needle));
  MultiObjectiveEvaluator multi(std::move(parts));
  auto point = [](double stage, double needle_ppl) {
    RejectBound b;
    b.points.push_back({{stage, needle_ppl}, {true, false}});
    return b;
  };
  const EvalResult kept = multi.evaluate(s, point(whole.stage_ppl * 2, needle_whole.ppl * 2));
  EXPECT_FALSE(kept.rejected);
  EXPECT_EQ(kept.objectives, (std::vector<double>{whole.ppl, needle_whole.ppl}));
  EXPECT_EQ(kept.stage_objectives[0], whole.stage_ppl);
  EXPECT_TRUE(std::isnan(kept.stage_objectives[1]));
  const EvalResult cut = multi.evaluate(s, point(whole.stage_ppl / 2, needle_whole.ppl / 2));
  EXPECT_TRUE(cut.rejected);
  EXPECT_EQ(cut.stage_objectives[0], whole.stage_ppl);
  EXPECT_EQ(cut.objectives[1], needle_whole.ppl);
  EXPECT_EQ(cut.tokens, 768 + needle_whole.tokens);
}

// Progress inside an evaluation (Evaluator::set_on_fraction): one call per layer of every model
// pass, non-decreasing, 1 at the end of a complete evaluation and the stage's share at a cut; the
// values are those of an evaluation without it. A multi-objective evaluator weighs its parts
// alike.
TEST(SearchEvaluator, ProgressWithinAnEvaluationFollowsItsPasses) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("moby-dick.txt"));
  auto model = Model::load(test::stories_gguf().string());
  const auto ids = moby_ids(*model, 80000);
  const int64_t L = 1024;
  const int layers = model->hp().n_layer;
  auto make_ppl = [&] {
    return std::make_unique<PerplexityEvaluator>(
        model, make_windows(ids, model->tokenizer().bos(), L, 1), 1, 512);
  };
  const RopeScaling s = test::stories_candidate_1024();
  const EvalResult plain = make_ppl()->evaluate(s, RejectBound{});

  auto ppl = make_ppl();
  std::vector<double> seen;
  ppl->set_on_fraction([&](double x) { seen.push_back(x); });
  auto expect_rising = [&seen] {
    for (size_t i = 1; i < seen.size(); ++i) EXPECT_GE(seen[i], seen[i - 1]) << i;
  };
  // The stage (768 tokens) and its continuation (256): two passes.
  const EvalResult staged = ppl->evaluate(s, RejectBound{plain.stage_ppl * 2});
  EXPECT_EQ(staged.ppl, plain.ppl);
  ASSERT_EQ(seen.size(), size_t(2 * layers));
  expect_rising();
  EXPECT_DOUBLE_EQ(seen[size_t(layers) - 1], 768.0 / 1024.0);
  EXPECT_DOUBLE_EQ(seen.back(), 1.0);
  seen.clear();
  const EvalResult cut = ppl->evaluate(s, RejectBound{plain.stage_ppl / 2});
  ASSERT_TRUE(cut.rejected);
  ASSERT_EQ(seen.size(), size_t(layers));
  EXPECT_DOUBLE_EQ(seen.back(), 768.0 / 1024.0);
  seen.clear();
  ppl->set_on_fraction({});
  EXPECT_EQ(ppl->evaluate(s, RejectBound{}).ppl, plain.ppl);
  EXPECT_TRUE(seen.empty());

  NeedleWindows nw = make_needle_windows(model->tokenizer(), ids, L, 1, 2, 3);
  std::vector<std::unique_ptr<Evaluator>> parts;
  parts.push_back(make_ppl());
  parts.push_back(std::make_unique<PerplexityEvaluator>(model, nw.tokens, nw.positions, 1, 512));
  MultiObjectiveEvaluator multi(std::move(parts));
  const EvalResult both = multi.evaluate(s, RejectBound{});
  multi.set_on_fraction([&](double x) { seen.push_back(x); });
  for (int run = 0; run < 2; ++run) {  // the shares start again at 0 for each evaluation
    seen.clear();
    EXPECT_EQ(multi.evaluate(s, RejectBound{}).objectives, both.objectives);
    // Perplexity in two passes (its stage and the rest, bound or not), then the needle window.
    ASSERT_EQ(seen.size(), size_t(3 * layers));
    expect_rising();
    EXPECT_DOUBLE_EQ(seen[size_t(layers) - 1], 0.75 / 2);
    EXPECT_DOUBLE_EQ(seen[size_t(2 * layers) - 1], 0.5);
    EXPECT_DOUBLE_EQ(seen.back(), 1.0);
  }
}

}  // namespace
}  // namespace longrope
