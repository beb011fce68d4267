// The README's stories260K search budget, shared by the search benchmarks: population 32, then
// 10 iterations of 8 mutations + 8 crossovers with 16 parents (192 candidates).
#pragma once
#include <cstdint>

#include "longrope/search.h"

namespace longrope::bench {

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
