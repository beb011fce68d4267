// How often does early reject throw away a child that would have entered the parents? A real
// search (stories260K) with early reject on, where every rejected child is also scored whole
// (the audit): a rejection is false when the child's whole-window fitness beats the worst parent
// of the population it was rejected from (after that iteration's sort). Two settings:
//   4096, --docs 2 (the README search): the first stage is window 0;
//   1024, --docs 1 (s = 2, as the main job's SmolLM2 search): the first stage is the first 768
//     tokens scored beyond 512 (first_stage()), against the old stage, the first half of the
//     window scored whole (inside the trained context).
//
// Usage: bench_false_rejects [SHARED_DIR] [THREADS] [docs1]   (docs1: only the 1024 rows)
#include <fmt/core.h>

#include <cmath>
#include <string>
#include <vector>

#include "longrope/model.h"
#include "longrope/perplexity.h"
#include "longrope/search.h"
#include "readme_search.h"

using namespace longrope;

namespace {

// Scores a rejected candidate whole too.
class Audit : public Evaluator {
 public:
  explicit Audit(PerplexityEvaluator& inner) : inner_(inner) {}
  EvalResult evaluate(const RopeScaling& s, const RejectBound& bound) override {
    EvalResult r = inner_.evaluate(s, bound);
    tokens += r.tokens;
    if (r.rejected) whole.push_back(inner_.evaluate(s, INFINITY).ppl);
    return r;
  }
  std::vector<double> whole;  // whole-window fitness of each rejected candidate, in order
  int64_t tokens = 0;         // scored by the search itself (not the audit)

 private:
  PerplexityEvaluator& inner_;
};

struct Row {
  std::string setting, stage;
  int64_t rejected = 0, false_rejects = 0, candidates = 0, tokens = 0;
  double best = 0;
};

Row run_seed(const Model& model, const std::vector<int32_t>& text, int64_t L, int64_t docs,
             int64_t orig_for_stage, int64_t stage_tokens, const std::string& setting,
             const std::string& stage, int threads, uint64_t seed, double margin) {
  const int64_t Lorig = model.hp().n_ctx_train;
  PerplexityEvaluator ev(std::shared_ptr<const Model>(&model, [](const Model*) {}),
                         make_windows(text, model.tokenizer().bos(), L, docs), threads,
                         orig_for_stage, stage_tokens);
  Audit audit(ev);
  const SearchSpace sp = default_search_space(model.hp(), Lorig, L);
  SearchSettings st = bench::readme_settings(seed);
  st.reject_margin = margin;
  EvolutionSearch s(sp, st);
  Row row{setting, stage};
  size_t seen = 0;
  while (!s.finished(st.iterations)) {
    s.step(audit);
    bench::tally_rejections(s, st.parents, audit.whole, seen, row.rejected, row.false_rejects);
  }
  row.candidates = s.full_evals() + s.partial_evals();
  row.tokens = audit.tokens;
  row.best = s.best_ppl();
  return row;
}

// Seeds 7, 8 and 9 summed (best fitness: their mean).
Row run(const Model& model, const std::vector<int32_t>& text, int64_t L, int64_t docs,
        int64_t orig_for_stage, int64_t stage_tokens, const std::string& setting,
        const std::string& stage, int threads, double margin = 0.0) {
  Row sum{setting, margin > 0 ? fmt::format("{}, --reject-margin {}", stage, margin) : stage};
  for (uint64_t seed : {7, 8, 9}) {
    const Row r = run_seed(model, text, L, docs, orig_for_stage, stage_tokens, setting, stage,
                           threads, seed, margin);
    sum.rejected += r.rejected;
    sum.false_rejects += r.false_rejects;
    sum.candidates += r.candidates;
    sum.tokens += r.tokens;
    sum.best += r.best / 3.0;
  }
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string shared = argc > 1 ? argv[1] : "../shared";
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  auto model = Model::load(shared + "/models/stories260K.gguf");
  const int64_t Lorig = model->hp().n_ctx_train;
  const auto text = model->tokenizer().encode(
      normalize_newlines(read_text_file(shared + "/data/pride_and_prejudice.txt")));
  const bool all = argc <= 3 || std::string(argv[3]) != "docs1";
  std::vector<Row> rows;
  if (all) {
    for (double margin : {0.0, 0.01})
      rows.push_back(run(*model, text, 4096, 2, Lorig, 0, "4096, --docs 2", "window 0, beyond 512",
                         threads, margin));
  }
  rows.push_back(run(*model, text, 1024, 1, Lorig, 0, "1024, --docs 1",
                     "first 768 tokens, beyond 512", threads));
  for (double margin : {0.005, 0.01, 0.02})
    rows.push_back(run(*model, text, 1024, 1, Lorig, 0, "1024, --docs 1",
                       "first 768 tokens, beyond 512", threads, margin));
  rows.push_back(run(*model, text, 1024, 1, Lorig, 896, "1024, --docs 1",
                     "first 896 tokens, beyond 512 (--reject-stage 896)", threads));
  // The old stage: the first half, every token (orig_ctx 1: everything counts as beyond).
  rows.push_back(
      run(*model, text, 1024, 1, 1, 512, "1024, --docs 1", "first 512 tokens, all (old)", threads));
  fmt::print(
      "Seeds 7, 8, 9 summed.\n\n"
      "| setting | first stage | candidates | rejected | false rejects | rate | mean best "
      "fitness | tokens scored |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
  for (const Row& r : rows)
    fmt::print("| {} | {} | {} | {} | {} | {:.1f}% | {:.4f} | {} |\n", r.setting, r.stage,
               r.candidates, r.rejected, r.false_rejects,
               r.rejected ? 100.0 * double(r.false_rejects) / double(r.rejected) : 0.0, r.best,
               r.tokens);
  return 0;
}
