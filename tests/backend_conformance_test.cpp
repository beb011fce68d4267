// The backend conformance suite: every operation of a Backend (include/longrope/backend.h),
// forward and backward, called through the backend object, and the CPU kernels beneath the CPU
// backend (include/longrope/kernels.h), run for each backend under test and, for the CPU backend,
// under each CPU variant this CPU supports (kernels::CpuVariantForTesting), against references
// computed here in double precision, each element within a bound that an error model of the
// arithmetic derives from the actual inputs (docs/design.md, "CPU variants and the conformance
// suite"). A new backend joins by adding its Target to targets() below.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "longrope/backend.h"
#include "longrope/error.h"
#include "longrope/kernels.h"
#include "longrope/quant.h"
#include "longrope/train_ops.h"
#include "test_paths.h"
#include "test_weights.h"

namespace longrope::kernels {
// Test names and failure messages show a variant by name.
void PrintTo(CpuVariant v, std::ostream* os) {
  *os << cpu_variant_name(v);
}
}  // namespace longrope::kernels

namespace lk = longrope::kernels;
namespace lt = longrope::train;
using lk::CpuVariant;
using longrope::Backend;
using longrope::GgmlType;

namespace {

// A backend under test: its name, its factory (by arithmetic; throws longrope::Error for an
// arithmetic it cannot run) and the CPU variant in effect while it runs.
using BackendFactory = std::shared_ptr<const Backend> (*)(lk::Compute);
struct Target {
  const char* backend;
  BackendFactory make;
  CpuVariant variant;
};
void PrintTo(const Target& t, std::ostream* os) {
  *os << t.backend << " " << lk::cpu_variant_name(t.variant);
}

// Every backend under test: the CPU backend under each variant this CPU supports. (A CUDA
// backend would add {"cuda", &cuda_backend, lk::cpu_best_variant()}.)
std::vector<Target> targets() {
  std::vector<Target> t;
  for (CpuVariant v : lk::cpu_variants_supported()) t.push_back({"cpu", &longrope::cpu_backend, v});
  return t;
}

// ---- The error model --------------------------------------------------------------------------
//
// FP32 arithmetic in the standard model (Higham, "Accuracy and Stability of Numerical Algorithms",
// 2nd ed., 2.2): fl(a op b) = (a op b)(1 + d), |d| <= u = 2^-24, for + - * / and sqrt. An Err is a
// quantity of a kernel's computation: v, its exact value (computed here in double from the same
// inputs; the double rounding, ~2^-53 relative, is far below every bound), and e, a first-order
// bound on |computed - v| for an FP32 evaluation of the kernel's formula:
//   a + b, a - b   e = ea + eb + u |v|
//   a * b          e = |a| eb + |b| ea + u |v|
//   a / b          e = (ea + |v| eb) / |b| + u |v|
//   sqrt(a)        e = ea / (2 sqrt(a)) + u |v|
//   exp(a)         e = |v| (ea + r): exp(a + d) = exp(a)(1 + d) to first order; r is the
//                  implementation's relative error (fast_exp and exp2_ps: 2e-7, documented in
//                  vec_math.h and bf16_internal.h and tested against std::exp; libm: 2u)
//   log(a)         e = ea / a + r |v|
//   a sum of n terms (Sum): e = sum e_i + (n - 1) u sum |v_i|. Every partial sum, in whatever
//                  order it is formed (blocked, pairwise, SIMD lanes, FMA), is at most sum |v_i|
//                  and each of the n - 1 additions rounds once, so the bound holds for any
//                  summation order a kernel or a library (OpenBLAS, oneDNN) may choose.
// So a K-long FP32 dot product with exact inputs gets e = K u sum |a_i b_i| (K products, K - 1
// additions; an FMA only removes roundings), which with the constant below is the bound
// 2 K 2^-24 sum |a_i b_i|.
//   bf16(a)        e = ea + 2^-8 |v|: rounding to bf16 (8 significant bits, to nearest). A product
//                  of two rounded inputs is then within (2 * 2^-8 + u) |a b| (the 2^-16 of the
//                  second order is below u in the bound's constant), and a K-long dot product of
//                  rounded inputs with FP32 accumulation within (2 * 2^-8 + K u) sum |a_i b_i|.
//   int8 activations (gemv_w's AVX512_VNNI path, one row of Q4_0/Q4_1/Q8_0): x is quantized per
//                  block of 32 with scale d = max|x| / 127 (FP32), q = round(x * (127 / max|x|));
//                  the scale and the product round with relative error 2^-24 each, so
//                  |x - q d| <= d (1/2 + 2^-15).
// Quantized weights enter as the FP32 values io's dequantize() gives (the kernels' decoders are
// bit-identical to it: tests/engine_quant_kernels_test.cpp), so quantization error is not counted.
// A kernel passes when |fast - v| <= kC e for every element. kC = 2 covers the second-order terms
// the first-order bound drops (relative size about (n u)^2 here) and nothing else: a wrong result
// (a wrong key, a missed block, a rounding the model does not allow) exceeds it by orders of
// magnitude.
constexpr double kU = 0x1p-24;    // FP32 unit roundoff
constexpr double kUd = 0x1p-53;   // double unit roundoff
constexpr double kBf16 = 0x1p-8;  // relative error of rounding to bf16
constexpr double kExpRel = 2e-7;  // fast_exp / exp2_ps
constexpr double kLibm = 2 * kU;  // std::exp, std::log on float (within 1 ulp)
constexpr double kC = 2.0;

struct Err {
  double v = 0, e = 0;
};
Err in(double x) {  // an input: exact
  return {x, 0.0};
}
Err add(Err a, Err b, double u = kU) {
  const double v = a.v + b.v;
  return {v, a.e + b.e + u * std::fabs(v)};
}
Err sub(Err a, Err b, double u = kU) {
  const double v = a.v - b.v;
  return {v, a.e + b.e + u * std::fabs(v)};
}
Err mul(Err a, Err b, double u = kU) {
  const double v = a.v * b.v;
  return {v, std::fabs(a.v) * b.e + std::fabs(b.v) * a.e + u * std::fabs(v)};
}
Err div(Err a, Err b, double u = kU) {
  const double v = a.v / b.v;
  return {v, (a.e + std::fabs(v) * b.e) / std::fabs(b.v) + u * std::fabs(v)};
}
Err sqrt_of(Err a, double u = kU) {
  const double v = std::sqrt(a.v);
  return {v, a.e / (2.0 * v) + u * v};
}
Err exp_of(Err a, double rel) {
  const double v = std::exp(a.v);
  return {v, v * (a.e + rel)};
}
Err log_of(Err a, double rel) {
  const double v = std::log(a.v);
  return {v, a.e / a.v + rel * std::fabs(v)};
}
Err bf16(Err a) {
  return {a.v, a.e + kBf16 * std::fabs(a.v)};
}
Err rounded(Err a, double u = kU) {  // a wider result stored in a narrower type
  return {a.v, a.e + u * std::fabs(a.v)};
}

// A sum of terms in any order (see above); `extra` counts additions beyond the n - 1 of the terms
// (tile accumulators that are added into, rescaled and added again).
struct Sum {
  double v = 0, e = 0, abs = 0;
  int64_t n = 0;
  void add(Err t) {
    v += t.v;
    e += t.e;
    abs += std::fabs(t.v);
    ++n;
  }
  Err result(double u = kU, int64_t extra = 0) const {
    return {v, e + double(std::max<int64_t>(n - 1, 0) + extra) * u * abs};
  }
};

// ---- Checking --------------------------------------------------------------------------------

// Largest |fast - v| / (kC e) seen by the test running (printed by each test).
double g_worst = 0.0;

// Passes when |got[i] - want[i].v| <= kC want[i].e for every i.
::testing::AssertionResult within(const std::string& what, const std::vector<double>& got,
                                  const std::vector<Err>& want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure()
           << what << ": " << got.size() << " values for " << want.size() << " references";
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - want[i].v), bound = kC * want[i].e;
    if (!(err <= bound))
      return ::testing::AssertionFailure()
             << what << " [" << i << "]: got " << got[i] << ", reference " << want[i].v
             << ", |error| " << err << " > bound " << bound << " ("
             << lk::cpu_variant_name(lk::cpu_variant()) << ")";
    if (bound > 0) g_worst = std::max(g_worst, err / bound);
  }
  return ::testing::AssertionSuccess();
}

template <class T>
std::vector<double> as_double(const std::vector<T>& x) {
  return std::vector<double>(x.begin(), x.end());
}

// n values from a seeded generator: normal(0, scale).
std::vector<float> normal(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

float bf16_value(uint16_t h) {
  return longrope::bf16_to_fp32(h);
}

std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = longrope::fp32_to_bf16(x[i]);
  return h;
}

// Runs f, which must throw a longrope::Error saying that AVX512_BF16 is missing.
template <class F>
void expect_needs_bf16(F&& f, const char* what) {
  try {
    f();
    ADD_FAILURE() << what << " ran under " << lk::cpu_variant_name(lk::cpu_variant())
                  << ", which lacks AVX512_BF16";
  } catch (const longrope::Error& e) {
    EXPECT_NE(std::string(e.what()).find("AVX512_BF16"), std::string::npos) << e.what();
  }
}

// ---- Test weights ------------------------------------------------------------------------------

float get_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return longrope::fp16_to_fp32(h);
}

// The weights as io's dequantize() gives them (what every kernel must multiply by).
std::vector<float> decoded(const lk::WeightView& W) {
  std::vector<float> r(static_cast<size_t>(W.rows * W.cols));
  for (int64_t i = 0; i < W.rows; ++i)
    longrope::dequantize(W.type, W.data + i * W.row_bytes, r.data() + i * W.cols, W.cols);
  return r;
}

// The offset magnitude of block b of row r on the int8 path: the kernel multiplies q (d q - o)
// forms, so its roundings scale with |w| + |o| (Q4_0: w = d (q - 8), o = 8 |d|; Q4_1:
// w = d q + m, o = |m|; Q8_0: w = d q, o = 0).
double block_offset(const lk::WeightView& W, int64_t r, int64_t b) {
  const uint8_t* blk = W.data + r * W.row_bytes + b * longrope::ggml_type_size(W.type);
  if (W.type == GgmlType::Q4_0) return 8.0 * std::fabs(get_half(blk));
  if (W.type == GgmlType::Q4_1) return std::fabs(get_half(blk + 2));
  return 0.0;
}

const GgmlType kWeightTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0,
                                 GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                                 GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                                 GgmlType::Q6_K};

std::string type_name(GgmlType t) {
  return longrope::ggml_type_name(static_cast<uint32_t>(t));
}

// ---- References -------------------------------------------------------------------------------

enum class Arith { kF32, kBf16Inputs, kInt8X };

// One output of a projection: beta * y0 + sum_k x_k w_k in the given arithmetic. For kInt8X, W
// and r locate the weights' blocks (their offsets).
Err product_ref(const float* x, const float* w, int64_t K, float beta, float y0, Arith arith,
                bool round_w, const lk::WeightView* W = nullptr, int64_t r = 0) {
  Err dot;
  if (arith == Arith::kInt8X) {
    // Quantization of x (per block of 32) and the FP32 roundings of the block sums, which scale
    // with (|w| + o) (|x| + dx): a (K + 8)-long FP32 computation (the scales' products, the
    // blocks' sums of x for Q4_1 and the sum over blocks: fewer than K + 8 roundings).
    double v = 0, eq = 0, mag = 0;
    for (int64_t b = 0; b * 32 < K; ++b) {
      double amax = 0;
      for (int64_t k = 32 * b; k < 32 * b + 32; ++k) amax = std::max(amax, std::fabs(double(x[k])));
      const double dx = amax / 127.0 * (0.5 + 0x1p-15);
      const double o = block_offset(*W, r, b);
      for (int64_t k = 32 * b; k < 32 * b + 32; ++k) {
        v += double(x[k]) * w[k];
        eq += (std::fabs(double(w[k])) + o) * dx;
        mag += (std::fabs(double(w[k])) + o) * (std::fabs(double(x[k])) + dx);
      }
    }
    dot = {v, eq + double(K + 8) * kU * mag};
  } else {
    Sum s;
    for (int64_t k = 0; k < K; ++k) {
      Err a = in(x[k]), b = in(w[k]);
      if (arith == Arith::kBf16Inputs) {
        a = bf16(a);
        if (round_w) b = bf16(b);
      }
      s.add(mul(a, b));
    }
    dot = s.result();
  }
  if (beta == 0.0f) return dot;
  return add(mul(in(beta), in(y0)), dot);
}

// The arithmetic matmul_w / gemv_w use for M rows of W under the variant in effect: up to 8 rows
// go to gemv_w (int8 activations for one row of Q4_0/Q4_1/Q8_0 with AVX512_VNNI, else FP32);
// more rows to the panel GEMM in `compute`.
Arith projection_arith(int64_t M, GgmlType t, lk::Compute compute) {
  if (M <= 8) {
    const bool q8 = t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q8_0;
    return M == 1 && q8 && lk::cpu_has_avx512_vnni() ? Arith::kInt8X : Arith::kF32;
  }
  return compute == lk::Compute::kBF16 ? Arith::kBf16Inputs : Arith::kF32;
}

// Attention of query rows (position pos_i, head h) against keys [0, pos_i]: the reference and its
// bound. K and V hold keys by position (row stride ks, the head's first value at koff). `bf16`:
// Q scaled and rounded to bf16 (K and V are bf16 values given exactly), probabilities rounded to
// bf16 for the product with V; else FP32 throughout.
struct AttnRef {
  std::vector<Err> out;  // hd values
  Err lse;               // natural log of the softmax's denominator (scores scaled)
};
AttnRef attention_ref(const float* q, const float* K, const float* V, int64_t ks, int64_t pos,
                      int hd, double scale, bool bf16_path) {
  const int64_t npos = pos + 1;
  std::vector<Err> s(static_cast<size_t>(npos));
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < npos; ++j) {
    Sum dot;
    for (int d = 0; d < hd; ++d) {
      // The kernels scale q before the product (and fold log2(e) in, a constant rounded once:
      // relative error u on the scale).
      Err qs = mul(in(q[d]), Err{scale, bf16_path ? kU * scale : 0.0});
      if (bf16_path) qs = bf16(qs);
      dot.add(mul(qs, in(K[j * ks + d])));
    }
    s[j] = dot.result();
    mx = std::max(mx, s[j].v);
  }
  // Tiles of at most 64 keys (the smallest of the kernels' tiles, chunks included) and the
  // online softmax's rescalings: at most one per tile, each a factor exp(m_old - m_new) with
  // relative error kExpRel + u |m_old - m_new| + 2u (the subtraction, the product) applied to the
  // earlier keys' weights (a change of the running maximum by the same value in numerator and
  // denominator cancels otherwise); the lazy rescaling of the bf16 kernels lets exponents reach 8.
  const int64_t tiles = (npos + 63) / 64 + 1;
  double amax = 0;
  for (const Err& x : s) amax = std::max(amax, mx - x.v);
  const double rescale = double(tiles) * (kExpRel + kU * (amax + 8.0) + 2 * kU);
  std::vector<Err> p(static_cast<size_t>(npos));
  Sum l;
  for (int64_t j = 0; j < npos; ++j) {
    p[j] = exp_of(sub(s[j], in(mx)), kExpRel);
    p[j].e += p[j].v * rescale;
    l.add(p[j]);
  }
  AttnRef r;
  r.lse = add(in(mx), log_of(l.result(kU, 2 * tiles), kLibm));
  for (int d = 0; d < hd; ++d) {
    Sum num;
    for (int64_t j = 0; j < npos; ++j) {
      // bf16 kernels round the probabilities for the product (the denominator may use either).
      const Err pj = bf16_path ? Err{p[j].v, p[j].e + kBf16 * p[j].v} : p[j];
      num.add(mul(pj, in(V[j * ks + d])));
    }
    Err o = div(num.result(kU, 2 * tiles), l.result(kU, 2 * tiles));
    // The bf16 rounding of a probability in the denominator, where a kernel sums rounded ones,
    // moves the result by at most 2^-8 sum p |out| / l.
    if (bf16_path) o.e += kBf16 * std::fabs(o.v);
    r.out.push_back(o);
  }
  return r;
}

// ---- The suite ---------------------------------------------------------------------------------

std::mutex g_ran_mu;
std::set<int> g_ran;  // variants whose tests ran in this process

std::string variant_list(const std::vector<CpuVariant>& vs) {
  std::string s;
  for (CpuVariant v : vs) s += std::string(s.empty() ? "" : ", ") + lk::cpu_variant_name(v);
  return s;
}

// "BackendConformance: ran portable, avx512, avx512_bf16; this CPU lacks amx".
std::string summary_line() {
  std::vector<CpuVariant> ran, missed, lacks;
  const auto supported = lk::cpu_variants_supported();
  for (CpuVariant v :
       {CpuVariant::kPortable, CpuVariant::kAvx512, CpuVariant::kAvx512Bf16, CpuVariant::kAmx}) {
    const bool did = g_ran.count(int(v)) > 0;
    if (did) ran.push_back(v);
    if (v > lk::cpu_best_variant())
      lacks.push_back(v);
    else if (!did)
      missed.push_back(v);
  }
  std::string line = "BackendConformance: ran " + (ran.empty() ? "nothing" : variant_list(ran));
  if (!missed.empty()) line += "; did not run " + variant_list(missed);
  line +=
      lacks.empty() ? "; this CPU has every variant" : "; this CPU lacks " + variant_list(lacks);
  return line;
}

class SummaryPrinter : public ::testing::Environment {
 public:
  void TearDown() override {
    if (!g_ran.empty()) std::printf("%s\n", summary_line().c_str());
  }
};
[[maybe_unused]] ::testing::Environment* const g_summary =
    ::testing::AddGlobalTestEnvironment(new SummaryPrinter);

class BackendConformance : public ::testing::TestWithParam<Target> {
 protected:
  void SetUp() override {
    cap_ = std::make_unique<lk::CpuVariantForTesting>(variant());
    g_worst = 0.0;
    std::lock_guard<std::mutex> lock(g_ran_mu);
    g_ran.insert(int(variant()));
  }
  void TearDown() override {
    if (g_worst > 0)
      std::printf("[%s %s] largest |error| / bound %.3g\n", GetParam().backend,
                  lk::cpu_variant_name(variant()), g_worst);
    cap_.reset();
  }
  CpuVariant variant() const { return GetParam().variant; }
  bool has_bf16() const { return variant() >= CpuVariant::kAvx512Bf16; }
  // The backend under test with arithmetic c, or null after checking that it refuses c because
  // the CPU variant lacks AVX512_BF16.
  std::shared_ptr<const Backend> backend(lk::Compute c) const {
    if (c == lk::Compute::kBF16 && !has_bf16()) {
      expect_needs_bf16([&] { GetParam().make(c); }, "a bf16 backend");
      return nullptr;
    }
    return GetParam().make(c);
  }

 private:
  std::unique_ptr<lk::CpuVariantForTesting> cap_;
};

// The features the kernels see follow the variant, and so do the compute paths.
TEST_P(BackendConformance, FeaturesFollowTheVariant) {
  const CpuVariant v = variant();
  EXPECT_EQ(lk::cpu_variant(), v);
  EXPECT_EQ(lk::cpu_has_avx512(), v >= CpuVariant::kAvx512);
  EXPECT_EQ(lk::cpu_has_avx512_bf16(), v >= CpuVariant::kAvx512Bf16);
  EXPECT_EQ(lk::cpu_has_amx(), v >= CpuVariant::kAmx);
  if (v < CpuVariant::kAvx512) {
    EXPECT_FALSE(lk::cpu_has_avx512_vnni());
  }
  EXPECT_EQ(lk::cpu_variant_missing(v), "");
  EXPECT_EQ(lk::compute_of_flag("f32"), lk::Compute::kF32);
  if (has_bf16()) {
    const lk::Compute fastest =
        lk::bf16_outruns_f32(lk::cpu_has_amx(), true, __builtin_cpu_is("amd")) ? lk::Compute::kBF16
                                                                               : lk::Compute::kF32;
    EXPECT_EQ(lk::best_compute(), fastest);
    EXPECT_EQ(lk::compute_of_flag("auto"), fastest);
    EXPECT_NO_THROW(lk::require_compute(lk::Compute::kBF16));
  } else {
    EXPECT_EQ(lk::best_compute(), lk::Compute::kF32);
    EXPECT_EQ(lk::compute_of_flag("auto"), lk::Compute::kF32);
    expect_needs_bf16([] { lk::require_compute(lk::Compute::kBF16); }, "require_compute(bf16)");
    expect_needs_bf16([] { lk::compute_of_flag("bf16"); }, "compute_of_flag(bf16)");
    EXPECT_NE(lk::cpu_variant_missing(CpuVariant::kAvx512Bf16), "");
  }
}

TEST_P(BackendConformance, GemmNt) {
  struct Case {
    int64_t M, N, K, pad;
    float beta;
  };
  for (const Case& c :
       {Case{1, 37, 64, 0, 0.0f}, Case{1, 19, 75, 3, 1.0f}, Case{5, 17, 33, 2, 0.0f},
        Case{64, 48, 200, 0, 1.0f}, Case{130, 70, 576, 5, 0.0f}}) {
    const int64_t lda = c.K + c.pad, ldb = c.K + c.pad, ldc = c.N + c.pad;
    const auto A = normal(static_cast<size_t>(c.M * lda), 11 + c.M);
    const auto B = normal(static_cast<size_t>(c.N * ldb), 12 + c.N);
    const auto C0 = normal(static_cast<size_t>(c.M * ldc), 13);
    auto C = C0;
    lk::gemm_nt(c.M, c.N, c.K, A.data(), lda, B.data(), ldb, C.data(), ldc, c.beta);
    std::vector<double> got;
    std::vector<Err> want;
    for (int64_t i = 0; i < c.M; ++i)
      for (int64_t j = 0; j < c.N; ++j) {
        got.push_back(C[i * ldc + j]);
        want.push_back(product_ref(A.data() + i * lda, B.data() + j * ldb, c.K, c.beta,
                                   C0[i * ldc + j], Arith::kF32, false));
      }
    ASSERT_TRUE(within(
        "gemm_nt " + std::to_string(c.M) + "x" + std::to_string(c.N) + "x" + std::to_string(c.K),
        got, want));
  }
}

// Rows decode exactly as io's dequantize() (bf16: its value rounded to nearest even).
TEST_P(BackendConformance, DequantRows) {
  for (GgmlType t : kWeightTypes) {
    const int64_t bs = longrope::ggml_block_size(t), rows = 5;
    const int64_t cols = bs == 1 ? 37 : bs == 32 ? 160 : 512;
    const auto m = longrope::test::random_weights(t, rows, cols, 21);
    const auto W = longrope::test::weight_view(t, m, rows, cols);
    const auto ref = decoded(W);
    std::vector<float> f(ref.size());
    std::vector<uint16_t> h(ref.size());
    lk::dequant_rows_f32(W, 0, rows, f.data(), cols);
    lk::dequant_rows_bf16(W, 0, rows, h.data(), cols);
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_EQ(std::memcmp(&f[i], &ref[i], 4), 0) << type_name(t) << " [" << i << "]";
      ASSERT_EQ(h[i], longrope::fp32_to_bf16(ref[i])) << type_name(t) << " [" << i << "]";
    }
  }
}

TEST_P(BackendConformance, F32ToBf16) {
  auto x = normal(1000, 31, 100.0f);
  x.push_back(0.0f);
  x.push_back(-0.0f);
  x.push_back(std::numeric_limits<float>::infinity());
  x.push_back(std::numeric_limits<float>::denorm_min());
  std::vector<uint16_t> h(x.size());
  lk::f32_to_bf16(x.data(), h.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(h[i], longrope::fp32_to_bf16(x[i])) << x[i];
}

// matmul_w over every weight encoding, for decode-sized and prefill-sized M, in both compute paths
// (bf16 only where the variant has AVX512_BF16; elsewhere it must refuse).
TEST_P(BackendConformance, MatmulW) {
  for (GgmlType t : kWeightTypes) {
    const int64_t bs = longrope::ggml_block_size(t), N = 24;
    const int64_t K = bs == 1 ? 96 : bs == 32 ? 160 : 512;
    const auto m = longrope::test::random_weights(t, N, K, 41 + int(t));
    const auto W = longrope::test::weight_view(t, m, N, K);
    const auto w = decoded(W);
    for (int64_t M : {1, 3, 8, 9, 40}) {
      for (lk::Compute compute : {lk::Compute::kF32, lk::Compute::kBF16}) {
        for (float beta : {0.0f, 1.0f}) {
          const int64_t lda = K + 3, ldc = N + 2;
          const auto A = normal(static_cast<size_t>(M * lda), 42 + M);
          auto C0 = normal(static_cast<size_t>(M * ldc), 43);
          if (beta == 0.0f)
            for (auto& y : C0) y = std::nanf("");  // must not be read
          auto C = C0;
          const std::string what = "matmul_w " + type_name(t) + " M " + std::to_string(M) + " " +
                                   lk::compute_name(compute) + " beta " + std::to_string(beta);
          if (compute == lk::Compute::kBF16 && M > 8 && !has_bf16()) {
            expect_needs_bf16(
                [&] { lk::matmul_w(M, A.data(), lda, W, C.data(), ldc, beta, compute); },
                what.c_str());
          }
          const auto be = backend(compute);
          if (!be) continue;
          be->matmul_w(M, A.data(), lda, W, C.data(), ldc, beta);
          const Arith arith = projection_arith(M, t, compute);
          std::vector<double> got;
          std::vector<Err> want;
          for (int64_t i = 0; i < M; ++i) {
            for (int64_t j = 0; j < N; ++j) {
              got.push_back(C[i * ldc + j]);
              want.push_back(product_ref(A.data() + i * lda, w.data() + j * K, K, beta,
                                         C0[i * ldc + j], arith, t != GgmlType::BF16, &W, j));
            }
            for (int64_t j = N; j < ldc; ++j)
              ASSERT_EQ(std::memcmp(&C[i * ldc + j], &C0[i * ldc + j], 4), 0)
                  << what << ": wrote past the row";
          }
          ASSERT_TRUE(within(what, got, want));
        }
      }
    }
  }
}

// gemv_w itself, with strided rows and the beta = 1 accumulation.
TEST_P(BackendConformance, GemvW) {
  for (GgmlType t : kWeightTypes) {
    const int64_t bs = longrope::ggml_block_size(t), N = 33;
    const int64_t K = bs == 1 ? 37 : bs == 32 ? 96 : 256;
    const auto m = longrope::test::random_weights(t, N, K, 51 + int(t));
    const auto W = longrope::test::weight_view(t, m, N, K);
    const auto w = decoded(W);
    for (int64_t M : {1, 2, 5, 8}) {
      for (float beta : {0.0f, 1.0f}) {
        const int64_t ldx = K + 1, ldy = N + 4;
        const auto X = normal(static_cast<size_t>(M * ldx), 52 + M);
        const auto Y0 = normal(static_cast<size_t>(M * ldy), 53);
        auto Y = Y0;
        backend(lk::Compute::kF32)->gemv_w(M, X.data(), ldx, W, Y.data(), ldy, beta);
        const Arith arith = projection_arith(M, t, lk::Compute::kF32);
        std::vector<double> got;
        std::vector<Err> want;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            got.push_back(Y[i * ldy + j]);
            want.push_back(product_ref(X.data() + i * ldx, w.data() + j * K, K, beta,
                                       Y0[i * ldy + j], arith, false, &W, j));
          }
        ASSERT_TRUE(within("gemv_w " + type_name(t) + " m " + std::to_string(M), got, want));
      }
    }
  }
}

// bf16 inputs given exactly: only the FP32 accumulation rounds.
TEST_P(BackendConformance, GemmBf16Nt) {
  struct Case {
    int64_t M, N, K, pad;
    float beta;
  };
  for (const Case& c : {Case{1, 40, 64, 0, 0.0f}, Case{7, 33, 96, 2, 1.0f},
                        Case{64, 80, 576, 0, 0.0f}, Case{200, 50, 130, 6, 1.0f}}) {
    const int64_t lda = c.K + c.pad, ldb = c.K + c.pad, ldc = c.N + c.pad;
    const auto A = to_bf16(normal(static_cast<size_t>(c.M * lda), 61 + c.M));
    const auto B = to_bf16(normal(static_cast<size_t>(c.N * ldb), 62 + c.N));
    const auto C0 = normal(static_cast<size_t>(c.M * ldc), 63);
    auto C = C0;
    const std::string what = "gemm_bf16_nt " + std::to_string(c.M) + "x" + std::to_string(c.N) +
                             "x" + std::to_string(c.K);
    auto run = [&] {
      lk::gemm_bf16_nt(c.M, c.N, c.K, A.data(), lda, B.data(), ldb, C.data(), ldc, c.beta);
    };
    if (!has_bf16()) {
      expect_needs_bf16(run, what.c_str());
      continue;
    }
    run();
    std::vector<double> got;
    std::vector<Err> want;
    std::vector<float> a(static_cast<size_t>(c.K)), b(static_cast<size_t>(c.K));
    for (int64_t i = 0; i < c.M; ++i)
      for (int64_t j = 0; j < c.N; ++j) {
        for (int64_t k = 0; k < c.K; ++k) {
          a[k] = bf16_value(A[i * lda + k]);
          b[k] = bf16_value(B[j * ldb + k]);
        }
        got.push_back(C[i * ldc + j]);
        want.push_back(
            product_ref(a.data(), b.data(), c.K, c.beta, C0[i * ldc + j], Arith::kF32, false));
      }
    ASSERT_TRUE(within(what, got, want));
  }
}

TEST_P(BackendConformance, Rmsnorm) {
  const int64_t n = 70, d = 96;
  const float eps = 1e-5f;
  const auto x = normal(static_cast<size_t>(n * d), 71, 3.0f);
  const auto w = normal(static_cast<size_t>(d), 72);
  std::vector<float> y(x.size());
  const auto be = backend(lk::Compute::kF32);
  be->rmsnorm(x.data(), w.data(), y.data(), n, d, eps);
  std::vector<std::vector<Err>> rows(static_cast<size_t>(n));
  std::vector<Err> want;
  for (int64_t r = 0; r < n; ++r) {
    Sum ss;
    for (int64_t i = 0; i < d; ++i) ss.add(mul(in(x[r * d + i]), in(x[r * d + i])));
    const Err inv = div(in(1.0), sqrt_of(add(div(ss.result(), in(double(d))), in(eps))));
    for (int64_t i = 0; i < d; ++i) rows[r].push_back(mul(mul(in(x[r * d + i]), inv), in(w[i])));
    want.insert(want.end(), rows[r].begin(), rows[r].end());
  }
  ASSERT_TRUE(within("rmsnorm", as_double(y), want));
  // Chosen rows, written densely.
  const std::vector<int64_t> pick = {69, 0, 33, 34, 7};
  std::vector<float> yr(pick.size() * d);
  be->rmsnorm_rows(x.data(), pick.data(), int64_t(pick.size()), w.data(), yr.data(), d, eps);
  std::vector<Err> want_rows;
  for (int64_t r : pick) want_rows.insert(want_rows.end(), rows[r].begin(), rows[r].end());
  ASSERT_TRUE(within("rmsnorm_rows", as_double(yr), want_rows));
}

TEST_P(BackendConformance, Swiglu) {
  const auto g0 = normal(5000, 81, 4.0f);
  const auto u = normal(5000, 82);
  auto g = g0;
  backend(lk::Compute::kF32)->swiglu(g.data(), u.data(), int64_t(g.size()));
  std::vector<Err> want;
  for (size_t i = 0; i < g0.size(); ++i) {
    const Err e = exp_of(in(-double(g0[i])), kExpRel);
    want.push_back(mul(div(in(g0[i]), add(in(1.0), e)), in(u[i])));
  }
  ASSERT_TRUE(within("swiglu", as_double(g), want));
}

// Rotated pairs: y0 = x0 c - x1 s, y1 = x0 s + x1 c.
std::vector<Err> rope_ref(const std::vector<float>& x, int64_t n, int64_t stride, int n_heads,
                          int hd, int n_rot, const std::vector<float>& c,
                          const std::vector<float>& s, double sign) {
  std::vector<Err> out;
  const int half = n_rot / 2;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < stride; ++i) {
      const int64_t h = i / hd, k = i % hd;
      if (h >= n_heads || k >= n_rot) {
        out.push_back(in(x[r * stride + i]));
        continue;
      }
      const int64_t j = k / 2, base = r * stride + h * hd + 2 * j;
      const Err a = in(x[base]), b = in(x[base + 1]), cj = in(c[r * half + j]),
                sj = in(sign * s[r * half + j]);
      out.push_back(k % 2 == 0 ? sub(mul(a, cj), mul(b, sj)) : add(mul(a, sj), mul(b, cj)));
    }
  return out;
}

TEST_P(BackendConformance, RopeApply) {
  const int64_t n = 90;
  const int n_heads = 3, hd = 32, n_rot = 24;
  const int64_t stride = n_heads * hd + 5;
  const auto x0 = normal(static_cast<size_t>(n * stride), 91);
  std::vector<float> c(static_cast<size_t>(n * n_rot / 2)), s(c.size());
  for (int64_t r = 0; r < n; ++r)
    for (int j = 0; j < n_rot / 2; ++j) {
      const double th = double(r) * std::pow(10000.0, -2.0 * j / n_rot);
      c[r * n_rot / 2 + j] = float(1.1 * std::cos(th));
      s[r * n_rot / 2 + j] = float(1.1 * std::sin(th));
    }
  auto x = x0, dx = x0;
  const auto be = backend(lk::Compute::kF32);
  be->rope_apply(x.data(), n, stride, n_heads, hd, n_rot, c.data(), s.data());
  ASSERT_TRUE(
      within("rope_apply", as_double(x), rope_ref(x0, n, stride, n_heads, hd, n_rot, c, s, 1.0)));
  // The backward: the transposed rotation.
  be->rope_backward(dx.data(), n, stride, n_heads, hd, n_rot, c.data(), s.data());
  ASSERT_TRUE(within("rope_backward", as_double(dx),
                     rope_ref(x0, n, stride, n_heads, hd, n_rot, c, s, -1.0)));
}

// Attention shapes: decode (one query far into the cache), a short prefill, a grouped prefill
// that continues a cache, a long one (oneDNN's AMX path where the variant has it) and a long one
// that continues a cache over several key tiles (the FP32 AVX-512 prefill path's masks); then two
// with 16 or more blocks of 64 queries, which the FP32 AVX2 prefill takes in the portable variant
// (fewer blocks split their keys and take the sgemm tiles there): a partial last block continuing
// a cache over masked and unmasked tiles, and a head_dim whose dims leave a remainder after the
// micro-kernels' 6.
struct AttnCase {
  int64_t n, p0;
  int n_head, n_head_kv, hd;
};
const AttnCase kAttnCases[] = {{1, 1100, 4, 2, 64}, {3, 130, 6, 2, 64}, {70, 0, 2, 1, 32},
                               {40, 290, 4, 2, 64}, {160, 0, 4, 2, 64}, {100, 300, 6, 2, 64},
                               {200, 70, 8, 2, 64}, {130, 0, 16, 4, 40}};

// Keys and values enter the cache through store_kv (rounded to bf16 there when the backend's
// arithmetic is bf16; the reference sees the cache's values) and the queries of positions
// p0.. attend through the backend's attention.
void check_attention(const Backend& be, const AttnCase& c) {
  const bool bf16_path = be.compute() == lk::Compute::kBF16;
  const int64_t len = c.p0 + c.n, cap = len + 7;
  const int hd = c.hd;
  const int64_t qs = int64_t(c.n_head) * hd + 3, kvdim = int64_t(c.n_head_kv) * hd;
  const auto q = normal(static_cast<size_t>(c.n * qs), 101 + c.n, 1.5f);
  const auto k_rows = normal(static_cast<size_t>(len * kvdim), 102 + c.n);
  const auto v_rows = normal(static_cast<size_t>(len * kvdim), 103 + c.n);
  longrope::HParams hp;
  hp.n_head = c.n_head;
  hp.n_head_kv = c.n_head_kv;
  hp.head_dim = hd;
  const auto kv = be.make_kv(hp, cap, 1);
  // Two calls: the prefix, then the rest (a cache continued).
  const int64_t split = len / 3;
  be.store_kv(kv->view, 0, 0, split, c.n_head_kv, hd, k_rows.data(), v_rows.data());
  be.store_kv(kv->view, 0, split, len - split, c.n_head_kv, hd, k_rows.data() + split * kvdim,
              v_rows.data() + split * kvdim);
  // The reference's cache: kv head h, position p at (h * cap + p) * hd.
  std::vector<float> k(static_cast<size_t>(c.n_head_kv * cap * hd)), v(k.size());
  for (int64_t p = 0; p < len; ++p)
    for (int h = 0; h < c.n_head_kv; ++h)
      for (int d = 0; d < hd; ++d) {
        const float kx = k_rows[p * kvdim + h * hd + d], vx = v_rows[p * kvdim + h * hd + d];
        const size_t at = static_cast<size_t>((h * cap + p) * hd + d);
        k[at] = bf16_path ? bf16_value(longrope::fp32_to_bf16(kx)) : kx;
        v[at] = bf16_path ? bf16_value(longrope::fp32_to_bf16(vx)) : vx;
      }
  std::vector<float> out(static_cast<size_t>(c.n * qs), -7.0f);
  const float scale = 1.0f / std::sqrt(float(hd));
  be.attention(kv->view, 0,
               longrope::AttentionCall{q.data(), qs, out.data(), qs, c.n, c.p0, c.n_head,
                                       c.n_head_kv, hd, scale});
  std::vector<double> got;
  std::vector<Err> want;
  const int group = c.n_head / c.n_head_kv;
  for (int64_t i = 0; i < c.n; ++i)
    for (int h = 0; h < c.n_head; ++h) {
      const int64_t kvo = int64_t(h / group) * cap * hd;
      const AttnRef r = attention_ref(q.data() + i * qs + h * hd, k.data() + kvo, v.data() + kvo,
                                      hd, c.p0 + i, hd, scale, bf16_path);
      for (int d = 0; d < hd; ++d) {
        got.push_back(out[i * qs + h * hd + d]);
        want.push_back(r.out[d]);
      }
    }
  ASSERT_TRUE(within(std::string(bf16_path ? "attention bf16" : "attention") + " n " +
                         std::to_string(c.n) + " p0 " + std::to_string(c.p0),
                     got, want));
}

TEST_P(BackendConformance, Attention) {
  const auto be = backend(lk::Compute::kF32);
  for (const AttnCase& c : kAttnCases) check_attention(*be, c);
}

TEST_P(BackendConformance, AttentionBf16) {
  if (!has_bf16()) {
    // The kernel itself refuses too.
    const AttnCase& c = kAttnCases[0];
    const std::vector<uint16_t> kv(static_cast<size_t>(c.n_head_kv * (c.p0 + c.n) * c.hd));
    std::vector<float> q(static_cast<size_t>(c.n * c.n_head * c.hd)), out(q.size());
    const lk::AttentionArgsBf16 a{q.data(),   c.n_head * c.hd, kv.data(),       kv.data(),
                                  c.p0 + c.n, out.data(),      c.n_head * c.hd, c.n,
                                  c.p0,       c.n_head,        c.n_head_kv,     c.hd,
                                  0.125f};
    expect_needs_bf16([&] { lk::attention_bf16(a); }, "attention_bf16");
  }
  const auto be = backend(lk::Compute::kBF16);
  if (!be) return;
  for (const AttnCase& c : kAttnCases) check_attention(*be, c);
}

// nll = log sum exp(row) - row[target]: FP32 max and exponentials (fast_exp), an FP32 sum per row
// (one panel), then double.
TEST_P(BackendConformance, NllRows) {
  const int64_t n = 6, V = 3000;
  const auto logits = normal(static_cast<size_t>(n * V), 111, 4.0f);
  std::vector<int32_t> target(n);
  for (int64_t r = 0; r < n; ++r) target[r] = int32_t((r * 977) % V);
  std::vector<double> nll(n);
  lk::nll_rows(logits.data(), n, V, target.data(), nll.data());
  std::vector<Err> want;
  for (int64_t r = 0; r < n; ++r) {
    const float* row = logits.data() + r * V;
    const double mx = *std::max_element(row, row + V);
    Sum s;
    for (int64_t j = 0; j < V; ++j) s.add(exp_of(sub(in(row[j]), in(mx)), kExpRel));
    const Err lse = add(in(mx), log_of(s.result(), 2 * kUd), kUd);
    want.push_back(sub(lse, in(row[target[r]]), kUd));
  }
  ASSERT_TRUE(within("nll_rows", nll, want));
}

// ---- Training: the forward ops with their backward siblings, float against the model --------

// A dense FP32 matrix as a weight (how training passes its parameters).
lk::WeightView dense_view(const std::vector<float>& w, int64_t rows, int64_t cols) {
  return {GgmlType::F32, reinterpret_cast<const uint8_t*>(w.data()), rows, cols,
          sizeof(float) * size_t(cols)};
}

TEST_P(BackendConformance, TrainLinear) {
  const int64_t n = 24, in_w = 72, out_w = 40;
  const auto X = normal(static_cast<size_t>(n * in_w), 121);
  const auto W = normal(static_cast<size_t>(out_w * in_w), 122);
  const auto b = normal(static_cast<size_t>(out_w), 123);
  const auto dY = normal(static_cast<size_t>(n * out_w), 124);
  const auto dX0 = normal(static_cast<size_t>(n * in_w), 125);
  const auto dW0 = normal(static_cast<size_t>(out_w * in_w), 126);
  const auto db0 = normal(static_cast<size_t>(out_w), 127);
  for (lk::Compute compute : {lk::Compute::kF32, lk::Compute::kBF16}) {
    const std::string cn = lk::compute_name(compute);
    std::vector<float> Y(static_cast<size_t>(n * out_w)), dX = dX0, dW = dW0, db = db0;
    const auto be = backend(compute);
    if (!be) continue;
    // The forward is the inference projection (matmul_w) on a dense weight, then the bias.
    const lk::WeightView Wv = dense_view(W, out_w, in_w);
    be->matmul_w(n, X.data(), in_w, Wv, Y.data(), out_w, 0.0f);
    be->add_bias(Y.data(), n, out_w, b.data());
    be->linear_backward(X.data(), n, Wv, dY.data(), dX.data(), true, dW.data(), db.data());
    const bool bf = compute == lk::Compute::kBF16;
    auto op = [bf](float x) { return bf ? bf16(in(x)) : in(x); };
    std::vector<Err> y, dx, dw, dbw;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t o = 0; o < out_w; ++o) {
        Sum s;
        s.add(in(b[o]));
        for (int64_t k = 0; k < in_w; ++k) s.add(mul(op(X[r * in_w + k]), op(W[o * in_w + k])));
        y.push_back(s.result());
      }
    for (int64_t r = 0; r < n; ++r)
      for (int64_t k = 0; k < in_w; ++k) {
        Sum s;
        s.add(in(dX0[r * in_w + k]));
        for (int64_t o = 0; o < out_w; ++o) s.add(mul(op(dY[r * out_w + o]), op(W[o * in_w + k])));
        dx.push_back(s.result());
      }
    for (int64_t o = 0; o < out_w; ++o)
      for (int64_t k = 0; k < in_w; ++k) {
        Sum s;
        s.add(in(dW0[o * in_w + k]));
        for (int64_t r = 0; r < n; ++r) s.add(mul(op(dY[r * out_w + o]), op(X[r * in_w + k])));
        dw.push_back(s.result());
      }
    for (int64_t o = 0; o < out_w; ++o) {
      Sum s;
      s.add(in(db0[o]));
      for (int64_t r = 0; r < n; ++r) s.add(in(dY[r * out_w + o]));
      dbw.push_back(s.result());
    }
    EXPECT_TRUE(within("linear_forward " + cn, as_double(Y), y));
    EXPECT_TRUE(within("linear_backward dX " + cn, as_double(dX), dx));
    EXPECT_TRUE(within("linear_backward dW " + cn, as_double(dW), dw));
    EXPECT_TRUE(within("linear_backward db " + cn, as_double(db), dbw));
  }
}

// The forward is the inference RMSNorm (FP32 sums, the Rmsnorm test); the backward recomputes
// each row's rs = 1 / sqrt(mean(x^2) + eps) with a double sum, rounded once to FP32, then
// dx = rs (dy w) - c x with c = rs^3 mean(dy w x) formed in double and rounded once, dw += dy x rs.
TEST_P(BackendConformance, TrainRmsnorm) {
  const int64_t n = 20, d = 64;
  const float eps = 1e-5f;
  const auto x = normal(static_cast<size_t>(n * d), 131, 2.0f);
  const auto w = normal(static_cast<size_t>(d), 132);
  const auto dy = normal(static_cast<size_t>(n * d), 133);
  const auto dw0 = normal(static_cast<size_t>(d), 134);
  const auto dx0 = normal(static_cast<size_t>(n * d), 135);
  for (bool accumulate : {false, true}) {
    std::vector<float> dx = dx0, dw = dw0;
    backend(lk::Compute::kF32)
        ->rmsnorm_backward(x.data(), w.data(), eps, dy.data(), n, d, dx.data(), accumulate,
                           dw.data());
    std::vector<Err> wdx;
    std::vector<float> rstd(static_cast<size_t>(n));
    for (int64_t r = 0; r < n; ++r) {
      double ss = 0;
      for (int64_t j = 0; j < d; ++j) ss += double(x[r * d + j]) * x[r * d + j];
      rstd[r] = float(1.0 / std::sqrt(ss / double(d) + double(eps)));
      const Err rs = rounded(in(1.0 / std::sqrt(ss / double(d) + double(eps))));
      double dot = 0;
      for (int64_t j = 0; j < d; ++j) dot += double(dy[r * d + j]) * w[j] * x[r * d + j];
      const double rsv = rstd[r];
      const Err c = rounded(in(rsv * rsv * rsv * dot / double(d)));
      for (int64_t j = 0; j < d; ++j) {
        const Err val = sub(mul(rs, mul(in(dy[r * d + j]), in(w[j]))), mul(c, in(x[r * d + j])));
        wdx.push_back(accumulate ? add(in(dx0[r * d + j]), val) : val);
      }
    }
    std::vector<Err> wdw;
    for (int64_t j = 0; j < d; ++j) {
      Sum sm;
      sm.add(in(dw0[j]));
      for (int64_t r = 0; r < n; ++r)
        sm.add(mul(mul(in(dy[r * d + j]), in(x[r * d + j])), in(rstd[r])));
      wdw.push_back(sm.result());
    }
    const std::string what = accumulate ? " (accumulated)" : "";
    EXPECT_TRUE(within("rmsnorm_backward dx" + what, as_double(dx), wdx));
    EXPECT_TRUE(within("rmsnorm_backward dw" + what, as_double(dw), wdw));
  }
}

// The forward is the inference SwiGLU (in place, g / (1 + e^-g) u); the backward
// dg = dout u sg (1 + g (1 - sg)), du = dout g sg with sg = 1 / (1 + e^-g).
TEST_P(BackendConformance, TrainSwiglu) {
  const int64_t n = 3000;
  const auto g = normal(static_cast<size_t>(n), 151, 3.0f);
  const auto u = normal(static_cast<size_t>(n), 152);
  const auto go = normal(static_cast<size_t>(n), 153);
  std::vector<float> out = g, dg(static_cast<size_t>(n)), du(static_cast<size_t>(n));
  const auto be = backend(lk::Compute::kF32);
  be->swiglu(out.data(), u.data(), n);
  be->swiglu_backward(g.data(), u.data(), go.data(), dg.data(), du.data(), n);
  std::vector<Err> wo, wg, wu;
  for (int64_t i = 0; i < n; ++i) {
    const Err gi = in(g[i]), ui = in(u[i]), gout = in(go[i]);
    const Err e = exp_of(in(-double(g[i])), kExpRel);
    const Err sg = div(in(1.0), add(in(1.0), e));
    wo.push_back(mul(div(gi, add(in(1.0), e)), ui));
    wg.push_back(mul(mul(mul(gout, ui), sg), add(in(1.0), mul(gi, sub(in(1.0), sg)))));
    wu.push_back(mul(mul(gout, gi), sg));
  }
  EXPECT_TRUE(within("swiglu_forward", as_double(out), wo));
  EXPECT_TRUE(within("swiglu_backward dg", as_double(dg), wg));
  EXPECT_TRUE(within("swiglu_backward du", as_double(du), wu));
}

// Forward and backward of the training attention (FP32). The reference follows the whole chain:
// the backward's inputs out and lse carry the forward's error bounds; P = exp(scale q.k - lse),
// dP = dout . v, D = dout . out, dS = P (dP - D), dV = sum P dout, dK = scale sum dS q,
// dQ = scale sum dS k. The kernel's tiles (64 queries x 256 keys) add at most n/64 + n/256 + 2
// accumulations to each sum.
TEST_P(BackendConformance, TrainAttention) {
  lt::AttentionShape sh;
  sh.n = 80;
  sh.n_head = 4;
  sh.n_head_kv = 2;
  sh.head_dim = 16;
  sh.scale = 1.0 / std::sqrt(16.0);
  const int64_t n = sh.n, hd = sh.head_dim, qs = sh.n_head * hd, ks = sh.n_head_kv * hd;
  const int group = sh.n_head / sh.n_head_kv;
  const auto q = normal(static_cast<size_t>(n * qs), 161, 1.5f);
  const auto k = normal(static_cast<size_t>(n * ks), 162, 1.5f);
  const auto v = normal(static_cast<size_t>(n * ks), 163);
  const auto dout = normal(static_cast<size_t>(n * qs), 164);
  std::vector<float> out(static_cast<size_t>(n * qs)), lse(static_cast<size_t>(sh.n_head * n));
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
  const auto be = backend(lk::Compute::kF32);
  be->attention_forward(sh, q.data(), k.data(), v.data(), out.data(), lse.data());
  be->attention_backward(sh, q.data(), k.data(), v.data(), out.data(), lse.data(), dout.data(),
                         dq.data(), dk.data(), dv.data());
  const float fscale = float(sh.scale);
  const int64_t extra = n / 64 + n / 256 + 2;
  // Scores with their bounds (gemm with alpha = scale: the product, then the scaling).
  auto score = [&](int h, int64_t i, int64_t j) {
    Sum s;
    const int kvh = h / group;
    for (int64_t d = 0; d < hd; ++d)
      s.add(mul(in(q[i * qs + h * hd + d]), in(k[j * ks + kvh * hd + d])));
    return mul(s.result(), in(fscale));
  };
  std::vector<Err> wout(out.size()), wlse(lse.size());
  std::vector<Err> wdq(dq.size()), wdk(dk.size()), wdv(dv.size());
  std::vector<Sum> sdk(dk.size()), sdv(dv.size());
  for (int h = 0; h < sh.n_head; ++h) {
    const int kvh = h / group;
    for (int64_t i = 0; i < n; ++i) {
      // Forward: the training kernel's own tiles are 256 keys; the reference's rescaling model
      // (attention_ref) assumes 64, which only widens the bound.
      std::vector<float> K(static_cast<size_t>((i + 1) * hd)), Vv(K.size());
      for (int64_t j = 0; j <= i; ++j)
        for (int64_t d = 0; d < hd; ++d) {
          K[j * hd + d] = k[j * ks + kvh * hd + d];
          Vv[j * hd + d] = v[j * ks + kvh * hd + d];
        }
      const AttnRef r = attention_ref(q.data() + i * qs + h * hd, K.data(), Vv.data(), hd, i,
                                      int(hd), double(fscale), false);
      for (int64_t d = 0; d < hd; ++d) wout[i * qs + h * hd + d] = r.out[d];
      wlse[h * n + i] = r.lse;
      // Backward of row i.
      Sum D;
      for (int64_t d = 0; d < hd; ++d) D.add(mul(in(dout[i * qs + h * hd + d]), r.out[d]));
      const Err Dr = D.result();
      std::vector<Sum> sdq(static_cast<size_t>(hd));
      for (int64_t j = 0; j <= i; ++j) {
        const Err P = exp_of(sub(score(h, i, j), r.lse), kExpRel);
        Sum dp;
        for (int64_t d = 0; d < hd; ++d)
          dp.add(mul(in(dout[i * qs + h * hd + d]), in(v[j * ks + kvh * hd + d])));
        const Err dS = mul(P, sub(dp.result(), Dr));
        for (int64_t d = 0; d < hd; ++d) {
          const int64_t kj = j * ks + kvh * hd + d;
          sdv[kj].add(mul(P, in(dout[i * qs + h * hd + d])));
          sdk[kj].add(mul(mul(dS, in(q[i * qs + h * hd + d])), in(fscale)));
          sdq[d].add(mul(mul(dS, in(k[kj])), in(fscale)));
        }
      }
      for (int64_t d = 0; d < hd; ++d) wdq[i * qs + h * hd + d] = sdq[d].result(kU, extra);
    }
  }
  for (size_t i = 0; i < dk.size(); ++i) {
    wdk[i] = sdk[i].result(kU, extra);
    wdv[i] = sdv[i].result(kU, extra);
  }
  EXPECT_TRUE(within("attention_forward out", as_double(out), wout));
  EXPECT_TRUE(within("attention_forward lse", as_double(lse), wlse));
  EXPECT_TRUE(within("attention_backward dq", as_double(dq), wdq));
  EXPECT_TRUE(within("attention_backward dk", as_double(dk), wdk));
  EXPECT_TRUE(within("attention_backward dv", as_double(dv), wdv));
}

// LM head and cross-entropy: logits z = h W^T, lse = max + log sum exp(z - max) (exponentials in
// FP32, sum and log in double), nll = lse - z_t; gradient dz = gs exp(z - float(lse)) - gs [t],
// dh = dz W, dW += dz^T h. bf16: h, W and dz rounded for the three products.
TEST_P(BackendConformance, TrainLmHead) {
  const int64_t n = 7, d = 48, V = 300;
  const auto h = normal(static_cast<size_t>(n * d), 171);
  const auto W = normal(static_cast<size_t>(V * d), 172, 0.5f);
  const auto dW0 = normal(static_cast<size_t>(V * d), 173);
  std::vector<int32_t> target(n);
  for (int64_t r = 0; r < n; ++r) target[r] = r == 3 ? -1 : int32_t((r * 131) % V);
  const float gs = 0.25f;
  for (lk::Compute compute : {lk::Compute::kF32, lk::Compute::kBF16}) {
    const std::string cn = lk::compute_name(compute);
    std::vector<float> dh(static_cast<size_t>(n * d)), dW = dW0;
    const auto be = backend(compute);
    if (!be) continue;
    const double loss = be->lm_head_cross_entropy(h.data(), n, dense_view(W, V, d), target.data(),
                                                  gs, dh.data(), dW.data());
    const bool bf = compute == lk::Compute::kBF16;
    auto op = [bf](Err x) { return bf ? bf16(x) : x; };
    Sum total;
    std::vector<Err> dz(static_cast<size_t>(n * V));
    for (int64_t r = 0; r < n; ++r) {
      if (target[r] < 0) continue;  // not scored: zero gradient
      std::vector<Err> z(static_cast<size_t>(V));
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < V; ++j) {
        Sum s;
        for (int64_t k = 0; k < d; ++k) s.add(mul(op(in(h[r * d + k])), op(in(W[j * d + k]))));
        z[j] = s.result();
        mx = std::max(mx, z[j].v);
      }
      Sum se;
      for (int64_t j = 0; j < V; ++j) se.add(exp_of(sub(z[j], in(mx)), kExpRel));
      const Err lse = add(in(mx), log_of(se.result(kUd), 2 * kUd), kUd);
      total.add(sub(lse, z[target[r]], kUd));
      const Err lse_f = rounded(lse);
      for (int64_t j = 0; j < V; ++j) {
        Err p = mul(in(gs), exp_of(sub(z[j], lse_f), kExpRel));
        if (j == target[r]) p = sub(p, in(gs));
        dz[r * V + j] = p;
      }
    }
    std::vector<Err> wdh, wdw;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t k = 0; k < d; ++k) {
        if (target[r] < 0) {
          wdh.push_back(in(0.0));
          continue;
        }
        Sum s;
        for (int64_t j = 0; j < V; ++j) s.add(mul(op(dz[r * V + j]), op(in(W[j * d + k]))));
        wdh.push_back(s.result());
      }
    for (int64_t j = 0; j < V; ++j)
      for (int64_t k = 0; k < d; ++k) {
        Sum s;
        s.add(in(dW0[j * d + k]));
        for (int64_t r = 0; r < n; ++r)
          if (target[r] >= 0) s.add(mul(op(dz[r * V + j]), op(in(h[r * d + k]))));
        // Each chunk's product is added to dW (one more addition per chunk, at most n).
        wdw.push_back(s.result(kU, n + 1));
      }
    EXPECT_TRUE(within("lm_head_cross_entropy loss " + cn, {loss}, {total.result(kUd)}));
    EXPECT_TRUE(within("lm_head_cross_entropy dh " + cn, as_double(dh), wdh));
    EXPECT_TRUE(within("lm_head_cross_entropy dW " + cn, as_double(dW), wdw));
  }
}

// The embedding rows of a table in any encoding (decoded exactly as the loader's dequantize does)
// and the backward's scatter-add; copy and add_bias.
TEST_P(BackendConformance, EmbedCopyAndBias) {
  const auto be = backend(lk::Compute::kF32);
  const std::vector<int32_t> tokens = {5, 0, 17, 5, 31};
  const int64_t n = int64_t(tokens.size());
  for (GgmlType t : kWeightTypes) {
    const int64_t bs = longrope::ggml_block_size(t), V = 32;
    const int64_t d = bs == 1 ? 40 : bs == 32 ? 64 : 256;
    const auto m = longrope::test::random_weights(t, V, d, 181 + int(t));
    const auto W = longrope::test::weight_view(t, m, V, d);
    const auto w = decoded(W);
    std::vector<float> x(static_cast<size_t>(n * d));
    be->embed(W, tokens.data(), n, x.data());
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < d; ++j)
        ASSERT_EQ(x[r * d + j], w[tokens[r] * d + j]) << "embed " << type_name(t) << " row " << r;
    const int32_t bad = int32_t(V);
    EXPECT_THROW(be->embed(W, &bad, 1, x.data()), longrope::Error);
  }
  const int64_t d = 24, V = 40;
  const auto dx = normal(static_cast<size_t>(n * d), 191);
  const auto dE0 = normal(static_cast<size_t>(V * d), 192);
  auto dE = dE0;
  be->embedding_backward(tokens.data(), n, d, dx.data(), dE.data());
  std::vector<Err> want;
  for (int64_t v = 0; v < V; ++v)
    for (int64_t j = 0; j < d; ++j) {
      Sum sm;
      sm.add(in(dE0[v * d + j]));
      for (int64_t r = 0; r < n; ++r)
        if (tokens[r] == v) sm.add(in(dx[r * d + j]));
      want.push_back(sm.result());
    }
  EXPECT_TRUE(within("embedding_backward", as_double(dE), want));
  std::vector<float> y(dx.size(), 0.0f);
  be->copy(dx.data(), y.data(), int64_t(dx.size()));
  EXPECT_EQ(y, dx);
  const auto b = normal(static_cast<size_t>(d), 193);
  be->add_bias(y.data(), n, d, b.data());
  std::vector<Err> wb;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < d; ++j) wb.push_back(add(in(dx[r * d + j]), in(b[j])));
  EXPECT_TRUE(within("add_bias", as_double(y), wb));
}

INSTANTIATE_TEST_SUITE_P(Cpu, BackendConformance, ::testing::ValuesIn(targets()),
                         [](const ::testing::TestParamInfo<Target>& info) {
                           return std::string(info.param.backend) + "_" +
                                  lk::cpu_variant_name(info.param.variant);
                         });

// Runs the whole suite in a child process (ctest runs each test in a process of its own) and
// prints its summary line. With CI=true, a variant this CPU supports that did not run fails.
TEST(BackendConformanceCoverage, EverySupportedVariantRan) {
  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  ASSERT_GT(len, 0) << "cannot find the test binary";
  self[len] = '\0';
  std::string out;
  const int rc = longrope::test::run_command(
      std::string("'") + self + "' --gtest_filter='Cpu/BackendConformance.*'", &out);
  const size_t at = out.find("BackendConformance: ran ");
  ASSERT_NE(at, std::string::npos) << "the suite printed no summary:\n" << out;
  const std::string line = out.substr(at, out.find('\n', at) - at);
  std::printf("%s\n", line.c_str());
  EXPECT_EQ(rc, 0) << "the conformance suite failed:\n" << out;
  const std::string ran = line.substr(0, line.find(';'));
  for (CpuVariant v : lk::cpu_variants_supported()) {
    const std::string name = lk::cpu_variant_name(v);
    bool found = false;
    for (size_t p = ran.find(name); p != std::string::npos; p = ran.find(name, p + 1)) {
      const size_t e = p + name.size();
      if (ran[p - 1] == ' ' && (e == ran.size() || ran[e] == ',')) found = true;
    }
    if (found) continue;
    if (longrope::test::in_ci())
      ADD_FAILURE() << "CPU variant " << name << " is supported here but did not run (CI=true)";
    else
      std::printf("note: CPU variant %s is supported here but did not run\n", name.c_str());
  }
}

// OpenBLAS's fallback to its SSE3 kernels on a CPU it does not know is repaired by the kernels
// the CPU can run, and nothing else is touched.
TEST(BlasKernels, RepairNamesTheKernelsOnlyForTheFallback) {
  EXPECT_EQ(lk::blas_coretype_for("Prescott", true, true), "SkylakeX");
  EXPECT_EQ(lk::blas_coretype_for("Prescott", true, false), "Haswell");
  EXPECT_EQ(lk::blas_coretype_for("Prescott", false, false), "");
  for (const char* known : {"SkylakeX", "Cooperlake", "Haswell", "Zen", "Sandybridge", ""})
    EXPECT_EQ(lk::blas_coretype_for(known, true, true), "") << known;
  EXPECT_FALSE(lk::blas_core_name().empty());
}

// The CLI runs with the repaired kernels where the library fell back (OpenBLAS prints its choice
// with OPENBLAS_VERBOSE=2), and keeps a choice the user made.
TEST(BlasKernels, CliRunsTheRepairedKernelsAndKeepsTheUsersChoice) {
  const std::string cli = longrope::test::cli_path().string();
  const std::string cmd =
      " '" + cli + "' rope --head-dim 8 --rope linear --rope-factor 2 --orig-ctx 16 2>&1";
  auto last_core = [](const std::string& out) {
    const size_t at = out.rfind("Core: ");
    return at == std::string::npos ? std::string()
                                   : out.substr(at + 6, out.find('\n', at) - at - 6);
  };
  std::string out;
  ASSERT_EQ(longrope::test::run_command("env -u OPENBLAS_CORETYPE OPENBLAS_VERBOSE=2" + cmd, &out),
            0)
      << out;
  // This process ran restart_with_blas_repair too (test_main.cpp), which names the kernels it
  // replaced in LONGROPE_BLAS_REPAIRED_FROM; else the library's choice here is its own.
  const bool repaired_here = std::getenv("LONGROPE_BLAS_REPAIRED_FROM") != nullptr;
  const std::string repair =
      repaired_here ? std::string(std::getenv("OPENBLAS_CORETYPE")) : lk::blas_coretype_repair();
  if (!repair.empty()) {
    std::printf("OpenBLAS falls back here; the CLI runs %s\n", repair.c_str());
    EXPECT_EQ(last_core(out), repair) << out;
  }
  ASSERT_EQ(
      longrope::test::run_command("OPENBLAS_CORETYPE=Prescott OPENBLAS_VERBOSE=2" + cmd, &out), 0)
      << out;
  if (!last_core(out).empty()) {
    EXPECT_EQ(last_core(out), "Prescott") << out;
  }
}

// LONGROPE_CPU: an unknown value, or one above this CPU, is one clear error line naming the
// variable, the value and what the CPU supports; a lower one caps the compute path.
TEST(BackendConformanceCoverage, LongropeCpuVariable) {
  const std::string cli = longrope::test::cli_path().string();
  const std::string supported = [] {
    std::string s;
    for (CpuVariant v : lk::cpu_variants_supported())
      s += std::string(s.empty() ? "" : ", ") + lk::cpu_variant_name(v);
    return s;
  }();
  // A command that needs no input files: `rope` prints a scaling's tables.
  const std::string cmd =
      " '" + cli + "' rope --head-dim 8 --rope linear --rope-factor 2 --orig-ctx 16";
  std::string out;
  int rc = longrope::test::run_command("LONGROPE_CPU=zen9 " + cmd, &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("error: LONGROPE_CPU=zen9 is not a CPU variant"), std::string::npos) << out;
  EXPECT_NE(out.find("this CPU supports " + supported), std::string::npos) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  if (lk::cpu_best_variant() < CpuVariant::kAmx) {
    rc = longrope::test::run_command("LONGROPE_CPU=amx " + cmd, &out);
    EXPECT_NE(rc, 0) << out;
    EXPECT_NE(
        out.find("error: LONGROPE_CPU=amx is above what this CPU supports (" + supported + ")"),
        std::string::npos)
        << out;
  }
  for (CpuVariant v : lk::cpu_variants_supported()) {
    const std::string env = std::string("LONGROPE_CPU=") + lk::cpu_variant_name(v);
    rc = longrope::test::run_command(env + cmd, &out);
    EXPECT_EQ(rc, 0) << env << ": " << out;
    if (v >= CpuVariant::kAvx512Bf16) continue;
    // --compute bf16 fails before the model loads (the file need not exist).
    rc = longrope::test::run_command(
        env + " '" + cli +
            "' perplexity -m /nonexistent.gguf --file /nonexistent.txt --ctx 64 --compute bf16",
        &out);
    EXPECT_NE(rc, 0) << out;
    const std::string want = lk::cpu_best_variant() >= CpuVariant::kAvx512Bf16
                                 ? "error: bf16 compute needs AVX512_BF16: the CPU variant in "
                                   "effect, " +
                                       std::string(lk::cpu_variant_name(v)) + " (" + env +
                                       "), leaves out AVX512_BF16 (use f32)"
                                 : "error: bf16 compute needs a CPU with AVX512_BF16";
    EXPECT_NE(out.find(want), std::string::npos) << out;
  }
}

}  // namespace
