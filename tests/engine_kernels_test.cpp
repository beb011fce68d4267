// Each optimised kernel against its plain scalar reference.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <functional>
#include <random>
#include <utility>
#include <vector>

#include "engine/kernels/vec_math.h"
#include "longrope/error.h"
#include "longrope/kernels.h"
#include "test_paths.h"

namespace lk = longrope::kernels;

namespace {

using longrope::test::rnd;

void expect_close(const std::vector<float>& a, const std::vector<float>& b, double rtol,
                  double atol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_NEAR(a[i], b[i], atol + rtol * std::fabs(b[i])) << "at index " << i;
}

}  // namespace

TEST(EngineKernels, FastExpMatchesStdExp) {
  for (float x = -87.0f; x <= 88.0f; x += 0.0137f) {
    const double ref = std::exp(double(x));
    ASSERT_NEAR(lk::fast_exp(x), ref, 3e-7 * ref) << x;
  }
  EXPECT_EQ(lk::fast_exp(-INFINITY), lk::fast_exp(-87.0f));
  EXPECT_LT(lk::fast_exp(-INFINITY), 1e-37f);
  // NaN stays NaN (it was clamped into a finite number, hiding a broken model from the checks).
  EXPECT_TRUE(std::isnan(lk::fast_exp(NAN)));
  EXPECT_TRUE(std::isnan(lk::fast_exp(-NAN)));
  EXPECT_EQ(lk::fast_exp(INFINITY), lk::fast_exp(88.5f));
}

// A NaN in one query row reaches that row's output (every head of the kv group sees only its
// own query) and no other row; a NaN key reaches every row that can see it.
TEST(EngineKernels, AttentionPropagatesNaN) {
  const int H = 4, KV = 2, hd = 8;
  const int64_t n = 70, cap = 80;
  auto q = rnd(n * H * hd, 21), k = rnd(KV * cap * hd, 22), v = rnd(KV * cap * hd, 23);
  q[size_t(5 * H * hd + 1 * hd + 3)] = NAN;  // row 5, head 1
  k[size_t((1 * cap + 40) * hd + 2)] = NAN;  // kv head 1, position 40 (heads 2 and 3)
  for (auto kernel : {lk::attention, lk::attention_scalar}) {
    std::vector<float> out(size_t(n * H * hd));
    kernel({q.data(), H * hd, k.data(), v.data(), cap, out.data(), H * hd, n, 0, H, KV, hd, 0.35f});
    auto nan_at = [&](int64_t row, int h) {
      return std::isnan(out[size_t(row * H * hd + h * hd)]);
    };
    EXPECT_TRUE(nan_at(5, 1));
    EXPECT_FALSE(nan_at(5, 0));
    EXPECT_FALSE(nan_at(6, 1));
    EXPECT_FALSE(nan_at(39, 2));
    EXPECT_TRUE(nan_at(40, 2));
    EXPECT_TRUE(nan_at(69, 3));
    EXPECT_FALSE(nan_at(69, 1));
  }
}

// Every block and key chunk is computed by one thread in a fixed order, chunks merged in order:
// the same bits with 1 and 2 threads (prefill blocks; grouped blocks with and without chunks).
TEST(EngineKernels, AttentionIndependentOfThreadCount) {
  const int H = 9, KV = 3, hd = 64;
  for (const auto& [n, p0] :
       {std::pair<int64_t, int64_t>{1, 700}, {1, 3000}, {40, 2500}, {300, 700}}) {
    const int64_t cap = p0 + n;
    auto q = rnd(n * H * hd, 31), k = rnd(KV * cap * hd, 32), v = rnd(KV * cap * hd, 33);
    std::vector<float> o1(size_t(n * H * hd)), o2(o1.size());
    const int saved = omp_get_max_threads();
    for (auto [threads, out] : {std::pair{1, &o1}, std::pair{2, &o2}}) {
      omp_set_num_threads(threads);
      lk::attention({q.data(), H * hd, k.data(), v.data(), cap, out->data(), H * hd, n, p0, H, KV,
                     hd, 0.125f});
    }
    omp_set_num_threads(saved);
    EXPECT_EQ(o1, o2) << n;
  }
}

// --compute auto: bf16 only where it outruns FP32 (docs/design.md, "bf16 or FP32 by default").
TEST(EngineKernels, AutoComputeIsBf16OnlyWhereItOutrunsF32) {
  EXPECT_TRUE(
      lk::bf16_outruns_f32(/*amx=*/true, /*avx512_bf16=*/true, /*amd=*/false));  // Xeon, AMX
  EXPECT_FALSE(lk::bf16_outruns_f32(false, true, false));  // Xeon without AMX (or hidden by a VM)
  EXPECT_TRUE(lk::bf16_outruns_f32(false, true, true));    // Zen 4
  EXPECT_FALSE(lk::bf16_outruns_f32(false, false, true));  // Zen 3
  EXPECT_FALSE(lk::bf16_outruns_f32(false, false, false));
}

TEST(EngineKernels, AttentionRefusesBrokenArguments) {
  std::vector<float> q(64), k(64), v(64), out(64);
  const lk::AttentionArgs ok{q.data(), 8, k.data(), v.data(), 4, out.data(), 8,
                             2,        0, 2,        1,        4, 0.5f};
  EXPECT_NO_THROW(lk::attention(ok));
  auto expect = [](lk::AttentionArgs a, const std::string& part) {
    for (auto kernel : {lk::attention, lk::attention_scalar}) {
      try {
        kernel(a);
        ADD_FAILURE() << "expected an error with " << part;
      } catch (const longrope::Error& e) {
        EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
        EXPECT_EQ(std::string(e.what()).rfind("attention", 0), 0u) << e.what();
      }
    }
  };
  const std::vector<std::pair<std::function<void(lk::AttentionArgs&)>, std::string>> cases = {
      {[](auto& a) { a.n_head = 3, a.n_head_kv = 2; },
       "3 query heads are not a positive multiple of 2 key/value heads"},
      {[](auto& a) { a.n_head_kv = 0; }, "key/value heads"},
      {[](auto& a) { a.p0 = 3; }, "positions [3, 5) do not fit a cache of 4"},
      {[](auto& a) { a.q_stride = 7; }, "must hold 2 heads x 4 = 8 values"},
      {[](auto& a) { a.head_dim = 0; }, "head_dim 0"},
      {[](auto& a) { a.scale = NAN; }, "scale nan is not finite"},
  };
  for (const auto& [broken, part] : cases) {
    lk::AttentionArgs a = ok;
    broken(a);
    expect(a, part);
  }
}

TEST(EngineKernels, GemmMatchesScalar) {
  for (auto [M, N, K] : {std::tuple{1, 37, 19}, {5, 64, 8}, {130, 200, 576}}) {
    auto A = rnd(size_t(M) * K, 1), B = rnd(size_t(N) * K, 2);
    std::vector<float> C(size_t(M) * N, 0.5f), R = C;
    lk::gemm_nt(M, N, K, A.data(), K, B.data(), K, C.data(), N, 1.0f);
    lk::gemm_nt_scalar(M, N, K, A.data(), K, B.data(), K, R.data(), N, 1.0f);
    expect_close(C, R, 1e-4, 1e-4);
  }
}

TEST(EngineKernels, RmsnormSwigluRopeMatchScalar) {
  const int n = 7, d = 96;
  auto x = rnd(n * d, 3), w = rnd(d, 4);
  std::vector<float> y(n * d), yr(n * d);
  lk::rmsnorm(x.data(), w.data(), y.data(), n, d, 1e-5f);
  lk::rmsnorm_scalar(x.data(), w.data(), yr.data(), n, d, 1e-5f);
  expect_close(y, yr, 1e-5, 1e-6);

  auto g = rnd(1000, 5, 4.0f), u = rnd(1000, 6);
  auto gr = g;
  lk::swiglu(g.data(), u.data(), 1000);
  lk::swiglu_scalar(gr.data(), u.data(), 1000);
  expect_close(g, gr, 1e-5, 1e-6);

  // 3 rows, 2 heads of dim 8 with 6 rotary dims (partial rotation), row stride 20.
  auto q = rnd(3 * 20, 7), qr = q;
  auto c = rnd(3 * 3, 8), s = rnd(3 * 3, 9);
  lk::rope_apply(q.data(), 3, 20, 2, 8, 6, c.data(), s.data());
  lk::rope_apply_scalar(qr.data(), 3, 20, 2, 8, 6, c.data(), s.data());
  expect_close(q, qr, 1e-6, 1e-6);
  EXPECT_EQ(q[6], qr[6]);  // non-rotary dims untouched
}

TEST(EngineKernels, NllRowsMatchesScalar) {
  const int n = 5, V = 3001;
  auto logits = rnd(n * V, 10, 3.0f);
  std::vector<int32_t> tgt = {0, 17, 3000, 1500, 42};
  std::vector<double> a(n), b(n);
  lk::nll_rows(logits.data(), n, V, tgt.data(), a.data());
  lk::nll_rows_scalar(logits.data(), n, V, tgt.data(), b.data());
  for (int i = 0; i < n; ++i) EXPECT_NEAR(a[i], b[i], 1e-5);
}

// Tiled online-softmax attention against the direct formula, across tile boundaries, with a
// KV prefix (p0 > 0), grouped-query heads and single-token decoding.
TEST(EngineKernels, AttentionMatchesScalar) {
  struct Case {
    int64_t n, p0;
    int H, KV, hd;
  };
  // With AVX-512 the register-blocked path: prefill blocks over several key tiles, the
  // diagonal's masks after a long cache, partial query blocks, odd and large head_dim; grouped
  // blocks for short inputs, with the keys split into chunks and merged past 1024 keys; the
  // keys-in-lanes decode path (at most 6 rows of one kv head, head_dim a multiple of 64): one key,
  // rows at different positions, a partial last tile, head_dim 128, no grouping.
  for (const Case& cs :
       {Case{1, 0, 2, 1, 8}, Case{70, 0, 4, 2, 8}, Case{300, 0, 9, 3, 64}, Case{1, 600, 9, 3, 64},
        Case{65, 257, 6, 2, 16}, Case{1000, 37, 9, 3, 64}, Case{129, 600, 4, 2, 128},
        Case{70, 11, 2, 2, 15}, Case{64, 0, 3, 3, 5}, Case{1, 3000, 9, 3, 64},
        Case{20, 1500, 8, 4, 8}, Case{2, 2500, 9, 3, 64}, Case{63, 2000, 4, 4, 64},
        Case{1, 0, 9, 3, 64}, Case{5, 1, 2, 2, 64}, Case{3, 100, 8, 4, 128}, Case{1, 200, 4, 4, 64},
        Case{6, 1100, 3, 3, 64}}) {
    const int64_t cap = cs.p0 + cs.n + 3;
    auto q = rnd(cs.n * cs.H * cs.hd, 11), k = rnd(cs.KV * cap * cs.hd, 12),
         v = rnd(cs.KV * cap * cs.hd, 13);
    std::vector<float> out(cs.n * cs.H * cs.hd), ref(out.size());
    lk::AttentionArgs a{q.data(),
                        cs.H * cs.hd,
                        k.data(),
                        v.data(),
                        cap,
                        out.data(),
                        cs.H * cs.hd,
                        cs.n,
                        cs.p0,
                        cs.H,
                        cs.KV,
                        cs.hd,
                        1.0f / std::sqrt(float(cs.hd))};
    lk::attention(a);
    a.out = ref.data();
    lk::attention_scalar(a);
    expect_close(out, ref, 1e-4, 1e-5);
  }
}

// The streamed KL divergence against the whole-row double reference, over uneven panels.
TEST(EngineKernels, KlRowsMatchScalar) {
  const int n = 6, V = 3001, panel = 1000;
  auto a = rnd(n * V, 31, 3.0f), b = a;
  auto noise = rnd(n * V, 32, 0.5f);
  for (int r = 1; r < n; ++r)  // row 0: the same distribution
    for (int i = 0; i < V; ++i) b[r * V + i] += noise[r * V + i] * float(r);
  std::vector<int32_t> tgt = {0, 17, 3000, 1500, 42, 999};
  std::vector<lk::KlRow> want(n);
  lk::kl_rows_scalar(a.data(), b.data(), n, V, tgt.data(), want.data());
  std::vector<lk::KlState> st(n);
  std::vector<float> pa(size_t(n) * panel), pb(size_t(n) * panel);
  for (int v0 = 0; v0 < V; v0 += panel) {
    const int w = std::min(panel, V - v0);
    for (int r = 0; r < n; ++r)
      for (int i = 0; i < w; ++i) {
        pa[r * w + i] = a[r * V + v0 + i];
        pb[r * w + i] = b[r * V + v0 + i];
      }
    lk::kl_update_rows(pa.data(), pb.data(), n, w, v0, tgt.data(), st.data());
  }
  for (int r = 0; r < n; ++r) {
    const lk::KlRow got = lk::kl_finish(st[r]);
    // Float sums of 1000 terms with relative error 2^-24 each, against double: 1e-5 relative
    // with an absolute floor for the row whose divergence is zero.
    EXPECT_NEAR(got.kl, want[r].kl, 1e-5 * want[r].kl + 1e-6) << r;
    EXPECT_NEAR(got.nll, want[r].nll, 1e-5) << r;
    EXPECT_EQ(got.same_top, want[r].same_top) << r;
    if (r > 0) {
      EXPECT_GT(want[r].kl, 1e-3) << r;  // the noise moved the distribution
    }
  }
  EXPECT_TRUE(want[0].same_top);
  EXPECT_NEAR(want[0].kl, 0.0, 1e-12);
  EXPECT_LT(lk::kl_finish(st[0]).kl, 1e-6);
}
