#include "test_weights.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

namespace longrope::test {

void put_half(uint8_t* p, float v) {
  const uint16_t h = fp32_to_fp16(v);
  std::memcpy(p, &h, 2);
}

float rand_scale(std::mt19937_64& rng) {
  std::uniform_real_distribution<float> mag(-10.0f, -4.0f);
  return std::exp2(mag(rng)) * ((rng() & 1) ? 1.0f : -1.0f);
}

std::vector<uint8_t> random_weights(GgmlType t, int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const size_t rb = ggml_row_size(t, cols);
  std::vector<uint8_t> m(rb * static_cast<size_t>(rows));
  if (t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (size_t i = 0; i < static_cast<size_t>(rows * cols); ++i) {
      const float v = nd(rng);
      if (t == GgmlType::F32) {
        std::memcpy(m.data() + 4 * i, &v, 4);
      } else {
        const uint16_t h = t == GgmlType::F16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
        std::memcpy(m.data() + 2 * i, &h, 2);
      }
    }
    return m;
  }
  for (auto& b : m) b = static_cast<uint8_t>(rng());
  const size_t bsz = ggml_type_size(t);
  for (size_t off = 0; off < m.size(); off += bsz) {
    uint8_t* b = m.data() + off;
    switch (t) {
      case GgmlType::Q4_0:
      case GgmlType::Q5_0:
      case GgmlType::Q8_0:
        put_half(b, rand_scale(rng));
        break;
      case GgmlType::Q4_1:
      case GgmlType::Q5_1:
      case GgmlType::Q8_1:
      case GgmlType::Q4_K:
      case GgmlType::Q5_K:
        put_half(b, rand_scale(rng));
        put_half(b + 2, rand_scale(rng) * 8.0f);
        break;
      case GgmlType::Q2_K:
        put_half(b + 80, rand_scale(rng));
        put_half(b + 82, rand_scale(rng));
        break;
      case GgmlType::Q3_K:
        put_half(b + 108, rand_scale(rng));
        break;
      case GgmlType::Q6_K:
        put_half(b + 208, rand_scale(rng));
        break;
      case GgmlType::Q8_K: {
        const float d = rand_scale(rng);
        std::memcpy(b, &d, 4);
        break;
      }
      default:
        ADD_FAILURE() << "no test weights for " << ggml_type_name(uint32_t(t));
        return m;
    }
  }
  return m;
}

kernels::WeightView weight_view(GgmlType t, const std::vector<uint8_t>& m, int64_t rows,
                                int64_t cols) {
  return {t, m.data(), rows, cols, ggml_row_size(t, cols)};
}

}  // namespace longrope::test
