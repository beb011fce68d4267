// bf16 GEMM and attention (AVX512_BF16) against their scalar references.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "engine/kernels/bf16_internal.h"
#include "longrope/kernels.h"
#include "longrope/quant.h"
#include "test_paths.h"

namespace lk = longrope::kernels;

namespace {

#define SKIP_WITHOUT_BF16()                                    \
  do {                                                         \
    LONGROPE_REQUIRE_CPU_VARIANT(lk::CpuVariant::kAvx512Bf16); \
  } while (0)

float bf16_value(uint16_t h) {
  const uint32_t x = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
}

using longrope::test::rnd;

std::vector<uint16_t> rnd_bf16(size_t n, uint64_t seed) {
  const auto f = rnd(n, seed);
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = longrope::fp32_to_bf16(f[i]);
  return v;
}

// Runs f with the OpenMP thread count set to n.
template <class F>
void with_threads(int n, F&& f) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(n);
  f();
  omp_set_num_threads(saved);
}

struct GemmCase {
  int64_t M, N, K, lda, ldb, ldc;
  float beta;
};

// Largest |C - R| / (sum_k |A B| + |beta C0|) over the matrix, after checking that entries
// outside the M x N window of C are untouched.
using GemmFn = void (*)(int64_t, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*,
                        int64_t, float*, int64_t, float);

double gemm_rel_error(const GemmCase& c, uint64_t seed, GemmFn gemm) {
  const auto A = rnd_bf16(size_t(c.M * c.lda), seed), B = rnd_bf16(size_t(c.N * c.ldb), seed + 1);
  std::vector<float> C0 = rnd(size_t(c.M * c.ldc), seed + 2);
  if (c.beta == 0.0f) C0.assign(C0.size(), std::numeric_limits<float>::quiet_NaN());
  std::vector<float> C = C0, R = C0;
  gemm(c.M, c.N, c.K, A.data(), c.lda, B.data(), c.ldb, C.data(), c.ldc, c.beta);
  lk::gemm_bf16_nt_scalar(c.M, c.N, c.K, A.data(), c.lda, B.data(), c.ldb, R.data(), c.ldc, c.beta);
  double worst = 0.0;
  for (int64_t i = 0; i < c.M; ++i) {
    for (int64_t j = c.N; j < c.ldc; ++j) {
      const float x = C[i * c.ldc + j], x0 = C0[i * c.ldc + j];
      EXPECT_TRUE(std::memcmp(&x, &x0, sizeof x) == 0) << "padding of C written at " << i;
    }
    for (int64_t j = 0; j < c.N; ++j) {
      double mag = c.beta == 0.0f ? 0.0 : std::fabs(double(c.beta) * C0[i * c.ldc + j]);
      for (int64_t k = 0; k < c.K; ++k)
        mag += std::fabs(double(bf16_value(A[i * c.lda + k])) * bf16_value(B[j * c.ldb + k]));
      const double err = std::fabs(double(C[i * c.ldc + j]) - R[i * c.ldc + j]);
      EXPECT_TRUE(std::isfinite(C[i * c.ldc + j])) << i << "," << j;
      if (mag > 0.0)
        worst = std::max(worst, err / mag);
      else
        EXPECT_EQ(C[i * c.ldc + j], 0.0f);
    }
  }
  return worst;
}

}  // namespace

TEST(EngineBf16Kernels, GemmMatchesScalar) {
  SKIP_WITHOUT_BF16();
  const std::vector<GemmCase> cases = {
      {1, 1, 1, 1, 1, 1, 0.0f},
      {1, 1, 1, 3, 2, 4, 1.0f},
      {37, 53, 71, 71, 71, 53, 0.0f},
      {37, 53, 71, 80, 75, 60, 1.0f},
      {17, 172, 64, 64, 64, 172, 0.0f},
      {17, 64, 64, 70, 66, 70, 1.0f},
      {300, 576, 576, 576, 576, 576, 0.0f},
      {300, 576, 576, 600, 590, 580, 1.0f},
      {29, 2100, 385, 385, 385, 2100, 1.0f},
      {15, 33, 1000, 1001, 1003, 40, 0.5f},
      {3, 5, 0, 1, 1, 5, 1.0f},
      {3, 5, 0, 1, 1, 5, 0.0f},
      // Past 512 rows (B packed once and shared by the threads), several K and N blocks.
      {530, 130, 1541, 1545, 1543, 133, 1.0f},
      {700, 2100, 97, 97, 99, 2100, 0.0f},
  };
  double worst = 0.0;
  uint64_t seed = 100;
  // gemm_bf16_nt (oneDNN when the build has it) and the project's own kernel.
  for (GemmFn fn : {GemmFn(&lk::gemm_bf16_nt), GemmFn(&lk::gemm_bf16_nt_own)})
    for (const auto& c : cases) {
      const double e = gemm_rel_error(c, seed += 3, fn);
      worst = std::max(worst, e);
      // Measured: at most 1.8e-7 (FP32 accumulation of exact bf16 products).
      EXPECT_LT(e, 5e-7) << c.M << "x" << c.N << "x" << c.K << " beta " << c.beta;
    }
  std::printf("gemm_bf16_nt: largest error / sum|a*b| = %.3g\n", worst);
}

// The own kernel is bit-identical for any thread count; oneDNN (which may split work
// differently by thread count) is bit-identical between runs with the same thread count.
TEST(EngineBf16Kernels, GemmIndependentOfThreadCount) {
  SKIP_WITHOUT_BF16();
  for (auto [M, N, K] : {std::tuple{300, 576, 576}, {64, 2100, 577}, {1000, 192, 1536}}) {
    const auto A = rnd_bf16(size_t(M * K), 7), B = rnd_bf16(size_t(N * K), 8);
    std::vector<float> C1(size_t(M * N), 1.0f), C2 = C1, D1 = C1, D2 = C1;
    with_threads(
        1, [&] { lk::gemm_bf16_nt_own(M, N, K, A.data(), K, B.data(), K, C1.data(), N, 1.0f); });
    with_threads(
        2, [&] { lk::gemm_bf16_nt_own(M, N, K, A.data(), K, B.data(), K, C2.data(), N, 1.0f); });
    EXPECT_EQ(0, std::memcmp(C1.data(), C2.data(), C1.size() * sizeof(float))) << M << "x" << N;
    with_threads(2,
                 [&] { lk::gemm_bf16_nt(M, N, K, A.data(), K, B.data(), K, D1.data(), N, 1.0f); });
    with_threads(2,
                 [&] { lk::gemm_bf16_nt(M, N, K, A.data(), K, B.data(), K, D2.data(), N, 1.0f); });
    EXPECT_EQ(0, std::memcmp(D1.data(), D2.data(), D1.size() * sizeof(float))) << M << "x" << N;
  }
}

namespace {

struct AttnCase {
  int64_t n, p0;
  int n_head, n_head_kv, hd;
};

struct AttnData {
  std::vector<float> q, kf, vf, out;
  std::vector<uint16_t> k, v;
  int64_t kv_cap, q_stride, out_stride;
};

// Random q and bf16 K/V; cache rows past p0 + n hold NaN (never read). Strides are padded.
AttnData make_attn(const AttnCase& c, uint64_t seed) {
  AttnData d;
  d.kv_cap = c.p0 + c.n + 5;
  d.q_stride = int64_t(c.n_head) * c.hd + 3;
  d.out_stride = int64_t(c.n_head) * c.hd + 7;
  d.q = rnd(size_t(c.n * d.q_stride), seed);
  const size_t kv = size_t(c.n_head_kv * d.kv_cap * c.hd);
  d.k = rnd_bf16(kv, seed + 1);
  d.v = rnd_bf16(kv, seed + 2);
  for (int h = 0; h < c.n_head_kv; ++h)
    for (int64_t p = c.p0 + c.n; p < d.kv_cap; ++p)
      for (int i = 0; i < c.hd; ++i) {
        d.k[(h * d.kv_cap + p) * c.hd + i] = 0x7fc0;
        d.v[(h * d.kv_cap + p) * c.hd + i] = 0x7fc0;
      }
  d.kf.resize(kv);
  d.vf.resize(kv);
  for (size_t i = 0; i < kv; ++i) {
    d.kf[i] = bf16_value(d.k[i]);
    d.vf[i] = bf16_value(d.v[i]);
  }
  d.out.assign(size_t(c.n * d.out_stride), -7.0f);
  return d;
}

std::vector<float> run_bf16(const AttnCase& c, AttnData& d) {
  std::vector<float> out = d.out;
  lk::AttentionArgsBf16 a{d.q.data(),
                          d.q_stride,
                          d.k.data(),
                          d.v.data(),
                          d.kv_cap,
                          out.data(),
                          d.out_stride,
                          c.n,
                          c.p0,
                          c.n_head,
                          c.n_head_kv,
                          c.hd,
                          1.0f / std::sqrt(float(c.hd))};
  lk::attention_bf16(a);
  return out;
}

}  // namespace

// A NaN score reaches the output on every path (the clamped exp used to map NaN to 2^-127).
TEST(EngineBf16Kernels, AttentionPropagatesNaN) {
  SKIP_WITHOUT_BF16();
  for (const AttnCase& c : {AttnCase{1, 37, 9, 3, 64}, AttnCase{64, 0, 8, 4, 8},
                            AttnCase{300, 37, 4, 1, 32}, AttnCase{2, 2500, 9, 3, 64}}) {
    AttnData d = make_attn(c, 900);
    d.q[size_t((c.n - 1) * d.q_stride + 2)] = NAN;  // last row, head 0
    const std::vector<float> out = run_bf16(c, d);
    EXPECT_TRUE(std::isnan(out[size_t((c.n - 1) * d.out_stride)]))
        << "n " << c.n << " p0 " << c.p0 << " hd " << c.hd;
    EXPECT_TRUE(std::isfinite(out[size_t((c.n - 1) * d.out_stride + c.hd)]));  // head 1
  }
}

TEST(EngineBf16Kernels, AttentionMatchesScalar) {
  SKIP_WITHOUT_BF16();
  std::vector<AttnCase> cases;
  for (auto [H, KV, hd] : {std::tuple{9, 3, 64}, {8, 4, 8}})
    for (int64_t n : {1, 5, 64, 300, 1000})
      for (int64_t p0 : {0, 37}) cases.push_back({n, p0, H, KV, hd});
  // Keys split into chunks (short inputs against a long cache), odd head_dim, no grouping.
  cases.push_back({1, 3000, 9, 3, 64});
  cases.push_back({40, 2000, 9, 3, 64});
  cases.push_back({20, 1500, 8, 4, 8});
  cases.push_back({70, 11, 2, 2, 15});
  cases.push_back({20, 50, 4, 2, 128});
  // Decode path (at most 6 (query, head) rows per kv head, head_dim a multiple of 64).
  cases.push_back({2, 37, 9, 3, 64});
  cases.push_back({2, 2500, 9, 3, 64});
  cases.push_back({3, 100, 8, 4, 128});
  cases.push_back({1, 200, 4, 4, 64});
  // oneDNN path (n >= 128, or n >= 16 against a long cache; head_dim a multiple of 16 from 32):
  // several key blocks, partial query and key blocks, keys past the written cache padded.
  cases.push_back({700, 450, 9, 3, 64});
  cases.push_back({129, 2000, 4, 2, 128});
  cases.push_back({300, 37, 4, 1, 32});
  cases.push_back({150, 5, 2, 2, 80});
  cases.push_back({17, 1200, 6, 2, 64});
  double worst = 0.0;
  uint64_t seed = 500;
  for (const auto& c : cases) {
    AttnData d = make_attn(c, seed += 3);
    const std::vector<float> out = run_bf16(c, d);
    std::vector<float> ref = d.out;
    lk::AttentionArgs a{d.q.data(),
                        d.q_stride,
                        d.kf.data(),
                        d.vf.data(),
                        d.kv_cap,
                        ref.data(),
                        d.out_stride,
                        c.n,
                        c.p0,
                        c.n_head,
                        c.n_head_kv,
                        c.hd,
                        1.0f / std::sqrt(float(c.hd))};
    lk::attention_scalar(a);
    double err = 0.0;
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_TRUE(std::isfinite(out[i])) << i;
      err = std::max(err, double(std::fabs(out[i] - ref[i])));
    }
    worst = std::max(worst, err);
    // Measured: at most 7.2e-3 (unit-scale q, K, V: bf16 rounding of q and of the probabilities);
    // at most 5.5e-3 on the oneDNN path.
    EXPECT_LT(err, 1.5e-2) << "n " << c.n << " p0 " << c.p0 << " heads " << c.n_head << "/"
                           << c.n_head_kv << " hd " << c.hd;
  }
  std::printf("attention_bf16: largest absolute error = %.3g\n", worst);
}

TEST(EngineBf16Kernels, AttentionIndependentOfThreadCount) {
  SKIP_WITHOUT_BF16();
  for (const AttnCase& c :
       {AttnCase{300, 37, 9, 3, 64}, AttnCase{1, 3000, 9, 3, 64}, AttnCase{40, 2000, 8, 4, 8},
        AttnCase{2, 2500, 9, 3, 64}, AttnCase{1000, 37, 9, 3, 64}, AttnCase{129, 600, 4, 2, 128},
        AttnCase{17, 1200, 6, 2, 64}}) {
    AttnData d = make_attn(c, 77);
    std::vector<float> o1, o2;
    with_threads(1, [&] { o1 = run_bf16(c, d); });
    with_threads(2, [&] { o2 = run_bf16(c, d); });
    EXPECT_EQ(0, std::memcmp(o1.data(), o2.data(), o1.size() * sizeof(float))) << c.n;
  }
}
