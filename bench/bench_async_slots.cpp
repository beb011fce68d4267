// The steady-state search (--async) with many evaluations in flight, emulated in one process:
// what does breeding from an older population cost in result quality? K slots = K ranks: each
// candidate is scored when it is submitted, and next() returns a random one of the K pending
// (seeded), as ranks finishing in any order would. The README's stories260K search (512 -> 4096,
// 192 candidates), winners scored on a book the search never saw.
//
// Usage: bench_async_slots [SHARED_DIR] [THREADS] [SLOTS]
//   SHARED_DIR default ../shared; SLOTS a comma-separated list, 0 = generational (default 0,1,8,32)
#include <fmt/core.h>

#include <cmath>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "longrope/model.h"
#include "longrope/perplexity.h"
#include "longrope/search.h"
#include "readme_search.h"

using namespace longrope;

namespace {

class EmulatedSlots : public Evaluator {
 public:
  EmulatedSlots(Evaluator& inner, int slots, uint64_t seed)
      : inner_(inner), slots_(slots), rng_(seed) {}
  EvalResult evaluate(const RopeScaling& s, const RejectBound& bound) override {
    return inner_.evaluate(s, bound);
  }
  int slots() const override { return slots_; }
  void submit(size_t id, const RopeScaling& s, const RejectBound& bound) override {
    pending_.emplace_back(id, inner_.evaluate(s, bound));
  }
  std::pair<size_t, EvalResult> next() override {
    const size_t k = std::uniform_int_distribution<size_t>(0, pending_.size() - 1)(rng_);
    auto r = pending_[k];
    pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(k));
    return r;
  }

 private:
  Evaluator& inner_;
  int slots_;
  std::mt19937_64 rng_;
  std::vector<std::pair<size_t, EvalResult>> pending_;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string shared = argc > 1 ? argv[1] : "../shared";
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  auto model = Model::load(shared + "/models/stories260K.gguf");
  const int64_t L = 4096, Lorig = model->hp().n_ctx_train;
  const auto train = model->tokenizer().encode(
      normalize_newlines(read_text_file(shared + "/data/pride_and_prejudice.txt")));
  const auto held =
      model->tokenizer().encode(normalize_newlines(read_text_file(shared + "/data/moby-dick.txt")));
  PerplexityEvaluator ev(model, make_windows(train, model->tokenizer().bos(), L, 2), threads,
                         Lorig);

  const SearchSpace sp = default_search_space(model->hp(), Lorig, L);

  fmt::print("| mode | seed | search fitness | held-out ppl | full + rejected |\n");
  fmt::print("|---|---:|---:|---:|---:|\n");
  std::vector<int> slot_list;
  {
    std::stringstream ss(argc > 3 ? argv[3] : "0,1,8,32");
    std::string item;
    while (std::getline(ss, item, ',')) slot_list.push_back(std::atoi(item.c_str()));
  }
  for (int slots : slot_list) {  // 0 = generational
    double sum_fit = 0, sum_held = 0;
    const std::vector<uint64_t> seeds = {7, 8, 9};
    for (uint64_t seed : seeds) {
      SearchSettings st = bench::readme_settings(seed);
      st.steady_state = slots > 0;
      EvolutionSearch s(sp, st);
      EmulatedSlots emu(ev, std::max(1, slots), seed);
      while (!s.finished(st.iterations)) s.step(emu);
      const PerplexityResult h = perplexity(*model, held, L, 4, to_scaling(sp, s.best()), threads);
      const std::string mode =
          slots == 0 ? "generational" : fmt::format("steady state, {} in flight", slots);
      fmt::print("| {} | {} | {:.4f} | {:.4f} | {} + {} |\n", mode, seed, s.best_ppl(), h.ppl,
                 s.full_evals(), s.partial_evals());
      std::fflush(stdout);
      sum_fit += s.best_ppl();
      sum_held += h.ppl;
    }
    fmt::print("| {} | mean | {:.4f} | {:.4f} | |\n",
               slots == 0 ? "generational" : fmt::format("steady state, {} in flight", slots),
               sum_fit / double(seeds.size()), sum_held / double(seeds.size()));
  }
  return 0;
}
