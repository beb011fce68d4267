// ggml tensor types and their dequantization (block formats as stored in GGUF files).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace longrope {

// Numeric values are the on-disk ggml type ids.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30,
};

// Name of any type id ("Q4_K", or "type 42" for an unknown id).
std::string ggml_type_name(uint32_t type);
// True for the types this project can dequantize.
bool ggml_type_supported(uint32_t type);
// Elements per block (1 for float types) and bytes per block. Throws Error for unsupported types.
int64_t ggml_block_size(GgmlType type);
size_t ggml_type_size(GgmlType type);
// Bytes of a row of n elements; throws Error if n is not a multiple of the block size.
size_t ggml_row_size(GgmlType type, int64_t n);

// Product of a tensor's dimensions (1 for none).
inline int64_t element_count(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// Dequantizes n elements (a multiple of the block size) from src into dst (FP32).
void dequantize(GgmlType type, const void* src, float* dst, int64_t n);

// Scalar float conversions used by the block formats.
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);
float bf16_to_fp32(uint16_t h);
// Round to nearest even; nan stays a (quiet) nan. (Added by io.)
uint16_t fp32_to_bf16(float f);

// "f32", "f16" or "bf16" -> F32, F16 or BF16; nullopt for any other name (callers say what was
// expected in their own error line).
std::optional<GgmlType> float_type_by_name(const std::string& name);
// n FP32 values encoded as F32, F16 or BF16 bytes (little-endian); throws Error for another type.
std::vector<uint8_t> encode_floats(const float* src, size_t n, GgmlType type);

}  // namespace longrope
