// Decoded panels of weight rows and bf16 copies of activations: the buffers behind matmul_w and
// the streamed LM head, reused across calls so no whole-matrix copy ever exists.
#pragma once
#include <cstdint>
#include <vector>

#include "longrope/kernels.h"

namespace longrope::kernels {

struct PanelBuffer {
  std::vector<float> f32;     // rows x cols, when decoded for Compute::kF32
  std::vector<uint16_t> b16;  // rows x cols, when decoded for Compute::kBF16
};

// Decodes rows [r0, r0 + n) of W into pb (FP32 or bf16 by `compute`), rows parallel (OpenMP).
void decode_panel(const WeightView& W, int64_t r0, int64_t n, Compute compute, PanelBuffer& pb);

struct RowsBf16 {
  std::vector<uint16_t> data;
};
// M rows of K values (row stride lda) to a dense bf16 copy (row stride K), rows parallel.
void rows_to_bf16(const float* A, int64_t M, int64_t K, int64_t lda, RowsBf16& out);

}  // namespace longrope::kernels
