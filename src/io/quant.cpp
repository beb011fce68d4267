// ggml tensor types: names, block layouts and dequantization to FP32.
//
// Block layouts (as stored in GGUF files, little-endian, no padding):
//   Q4_0  {f16 d; u8 qs[16]}                      x = (nibble - 8) * d
//   Q4_1  {f16 d; f16 m; u8 qs[16]}               x = nibble * d + m
//   Q5_0  {f16 d; u8 qh[4]; u8 qs[16]}            x = ((nibble | hbit << 4) - 16) * d
//   Q5_1  {f16 d; f16 m; u8 qh[4]; u8 qs[16]}     x = (nibble | hbit << 4) * d + m
//   Q8_0  {f16 d; i8 qs[32]}                      x = q * d
//   Q8_1  {f16 d; f16 s; i8 qs[32]}               x = q * d   (s = d * sum(q), unused here)
// In the 32-element legacy blocks, byte j holds element j (low nibble) and j + 16 (high nibble);
// bit j of qh (read as a little-endian u32) is the fifth bit of element j.
// K-quants use 256-element super-blocks:
//   Q2_K  {u8 scales[16]; u8 qs[64]; f16 d; f16 dmin}
//   Q3_K  {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}
//   Q4_K  {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}
//   Q5_K  {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}
//   Q6_K  {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}
//   Q8_K  {f32 d; i8 qs[256]; i16 bsums[16]}
#include "longrope/quant.h"

#include <array>
#include <bit>
#include <cmath>
#include <cstring>

#include "io/bytes.h"
#include "io/ggml_types.h"
#include "longrope/error.h"

namespace longrope {

namespace io {

namespace {

constexpr int64_t kQK = 32;    // legacy block size
constexpr int64_t kQKK = 256;  // k-quant super-block size

struct TypeTable {
  std::array<GgmlTypeInfo, 64> t{};
  constexpr TypeTable() {
    for (auto& e : t) e = {nullptr, 0, 0, false};
    t[0] = {"F32", 1, 4, true};
    t[1] = {"F16", 1, 2, true};
    t[2] = {"Q4_0", kQK, 18, true};
    t[3] = {"Q4_1", kQK, 20, true};
    t[6] = {"Q5_0", kQK, 22, true};
    t[7] = {"Q5_1", kQK, 24, true};
    t[8] = {"Q8_0", kQK, 34, true};
    t[9] = {"Q8_1", kQK, 36, true};
    t[10] = {"Q2_K", kQKK, 84, true};
    t[11] = {"Q3_K", kQKK, 110, true};
    t[12] = {"Q4_K", kQKK, 144, true};
    t[13] = {"Q5_K", kQKK, 176, true};
    t[14] = {"Q6_K", kQKK, 210, true};
    t[15] = {"Q8_K", kQKK, 292, true};
    // Known to ggml, not dequantized here: sizes only, for bounds checks.
    t[16] = {"IQ2_XXS", kQKK, 66, false};
    t[17] = {"IQ2_XS", kQKK, 74, false};
    t[18] = {"IQ3_XXS", kQKK, 98, false};
    t[19] = {"IQ1_S", kQKK, 50, false};
    t[20] = {"IQ4_NL", kQK, 18, false};
    t[21] = {"IQ3_S", kQKK, 110, false};
    t[22] = {"IQ2_S", kQKK, 82, false};
    t[23] = {"IQ4_XS", kQKK, 136, false};
    t[24] = {"I8", 1, 1, false};
    t[25] = {"I16", 1, 2, false};
    t[26] = {"I32", 1, 4, false};
    t[27] = {"I64", 1, 8, false};
    t[28] = {"F64", 1, 8, false};
    t[29] = {"IQ1_M", kQKK, 56, false};
    t[30] = {"BF16", 1, 2, true};
    t[34] = {"TQ1_0", kQKK, 54, false};
    t[35] = {"TQ2_0", kQKK, 66, false};
    t[39] = {"MXFP4", kQK, 17, false};
  }
};

constexpr TypeTable kTypes;
constexpr GgmlTypeInfo kUnknown = {nullptr, 0, 0, false};

}  // namespace

const GgmlTypeInfo& ggml_type_info(uint32_t type) {
  return type < kTypes.t.size() ? kTypes.t[type] : kUnknown;
}

}  // namespace io

std::string ggml_type_name(uint32_t type) {
  const auto& info = io::ggml_type_info(type);
  return info.name ? std::string(info.name) : "type " + std::to_string(type);
}

bool ggml_type_supported(uint32_t type) {
  return io::ggml_type_info(type).dequantizable;
}

namespace {

const io::GgmlTypeInfo& supported_info(GgmlType type) {
  const auto& info = io::ggml_type_info(static_cast<uint32_t>(type));
  if (!info.dequantizable) {
    throw Error("unsupported tensor type " + ggml_type_name(static_cast<uint32_t>(type)) +
                " (expected one of F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, "
                "Q3_K, Q4_K, Q5_K, Q6_K, Q8_K)");
  }
  return info;
}

}  // namespace

int64_t ggml_block_size(GgmlType type) {
  return supported_info(type).block_size;
}

size_t ggml_type_size(GgmlType type) {
  return supported_info(type).type_size;
}

size_t ggml_row_size(GgmlType type, int64_t n) {
  const auto& info = supported_info(type);
  if (n < 0 || n % info.block_size != 0) {
    throw Error("row of " + std::to_string(n) + " elements of type " +
                ggml_type_name(static_cast<uint32_t>(type)) + " (expected a multiple of " +
                std::to_string(info.block_size) + ")");
  }
  return static_cast<size_t>(n / info.block_size) * info.type_size;
}

// ---------------------------------------------------------------------------------------------
// Scalar conversions

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, or nan with its payload
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);  // rebias 15 -> 127
  } else {
    // zero or subnormal: mant * 2^-24, exact in float
    bits = sign | std::bit_cast<uint32_t>(static_cast<float>(mant) * 0x1p-24f);
  }
  return std::bit_cast<float>(bits);
}

uint16_t fp32_to_fp16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) {  // inf or nan (nan stays a quiet nan with the top payload bits)
    if (x == 0x7f800000u) return sign | 0x7c00u;
    return static_cast<uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
  }
  if (x >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (x < 0x38800000u) {                        // below the smallest normal half (2^-14)
    const uint32_t exp = x >> 23;
    if (exp < 102) return sign;  // < 2^-25: rounds to zero
    const uint32_t mant = (x & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exp;  // to units of 2^-24
    uint32_t r = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  const uint32_t y = x - (112u << 23);  // rebias 127 -> 15
  uint32_t r = y >> 13;
  const uint32_t rem = y & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // carry into the exponent is fine
  return static_cast<uint16_t>(sign | r);
}

float bf16_to_fp32(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

uint16_t fp32_to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((x >> 16) | 0x40u);        // quiet nan
  const uint32_t rounded = x + 0x7fffu + ((x >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(rounded >> 16);
}

std::optional<GgmlType> float_type_by_name(const std::string& name) {
  if (name == "f32") return GgmlType::F32;
  if (name == "f16") return GgmlType::F16;
  if (name == "bf16") return GgmlType::BF16;
  return std::nullopt;
}

std::vector<uint8_t> encode_floats(const float* src, size_t n, GgmlType type) {
  if (type != GgmlType::F32 && type != GgmlType::F16 && type != GgmlType::BF16)
    throw Error("encode_floats: type " + ggml_type_name(static_cast<uint32_t>(type)) +
                " (expected F32, F16 or BF16)");
  std::vector<uint8_t> bytes(n * ggml_type_size(type));
  if (type == GgmlType::F32) {
    if (n) std::memcpy(bytes.data(), src, n * sizeof(float));
    return bytes;
  }
  for (size_t i = 0; i < n; ++i) {
    const uint16_t h = type == GgmlType::F16 ? fp32_to_fp16(src[i]) : fp32_to_bf16(src[i]);
    std::memcpy(bytes.data() + 2 * i, &h, 2);
  }
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// Dequantization

namespace {

using io::rd16;
using io::rd32;
inline float rdh(const uint8_t* p) {
  return fp16_to_fp32(rd16(p));
}

void deq_f32(const uint8_t* s, float* y, int64_t n) {
  std::memcpy(y, s, static_cast<size_t>(n) * sizeof(float));
}

void deq_f16(const uint8_t* s, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(rd16(s + 2 * i));
}

void deq_bf16(const uint8_t* s, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_fp32(rd16(s + 2 * i));
}

void deq_q4_0(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 18, y += 32) {
    const float d = rdh(b);
    const uint8_t* qs = b + 2;
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
      y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

void deq_q4_1(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 20, y += 32) {
    const float d = rdh(b);
    const float m = rdh(b + 2);
    const uint8_t* qs = b + 4;
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
      y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

void deq_q5_0(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 22, y += 32) {
    const float d = rdh(b);
    const uint32_t qh = rd32(b + 2);
    const uint8_t* qs = b + 6;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = static_cast<float>(lo - 16) * d;
      y[j + 16] = static_cast<float>(hi - 16) * d;
    }
  }
}

void deq_q5_1(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 24, y += 32) {
    const float d = rdh(b);
    const float m = rdh(b + 2);
    const uint32_t qh = rd32(b + 4);
    const uint8_t* qs = b + 8;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = static_cast<float>(lo) * d + m;
      y[j + 16] = static_cast<float>(hi) * d + m;
    }
  }
}

void deq_q8_0(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 34, y += 32) {
    const float d = rdh(b);
    const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
  }
}

void deq_q8_1(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 36, y += 32) {
    const float d = rdh(b);
    const int8_t* qs = reinterpret_cast<const int8_t*>(b + 4);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
  }
}

void deq_q2_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 84) {
    const uint8_t* scales = b;
    const uint8_t* q = b + 16;
    const float d = rdh(b + 80);
    const float dmin = rdh(b + 82);
    int is = 0;
    for (int half = 0; half < 2; ++half, q += 32) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int part = 0; part < 2; ++part, ++is, y += 16) {
          const float dl = d * static_cast<float>(scales[is] & 0x0f);
          const float ml = dmin * static_cast<float>(scales[is] >> 4);
          const uint8_t* qq = q + 16 * part;
          for (int l = 0; l < 16; ++l) y[l] = dl * static_cast<float>((qq[l] >> shift) & 3) - ml;
        }
      }
    }
  }
}

// The 16 6-bit scales of Q3_K: low 4 bits in bytes 0..7 (low nibbles for 0..7, high nibbles for
// 8..15), high 2 bits in bytes 8..11 (scale i uses bits 2*(i/4) of byte 8 + i%4).
inline void q3k_scales(const uint8_t* s, int8_t out[16]) {
  for (int i = 0; i < 16; ++i) {
    const int lo = i < 8 ? (s[i] & 0x0f) : (s[i - 8] >> 4);
    const int hi = (s[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
    out[i] = static_cast<int8_t>((lo | (hi << 4)) - 32);
  }
}

void deq_q3_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 110) {
    const uint8_t* hmask = b;
    const uint8_t* q = b + 32;
    int8_t sc[16];
    q3k_scales(b + 96, sc);
    const float d = rdh(b + 108);
    int is = 0;
    int bit = 0;
    for (int half = 0; half < 2; ++half, q += 32) {
      for (int shift = 0; shift < 8; shift += 2, ++bit) {
        for (int part = 0; part < 2; ++part, ++is, y += 16) {
          const float dl = d * static_cast<float>(sc[is]);
          const uint8_t* qq = q + 16 * part;
          const uint8_t* hm = hmask + 16 * part;
          for (int l = 0; l < 16; ++l) {
            const int v = ((qq[l] >> shift) & 3) - (((hm[l] >> bit) & 1) ? 0 : 4);
            y[l] = dl * static_cast<float>(v);
          }
        }
      }
    }
  }
}

// Scale and min j (0..7) of Q4_K/Q5_K from the 12 packed bytes: for j < 4 the low 6 bits of bytes
// j and j + 4; for j >= 4 a nibble of byte j + 4 plus the top 2 bits of bytes j - 4 and j.
inline void k4_scale_min(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Scales and mins of the two 32-value sub-blocks 2j and 2j + 1 of a Q4_K/Q5_K super-block.
struct SubScales {
  float d1, m1, d2, m2;
};
SubScales k4_sub_scales(int j, float d, float dmin, const uint8_t* scales) {
  int sc1, m1, sc2, m2;
  k4_scale_min(2 * j, scales, &sc1, &m1);
  k4_scale_min(2 * j + 1, scales, &sc2, &m2);
  return {d * static_cast<float>(sc1), dmin * static_cast<float>(m1), d * static_cast<float>(sc2),
          dmin * static_cast<float>(m2)};
}

void deq_q4_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 144) {
    const float d = rdh(b);
    const float dmin = rdh(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* q = b + 16;
    for (int j = 0; j < 4; ++j, q += 32, y += 64) {
      const auto [d1, m1, d2, m2] = k4_sub_scales(j, d, dmin, scales);
      for (int l = 0; l < 32; ++l) y[l] = d1 * static_cast<float>(q[l] & 0x0f) - m1;
      for (int l = 0; l < 32; ++l) y[l + 32] = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void deq_q5_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 176) {
    const float d = rdh(b);
    const float dmin = rdh(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* qh = b + 16;
    const uint8_t* q = b + 48;
    for (int j = 0; j < 4; ++j, q += 32, y += 64) {
      const auto [d1, m1, d2, m2] = k4_sub_scales(j, d, dmin, scales);
      const int b1 = 2 * j, b2 = 2 * j + 1;
      for (int l = 0; l < 32; ++l) {
        y[l] = d1 * static_cast<float>((q[l] & 0x0f) | (((qh[l] >> b1) & 1) << 4)) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        y[l + 32] = d2 * static_cast<float>((q[l] >> 4) | (((qh[l] >> b2) & 1) << 4)) - m2;
      }
    }
  }
}

void deq_q6_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 210) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    const float d = rdh(b + 208);
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
        y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

void deq_q8_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 292, y += 256) {
    float d;
    std::memcpy(&d, b, 4);
    const int8_t* qs = reinterpret_cast<const int8_t*>(b + 4);
    for (int j = 0; j < 256; ++j) y[j] = d * static_cast<float>(qs[j]);
  }
}

}  // namespace

void dequantize(GgmlType type, const void* src, float* dst, int64_t n) {
  const auto& info = supported_info(type);
  if (n < 0 || n % info.block_size != 0) {
    throw Error("dequantize " + std::to_string(n) + " elements of type " +
                ggml_type_name(static_cast<uint32_t>(type)) + " (expected a multiple of " +
                std::to_string(info.block_size) + ")");
  }
  if (n == 0) return;
  const auto* s = static_cast<const uint8_t*>(src);
  const int64_t nb = n / info.block_size;
  switch (type) {
    case GgmlType::F32:
      return deq_f32(s, dst, n);
    case GgmlType::F16:
      return deq_f16(s, dst, n);
    case GgmlType::BF16:
      return deq_bf16(s, dst, n);
    case GgmlType::Q4_0:
      return deq_q4_0(s, dst, nb);
    case GgmlType::Q4_1:
      return deq_q4_1(s, dst, nb);
    case GgmlType::Q5_0:
      return deq_q5_0(s, dst, nb);
    case GgmlType::Q5_1:
      return deq_q5_1(s, dst, nb);
    case GgmlType::Q8_0:
      return deq_q8_0(s, dst, nb);
    case GgmlType::Q8_1:
      return deq_q8_1(s, dst, nb);
    case GgmlType::Q2_K:
      return deq_q2_k(s, dst, nb);
    case GgmlType::Q3_K:
      return deq_q3_k(s, dst, nb);
    case GgmlType::Q4_K:
      return deq_q4_k(s, dst, nb);
    case GgmlType::Q5_K:
      return deq_q5_k(s, dst, nb);
    case GgmlType::Q6_K:
      return deq_q6_k(s, dst, nb);
    case GgmlType::Q8_K:
      return deq_q8_k(s, dst, nb);
  }
  throw Error("dequantize: unhandled type " + ggml_type_name(static_cast<uint32_t>(type)));
}

}  // namespace longrope
