// False rejects of a finished real search, after the fact: the search is replayed from its
// checkpoint (every fitness and first-stage value read back from the memo, so the replay takes the
// run's exact path; a candidate missing from the memo stops it) and each child that early reject
// cut is now scored whole. A rejection is false when that whole fitness beats the worst parent of
// the population it was rejected from (after that iteration's sort), as in bench_false_rejects.
// Only the rejected children cost an evaluation.
//
// Usage: bench_audit_rejects MODEL TEXT TARGET CHECKPOINT POPULATION PARENTS MUTATIONS
//                            CROSSOVERS SEED ITERATIONS [THREADS] [REJECT_MARGIN]
// (the search's own flags; --docs 1, default space, perplexity fitness.)
#include <fmt/core.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/model.h"
#include "longrope/perplexity.h"
#include "longrope/search.h"
#include "readme_search.h"

using namespace longrope;

namespace {

class Replay : public Evaluator {
 public:
  Replay(const nlohmann::json& memo, const SearchSpace& sp, PerplexityEvaluator& whole)
      : sp_(sp), whole_(whole) {
    for (const auto& [k, v] : memo.items()) memo_[k] = v;
  }
  EvalResult evaluate(const RopeScaling& s, const RejectBound& bound) override {
    const std::string k = key_of(s);
    auto it = memo_.find(k);
    if (it == memo_.end())
      throw Error("the replay asked for " + k + ", which the checkpoint never evaluated");
    const nlohmann::json& f = it->second;
    EvalResult r;
    r.rejected = f.at("rejected").get<bool>();
    if (r.rejected) {
      r.ppl = f.at("partial").get<double>();
      const double w = whole_.evaluate(s, INFINITY).ppl;
      whole.push_back(w);
      fmt::print(stderr, "rejected {} (stage {:.4f} > bound {:.4f}): whole {:.4f}\n", k, r.ppl,
                 bound.above, w);
    } else {
      r.ppl = f.at("ppl").get<double>();
      r.stage_ppl = f.at("stage").is_number() ? f.at("stage").get<double>() : INFINITY;
    }
    return r;
  }
  std::vector<double> whole;

 private:
  std::string key_of(const RopeScaling& s) const {
    Individual ind;
    for (double x : s.sets[0].factors) ind.lambda.push_back(static_cast<int>(std::lround(x * 100)));
    for (size_t i = 0; i < sp_.n_hat_candidates.size(); ++i)
      if (sp_.n_hat_candidates[i] == s.n_hat) ind.n_hat_idx = static_cast<int>(i);
    for (size_t i = 0; i < sp_.attn_candidates.size(); ++i)
      if (sp_.attn_candidates[i] == *s.attn_factor) ind.attn_idx = static_cast<int>(i);
    return ind.key();
  }
  const SearchSpace& sp_;
  PerplexityEvaluator& whole_;
  std::map<std::string, nlohmann::json> memo_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 11) {
    fmt::print(stderr,
               "usage: bench_audit_rejects MODEL TEXT TARGET CHECKPOINT POPULATION PARENTS "
               "MUTATIONS CROSSOVERS SEED ITERATIONS [THREADS] [REJECT_MARGIN (default 0)]\n");
    return 2;
  }
  try {
    auto model = Model::load(argv[1]);
    const int64_t L = std::stoll(argv[3]);
    const int64_t orig = model->hp().n_ctx_train;
    std::ifstream in(argv[4]);
    const nlohmann::json ck = nlohmann::json::parse(in);
    SearchSettings st;
    st.population = std::stoi(argv[5]);
    st.parents = std::stoi(argv[6]);
    st.mutations = std::stoi(argv[7]);
    st.crossovers = std::stoi(argv[8]);
    st.seed = std::stoull(argv[9]);
    st.iterations = std::stoi(argv[10]);
    const int threads = argc > 11 ? std::atoi(argv[11]) : 2;
    st.reject_margin = argc > 12 ? std::stod(argv[12]) : 0.0;  // the audited search's
    const auto text = model->tokenizer().encode(normalize_newlines(read_text_file(argv[2])));
    PerplexityEvaluator whole(model, make_windows(text, model->tokenizer().bos(), L, 1), threads,
                              orig, 0);
    const SearchSpace sp = default_search_space(model->hp(), orig, L);
    Replay replay(ck.at("long").at("memo"), sp, whole);
    EvolutionSearch s(sp, st);
    int64_t rejected = 0, false_rejects = 0;
    size_t seen = 0;
    while (!s.finished(st.iterations)) {
      s.step(replay);
      bench::tally_rejections(s, st.parents, replay.whole, seen, rejected, false_rejects);
      fmt::print(stderr, "iteration {}: rejected so far {}, false {}\n", s.iterations_done(),
                 rejected, false_rejects);
    }
    if (s.best_ppl() != ck.at("long").at("best_ppl").get<double>())
      throw Error("the replay's best fitness differs from the checkpoint's");
    fmt::print(
        "| candidates | rejected | false rejects | rate | best fitness |\n"
        "|---:|---:|---:|---:|---:|\n| {} | {} | {} | {:.1f}% | {:.4f} |\n",
        s.full_evals() + s.partial_evals(), rejected, false_rejects,
        rejected ? 100.0 * double(false_rejects) / double(rejected) : 0.0, s.best_ppl());
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
