// Random weight matrices in any GGUF encoding, for the kernel tests: normal values for the float
// types, random quant bytes with sane finite block scales for the block types.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "longrope/kernels.h"
#include "longrope/quant.h"

namespace longrope::test {

// Writes v as an IEEE half at p (a block scale).
void put_half(uint8_t* p, float v);
// A random finite block scale: magnitude in [2^-10, 2^-4], random sign.
float rand_scale(std::mt19937_64& rng);
// rows x cols weights of type t (ggml_row_size(t, cols) bytes per row); the same seed gives the
// same bytes. A type it has no recipe for is a test failure.
std::vector<uint8_t> random_weights(GgmlType t, int64_t rows, int64_t cols, uint64_t seed);
// The kernels' view of such a matrix.
kernels::WeightView weight_view(GgmlType t, const std::vector<uint8_t>& m, int64_t rows,
                                int64_t cols);

}  // namespace longrope::test
