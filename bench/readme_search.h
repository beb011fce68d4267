// The README's stories260K search budget, shared by the search benchmarks: population 32, then
// 10 iterations of 8 mutations + 8 crossovers with 16 parents (192 candidates).
#pragma once
#include <cstdint>
#include <vector>

#include "longrope/search.h"

namespace longrope::bench {

// After an iteration of s: counts the rejected children audited since `seen` (whole[i] = the
// whole-window fitness of the i-th rejected child) and those among them that would have become
// parents (their whole fitness beats the worst parent of the sorted population).
inline void tally_rejections(const EvolutionSearch& s, int n_parents,
                             const std::vector<double>& whole, size_t& seen, int64_t& rejected,
                             int64_t& false_rejects) {
  double worst_parent = 0;
  int parents = 0;
  for (const auto& ind : s.population()) {
    const Fitness& f = s.memo().at(ind.key());
    if (f.rejected) continue;
    worst_parent = f.ppl;
    if (++parents == n_parents) break;
  }
  for (; seen < whole.size(); ++seen) {
    ++rejected;
    if (whole[seen] < worst_parent) ++false_rejects;
  }
}

inline SearchSettings readme_settings(uint64_t seed) {
  SearchSettings st;
  st.population = 32;
  st.iterations = 10;
  st.parents = 16;
  st.mutations = 8;
  st.crossovers = 8;
  st.seed = seed;
  return st;
}

}  // namespace longrope::bench
