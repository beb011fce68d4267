// The small search space the search tests share (8 pairs by default, L_orig 512, target 2048,
// factors up to 5, the default n_hat and attention-factor candidates), and the candidate the
// evaluator tests score.
#pragma once
#include "longrope/rope.h"
#include "longrope/search.h"

namespace longrope::test {

// A LongRoPE set for stories260K (trained at 512, 4 rotary pairs) at 1024.
inline RopeScaling stories_candidate_1024() {
  RopeScaling s;
  s.method = RopeMethod::kLongrope;
  s.orig_ctx = 512;
  s.target_ctx = 1024;
  s.attn_factor = 1.0;
  s.sets.push_back(FactorSet{{1.0, 1.5, 2.0, 2.0}, 0});
  return s;
}

inline SearchSpace test_space(int pairs = 8) {
  SearchSpace sp;
  sp.n_pairs = pairs;
  sp.n_rot = 2 * pairs;
  sp.rope_base = 10000.0;
  sp.orig_ctx = 512;
  sp.target_ctx = 2048;
  sp.lambda_max = 500;
  sp.n_hat_candidates = default_n_hat_candidates(sp.target_ctx);
  sp.attn_candidates = default_attn_candidates(sp.orig_ctx, sp.target_ctx);
  return sp;
}

}  // namespace longrope::test
