// The small search space the search tests share (8 pairs by default, L_orig 512, target 2048,
// factors up to 5, the default n_hat and attention-factor candidates).
#pragma once
#include "longrope/search.h"

namespace longrope::test {

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
