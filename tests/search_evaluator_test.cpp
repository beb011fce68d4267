// PerplexityEvaluator on stories260K: with a prefix stage, window 0 is scored in two steps
// whatever the bound, so the fitness and the stage's perplexity are the same bit for bit with or
// without a cut; a child that passes costs one window (no recomputation), and a cut at the
// stage's value rejects with exactly the first step's tokens scored.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "longrope/model.h"
#include "longrope/perplexity.h"
#include "longrope/search.h"
#include "test_paths.h"

namespace longrope {
namespace {

TEST(SearchEvaluator, StagePerplexityIsTheSameEitherWayAndCutsThere) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("moby-dick.txt"));
  auto model = Model::load(test::stories_gguf().string());
  const auto text = normalize_newlines(test::slurp(test::shared_text("moby-dick.txt")));
  const auto ids = model->tokenizer().encode(text.substr(0, 40000));
  const int64_t L = 1024;
  PerplexityEvaluator ev(model, make_windows(ids, model->tokenizer().bos(), L, 1), 1, 512);
  // One window of 1024 on a model trained at 512: the stage is its first 768 tokens, scored over
  // the predictions of positions 512..766.
  ASSERT_TRUE(ev.stage().on());
  EXPECT_EQ(ev.stage().tokens, 768);
  EXPECT_EQ(ev.stage().first_scored, 511);

  RopeScaling s;
  s.method = RopeMethod::kLongrope;
  s.orig_ctx = 512;
  s.target_ctx = L;
  s.attn_factor = 1.0;
  s.sets.push_back(FactorSet{{1.0, 1.5, 2.0, 2.0}, 0});

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

}  // namespace
}  // namespace longrope
