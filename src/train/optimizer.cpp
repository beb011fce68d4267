// AdamW, gradient clipping and the learning-rate schedule (include/longrope/train.h).
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include "longrope/error.h"
#include "longrope/train.h"

namespace longrope::train {

void adamw_update(const ParamLayout& layout, const AdamW& opt, double lr, int64_t step,
                  float* params, const float* g, float* m, float* v) {
  if (step < 1) throw Error(fmt::format("adamw: step {} (expected >= 1)", step));
  const double bc1 = 1.0 - std::pow(opt.beta1, double(step));
  const double bc2 = 1.0 - std::pow(opt.beta2, double(step));
  const float b1 = float(opt.beta1), b2 = float(opt.beta2);
  const float step_size = float(lr / bc1);
  const float inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
  const float eps = float(opt.eps);
  for (const ParamTensor& t : layout.tensors) {
    const float decay = t.decay ? float(1.0 - lr * opt.weight_decay) : 1.0f;
    float* p = params + t.offset;
    const float* gt = g + t.offset;
    float* mt = m + t.offset;
    float* vt = v + t.offset;
    const int64_t n = static_cast<int64_t>(t.size());
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) {
      mt[i] = b1 * mt[i] + (1.0f - b1) * gt[i];
      vt[i] = b2 * vt[i] + (1.0f - b2) * gt[i] * gt[i];
      p[i] = p[i] * decay - step_size * mt[i] / (std::sqrt(vt[i]) * inv_sqrt_bc2 + eps);
    }
  }
}

double clip_grad_norm(float* g, size_t n, double max_norm) {
  // Fixed blocks summed in order: the same norm for any thread count.
  constexpr size_t kBlock = 1 << 16;
  const size_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> part(blocks, 0.0);
#pragma omp parallel for schedule(static)
  for (size_t b = 0; b < blocks; ++b) {
    double s = 0.0;
    const size_t e = std::min(n, (b + 1) * kBlock);
    for (size_t i = b * kBlock; i < e; ++i) s += double(g[i]) * double(g[i]);
    part[b] = s;
  }
  double sum = 0.0;
  for (double s : part) sum += s;
  const double norm = std::sqrt(sum);
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm)) {
    const float k = float(max_norm / norm);
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) g[i] *= k;
  }
  return norm;
}

Decay parse_decay(const std::string& name) {
  if (name == "constant") return Decay::kConstant;
  if (name == "linear") return Decay::kLinear;
  if (name == "cosine") return Decay::kCosine;
  throw Error(
      fmt::format("unknown learning-rate decay '{}' (expected constant, linear or cosine)", name));
}

double schedule_lr(double lr, double min_lr, int64_t warmup, int64_t steps, Decay decay,
                   int64_t step) {
  if (warmup > 0 && step <= warmup) return lr * double(step) / double(warmup);
  if (decay == Decay::kConstant || steps <= warmup) return lr;
  const double t = std::clamp(double(step - warmup) / double(steps - warmup), 0.0, 1.0);
  const double k = decay == Decay::kLinear ? 1.0 - t : 0.5 * (1.0 + std::cos(std::numbers::pi * t));
  return min_lr + (lr - min_lr) * k;
}

}  // namespace longrope::train
