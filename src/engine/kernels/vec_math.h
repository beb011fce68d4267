// Small vectorisable math helpers shared by the kernels.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace longrope::kernels {

// exp(x) for float, relative error below 2e-7 on [-87, 88]; exp(-inf) = exp(-87) (about 1.6e-38),
// large x saturate to exp(88.5), and NaN gives NaN (a NaN must reach the non-finite checks, not be
// clamped into a number). Written with plain arithmetic, selects and bit casts so the compiler
// vectorises loops over it.
inline float fast_exp(float x_in) {
  const bool nan = x_in != x_in;
  float x = x_in < -87.0f ? -87.0f : (x_in > 88.5f ? 88.5f : x_in);
  x = nan ? 0.0f : x;  // keeps the float -> int conversion below defined
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
  return nan ? x_in : p * scale;
}

}  // namespace longrope::kernels
