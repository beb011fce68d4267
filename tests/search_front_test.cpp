// The multi-objective search: non-dominated sorting, crowding, hypervolume and --pick against
// hand-worked examples, and NSGA-II runs of the evolution against two fake objectives.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>

#include "longrope/error.h"
#include "longrope/search.h"
#include "search_fixtures.h"
#include "test_paths.h"

namespace longrope {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// A(1,5) B(2,3) H(3,2) C(4,1) are mutually non-dominated; D(3,4) is dominated by B and H, F(2,5)
// by A and B; E(5,5) by D and F (and the rest).
const std::vector<std::vector<double>> kPoints = {{1, 5}, {2, 3}, {3, 2}, {4, 1},
                                                  {3, 4}, {2, 5}, {5, 5}};
enum { A, B, H, C, D, F, E };

TEST(SearchFront, DominanceIsStrictInOneObjective) {
  const std::vector<double> p = {1, 2}, q = {1, 3}, r = {2, 1};
  EXPECT_TRUE(dominates(p, q));
  EXPECT_FALSE(dominates(q, p));
  EXPECT_FALSE(dominates(p, p));  // equal points: neither dominates
  EXPECT_FALSE(dominates(p, r));
  EXPECT_FALSE(dominates(r, p));
}

TEST(SearchFront, RanksMatchTheHandWorkedExample) {
  const std::vector<int> r = pareto_ranks(kPoints);
  EXPECT_EQ(r, (std::vector<int>{0, 0, 0, 0, 1, 1, 2}));
}

TEST(SearchFront, CrowdingMatchesTheHandWorkedExample) {
  const std::vector<int> r = pareto_ranks(kPoints);
  const std::vector<double> d = crowding_distances(kPoints, r);
  // Rank 0 sorted by objective 0: A B H C (range 3); by objective 1: C H B A (range 4).
  EXPECT_EQ(d[A], kInf);
  EXPECT_EQ(d[C], kInf);
  EXPECT_NEAR(d[B], (3.0 - 1.0) / 3 + (5.0 - 2.0) / 4, 1e-15);  // 1.41667
  EXPECT_NEAR(d[H], (4.0 - 2.0) / 3 + (3.0 - 1.0) / 4, 1e-15);  // 1.16667
  // Ranks of one or two points: every point is an end.
  EXPECT_EQ(d[D], kInf);
  EXPECT_EQ(d[F], kInf);
  EXPECT_EQ(d[E], kInf);
}

TEST(SearchFront, HypervolumeOfTheHandWorkedFront) {
  // Strips: [1,2) x 1, [2,3) x 3, [3,4) x 4, [4,6) x 5 under the reference point (6, 6).
  const std::vector<std::array<double, 2>> front = {{1, 5}, {2, 3}, {3, 2}, {4, 1}};
  EXPECT_DOUBLE_EQ(hypervolume_2d(front, {6, 6}), 18.0);
  // A dominated point and a point beyond the reference add nothing; order does not matter.
  std::vector<std::array<double, 2>> more = {{3, 4}, {4, 1}, {7, 0}, {2, 3}, {1, 5}, {3, 2}};
  EXPECT_DOUBLE_EQ(hypervolume_2d(more, {6, 6}), 18.0);
  EXPECT_DOUBLE_EQ(hypervolume_2d({}, {6, 6}), 0.0);
}

std::vector<std::vector<double>> front_points() {
  return {kPoints[A], kPoints[B], kPoints[H], kPoints[C]};
}

TEST(SearchFront, PickRules) {
  const std::vector<std::string> names = {"ppl", "needle"};
  const auto front = front_points();
  // Scaled to [0, 1]: 1 - x - y is 0, 1/6, 1/12, 0 for A B H C: the knee is B.
  EXPECT_EQ(pick_from_front(front, parse_pick("knee", names)), size_t(B));
  EXPECT_EQ(pick_from_front(front, parse_pick("ppl", names)), size_t(A));
  EXPECT_EQ(pick_from_front(front, parse_pick("needle", names)), size_t(C));
  EXPECT_EQ(pick_from_front(front, parse_pick("ppl:needle<=2.5", names)), size_t(H));
  EXPECT_EQ(pick_from_front(front, parse_pick("needle:ppl<=2", names)), size_t(B));
  std::string note;
  EXPECT_EQ(pick_from_front(front, parse_pick("ppl:needle<=0.5", names), &note), size_t(C));
  EXPECT_NE(note.find("no set on the front meets ppl:needle<=0.5"), std::string::npos) << note;
  // Two points: the one nearer the ideal point.
  EXPECT_EQ(pick_from_front({{1, 5}, {2, 1}}, parse_pick("knee", names)), size_t(1));
  const PickRule ref = parse_pick("ppl:needle<=yarn", names);
  EXPECT_EQ(ref.kind, PickRule::Kind::kBounded);
  EXPECT_EQ(ref.objective, 0);
  EXPECT_EQ(ref.bound_objective, 1);
  EXPECT_EQ(ref.bound_ref, "yarn");
}

TEST(SearchFront, BadPickRulesAreRefused) {
  const std::vector<std::string> names = {"ppl", "needle"};
  test::expect_error([&] { parse_pick("mix", names); },
                     {"--pick mix: no objective mix", "the objectives are ppl, needle"});
  test::expect_error([&] { parse_pick("ppl:needle", names); }, "expected knee, OBJ or OBJ:B<=REF");
  test::expect_error([&] { parse_pick("ppl:needle<=", names); }, "expected knee");
  test::expect_error([&] { parse_pick("ppl:mix<=1", names); }, "no objective mix");
  EXPECT_THROW(pick_from_front({}, parse_pick("knee", names)), Error);
}

SearchSpace space() {
  return test::test_space(6);
}

// A bowl around factors `centre` (the same for every pair), so that two of them with different
// centres conflict: the front runs between the two centres.
// With `staged`, it has a first stage (Evaluator::has_stage) whose value is 0.9 times the
// complete one, and counts the evaluations that went past it.
class Bowl : public Evaluator {
 public:
  explicit Bowl(double centre, bool staged = false) : centre_(centre), staged_(staged) {}
  EvalResult evaluate(const RopeScaling& s, const RejectBound& rb) override {
    const double reject_above = rb.above;
    ++calls;
    if (std::isfinite(reject_above)) ++bounded;
    EvalResult r;
    r.ppl = value(s);
    r.stage_ppl = staged_ ? 0.9 * r.ppl : r.ppl;
    r.tokens = 100;
    if (staged_) ++completed;
    return r;
  }
  bool has_stage() const override { return staged_; }
  EvalResult evaluate_staged(const RopeScaling& s,
                             const std::function<bool(double)>& go_on) override {
    if (!staged_) return Evaluator::evaluate_staged(s, go_on);
    ++calls;
    EvalResult r;
    r.stage_ppl = 0.9 * value(s);
    r.tokens = 60;
    if (!go_on(r.stage_ppl)) {
      r.rejected = true;
      r.ppl = r.stage_ppl;
      return r;
    }
    ++completed;
    r.ppl = value(s);
    r.tokens = 100;
    return r;
  }
  double value(const RopeScaling& s) const {
    double v = 1.0;
    for (double f : s.sets.at(0).factors) v += (f - centre_) * (f - centre_);
    return v + 0.001 * static_cast<double>(s.n_hat) + 0.1 * std::abs(*s.attn_factor - 1.0);
  }
  int calls = 0, bounded = 0, completed = 0;

 private:
  double centre_;
  bool staged_;
};

std::unique_ptr<MultiObjectiveEvaluator> two_bowls(Bowl** first = nullptr, bool staged = false) {
  std::vector<std::unique_ptr<Evaluator>> parts;
  parts.push_back(std::make_unique<Bowl>(1.5, staged));
  parts.push_back(std::make_unique<Bowl>(3.5));
  if (first) *first = static_cast<Bowl*>(parts[0].get());
  return std::make_unique<MultiObjectiveEvaluator>(std::move(parts));
}

SearchSettings nsga_settings() {
  SearchSettings st;
  st.population = 16;
  st.parents = 8;
  st.mutations = 6;
  st.crossovers = 6;
  st.seed = 5;
  st.blend_prob = 0.5;
  st.objectives = 2;
  return st;
}

// The non-dominated keys among every complete evaluation of the memo.
std::set<std::string> memo_front(const EvolutionSearch& s) {
  std::set<std::string> out;
  for (const auto& [k, f] : s.memo()) {
    if (f.rejected) continue;
    bool dominated = false;
    for (const auto& [k2, g] : s.memo())
      dominated = dominated || (!g.rejected && dominates(g.obj, f.obj));
    if (!dominated) out.insert(k);
  }
  return out;
}

TEST(SearchFront, TheEvaluatorReportsEveryObjective) {
  Bowl* first = nullptr;
  auto ev = two_bowls(&first);
  RopeScaling s;
  s.method = RopeMethod::kLongrope;
  s.sets.push_back(FactorSet{std::vector<double>(6, 1.5), 0});
  s.n_hat = 0;
  s.attn_factor = 1.0;
  const EvalResult r = ev->evaluate(s, 0.5);  // a bound is never used
  ASSERT_EQ(r.objectives.size(), 2u);
  EXPECT_DOUBLE_EQ(r.objectives[0], 1.0);
  EXPECT_DOUBLE_EQ(r.objectives[1], 1.0 + 6 * 4.0);
  EXPECT_EQ(r.ppl, r.objectives[0]);
  EXPECT_FALSE(r.rejected);
  EXPECT_EQ(first->bounded, 0);
  std::vector<std::unique_ptr<Evaluator>> one;
  one.push_back(std::make_unique<Bowl>(1.0));
  EXPECT_THROW(MultiObjectiveEvaluator(std::move(one)), Error);
}

class SearchFrontReject : public ::testing::TestWithParam<bool> {};

// Without a first stage nothing is cut; with one (the first objective's), children that the
// front dominates are cut at their stage: the front stays the non-dominated set of every complete
// evaluation either way.
TEST_P(SearchFrontReject, NoNonDominatedSetIsEverLost) {
  const bool staged = GetParam();
  Bowl* first = nullptr;
  auto ev = two_bowls(&first, staged);
  EvolutionSearch s(space(), nsga_settings());
  std::set<std::string> before;
  for (int it = 0; it <= 8; ++it) {
    s.step(*ev);
    std::set<std::string> front;
    for (const Individual& i : s.front()) front.insert(i.key());
    // The front is exactly the non-dominated set of every complete evaluation so far...
    EXPECT_EQ(front, memo_front(s)) << "iteration " << it;
    // ...so a set leaves it only when a new one dominates it.
    for (const std::string& k : before)
      if (!front.count(k)) {
        bool beaten = false;
        for (const std::string& n : front)
          beaten = beaten || dominates(s.memo().at(n).obj, s.memo().at(k).obj);
        EXPECT_TRUE(beaten) << k << " left the front undominated";
      }
    before = front;
    // Ordered by the first objective.
    for (size_t i = 1; i < s.front().size(); ++i)
      EXPECT_LE(s.memo().at(s.front()[i - 1].key()).obj[0], s.memo().at(s.front()[i].key()).obj[0]);
  }
  // The two bowls conflict: the front holds many sets, from one centre to the other.
  EXPECT_GE(s.front().size(), 5u);
  if (!staged) {
    EXPECT_EQ(s.partial_evals(), 0);  // no objective has a first stage: nothing can be cut
    return;
  }
  EXPECT_GT(s.partial_evals(), 0);
  EXPECT_EQ(first->completed, s.full_evals());  // a cut child never completes its stage's part
  // Every cut child was dominated, like with like, by a set that was on the front when it was
  // cut, so by one of today's front (the front only improves): its second objective (no stage)
  // complete, its first at the stage (0.9 of the complete value, with the 1% margin).
  for (const auto& [k, f] : s.memo()) {
    if (!f.rejected) continue;
    ASSERT_EQ(f.stage_obj.size(), 2u);
    EXPECT_TRUE(std::isnan(f.stage_obj[1]));
    bool dominated = false;
    for (const Individual& m : s.front()) {
      const Fitness& g = s.memo().at(m.key());
      dominated = dominated || dominates(std::vector<double>{g.stage_obj[0] * 1.01, g.obj[1]},
                                         std::vector<double>{f.stage_obj[0], f.obj.at(1)});
    }
    EXPECT_TRUE(dominated) << k;
  }
}
INSTANTIATE_TEST_SUITE_P(SearchFront, SearchFrontReject, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Staged" : "NoStage"; });

// MultiObjectiveEvaluator's cut: the parts without a stage complete first, the staged parts
// stop at their stage when a point dominates the candidate like with like, and otherwise give
// the values of an evaluation without a bound.
TEST(SearchFront, TheEvaluatorCutsLikeWithLike) {
  Bowl* first = nullptr;
  auto ev = two_bowls(&first, /*staged=*/true);
  RopeScaling s;
  s.method = RopeMethod::kLongrope;
  s.sets.push_back(FactorSet{std::vector<double>(6, 2.5), 0});
  s.n_hat = 0;
  s.attn_factor = 1.0;
  const EvalResult whole = ev->evaluate(s, RejectBound{});  // 7 and 7
  ASSERT_EQ(whole.objectives.size(), 2u);
  EXPECT_DOUBLE_EQ(whole.objectives[0], 7.0);
  EXPECT_DOUBLE_EQ(whole.objectives[1], 7.0);
  EXPECT_EQ(first->completed, 1);  // no points: scored by evaluate()
  auto bound = [](std::vector<double> v, std::vector<bool> st) {
    RejectBound b;
    b.points.push_back({std::move(v), std::move(st)});
    return b;
  };
  // The stage is 6.3: a point at (6, 6.5) dominates it (stage, complete).
  const EvalResult cut = ev->evaluate(s, bound({6.0, 6.5}, {true, false}));
  EXPECT_TRUE(cut.rejected);
  ASSERT_EQ(cut.stage_objectives.size(), 2u);
  EXPECT_DOUBLE_EQ(cut.stage_objectives[0], 0.9 * 7.0);
  EXPECT_DOUBLE_EQ(cut.objectives[1], 7.0);  // complete: no stage
  EXPECT_TRUE(std::isnan(cut.objectives[0]));
  EXPECT_DOUBLE_EQ(cut.ppl, 0.9 * 7.0);
  EXPECT_EQ(first->completed, 1);
  EXPECT_EQ(cut.tokens, 60 + 100);
  // Not dominated (the complete value is better than the point's), or a point of another kind
  // (a complete value where the candidate has a stage): scored whole, with the same values.
  for (const RejectBound& b : {bound({6.0, 7.5}, {true, false}), bound({1.0, 1.0}, {false, false}),
                               bound({1.0, 1.0}, {true, true})}) {
    const EvalResult r = ev->evaluate(s, b);
    EXPECT_FALSE(r.rejected);
    EXPECT_EQ(r.objectives, whole.objectives);
    EXPECT_DOUBLE_EQ(r.stage_objectives[0], 0.9 * 7.0);
  }
  EXPECT_EQ(first->completed, 4);
}

TEST(SearchFront, PopulationIsInNsgaOrder) {
  auto ev = two_bowls();
  EvolutionSearch s(space(), nsga_settings());
  for (int it = 0; it < 3; ++it) s.step(*ev);
  std::vector<std::vector<double>> pts;
  for (const auto& i : s.population()) pts.push_back(s.memo().at(i.key()).obj);
  const std::vector<int> r = pareto_ranks(pts);
  const std::vector<double> d = crowding_distances(pts, r);
  for (size_t i = 1; i < pts.size(); ++i) {
    EXPECT_LE(r[i - 1], r[i]);
    if (r[i - 1] == r[i]) {
      EXPECT_GE(d[i - 1], d[i]);
    }
  }
}

TEST(SearchFront, ResumeGivesTheSameFront) {
  auto ev1 = two_bowls();
  auto ev2 = two_bowls();
  EvolutionSearch full(space(), nsga_settings());
  while (!full.finished(6)) full.step(*ev1);
  EvolutionSearch part(space(), nsga_settings());
  while (!part.finished(3)) part.step(*ev2);
  const std::string state = part.to_json().dump();
  EvolutionSearch resumed(space(), nsga_settings());
  resumed.restore(nlohmann::json::parse(state));
  while (!resumed.finished(6)) resumed.step(*ev2);
  EXPECT_EQ(resumed.front(), full.front());
  EXPECT_EQ(resumed.population(), full.population());
  EXPECT_EQ(resumed.to_json().dump(), full.to_json().dump());
  // The checkpoint holds the front and every objective.
  const nlohmann::json j = full.to_json();
  ASSERT_TRUE(j.contains("front"));
  EXPECT_EQ(j["front"].size(), full.front().size());
  EXPECT_TRUE(j["memo"].begin()->contains("obj"));
}

TEST(SearchFront, OneObjectiveKeepsItsFiles) {
  Bowl ev(2.0);
  SearchSettings st = nsga_settings();
  st.objectives = 1;
  EvolutionSearch s(space(), st);
  for (int it = 0; it < 2; ++it) s.step(ev);
  const nlohmann::json j = s.to_json();
  EXPECT_FALSE(j.contains("front"));
  EXPECT_FALSE(j["memo"].begin()->contains("obj"));
  EXPECT_FALSE(j["log"][0].contains("front_size"));
  EXPECT_FALSE(st.to_json().contains("objectives"));
  EXPECT_TRUE(s.front().empty());
}

TEST(SearchFront, AnEvaluatorWithTooFewObjectivesIsAnError) {
  Bowl one(2.0);  // reports no objectives vector
  EvolutionSearch s(space(), nsga_settings());
  test::expect_error([&] { s.step(one); }, "returned 0 objective(s), expected 2");
}

}  // namespace
}  // namespace longrope
