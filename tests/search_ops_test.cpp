// The evolutionary search against a fake evaluator: operators, memo, early reject, state.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>

#include "longrope/error.h"
#include "longrope/search.h"
#include "search_fixtures.h"
#include "test_paths.h"

namespace longrope {
namespace {

using test::test_space;

std::string scaling_key(const RopeScaling& s) {
  std::string k;
  for (double x : s.sets.at(0).factors) k += std::to_string(x) + ",";
  k += std::to_string(s.n_hat) + "," + std::to_string(*s.attn_factor);
  return k;
}

// FakeEvaluator's optimum: factor of pair j.
double fake_centre(int j) {
  return 1.0 + 0.45 * static_cast<double>(j);
}

// Smooth bowl around fake_centre; the first stage reports the same value as the whole
// evaluation (a "consistent" evaluator), so early reject cannot change the winner.
class FakeEvaluator : public Evaluator {
 public:
  EvalResult evaluate(const RopeScaling& s, const RejectBound& rb) override {
    const double reject_above = rb.above;
    ++calls;
    keys.push_back(scaling_key(s));
    double v = 1.0;
    const auto& f = s.sets.at(0).factors;
    for (size_t j = 0; j < f.size(); ++j) {
      const double t = fake_centre(static_cast<int>(j));
      v += (f[j] - t) * (f[j] - t);
    }
    v += 0.001 * static_cast<double>(s.n_hat) + std::abs(*s.attn_factor - 1.1);
    EvalResult r;
    r.ppl = v;
    if (std::isfinite(reject_above) && v > reject_above) {
      r.rejected = true;
      ++rejected;
    }
    return r;
  }
  int calls = 0, rejected = 0;
  std::vector<std::string> keys;
};

void expect_valid(const SearchSpace& sp, const Individual& c) {
  ASSERT_EQ(static_cast<int>(c.lambda.size()), sp.n_pairs);
  int prev = 100;
  for (int v : c.lambda) {
    EXPECT_GE(v, prev);
    EXPECT_LE(v, sp.lambda_max);
    prev = v;
  }
  EXPECT_TRUE(is_valid(sp, c));
}

TEST(SearchOps, SeedsAreValidAndMatchRules) {
  const SearchSpace sp = test_space();
  const auto seeds = rule_seeds(sp);
  ASSERT_EQ(seeds.size(), 4u);
  for (const auto& [name, ind] : seeds) expect_valid(sp, ind);
  EXPECT_EQ(seeds[0].first, "linear");
  for (int v : seeds[0].second.lambda) EXPECT_EQ(v, 400);  // PI: lambda = s
  EXPECT_EQ(seeds[1].first, "ntk");
  EXPECT_EQ(seeds[1].second.lambda[0], 100);  // NTK keeps the fastest pair
}

TEST(SearchOps, ExtraSeedsAreRoundedClampedAndMadeMonotone) {
  SearchSpace sp = test_space();
  std::vector<double> lam(static_cast<size_t>(sp.n_pairs), 2.0);
  lam[0] = 1.234;    // rounds to 123
  lam[1] = 1.1;      // below its predecessor: raised to 123
  lam.back() = 1e6;  // above lambda_max: clamped
  sp.extra_seeds.push_back({"prev", lam, 7, 1.07});
  const auto seeds = rule_seeds(sp);
  ASSERT_EQ(seeds.size(), 5u);
  EXPECT_EQ(seeds[4].first, "prev");
  const Individual& ind = seeds[4].second;
  expect_valid(sp, ind);
  EXPECT_EQ(ind.lambda[0], 123);
  EXPECT_EQ(ind.lambda[1], 123);
  EXPECT_EQ(ind.lambda[2], 200);
  EXPECT_EQ(ind.lambda.back(), sp.lambda_max);
  sp.extra_seeds[0].lambda.pop_back();
  test::expect_error([&] { rule_seeds(sp); }, {"seed factors prev have", "one per rotary pair"});
}

TEST(SearchOps, SeedBlendsFollowTheSeedsInOrder) {
  SearchSpace sp = test_space();
  const std::vector<double> ones(static_cast<size_t>(sp.n_pairs), 1.0);
  sp.extra_seeds = {{"a", ones, 0, 1.0},
                    {"b", std::vector<double>(ones.size(), 4.0), 8, 1.2},
                    {"c", std::vector<double>(ones.size(), 2.0), 0, 1.0}};
  sp.seed_blends = {0.5, 0.25};
  const auto seeds = rule_seeds(sp);
  ASSERT_EQ(seeds.size(), 4u + 3u + 6u);  // rules, the seeds, 3 pairs x 2 values of t
  const std::vector<std::string> names = {"blend(a, b, 0.5)",  "blend(a, c, 0.5)",
                                          "blend(b, c, 0.5)",  "blend(a, b, 0.25)",
                                          "blend(a, c, 0.25)", "blend(b, c, 0.25)"};
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(seeds[7 + i].first, names[i]);
    expect_valid(sp, seeds[7 + i].second);
  }
  // blend(a, b, 0.5): every pair sqrt(1 * 4) = 2, the n_hat and attention indices half-way
  const Individual& ab = seeds[7].second;
  for (int v : ab.lambda) EXPECT_EQ(v, 200);
  EXPECT_EQ(ab, blend(seeds[4].second, seeds[5].second, 0.5));
  EXPECT_NE(ab.n_hat_idx, seeds[4].second.n_hat_idx);
  EXPECT_NE(ab.n_hat_idx, seeds[5].second.n_hat_idx);
  for (int v : seeds[10].second.lambda) EXPECT_EQ(v, 141);  // 1^0.75 * 4^0.25 = sqrt(2)
  // Without blends, nothing is added.
  sp.seed_blends.clear();
  EXPECT_EQ(rule_seeds(sp).size(), 7u);
  // t must lie strictly between the two sets, and there must be two sets to blend.
  sp.seed_blends = {1.0};
  test::expect_error([&] { validate_space(sp); }, {"seed blend 1", "(0, 1)"});
  sp.seed_blends = {0.5};
  sp.extra_seeds.resize(1);
  test::expect_error([&] { validate_space(sp); }, {"at least two seed factor sets", "got 1"});
}

TEST(SearchOps, MutationAndCrossoverKeepMonotoneAndBounds) {
  const SearchSpace sp = test_space();
  SearchSettings st;
  st.seed = 3;
  EvolutionSearch s(sp, st);
  std::vector<Individual> pool;
  for (const auto& [n, ind] : rule_seeds(sp)) pool.push_back(ind);
  std::mt19937_64 rng(5);
  std::set<std::string> keys;
  for (int i = 0; i < 3000; ++i) {
    const auto& a = pool[rng() % pool.size()];
    const auto& b = pool[rng() % pool.size()];
    std::optional<Individual> c = (i % 2) ? s.mutate(a) : s.crossover(a, b);
    ASSERT_TRUE(c.has_value());
    expect_valid(sp, *c);
    EXPECT_TRUE(keys.insert(c->key()).second) << "operator returned a seen individual";
    pool.push_back(*c);
  }
}

TEST(SearchOps, BlendIsTheGeometricMeanAndStaysValid) {
  SearchSpace sp = test_space();
  const auto seeds = rule_seeds(sp);
  const Individual& a = seeds[0].second;  // PI: every pair 400
  const Individual& b = seeds[1].second;  // NTK: rising from 100
  const Individual mid = blend(a, b, 0.5);
  expect_valid(sp, mid);
  for (size_t j = 0; j < mid.lambda.size(); ++j)
    EXPECT_EQ(mid.lambda[j], std::lround(std::sqrt(double(a.lambda[j]) * b.lambda[j]))) << j;
  EXPECT_EQ(blend(a, b, 0.0), a);
  EXPECT_EQ(blend(a, b, 1.0).lambda, b.lambda);
  Individual x = a, y = b;
  x.n_hat_idx = 1;
  y.n_hat_idx = 5;
  x.attn_idx = 0;
  y.attn_idx = 2;
  EXPECT_EQ(blend(x, y, 0.5).n_hat_idx, 3);
  EXPECT_EQ(blend(x, y, 0.5).attn_idx, 1);
  EXPECT_EQ(blend(x, y, 0.25).n_hat_idx, 2);
}

TEST(SearchOps, BlendCrossoverChildrenLieBetweenTheirParents) {
  const SearchSpace sp = test_space();
  SearchSettings st;
  st.seed = 3;
  st.blend_prob = 1.0;
  EvolutionSearch s(sp, st);
  const auto seeds = rule_seeds(sp);
  const Individual& a = seeds[0].second;
  const Individual& b = seeds[1].second;
  int strictly_inside = 0;
  for (int i = 0; i < 20; ++i) {
    std::optional<Individual> c = s.crossover(a, b);
    ASSERT_TRUE(c.has_value());
    expect_valid(sp, *c);
    for (size_t j = 0; j < c->lambda.size(); ++j) {
      EXPECT_GE(c->lambda[j], std::min(a.lambda[j], b.lambda[j]));
      EXPECT_LE(c->lambda[j], std::max(a.lambda[j], b.lambda[j]));
      // a pair-wise mix only ever copies a parent's value; t in [0.25, 0.75] never does here
      if (c->lambda[j] != a.lambda[j] && c->lambda[j] != b.lambda[j]) ++strictly_inside;
    }
  }
  EXPECT_GT(strictly_inside, 20 * 6);
  SearchSettings bad;
  bad.blend_prob = 1.5;
  test::expect_error([&] { EvolutionSearch(sp, bad); }, {"blend probability 1.5"});
}

TEST(SearchOps, TightBoundsStayInside) {
  SearchSpace sp = test_space(4);
  sp.lambda_max = 102;  // three grid values
  sp.n_hat_candidates = {0};
  sp.attn_candidates = {1.0};
  EvolutionSearch s(sp, SearchSettings{});
  Individual a;
  a.lambda = {100, 100, 101, 102};
  int produced = 0;
  while (auto c = s.mutate(a)) {
    expect_valid(sp, *c);
    ++produced;
    ASSERT_LT(produced, 100);
  }
  EXPECT_GT(produced, 0);
  EXPECT_LE(produced, 15);  // at most the 15 monotone vectors on {100,101,102}^4
}

TEST(SearchOps, InvalidSpaceErrors) {
  SearchSpace sp = test_space();
  sp.lambda_max = 99;
  try {
    validate_space(sp);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lambda-max"), std::string::npos) << e.what();
  }
  sp = test_space();
  sp.n_hat_candidates = {0, 2048};
  EXPECT_THROW(validate_space(sp), Error);
}

SearchSettings small_settings(bool early) {
  SearchSettings st;
  st.population = 12;
  st.parents = 6;
  st.mutations = 4;
  st.crossovers = 4;
  st.seed = 11;
  st.early_reject = early;
  st.reject_margin = 0;  // bounds are exactly the parents' stages (the margin has its own test)
  return st;
}

// Two seeds on either side of FakeEvaluator's centre, a factor `ratio` below and above it, kept
// inside [1, 5] (where the centre is the geometric mean of the two, blending reaches it).
std::vector<SearchSpace::Seed> seeds_around_centre(const SearchSpace& sp, double ratio) {
  std::vector<double> lo, hi;
  for (int j = 0; j < sp.n_pairs; ++j) {
    const double t = fake_centre(j);
    lo.push_back(std::max(1.0, t / ratio));
    hi.push_back(std::min(5.0, t * ratio));
  }
  return {{"below", lo, 0, 1.1}, {"above", hi, 0, 1.1}};
}

// Two seeds a factor 1.5 below and above the bowl's centre: crossovers alone, mixing pairs, can
// only combine the seeds' values; blending reaches the centre.
TEST(SearchRun, BlendCrossoverFindsTheOptimumBetweenTwoSeeds) {
  auto run = [](double blend_prob) {
    SearchSpace sp = test_space();
    sp.extra_seeds = seeds_around_centre(sp, 1.5);
    SearchSettings st = small_settings(false);
    st.population = st.parents = 6;
    st.mutations = 0;
    st.crossovers = 6;
    st.seed = 7;
    st.blend_prob = blend_prob;
    FakeEvaluator ev;
    EvolutionSearch s(sp, st);
    while (!s.finished(5)) s.step(ev);
    return s.best_ppl();
  };
  const double mixed = run(0.0), blended = run(1.0);
  // measured: 1.149 blended (the floor is 1 plus the attention term), 2.024 mixed
  EXPECT_LT(blended, 1.25) << "blending two seeds should land near the centre";
  EXPECT_GT(mixed, blended + 0.5);
}

// Two seeds a factor 1.2 below and above the centre (inside [1, 5] from pair 1 on): their blend at
// t = 0.5 sits at the centre, so seeding it puts the optimum into the initial population, where
// the seeds alone (and mutants of them) stay far.
TEST(SearchRun, SeedBlendsPutTheMidpointIntoTheInitialPopulation) {
  auto initial_best = [](std::vector<double> seed_blends) {
    SearchSpace sp = test_space();
    sp.extra_seeds = seeds_around_centre(sp, 1.2);
    sp.seed_blends = std::move(seed_blends);
    SearchSettings st = small_settings(false);
    st.population = 8;  // 4 rules, 2 seeds, the blend, one mutant
    FakeEvaluator ev;
    EvolutionSearch s(sp, st);
    s.step(ev);
    return s.best_ppl();
  };
  const double plain = initial_best({}), blended = initial_best({0.5});
  // measured: 2.473 plain, 1.016 blended (the floor is 1 plus the attention term; pair 0 clamped)
  EXPECT_LT(blended, 1.05);
  EXPECT_GT(plain, 2.0);
}

TEST(SearchRun, MemoNeverEvaluatesTwice) {
  FakeEvaluator ev;
  EvolutionSearch s(test_space(), small_settings(false));
  while (!s.finished(8)) s.step(ev);
  std::set<std::string> unique(ev.keys.begin(), ev.keys.end());
  EXPECT_EQ(unique.size(), ev.keys.size());
  EXPECT_EQ(ev.calls, s.full_evals() + s.partial_evals());
  EXPECT_EQ(static_cast<size_t>(ev.calls), s.memo().size());
  EXPECT_EQ(s.log().size(), 9u);
  for (size_t i = 1; i < s.log().size(); ++i)
    EXPECT_LE(s.log()[i].best_ppl, s.log()[i - 1].best_ppl);
  for (const auto& ind : s.population()) expect_valid(s.space(), ind);
}

// Runs 10 iterations with early reject on on_ev and without it on a consistent evaluator;
// expects the same winner, the same candidates and some cuts. Returns the early-reject search.
EvolutionSearch run_on_and_off(Evaluator& on_ev) {
  FakeEvaluator off_ev;
  EvolutionSearch on(test_space(), small_settings(true));
  EvolutionSearch off(test_space(), small_settings(false));
  while (!on.finished(10)) on.step(on_ev);
  while (!off.finished(10)) off.step(off_ev);
  EXPECT_EQ(on.best(), off.best());
  EXPECT_EQ(on.best_ppl(), off.best_ppl());
  EXPECT_GT(on.partial_evals(), 0);
  EXPECT_EQ(on.full_evals() + on.partial_evals(), off.full_evals());
  return on;
}

TEST(SearchRun, EarlyRejectKeepsTheWinner) {
  FakeEvaluator on_ev;
  const EvolutionSearch on = run_on_and_off(on_ev);
  // Rejected candidates carry no fitness and rank after every complete one.
  for (const auto& [k, f] : on.memo()) {
    if (!f.rejected) continue;
    EXPECT_TRUE(std::isinf(f.ppl));
    EXPECT_GT(f.partial, f.bound);
    Fitness good;
    good.ppl = 1e9;
    EXPECT_TRUE(good.better_than(f));
    EXPECT_FALSE(f.better_than(good));
  }
}

// An evaluator whose first stage reports half the final perplexity (as the first half of a long
// window, inside the trained context, scores lower than the whole window).
class StagedEvaluator : public FakeEvaluator {
 public:
  EvalResult evaluate(const RopeScaling& s, const RejectBound& rb) override {
    const double reject_above = rb.above;
    EvalResult r = FakeEvaluator::evaluate(s, std::numeric_limits<double>::infinity());
    r.stage_ppl = r.ppl / 2;
    bounds.push_back(reject_above);
    if (std::isfinite(reject_above) && r.stage_ppl > reject_above) {
      r.rejected = true;
      r.ppl = r.stage_ppl;
      ++rejected;
    }
    return r;
  }
  std::vector<double> bounds;
};

TEST(SearchRun, EarlyRejectComparesStagesWithStages) {
  // Bounds are parents' stage perplexities (half their fitness), so the cuts are the same as
  // with a consistent evaluator: same winner, and candidates are rejected.
  StagedEvaluator on_ev;
  const EvolutionSearch on = run_on_and_off(on_ev);
  std::set<double> stages;
  for (const auto& [k, f] : on.memo()) {
    if (!f.rejected) {
      EXPECT_DOUBLE_EQ(f.stage, f.ppl / 2);
      stages.insert(f.stage);
    }
  }
  for (double b : on_ev.bounds) {
    if (std::isfinite(b)) {
      EXPECT_TRUE(stages.count(b)) << "bound " << b << " is no parent's stage";
    }
  }
  // The stage scores survive a checkpoint.
  EvolutionSearch restored(test_space(), small_settings(true));
  restored.restore(on.to_json());
  for (const auto& [k, f] : on.memo()) EXPECT_EQ(restored.memo().at(k).stage, f.stage);
}

// --reject-margin m: each bound is a parent's stage times (1 + m), so a child within m of the
// loosest parent is evaluated whole; fewer cuts than without the margin, and the same winner.
TEST(SearchRun, RejectMarginLoosensEveryBound) {
  StagedEvaluator plain_ev, margin_ev;
  const EvolutionSearch plain = run_on_and_off(plain_ev);
  SearchSettings st = small_settings(true);
  st.reject_margin = 0.05;
  EvolutionSearch with(test_space(), st);
  while (!with.finished(10)) with.step(margin_ev);
  EXPECT_EQ(with.best(), plain.best());
  EXPECT_LT(with.partial_evals(), plain.partial_evals());
  std::set<double> stages;
  for (const auto& [k, f] : with.memo())
    if (!f.rejected) stages.insert(f.stage);
  int finite = 0;
  for (double b : margin_ev.bounds) {
    if (!std::isfinite(b)) continue;
    ++finite;
    bool found = false;
    for (double s : stages) found = found || std::abs(s * 1.05 - b) <= 1e-12 * b;
    EXPECT_TRUE(found) << "bound " << b << " is no parent's stage x 1.05";
  }
  EXPECT_GT(finite, 0);
  st.reject_margin = -0.1;
  test::expect_error([&] { EvolutionSearch bad(test_space(), st); }, "reject margin -0.1");
}

TEST(SearchRun, StateRoundTripContinuesIdentically) {
  FakeEvaluator ev1, ev2;
  EvolutionSearch full(test_space(), small_settings(true));
  while (!full.finished(6)) full.step(ev1);

  EvolutionSearch part(test_space(), small_settings(true));
  while (!part.finished(2)) part.step(ev2);
  const std::string state = part.to_json().dump();
  EvolutionSearch resumed(test_space(), small_settings(true));
  resumed.restore(nlohmann::json::parse(state));
  while (!resumed.finished(6)) resumed.step(ev2);
  EXPECT_EQ(resumed.best(), full.best());
  EXPECT_EQ(resumed.best_ppl(), full.best_ppl());
  EXPECT_EQ(resumed.population(), full.population());
  EXPECT_EQ(resumed.memo().size(), full.memo().size());
  EXPECT_EQ(ev2.calls, ev1.calls);
}

TEST(SearchRun, CorruptStateIsRefused) {
  EvolutionSearch s(test_space(), small_settings(true));
  EXPECT_THROW(s.restore(nlohmann::json::parse(R"({"iterations_done": 1})")), Error);
  EXPECT_THROW(s.restore(nlohmann::json::array()), Error);
}

}  // namespace
}  // namespace longrope

namespace longrope {
namespace {

// Evaluates a batch last to first (as ranks finishing in another order would).
class ReverseBatchEvaluator : public FakeEvaluator {
 public:
  std::vector<EvalResult> evaluate_batch(const std::vector<RopeScaling>& batch,
                                         const RejectBound& bound,
                                         const std::function<void(size_t)>& done) override {
    std::vector<EvalResult> out(batch.size());
    for (size_t i = batch.size(); i-- > 0;) {
      out[i] = evaluate(batch[i], bound);
      if (done) done(i);
    }
    return out;
  }
};

TEST(SearchRun, CompletionOrderDoesNotChangeTheSearch) {
  FakeEvaluator in_order;
  ReverseBatchEvaluator reversed;
  EvolutionSearch a(test_space(), small_settings(true));
  EvolutionSearch b(test_space(), small_settings(true));
  while (!a.finished(6)) a.step(in_order);
  while (!b.finished(6)) b.step(reversed);
  EXPECT_EQ(a.to_json(), b.to_json());
  EXPECT_NE(in_order.keys, reversed.keys);  // the evaluation order did differ
}

SearchSettings steady_settings() {
  SearchSettings st = small_settings(true);
  st.steady_state = true;
  st.iterations = 6;  // the last iteration waits for every evaluation it started
  return st;
}

TEST(SearchSteady, OneSlotIsDeterministicAndSpendsTheBudget) {
  FakeEvaluator e1, e2;
  EvolutionSearch a(test_space(), steady_settings());
  EvolutionSearch b(test_space(), steady_settings());
  while (!a.finished(6)) a.step(e1);
  while (!b.finished(6)) b.step(e2);
  EXPECT_EQ(a.to_json(), b.to_json());
  const SearchSettings st = steady_settings();
  EXPECT_EQ(a.full_evals() + a.partial_evals(), st.population + 6 * (st.mutations + st.crossovers));
  EXPECT_EQ(a.log().size(), 7u);
  for (size_t i = 1; i < a.log().size(); ++i)
    EXPECT_LE(a.log()[i].best_ppl, a.log()[i - 1].best_ppl);
  EXPECT_LT(a.best_ppl(), a.log()[0].best_ppl);  // it improved on the initial population
  EXPECT_GT(a.partial_evals(), 0);               // early reject runs in the steady state too
  // The steady state is a different search from the generational one.
  EvolutionSearch g(test_space(), small_settings(true));
  FakeEvaluator e3;
  while (!g.finished(6)) g.step(e3);
  EXPECT_NE(g.to_json()["memo"], a.to_json()["memo"]);
}

// `n` evaluations at once, finishing in a seeded random order.
class ShuffledSlotsEvaluator : public FakeEvaluator {
 public:
  explicit ShuffledSlotsEvaluator(int n) : n_(n) {}
  int n_;
  int slots() const override { return n_; }
  void submit(size_t id, const RopeScaling& s, const RejectBound& bound) override {
    pending.push_back({id, evaluate(s, bound)});
    max_pending = std::max(max_pending, pending.size());
  }
  std::pair<size_t, EvalResult> next() override {
    const size_t k = std::uniform_int_distribution<size_t>(0, pending.size() - 1)(rng);
    auto r = pending[k];
    pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(k));
    return r;
  }
  std::vector<std::pair<size_t, EvalResult>> pending;
  size_t max_pending = 0;
  std::mt19937_64 rng{42};
};

TEST(SearchSteady, ManySlotsOutOfOrderKeepEverySlotBusyAndSpendTheBudget) {
  // 4 slots (fewer than an iteration's 8 children) and 20 (more: a rank count beyond the
  // generation size); the budget is exact either way.
  for (int n : {4, 20}) {
    ShuffledSlotsEvaluator ev(n);
    EvolutionSearch s(test_space(), steady_settings());
    while (!s.finished(6)) s.step(ev);
    const SearchSettings st = steady_settings();
    EXPECT_EQ(s.full_evals() + s.partial_evals(),
              st.population + 6 * (st.mutations + st.crossovers))
        << n;
    EXPECT_EQ(ev.max_pending, static_cast<size_t>(n));
    EXPECT_TRUE(ev.pending.empty()) << n;  // the last iteration waits for every evaluation
    EXPECT_LT(s.best_ppl(), s.log()[0].best_ppl) << n;
    for (const auto& ind : s.population()) expect_valid(s.space(), ind);
    EXPECT_LE(s.population().size(), static_cast<size_t>(st.population));
  }
}

}  // namespace
}  // namespace longrope

namespace longrope {
namespace {

TEST(SearchOps, FirstStageScoresBeyondTheOriginalContext) {
  // One window of 2048 at L_orig 512: the first 512 + 768 tokens, scored from the prediction of
  // position 512 (NLL index 511) on.
  const FirstStage a = first_stage(2048, 1, 512);
  EXPECT_EQ(a.tokens, 1280);
  EXPECT_EQ(a.first_scored, 511);
  EXPECT_EQ(first_stage(2048, 3, 512).tokens, 2048);      // several windows: window 0 whole
  EXPECT_FALSE(first_stage(512, 1, 512).on());            // a short set at the original length
  EXPECT_FALSE(first_stage(2048, 1, 512, 512).on());      // a requested stage inside L_orig
  EXPECT_EQ(first_stage(2048, 1, 512, 513).tokens, 513);  // one prediction beyond it
  EXPECT_EQ(first_stage(2048, 1, 512, 99999).tokens, 2048);
}

// Per-position losses of a model trained at 512 run at 1024 (s = 2): inside the trained context
// every factor above 1 hurts, beyond it factors near a target help. The fitness is the mean over
// all positions; the first stage is the mean over the positions a FirstStage scores. So the
// stage does NOT track the fitness: it sees only part of the window. (Neither stage is exact for
// such an evaluator; the weights, 0.3 inside and 1 beyond per pair, make the difference between
// a stage beyond L_orig and one inside it visible on this seeded search.)
class PositionalEvaluator : public Evaluator {
 public:
  explicit PositionalEvaluator(FirstStage stage) : stage_(stage) {}
  static constexpr int64_t kOrig = 512, kLen = 1024;
  static double inside(const RopeScaling& s) {
    double v = 0;
    for (double f : s.sets.at(0).factors) v += 0.3 * (f - 1.0) * (f - 1.0);
    return 1.0 + v;
  }
  static double beyond(const RopeScaling& s) {
    const auto& f = s.sets.at(0).factors;
    double v = 1.0;
    for (size_t j = 0; j < f.size(); ++j) {
      const double t = 1.0 + 0.2 * static_cast<double>(j);
      v += (f[j] - t) * (f[j] - t);
    }
    return v + 0.001 * static_cast<double>(s.n_hat) + std::abs(*s.attn_factor - 1.1);
  }
  // Mean loss over the predictions of positions [from, to).
  static double mean(const RopeScaling& s, int64_t from, int64_t to) {
    const int64_t in = std::max<int64_t>(0, std::min(to, kOrig) - from);
    const int64_t out = (to - from) - in;
    return (static_cast<double>(in) * inside(s) + static_cast<double>(out) * beyond(s)) /
           static_cast<double>(to - from);
  }
  EvalResult evaluate(const RopeScaling& s, const RejectBound& rb) override {
    const double reject_above = rb.above;
    EvalResult r;
    r.stage_ppl = mean(s, stage_.first_scored + 1, stage_.tokens);
    const double fitness = mean(s, 1, kLen);
    if (std::isfinite(reject_above) && r.stage_ppl > reject_above) {
      r.rejected = true;
      r.ppl = r.stage_ppl;
      best_rejected = std::min(best_rejected, fitness);  // what the cut threw away
      ++rejected;
      return r;
    }
    r.ppl = fitness;
    return r;
  }
  double best_rejected = std::numeric_limits<double>::infinity();
  int rejected = 0;

 private:
  FirstStage stage_;
};

SearchSpace space_at_2x() {
  SearchSpace sp = test_space();
  sp.target_ctx = PositionalEvaluator::kLen;
  sp.lambda_max = 250;
  sp.n_hat_candidates = default_n_hat_candidates(sp.target_ctx);
  sp.attn_candidates = default_attn_candidates(sp.orig_ctx, sp.target_ctx);
  return sp;
}

double search_with(Evaluator& ev, bool early) {
  EvolutionSearch s(space_at_2x(), small_settings(early));
  while (!s.finished(12)) s.step(ev);
  return s.best_ppl();
}

TEST(SearchRun, EarlyRejectOnAStageBeyondTheOriginalContextKeepsTheWinner) {
  const int64_t L = PositionalEvaluator::kLen, orig = PositionalEvaluator::kOrig;
  PositionalEvaluator none(first_stage(L, 1, orig));
  const double without = search_with(none, false);
  // The library's stage (positions 512..767) ends no worse than the search without a cut (the
  // trajectories differ once anything is cut), and it never threw away a candidate better than
  // the winner.
  PositionalEvaluator beyond(first_stage(L, 1, orig));
  const double with_cut = search_with(beyond, true);
  EXPECT_LE(with_cut, without * 1.005);
  EXPECT_GT(beyond.rejected, 0);
  EXPECT_GT(beyond.best_rejected, with_cut);
  // A stage inside the trained context (the first half of the window, the old default) rejects
  // children for scaling more than their parents: it throws away candidates better than the
  // winner it ends with. The test can tell the two stages apart.
  FirstStage inside;
  inside.tokens = L / 2;
  inside.first_scored = 0;
  PositionalEvaluator old(inside);
  const double with_old = search_with(old, true);
  EXPECT_GT(with_old, without * 1.01);
  EXPECT_LT(old.best_rejected, with_old);
}

}  // namespace
}  // namespace longrope

namespace longrope {
namespace {

TEST(SearchOps, CriticalDimensionBoundsThePairsAndTheSeeds) {
  // LongRoPE2's formula: 64 pairs (d = 128), L_orig 4096, base 10000: ceil(64 x 6.480 / 9.210)
  // - 1 = ceil(45.03) - 1 = 45. SmolLM2 (d = 64, 8192, 100000): ceil(32 x 7.173 / 11.513) - 1 =
  // ceil(19.94) - 1 = 19. stories260K (d = 8, 512, 10000): ceil(4 x 4.400 / 9.210) - 1 = 1.
  EXPECT_EQ(critical_dim(128, 4096, 10000.0), 45);
  EXPECT_EQ(critical_dim(64, 8192, 100000.0), 19);
  EXPECT_EQ(critical_dim(8, 512, 10000.0), 1);

  SearchSpace sp = test_space();  // 8 pairs, 512 -> 2048 (s = 4), lambda_max 5
  apply_critical_dim(sp, 3, 0.25);
  validate_space(sp);
  for (int j = 0; j < 3; ++j) {
    EXPECT_EQ(sp.lo_of(j), 100);
    EXPECT_EQ(sp.hi_of(j), 425);
  }
  for (int j = 3; j < 8; ++j) {
    EXPECT_EQ(sp.lo_of(j), 400);
    EXPECT_EQ(sp.hi_of(j), 500);
  }
  // Seeds and every child respect the bounds.
  for (const auto& [name, ind] : rule_seeds(sp)) EXPECT_TRUE(is_valid(sp, ind)) << name;
  SearchSettings st;
  st.seed = 5;
  EvolutionSearch s(sp, st);
  const Individual base = rule_seeds(sp)[0].second;
  for (int i = 0; i < 200; ++i) {
    const auto c = s.mutate(base);
    if (!c) continue;
    EXPECT_TRUE(is_valid(sp, *c));
    EXPECT_GE(c->lambda[3], 400);
    EXPECT_LE(c->lambda[2], 425);
  }
  // An individual below s after the critical dimension is outside the space.
  Individual bad = base;
  bad.lambda[5] = 300;
  bad.lambda[4] = std::min(bad.lambda[4], 300);
  bad.lambda[3] = std::min(bad.lambda[3], 300);
  EXPECT_FALSE(is_valid(sp, bad));
  // Bounds that leave nothing: s above lambda_max.
  SearchSpace tight = test_space();
  tight.lambda_max = 300;
  test::expect_error([&] { apply_critical_dim(tight, 2, 0.25); }, "above --lambda-max");
}

}  // namespace
}  // namespace longrope
