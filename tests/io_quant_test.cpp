// Dequantization checked against hand-built blocks: each test picks the logical contents of a
// block (scales, mins, quants), packs them into bytes following the ggml layout with its own
// packer, and compares dequantize() with the value computed from the logical contents.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "longrope/error.h"
#include "longrope/quant.h"

namespace longrope {
namespace {

// fp16 bit patterns of exactly known values (so the test does not depend on fp32_to_fp16).
struct Half {
  uint16_t bits;
  float value;
};
constexpr Half kHalves[] = {{0x3C00, 1.0f},     {0x3800, 0.5f}, {0x3E00, 1.5f},   {0xBA00, -0.75f},
                            {0x2800, 0.03125f}, {0x4000, 2.0f}, {0xB400, -0.25f}, {0x4500, 5.0f}};

void put16(std::vector<uint8_t>& b, size_t at, uint16_t v) {
  b[at] = static_cast<uint8_t>(v & 0xff);
  b[at + 1] = static_cast<uint8_t>(v >> 8);
}

std::vector<float> run(GgmlType t, const std::vector<uint8_t>& bytes, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n), std::nanf(""));
  dequantize(t, bytes.data(), out.data(), n);
  return out;
}

void expect_all_eq(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k) {
    ASSERT_EQ(got[k], want[k]) << "element " << k;
  }
}

class IoQuant : public ::testing::Test {
 protected:
  std::mt19937 rng{1234};
  int rnd(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
  Half half() { return kHalves[rnd(0, std::size(kHalves) - 1)]; }
};

TEST_F(IoQuant, TypeNamesAndSizes) {
  EXPECT_EQ(ggml_type_name(0), "F32");
  EXPECT_EQ(ggml_type_name(12), "Q4_K");
  EXPECT_EQ(ggml_type_name(30), "BF16");
  EXPECT_EQ(ggml_type_name(16), "IQ2_XXS");
  EXPECT_EQ(ggml_type_name(4), "type 4");
  EXPECT_EQ(ggml_type_name(1000), "type 1000");
  struct Row {
    GgmlType t;
    int64_t bs;
    size_t ts;
  };
  const Row rows[] = {
      {GgmlType::F32, 1, 4},      {GgmlType::F16, 1, 2},      {GgmlType::BF16, 1, 2},
      {GgmlType::Q4_0, 32, 18},   {GgmlType::Q4_1, 32, 20},   {GgmlType::Q5_0, 32, 22},
      {GgmlType::Q5_1, 32, 24},   {GgmlType::Q8_0, 32, 34},   {GgmlType::Q8_1, 32, 36},
      {GgmlType::Q2_K, 256, 84},  {GgmlType::Q3_K, 256, 110}, {GgmlType::Q4_K, 256, 144},
      {GgmlType::Q5_K, 256, 176}, {GgmlType::Q6_K, 256, 210}, {GgmlType::Q8_K, 256, 292}};
  for (const auto& r : rows) {
    SCOPED_TRACE(ggml_type_name(static_cast<uint32_t>(r.t)));
    EXPECT_TRUE(ggml_type_supported(static_cast<uint32_t>(r.t)));
    EXPECT_EQ(ggml_block_size(r.t), r.bs);
    EXPECT_EQ(ggml_type_size(r.t), r.ts);
    EXPECT_EQ(ggml_row_size(r.t, r.bs * 3), r.ts * 3);
    if (r.bs > 1) {
      EXPECT_THROW(ggml_row_size(r.t, r.bs + 1), Error);
    }
  }
  EXPECT_FALSE(ggml_type_supported(16));
  EXPECT_FALSE(ggml_type_supported(4));
  EXPECT_FALSE(ggml_type_supported(999));
  try {
    ggml_block_size(static_cast<GgmlType>(23));
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unsupported tensor type IQ4_XS"), std::string::npos)
        << e.what();
  }
  float out[256];
  uint8_t in[256] = {};
  EXPECT_THROW(dequantize(static_cast<GgmlType>(16), in, out, 256), Error);
  EXPECT_THROW(dequantize(GgmlType::Q4_0, in, out, 31), Error);
}

// ---- fp16 / bf16

float fp16_reference(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exp = (h >> 10) & 31;
  const int mant = h & 1023;
  if (exp == 31)
    return mant ? std::numeric_limits<float>::quiet_NaN()
                : sign * std::numeric_limits<float>::infinity();
  if (exp == 0) return static_cast<float>(sign * std::ldexp(mant, -24));
  return static_cast<float>(sign * std::ldexp(1024 + mant, exp - 25));
}

TEST_F(IoQuant, Fp16AllValuesMatchFormulaAndRoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_fp32(static_cast<uint16_t>(h));
    const float ref = fp16_reference(static_cast<uint16_t>(h));
    if (std::isnan(ref)) {
      ASSERT_TRUE(std::isnan(f)) << h;
      const uint16_t back = fp32_to_fp16(f);
      ASSERT_EQ(back & 0x7c00, 0x7c00) << h;
      ASSERT_NE(back & 0x03ff, 0) << h;
      ASSERT_EQ(back & 0x8000, h & 0x8000) << h;
      continue;
    }
    ASSERT_EQ(f, ref) << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
    ASSERT_EQ(fp32_to_fp16(f), h) << h;
  }
}

TEST_F(IoQuant, Fp16KnownValuesAndRounding) {
  EXPECT_EQ(fp16_to_fp32(0x3C00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0xC000), -2.0f);
  EXPECT_EQ(fp16_to_fp32(0x7BFF), 65504.0f);
  EXPECT_EQ(fp16_to_fp32(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(fp16_to_fp32(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(fp16_to_fp32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7E00)));
  EXPECT_TRUE(std::signbit(fp16_to_fp32(0x8000)));

  EXPECT_EQ(fp32_to_fp16(0.0f), 0x0000);
  EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
  EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7BFF);
  EXPECT_EQ(fp32_to_fp16(65519.0f), 0x7BFF);  // below the halfway point to 65536
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7C00);  // halfway: rounds to even = inf
  EXPECT_EQ(fp32_to_fp16(1e10f), 0x7C00);
  EXPECT_EQ(fp32_to_fp16(-1e10f), 0xFC00);
  EXPECT_EQ(fp32_to_fp16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);      // tie -> even
  EXPECT_EQ(fp32_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);  // tie -> even (up)
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3C01);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);  // tie -> even (zero)
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.5f, -24)), 0x0002);  // tie -> even
  EXPECT_EQ(fp32_to_fp16(std::ldexp(2.5f, -24)), 0x0002);  // tie -> even
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(fp32_to_fp16(-std::ldexp(1.0f, -24)), 0x8001);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1023.5f, -24)), 0x0400);  // rounds up into the normals
  const uint16_t nan = fp32_to_fp16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
}

TEST_F(IoQuant, Bf16ConversionsAndRoundTrip) {
  EXPECT_EQ(bf16_to_fp32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_fp32(0xC040), -3.0f);
  EXPECT_EQ(bf16_to_fp32(0x0001), std::ldexp(1.0f, -133));  // subnormal
  EXPECT_EQ(bf16_to_fp32(0x7F80), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(bf16_to_fp32(0x7FC0)));
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_fp32(static_cast<uint16_t>(h));
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    ASSERT_EQ(bits, h << 16);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(f)))) << h;
    } else {
      ASSERT_EQ(fp32_to_bf16(f), h) << h;
    }
  }
  EXPECT_EQ(fp32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);      // tie -> even
  EXPECT_EQ(fp32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);  // tie -> even (up)
  EXPECT_EQ(fp32_to_bf16(1.0f + std::ldexp(1.0f, -9)), 0x3F80);
  EXPECT_EQ(fp32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds to inf
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(std::nanf("")))));
}

// ---- float types

TEST_F(IoQuant, F32F16Bf16Rows) {
  const std::vector<float> vals = {0.0f, -1.5f, 2.0f, 65504.0f, std::ldexp(1.0f, -24), -0.25f};
  std::vector<uint8_t> f32(vals.size() * 4);
  std::memcpy(f32.data(), vals.data(), f32.size());
  expect_all_eq(run(GgmlType::F32, f32, 6), vals);

  const uint16_t h[] = {0x0000, 0xBE00, 0x4000, 0x7BFF, 0x0001, 0xB400};
  std::vector<uint8_t> f16(12);
  for (int k = 0; k < 6; ++k) put16(f16, 2 * k, h[k]);
  expect_all_eq(run(GgmlType::F16, f16, 6), vals);

  const uint16_t b[] = {0x0000, 0xBFC0, 0x4000, 0x3F80, 0xBE80};
  const std::vector<float> bvals = {0.0f, -1.5f, 2.0f, 1.0f, -0.25f};
  std::vector<uint8_t> bf(10);
  for (int k = 0; k < 5; ++k) put16(bf, 2 * k, b[k]);
  expect_all_eq(run(GgmlType::BF16, bf, 5), bvals);
}

// ---- legacy 32-element blocks. Logical content: q[32] and the block's d (and m).

// Nibble packing: byte j holds element j (low) and element j + 16 (high).
void pack_nibbles(std::vector<uint8_t>& b, size_t at, const int* q) {
  for (int j = 0; j < 16; ++j)
    b[at + j] = static_cast<uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4));
}
// Fifth bits: bit e of a little-endian u32.
void pack_high_bits(std::vector<uint8_t>& b, size_t at, const int* q) {
  uint32_t qh = 0;
  for (int e = 0; e < 32; ++e) qh |= static_cast<uint32_t>((q[e] >> 4) & 1) << e;
  for (int k = 0; k < 4; ++k) b[at + k] = static_cast<uint8_t>(qh >> (8 * k));
}

TEST_F(IoQuant, Q4_0) {
  const int nb = 3;
  std::vector<uint8_t> bytes(18 * nb);
  std::vector<float> want;
  for (int i = 0; i < nb; ++i) {
    int q[32];
    for (int& x : q) x = rnd(0, 15);
    const Half d = half();
    put16(bytes, 18 * i, d.bits);
    pack_nibbles(bytes, 18 * i + 2, q);
    for (int e = 0; e < 32; ++e) want.push_back(static_cast<float>(q[e] - 8) * d.value);
  }
  expect_all_eq(run(GgmlType::Q4_0, bytes, 32 * nb), want);
}

TEST_F(IoQuant, Q4_1) {
  const int nb = 3;
  std::vector<uint8_t> bytes(20 * nb);
  std::vector<float> want;
  for (int i = 0; i < nb; ++i) {
    int q[32];
    for (int& x : q) x = rnd(0, 15);
    const Half d = half(), m = half();
    put16(bytes, 20 * i, d.bits);
    put16(bytes, 20 * i + 2, m.bits);
    pack_nibbles(bytes, 20 * i + 4, q);
    for (int e = 0; e < 32; ++e) want.push_back(static_cast<float>(q[e]) * d.value + m.value);
  }
  expect_all_eq(run(GgmlType::Q4_1, bytes, 32 * nb), want);
}

TEST_F(IoQuant, Q5_0) {
  const int nb = 3;
  std::vector<uint8_t> bytes(22 * nb);
  std::vector<float> want;
  for (int i = 0; i < nb; ++i) {
    int q[32];
    for (int& x : q) x = rnd(0, 31);
    q[0] = 31;
    q[31] = 16;  // high bit set on the last element
    const Half d = half();
    put16(bytes, 22 * i, d.bits);
    pack_high_bits(bytes, 22 * i + 2, q);
    pack_nibbles(bytes, 22 * i + 6, q);
    for (int e = 0; e < 32; ++e) want.push_back(static_cast<float>(q[e] - 16) * d.value);
  }
  expect_all_eq(run(GgmlType::Q5_0, bytes, 32 * nb), want);
}

TEST_F(IoQuant, Q5_1) {
  const int nb = 3;
  std::vector<uint8_t> bytes(24 * nb);
  std::vector<float> want;
  for (int i = 0; i < nb; ++i) {
    int q[32];
    for (int& x : q) x = rnd(0, 31);
    const Half d = half(), m = half();
    put16(bytes, 24 * i, d.bits);
    put16(bytes, 24 * i + 2, m.bits);
    pack_high_bits(bytes, 24 * i + 4, q);
    pack_nibbles(bytes, 24 * i + 8, q);
    for (int e = 0; e < 32; ++e) want.push_back(static_cast<float>(q[e]) * d.value + m.value);
  }
  expect_all_eq(run(GgmlType::Q5_1, bytes, 32 * nb), want);
}

TEST_F(IoQuant, Q8_0AndQ8_1) {
  const int nb = 3;
  std::vector<uint8_t> b0(34 * nb), b1(36 * nb);
  std::vector<float> want;
  for (int i = 0; i < nb; ++i) {
    const Half d = half();
    put16(b0, 34 * i, d.bits);
    put16(b1, 36 * i, d.bits);
    put16(b1, 36 * i + 2, 0x7777);  // s: ignored
    for (int e = 0; e < 32; ++e) {
      const int q = e == 0 ? -128 : e == 1 ? 127 : rnd(-128, 127);
      b0[34 * i + 2 + e] = static_cast<uint8_t>(static_cast<int8_t>(q));
      b1[36 * i + 4 + e] = static_cast<uint8_t>(static_cast<int8_t>(q));
      want.push_back(static_cast<float>(q) * d.value);
    }
  }
  expect_all_eq(run(GgmlType::Q8_0, b0, 32 * nb), want);
  expect_all_eq(run(GgmlType::Q8_1, b1, 32 * nb), want);
}

// ---- k-quants. Logical content per 256-element super-block.
// Element e belongs to sub-block e / 16 (Q2_K, Q3_K, Q6_K) or e / 32 (Q4_K, Q5_K).
// In Q2_K/Q3_K, element e = 128 n + 32 j + l (l < 32) keeps its 2 low bits in bits 2j..2j+1 of
// qs[32 n + l]; Q3_K's third bit is bit 4n + j of hmask[l].

TEST_F(IoQuant, Q2_K) {
  const int nb = 2;
  std::vector<uint8_t> bytes(84 * nb, 0);
  std::vector<float> want;
  for (int i = 0; i < nb; ++i) {
    uint8_t* b = bytes.data() + 84 * i;
    int sc[16], mn[16], q[256];
    for (int k = 0; k < 16; ++k) sc[k] = rnd(0, 15), mn[k] = rnd(0, 15);
    for (int& x : q) x = rnd(0, 3);
    const Half d = half(), dmin = half();
    for (int k = 0; k < 16; ++k) b[k] = static_cast<uint8_t>(sc[k] | (mn[k] << 4));
    for (int e = 0; e < 256; ++e) {
      const int n = e / 128, j = (e % 128) / 32, l = e % 32;
      b[16 + 32 * n + l] |= static_cast<uint8_t>(q[e] << (2 * j));
    }
    put16(bytes, 84 * i + 80, d.bits);
    put16(bytes, 84 * i + 82, dmin.bits);
    for (int e = 0; e < 256; ++e) {
      want.push_back(d.value * static_cast<float>(sc[e / 16]) * static_cast<float>(q[e]) -
                     dmin.value * static_cast<float>(mn[e / 16]));
    }
  }
  expect_all_eq(run(GgmlType::Q2_K, bytes, 256 * nb), want);
}

// Q3_K's 16 6-bit scales: the low 4 bits of scale k in byte k % 8 (low nibble for k < 8, high
// nibble for k >= 8), the high 2 bits in byte 8 + k % 4 at bit 2 * (k / 4).
void pack_q3k_scales(uint8_t* s, const int* s6) {
  for (int k = 0; k < 12; ++k) s[k] = 0;
  for (int k = 0; k < 16; ++k) {
    s[k % 8] |= static_cast<uint8_t>((s6[k] & 15) << (k < 8 ? 0 : 4));
    s[8 + k % 4] |= static_cast<uint8_t>(((s6[k] >> 4) & 3) << (2 * (k / 4)));
  }
}

TEST_F(IoQuant, Q3_K) {
  const int nb = 2;
  std::vector<uint8_t> bytes(110 * nb, 0);
  std::vector<float> want;
  for (int i = 0; i < nb; ++i) {
    uint8_t* b = bytes.data() + 110 * i;
    int s6[16], v[256];
    for (int& x : s6) x = rnd(0, 63);
    s6[0] = 0;
    s6[15] = 63;
    for (int& x : v) x = rnd(-4, 3);
    for (int e = 0; e < 256; ++e) {
      const int n = e / 128, j = (e % 128) / 32, l = e % 32;
      const int u = v[e] + 4;  // 0..7: bit 2 -> hmask set, bits 0..1 -> qs
      b[32 + 32 * n + l] |= static_cast<uint8_t>((u & 3) << (2 * j));
      if (u & 4) b[l] |= static_cast<uint8_t>(1 << (4 * n + j));
    }
    pack_q3k_scales(b + 96, s6);
    const Half d = half();
    put16(bytes, 110 * i + 108, d.bits);
    for (int e = 0; e < 256; ++e) {
      want.push_back(d.value * static_cast<float>(s6[e / 16] - 32) * static_cast<float>(v[e]));
    }
  }
  expect_all_eq(run(GgmlType::Q3_K, bytes, 256 * nb), want);
}

// Q4_K/Q5_K scales and mins (6 bits, 8 of each) in 12 bytes: for k < 4 the low 6 bits of byte k
// (scale) and byte k + 4 (min); for k >= 4 the low 4 bits in byte k + 4 (scale in the low
// nibble, min in the high) and the high 2 bits in the top bits of byte k - 4 (scale) and byte k
// (min).
void pack_k4_scales(uint8_t* s, const int* sc, const int* mn) {
  for (int k = 0; k < 12; ++k) s[k] = 0;
  for (int k = 0; k < 4; ++k) {
    s[k] = static_cast<uint8_t>((sc[k] & 63) | ((sc[k + 4] >> 4) << 6));
    s[k + 4] = static_cast<uint8_t>((mn[k] & 63) | ((mn[k + 4] >> 4) << 6));
    s[k + 8] = static_cast<uint8_t>((sc[k + 4] & 15) | ((mn[k + 4] & 15) << 4));
  }
}

// Q4_K/Q5_K quants: element e = 64 c + r keeps its low 4 bits in qs[32 c + r % 32] (low nibble for
// r < 32, high nibble otherwise); Q5_K's fifth bit is bit 2c + (r >= 32) of qh[r % 32].
TEST_F(IoQuant, Q4_K) {
  const int nb = 2;
  std::vector<uint8_t> bytes(144 * nb, 0);
  std::vector<float> want;
  for (int i = 0; i < nb; ++i) {
    uint8_t* b = bytes.data() + 144 * i;
    int sc[8], mn[8], q[256];
    for (int k = 0; k < 8; ++k) sc[k] = rnd(0, 63), mn[k] = rnd(0, 63);
    sc[7] = 63;
    mn[5] = 63;
    for (int& x : q) x = rnd(0, 15);
    pack_k4_scales(b + 4, sc, mn);
    for (int e = 0; e < 256; ++e) {
      const int c = e / 64, r = e % 64;
      b[16 + 32 * c + r % 32] |= static_cast<uint8_t>(q[e] << (r < 32 ? 0 : 4));
    }
    const Half d = half(), dmin = half();
    put16(bytes, 144 * i, d.bits);
    put16(bytes, 144 * i + 2, dmin.bits);
    for (int e = 0; e < 256; ++e) {
      want.push_back(d.value * static_cast<float>(sc[e / 32]) * static_cast<float>(q[e]) -
                     dmin.value * static_cast<float>(mn[e / 32]));
    }
  }
  expect_all_eq(run(GgmlType::Q4_K, bytes, 256 * nb), want);
}

TEST_F(IoQuant, Q5_K) {
  const int nb = 2;
  std::vector<uint8_t> bytes(176 * nb, 0);
  std::vector<float> want;
  for (int i = 0; i < nb; ++i) {
    uint8_t* b = bytes.data() + 176 * i;
    int sc[8], mn[8], q[256];
    for (int k = 0; k < 8; ++k) sc[k] = rnd(0, 63), mn[k] = rnd(0, 63);
    for (int& x : q) x = rnd(0, 31);
    pack_k4_scales(b + 4, sc, mn);
    for (int e = 0; e < 256; ++e) {
      const int c = e / 64, r = e % 64;
      b[48 + 32 * c + r % 32] |= static_cast<uint8_t>((q[e] & 15) << (r < 32 ? 0 : 4));
      if (q[e] & 16) b[16 + r % 32] |= static_cast<uint8_t>(1 << (2 * c + (r < 32 ? 0 : 1)));
    }
    const Half d = half(), dmin = half();
    put16(bytes, 176 * i, d.bits);
    put16(bytes, 176 * i + 2, dmin.bits);
    for (int e = 0; e < 256; ++e) {
      want.push_back(d.value * static_cast<float>(sc[e / 32]) * static_cast<float>(q[e]) -
                     dmin.value * static_cast<float>(mn[e / 32]));
    }
  }
  expect_all_eq(run(GgmlType::Q5_K, bytes, 256 * nb), want);
}

// Q6_K: element e = 128 n + 32 k + l (l < 32): low 4 bits in ql[64 n + l + 32 (k & 1)] (low
// nibble for k < 2, high nibble for k >= 2); high 2 bits at bit 2k of qh[32 n + l].
TEST_F(IoQuant, Q6_K) {
  const int nb = 2;
  std::vector<uint8_t> bytes(210 * nb, 0);
  std::vector<float> want;
  for (int i = 0; i < nb; ++i) {
    uint8_t* b = bytes.data() + 210 * i;
    int sc[16], q[256];
    for (int& x : sc) x = rnd(-128, 127);
    sc[3] = -128;
    for (int& x : q) x = rnd(0, 63);
    for (int e = 0; e < 256; ++e) {
      const int n = e / 128, k = (e % 128) / 32, l = e % 32;
      b[64 * n + l + 32 * (k & 1)] |= static_cast<uint8_t>((q[e] & 15) << (k < 2 ? 0 : 4));
      b[128 + 32 * n + l] |= static_cast<uint8_t>((q[e] >> 4) << (2 * k));
    }
    for (int k = 0; k < 16; ++k) b[192 + k] = static_cast<uint8_t>(static_cast<int8_t>(sc[k]));
    const Half d = half();
    put16(bytes, 210 * i + 208, d.bits);
    for (int e = 0; e < 256; ++e) {
      want.push_back(d.value * static_cast<float>(sc[e / 16]) * static_cast<float>(q[e] - 32));
    }
  }
  expect_all_eq(run(GgmlType::Q6_K, bytes, 256 * nb), want);
}

TEST_F(IoQuant, Q8_K) {
  const int nb = 2;
  std::vector<uint8_t> bytes(292 * nb, 0);
  std::vector<float> want;
  for (int i = 0; i < nb; ++i) {
    const float d = i == 0 ? 0.125f : -3.0f;
    std::memcpy(bytes.data() + 292 * i, &d, 4);
    for (int e = 0; e < 256; ++e) {
      const int q = rnd(-128, 127);
      bytes[292 * i + 4 + e] = static_cast<uint8_t>(static_cast<int8_t>(q));
      want.push_back(d * static_cast<float>(q));
    }
    for (int k = 0; k < 32; ++k) bytes[292 * i + 260 + k] = 0xAB;  // bsums: ignored
  }
  expect_all_eq(run(GgmlType::Q8_K, bytes, 256 * nb), want);
}

TEST_F(IoQuant, ZeroElementsIsANoOp) {
  float out = 42.0f;
  dequantize(GgmlType::Q6_K, nullptr, &out, 0);
  EXPECT_EQ(out, 42.0f);
}

}  // namespace
}  // namespace longrope
