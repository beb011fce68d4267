#include "longrope/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace longrope {

int32_t argmax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (p_.temperature <= 0.0f) return argmax(logits);
  const int n = static_cast<int>(logits.size());
  std::vector<int32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  int k = (p_.top_k > 0 && p_.top_k < n) ? p_.top_k : n;
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
  idx.resize(k);
  std::vector<double> prob(k);
  const double mx = logits[idx[0]];
  double sum = 0.0;
  for (int i = 0; i < k; ++i) sum += prob[i] = std::exp((logits[idx[i]] - mx) / p_.temperature);
  double cum = 0.0;
  int keep = k;
  for (int i = 0; i < k; ++i) {
    cum += prob[i] / sum;
    if (cum >= p_.top_p) {
      keep = i + 1;
      break;
    }
  }
  std::discrete_distribution<int> dist(prob.begin(), prob.begin() + keep);
  return idx[dist(rng_)];
}

}  // namespace longrope
