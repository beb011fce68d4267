// Internal: the portable (plain C++) paths of the compact-weight kernels of quant_kernels.cpp.
// The public functions of longrope/kernels.h pick the AVX-512 path where the CPU has it and these
// otherwise; the tests call these directly so the portable path is checked on every machine.
#pragma once
#include <cstdint>
#include <cstring>

#include "longrope/kernels.h"

namespace longrope::kernels::quant_internal {

void dequant_rows_f32_generic(const WeightView& W, int64_t r0, int64_t n, float* dst, int64_t ld);
void dequant_rows_bf16_generic(const WeightView& W, int64_t r0, int64_t n, uint16_t* dst,
                               int64_t ld);
void gemv_w_generic(int64_t m, const float* X, int64_t ldx, const WeightView& W, float* Y,
                    int64_t ldy, float beta);
// gemv_w on the FP32 activations for every m: the AVX-512 block decoders where the CPU has
// AVX-512, else gemv_w_generic. gemv_w itself takes an int8 path for m == 1 on Q4_0, Q4_1 and
// Q8_0 weights where the CPU has AVX512_VNNI (activations quantized per block of 32, about 1e-3
// relative error); this is the exact path it uses otherwise.
void gemv_w_f32(int64_t m, const float* X, int64_t ldx, const WeightView& W, float* Y, int64_t ldy,
                float beta);
void f32_to_bf16_generic(const float* x, uint16_t* y, int64_t n);

// True if the AVX-512 path decodes this type in registers (F32, F16, BF16, Q4_0, Q4_1, Q5_0,
// Q5_1, Q8_0, Q4_K, Q5_K, Q6_K); the other supported types are dequantized a row at a time with
// io's dequantize() first.
bool has_fast_path(GgmlType type);

// FP32 -> bf16, round to nearest even; a nan keeps its top bits and becomes quiet (as io's
// fp32_to_bf16).
inline uint16_t bf16_round(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace longrope::kernels::quant_internal
