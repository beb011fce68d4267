// Token sampling: greedy at temperature 0, else temperature + top-k + top-p with a seeded RNG.
#pragma once
#include <cstdint>
#include <random>
#include <span>

namespace longrope {

struct SamplerParams {
  float temperature = 0.8f;
  int top_k = 40;       // 0 = no limit
  float top_p = 0.95f;  // 1 = no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplerParams p) : p_(p), rng_(p.seed) {}
  int32_t sample(std::span<const float> logits);

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
};

// Index of the largest logit (lowest index on ties).
int32_t argmax(std::span<const float> logits);

}  // namespace longrope
