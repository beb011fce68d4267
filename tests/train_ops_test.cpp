// The training operations (include/longrope/train_ops.h): every backward pass against central
// finite differences in double, the tiled attention against its n x n reference, the float
// instantiation against the double one, thread-count independence and gradient accumulation.
// Each tolerance sits above the error measured on this machine (the number in the comment).
#include "longrope/train_ops.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/kernels.h"
#include "longrope/quant.h"
#include "test_paths.h"

namespace lt = longrope::train;
using longrope::test::expect_error;

namespace {

using Vec = std::vector<double>;
using VecF = std::vector<float>;

size_t sz(int64_t n) {
  return static_cast<size_t>(n);
}

Vec randn(size_t n, uint32_t seed, double scale = 1.0, double mean = 0.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(mean, scale);
  Vec v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

VecF to_float(const Vec& v) {
  return VecF(v.begin(), v.end());
}

double dot(const Vec& a, const Vec& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// max |a - b| / max |b|: the error of a relative to the scale of b.
template <class A>
double rel_err(const std::vector<A>& a, const Vec& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0.0, ref = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::fabs(double(a[i]) - b[i]));
    ref = std::max(ref, std::fabs(b[i]));
  }
  return ref > 0.0 ? diff / ref : diff;
}

Vec twice(Vec v) {
  for (auto& x : v) x *= 2;
  return v;
}

void expect_below(double err, double tol, const std::string& what) {
  EXPECT_LT(err, tol) << what;
}

// Central finite differences (h = 1e-6) of loss() over the coordinates of x (all of them, or a
// seeded random subset of max_coords), against the analytic gradient: max |analytic - fd| /
// max |fd|. The measured errors scale as 1/h (1e-5, 1e-6, 1e-7 give 10x steps): they are the
// rounding noise of the differences, not an error of the gradients.
double fd_error(Vec& x, const Vec& grad, const std::function<double()>& loss, size_t max_coords = 0,
                uint32_t seed = 1) {
  EXPECT_EQ(x.size(), grad.size());
  std::vector<size_t> idx(x.size());
  std::iota(idx.begin(), idx.end(), sz(0));
  if (max_coords > 0 && idx.size() > max_coords) {
    std::mt19937 rng(seed);
    std::shuffle(idx.begin(), idx.end(), rng);
    idx.resize(max_coords);
  }
  const double h = 1e-6;
  double diff = 0.0, ref = 0.0;
  for (size_t i : idx) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    const double fd = (lp - lm) / (2 * h);
    diff = std::max(diff, std::fabs(grad[i] - fd));
    ref = std::max(ref, std::fabs(fd));
  }
  return ref > 0.0 ? diff / ref : diff;
}

// cos/sin tables of n rows, n_rot/2 frequencies, with an attention factor folded in.
void rope_tables(int64_t n, int n_rot, float factor, VecF& c, VecF& s) {
  const int half = n_rot / 2;
  c.resize(sz(n * half));
  s.resize(sz(n * half));
  for (int64_t r = 0; r < n; ++r)
    for (int j = 0; j < half; ++j) {
      const double theta = double(r) * std::pow(10000.0, -2.0 * j / n_rot) + 0.1 * j;
      c[sz(r * half + j)] = float(factor * std::cos(theta));
      s[sz(r * half + j)] = float(factor * std::sin(theta));
    }
}

struct AttnInputs {
  lt::AttentionShape s;
  Vec q, k, v, dout;
};

AttnInputs attn_inputs(int64_t n, int n_head, int n_head_kv, int head_dim, uint32_t seed) {
  AttnInputs a;
  a.s = {n, n_head, n_head_kv, head_dim, 1.0 / std::sqrt(double(head_dim))};
  const size_t nq = sz(n * n_head * head_dim), nk = sz(n * n_head_kv * head_dim);
  a.q = randn(nq, seed);
  a.k = randn(nk, seed + 1);
  a.v = randn(nk, seed + 2);
  a.dout = randn(nq, seed + 3);
  return a;
}

struct AttnResult {
  Vec out, lse, dq, dk, dv;
};

template <class T>
AttnResult run_attention(const AttnInputs& in, bool reference) {
  using VT = std::vector<T>;
  const VT q(in.q.begin(), in.q.end()), k(in.k.begin(), in.k.end()), v(in.v.begin(), in.v.end());
  const VT g(in.dout.begin(), in.dout.end());
  VT out(q.size()), lse(sz(in.s.n * in.s.n_head)), dq(q.size()), dk(k.size()), dv(v.size());
  if (reference) {
    lt::attention_forward_reference(in.s, q.data(), k.data(), v.data(), out.data());
    lt::attention_backward_reference(in.s, q.data(), k.data(), v.data(), g.data(), dq.data(),
                                     dk.data(), dv.data());
  } else {
    lt::attention_forward(in.s, q.data(), k.data(), v.data(), out.data(), lse.data());
    lt::attention_backward(in.s, q.data(), k.data(), v.data(), out.data(), lse.data(), g.data(),
                           dq.data(), dk.data(), dv.data());
  }
  auto d = [](const VT& x) { return Vec(x.begin(), x.end()); };
  return {d(out), d(lse), d(dq), d(dk), d(dv)};
}

// The log-sum-exp of each query's scaled scores, by plain loops.
Vec lse_direct(const AttnInputs& in) {
  const auto& s = in.s;
  const int hd = s.head_dim, group = s.n_head / s.n_head_kv;
  Vec lse(sz(s.n * s.n_head));
  for (int h = 0; h < s.n_head; ++h)
    for (int64_t i = 0; i < s.n; ++i) {
      Vec sc;
      for (int64_t j = 0; j <= i; ++j) {
        double acc = 0.0;
        for (int d = 0; d < hd; ++d)
          acc += in.q[sz((i * s.n_head + h) * hd + d)] *
                 in.k[sz((j * s.n_head_kv + h / group) * hd + d)];
        sc.push_back(acc * s.scale);
      }
      const double mx = *std::max_element(sc.begin(), sc.end());
      double sum = 0.0;
      for (double x : sc) sum += std::exp(x - mx);
      lse[sz(h * s.n + i)] = mx + std::log(sum);
    }
  return lse;
}

}  // namespace

// ---- Finite differences (double)

TEST(TrainOpsGrad, Linear) {
  const int64_t n = 7, in = 5, out = 4;
  for (bool bias : {true, false}) {
    Vec X = randn(sz(n * in), 1), W = randn(sz(out * in), 2), b = randn(sz(out), 3);
    const Vec R = randn(sz(n * out), 4);
    auto loss = [&] {
      Vec Y(sz(n * out));
      lt::linear_forward(X.data(), n, in, W.data(), out, bias ? b.data() : nullptr, Y.data());
      return dot(Y, R);
    };
    Vec dX(X.size()), dW(W.size(), 0.0), db(b.size(), 0.0);
    lt::linear_backward(X.data(), n, in, W.data(), out, R.data(), dX.data(), false, dW.data(),
                        bias ? db.data() : nullptr);
    expect_below(fd_error(X, dX, loss), 2e-9, "linear dX");            // measured 4.2e-10
    expect_below(fd_error(W, dW, loss), 2e-9, "linear dW");            // measured 4.0e-10
    if (bias) expect_below(fd_error(b, db, loss), 6e-9, "linear db");  // measured 1.6e-9
  }
}

TEST(TrainOpsGrad, RmsNorm) {
  const int64_t n = 6, d = 10;
  const double eps = 1e-5;
  Vec x = randn(sz(n * d), 11), w = randn(sz(d), 12, 0.3, 1.0);
  const Vec R = randn(sz(n * d), 13);
  Vec rstd(sz(n));
  auto loss = [&] {
    Vec y(x.size()), r(sz(n));
    lt::rmsnorm_forward(x.data(), w.data(), n, d, eps, y.data(), r.data());
    return dot(y, R);
  };
  Vec y(x.size());
  lt::rmsnorm_forward(x.data(), w.data(), n, d, eps, y.data(), rstd.data());
  Vec rstd_only(sz(n));
  lt::rmsnorm_rstd(x.data(), n, d, eps, rstd_only.data());
  EXPECT_EQ(rstd_only, rstd);  // the backward's recomputation, bit for bit
  Vec dx(x.size()), dw(w.size(), 0.0);
  lt::rmsnorm_backward(x.data(), w.data(), rstd.data(), R.data(), n, d, dx.data(), false,
                       dw.data());
  expect_below(fd_error(x, dx, loss), 4e-9, "rmsnorm dx");  // measured 9.7e-10
  expect_below(fd_error(w, dw, loss), 3e-9, "rmsnorm dw");  // measured 5.6e-10
}

TEST(TrainOpsGrad, Rope) {
  const int64_t n = 5;
  const int heads = 3, hd = 8, n_rot = 6;
  const int64_t stride = heads * hd + 3;  // padding after the heads is left alone
  VecF c, s;
  rope_tables(n, n_rot, 1.3f, c, s);
  Vec x = randn(sz(n * stride), 21);
  const Vec R = randn(x.size(), 22);
  auto apply = [&](Vec y) {
    lt::rope_forward(y.data(), n, stride, heads, hd, n_rot, c.data(), s.data());
    return y;
  };
  // Dimensions past n_rot and the padding pass through unchanged.
  const Vec y = apply(x);
  for (int64_t r = 0; r < n; ++r) {
    for (int h = 0; h < heads; ++h)
      for (int d = n_rot; d < hd; ++d) {
        const size_t i = sz(r * stride + h * hd + d);
        EXPECT_EQ(y[i], x[i]) << "row " << r << " head " << h << " dim " << d;
      }
    for (int64_t p = heads * hd; p < stride; ++p)
      EXPECT_EQ(y[sz(r * stride + p)], x[sz(r * stride + p)]);
  }
  Vec dx = R;
  lt::rope_backward(dx.data(), n, stride, heads, hd, n_rot, c.data(), s.data());
  auto loss = [&] { return dot(apply(x), R); };
  expect_below(fd_error(x, dx, loss), 4e-9, "rope dx");  // measured 8.3e-10
}

TEST(TrainOpsGrad, SwiGlu) {
  const int64_t n = 60;
  Vec g = randn(sz(n), 31, 3.0), u = randn(sz(n), 32);
  const Vec R = randn(sz(n), 33);
  auto loss = [&] {
    Vec o(sz(n));
    lt::swiglu_forward(g.data(), u.data(), o.data(), n);
    return dot(o, R);
  };
  Vec dg(sz(n)), du(sz(n));
  lt::swiglu_backward(g.data(), u.data(), R.data(), dg.data(), du.data(), n);
  expect_below(fd_error(g, dg, loss), 4e-9, "swiglu dg");  // measured 9.3e-10
  expect_below(fd_error(u, du, loss), 1e-9, "swiglu du");  // measured 2.2e-10
}

namespace {
// loss = sum(out * dout) of the tiled forward; the tiled backward's gradients against its finite
// differences over q, k and v (all coordinates, or max_coords of each).
struct Tols {
  double dq, dk, dv;
};
void attention_fd(int64_t n, size_t max_coords, Tols tol, const std::string& tag) {
  AttnInputs in = attn_inputs(n, 4, 2, 8, 41);
  const auto& s = in.s;
  auto loss = [&] {
    Vec out(in.q.size()), lse(sz(s.n * s.n_head));
    lt::attention_forward(s, in.q.data(), in.k.data(), in.v.data(), out.data(), lse.data());
    return dot(out, in.dout);
  };
  const AttnResult r = run_attention<double>(in, false);
  // The thousands of small forward passes run on one thread: waking a team for each costs more
  // than the pass (the results do not depend on the thread count: FloatIndependentOfThreadCount).
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double eq = fd_error(in.q, r.dq, loss, max_coords, 1);
  const double ek = fd_error(in.k, r.dk, loss, max_coords, 2);
  const double ev = fd_error(in.v, r.dv, loss, max_coords, 3);
  omp_set_num_threads(saved);
  expect_below(eq, tol.dq, tag + " dq");
  expect_below(ek, tol.dk, tag + " dk");
  expect_below(ev, tol.dv, tag + " dv");
}
}  // namespace

TEST(TrainOpsGrad, AttentionGqaPartialTiles) {
  // Measured: dq 1.4e-9, dk 5.3e-9, dv 1.7e-9 (all 2368 coordinates).
  attention_fd(37, 0, {6e-9, 2e-8, 6e-9}, "attention n=37");
}

TEST(TrainOpsGrad, AttentionSeveralTiles) {
  // Measured: dq 3.5e-9, dk 1.6e-8, dv 4.0e-9 (300 coordinates of each).
  attention_fd(150, 300, {1.5e-8, 6e-8, 1.5e-8}, "attention n=150");
}

TEST(TrainOpsGrad, LmHeadCrossEntropy) {
  const int64_t n = 23, d = 8, V = 31, chunk = 5;
  const double scale = 0.25;
  Vec h = randn(sz(n * d), 51), W = randn(sz(V * d), 52, 0.5);
  std::vector<int32_t> target(sz(n));
  std::mt19937 rng(53);
  for (auto& t : target) t = int32_t(rng() % V);
  // Unscored rows: scattered, and the whole last (partial) chunk [20, 23).
  const std::vector<int64_t> unscored = {0, 6, 7, 20, 21, 22};
  for (int64_t r : unscored) target[sz(r)] = -1;
  auto loss = [&] {
    return scale * lt::lm_head_cross_entropy<double>(h.data(), n, d, W.data(), V, target.data(),
                                                     scale, nullptr, nullptr, chunk);
  };
  Vec dh(h.size(), 7.0), dW(W.size(), 0.0);
  const double nll = lt::lm_head_cross_entropy(h.data(), n, d, W.data(), V, target.data(), scale,
                                               dh.data(), dW.data(), chunk);
  EXPECT_DOUBLE_EQ(scale * nll, loss());
  // The loss does not depend on the chunk.
  const double nll_one_chunk = lt::lm_head_cross_entropy<double>(
      h.data(), n, d, W.data(), V, target.data(), scale, nullptr, nullptr, int64_t(256));
  expect_below(std::fabs(nll_one_chunk - nll) / nll, 1e-14, "lm_head chunking");  // measured 0
  for (int64_t r : unscored)
    for (int64_t j = 0; j < d; ++j) EXPECT_EQ(dh[sz(r * d + j)], 0.0) << "row " << r;
  expect_below(fd_error(h, dh, loss), 2e-8, "lm_head dh");  // measured 4.8e-9
  expect_below(fd_error(W, dW, loss), 2e-8, "lm_head dW");  // measured 4.2e-9
}

TEST(TrainOpsGrad, EmbeddingRepeatedToken) {
  const int64_t n = 6, d = 4, V = 5;
  const std::vector<int32_t> tokens = {3, 1, 3, 0, 3, 2};
  Vec E = randn(sz(V * d), 61);
  const Vec R = randn(sz(n * d), 62);
  auto loss = [&] {
    double l = 0.0;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < d; ++j) l += E[sz(tokens[sz(r)] * d + j)] * R[sz(r * d + j)];
    return l;
  };
  Vec dE(E.size(), 0.0);
  lt::embedding_backward(tokens.data(), n, d, R.data(), dE.data());
  expect_below(fd_error(E, dE, loss), 1e-9, "embedding dE");          // measured 1.5e-10
  for (int64_t j = 0; j < d; ++j) EXPECT_EQ(dE[sz(4 * d + j)], 0.0);  // token 4 unused
}

// ---- Tiled attention against the n x n reference

namespace {
struct AttnCase {
  int64_t n;
  int n_head, n_head_kv, head_dim;
};
const AttnCase kAttnCases[] = {{1, 4, 2, 8},   {37, 4, 2, 8},  {64, 4, 4, 8},  {65, 2, 1, 16},
                               {150, 4, 2, 8}, {150, 4, 4, 8}, {200, 3, 3, 4}, {129, 6, 2, 12}};
}  // namespace

TEST(TrainOpsAttention, TiledMatchesReferenceDouble) {
  for (const AttnCase& c : kAttnCases) {
    SCOPED_TRACE(testing::Message() << "n=" << c.n << " heads " << c.n_head << "/" << c.n_head_kv);
    const AttnInputs in = attn_inputs(c.n, c.n_head, c.n_head_kv, c.head_dim, 71);
    const AttnResult t = run_attention<double>(in, false), r = run_attention<double>(in, true);
    const double e_out = rel_err(t.out, r.out), e_lse = rel_err(t.lse, lse_direct(in));
    const double e_grad = std::max({rel_err(t.dq, r.dq), rel_err(t.dk, r.dk), rel_err(t.dv, r.dv)});
    EXPECT_LT(e_out, 2e-15);   // measured at most 3.5e-16 over the cases
    EXPECT_LT(e_lse, 2e-15);   // measured at most 2.9e-16
    EXPECT_LT(e_grad, 6e-15);  // measured at most 1.2e-15
  }
}

TEST(TrainOpsAttention, TiledMatchesReferenceFloat) {
  for (const AttnCase& c : kAttnCases) {
    SCOPED_TRACE(testing::Message() << "n=" << c.n << " heads " << c.n_head << "/" << c.n_head_kv);
    const AttnInputs in = attn_inputs(c.n, c.n_head, c.n_head_kv, c.head_dim, 72);
    const AttnResult t = run_attention<float>(in, false), r = run_attention<float>(in, true);
    const double e_out = rel_err(t.out, r.out);
    const double e_grad = std::max({rel_err(t.dq, r.dq), rel_err(t.dk, r.dk), rel_err(t.dv, r.dv)});
    EXPECT_LT(e_out, 1e-6);   // measured at most 2.0e-7 over the cases
    EXPECT_LT(e_grad, 2e-6);  // measured at most 3.8e-7
  }
}

TEST(TrainOpsAttention, FloatIndependentOfThreadCount) {
  const AttnInputs in = attn_inputs(300, 4, 2, 16, 73);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const AttnResult one = run_attention<float>(in, false);
  auto same = [](const Vec& a, const Vec& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
  };
  for (int threads : {2, 3}) {
    omp_set_num_threads(threads);
    const AttnResult many = run_attention<float>(in, false);
    EXPECT_TRUE(same(one.out, many.out)) << threads << " threads";
    EXPECT_TRUE(same(one.lse, many.lse)) << threads << " threads";
    EXPECT_TRUE(same(one.dq, many.dq)) << threads << " threads";
    EXPECT_TRUE(same(one.dk, many.dk)) << threads << " threads";
    EXPECT_TRUE(same(one.dv, many.dv)) << threads << " threads";
  }
  omp_set_num_threads(saved);
}

// ---- float against double on the same inputs

TEST(TrainOpsFloat, AgreesWithDouble) {
  const int64_t n = 40, in = 24, out = 16;
  const Vec X = randn(sz(n * in), 81), W = randn(sz(out * in), 82, 0.3), b = randn(sz(out), 83),
            G = randn(sz(n * out), 84);
  {
    Vec Y(sz(n * out)), dX(X.size()), dW(W.size(), 0.0), db(b.size(), 0.0);
    lt::linear_forward(X.data(), n, in, W.data(), out, b.data(), Y.data());
    lt::linear_backward(X.data(), n, in, W.data(), out, G.data(), dX.data(), false, dW.data(),
                        db.data());
    const VecF Xf = to_float(X), Wf = to_float(W), bf = to_float(b), Gf = to_float(G);
    VecF Yf(Y.size()), dXf(dX.size()), dWf(dW.size(), 0.0f), dbf(db.size(), 0.0f);
    lt::linear_forward(Xf.data(), n, in, Wf.data(), out, bf.data(), Yf.data());
    lt::linear_backward(Xf.data(), n, in, Wf.data(), out, Gf.data(), dXf.data(), false, dWf.data(),
                        dbf.data());
    expect_below(std::max({rel_err(Yf, Y), rel_err(dXf, dX), rel_err(dWf, dW), rel_err(dbf, db)}),
                 1e-6, "float linear");  // measured 1.7e-7
  }
  {
    const Vec w = randn(sz(in), 85, 0.3, 1.0), dy = randn(X.size(), 86);
    Vec y(X.size()), rs(sz(n)), dx(X.size()), dw(w.size(), 0.0);
    lt::rmsnorm_forward(X.data(), w.data(), n, in, 1e-5, y.data(), rs.data());
    lt::rmsnorm_backward(X.data(), w.data(), rs.data(), dy.data(), n, in, dx.data(), false,
                         dw.data());
    const VecF Xf = to_float(X), wf = to_float(w), dyf = to_float(dy);
    VecF yf(y.size()), rsf(rs.size()), dxf(dx.size()), dwf(dw.size(), 0.0f);
    lt::rmsnorm_forward(Xf.data(), wf.data(), n, in, 1e-5f, yf.data(), rsf.data());
    lt::rmsnorm_backward(Xf.data(), wf.data(), rsf.data(), dyf.data(), n, in, dxf.data(), false,
                         dwf.data());
    expect_below(std::max({rel_err(yf, y), rel_err(rsf, rs), rel_err(dxf, dx), rel_err(dwf, dw)}),
                 1e-6, "float rmsnorm");  // measured 1.6e-7
  }
  {
    const int heads = 3, hd = 8, n_rot = 4;
    VecF c, s;
    rope_tables(n, n_rot, 1.1f, c, s);
    Vec x = randn(sz(n * heads * hd), 87), dx = randn(x.size(), 88);
    VecF xf = to_float(x), dxf = to_float(dx);
    lt::rope_forward(x.data(), n, heads * hd, heads, hd, n_rot, c.data(), s.data());
    lt::rope_backward(dx.data(), n, heads * hd, heads, hd, n_rot, c.data(), s.data());
    lt::rope_forward(xf.data(), n, heads * hd, heads, hd, n_rot, c.data(), s.data());
    lt::rope_backward(dxf.data(), n, heads * hd, heads, hd, n_rot, c.data(), s.data());
    expect_below(std::max(rel_err(xf, x), rel_err(dxf, dx)), 4e-7,
                 "float rope");  // measured 7.4e-8
  }
  {
    const Vec g = randn(sz(n * in), 89, 3.0), dout = randn(g.size(), 90);
    Vec o(g.size()), dg(g.size()), du(g.size());
    lt::swiglu_forward(g.data(), X.data(), o.data(), int64_t(g.size()));
    lt::swiglu_backward(g.data(), X.data(), dout.data(), dg.data(), du.data(), int64_t(g.size()));
    const VecF gf = to_float(g), uf = to_float(X), doutf = to_float(dout);
    VecF of(g.size()), dgf(g.size()), duf(g.size());
    lt::swiglu_forward(gf.data(), uf.data(), of.data(), int64_t(g.size()));
    lt::swiglu_backward(gf.data(), uf.data(), doutf.data(), dgf.data(), duf.data(),
                        int64_t(g.size()));
    expect_below(std::max({rel_err(of, o), rel_err(dgf, dg), rel_err(duf, du)}), 6e-7,
                 "float swiglu");  // measured 1.2e-7
  }
  {
    const AttnInputs a = attn_inputs(150, 4, 2, 16, 91);
    const AttnResult rd = run_attention<double>(a, false), rf = run_attention<float>(a, false);
    expect_below(std::max({rel_err(rf.out, rd.out), rel_err(rf.lse, rd.lse), rel_err(rf.dq, rd.dq),
                           rel_err(rf.dk, rd.dk), rel_err(rf.dv, rd.dv)}),
                 2e-6, "float attention");  // measured 3.3e-7
  }
  {
    const int64_t V = 50;
    const Vec Wv = randn(sz(V * in), 92, 0.5);
    std::vector<int32_t> target(sz(n));
    for (int64_t r = 0; r < n; ++r) target[sz(r)] = r % 7 == 3 ? -1 : int32_t((r * 13) % V);
    Vec dh(X.size()), dW(Wv.size(), 0.0);
    const double nll = lt::lm_head_cross_entropy(X.data(), n, in, Wv.data(), V, target.data(), 0.5,
                                                 dh.data(), dW.data(), 9);
    const VecF Xf = to_float(X), Wf = to_float(Wv);
    VecF dhf(dh.size()), dWf(dW.size(), 0.0f);
    const double nllf = lt::lm_head_cross_entropy(Xf.data(), n, in, Wf.data(), V, target.data(),
                                                  0.5f, dhf.data(), dWf.data(), 9);
    expect_below(std::max({std::fabs(nllf - nll) / nll, rel_err(dhf, dh), rel_err(dWf, dW)}), 2e-6,
                 "float lm_head");  // measured 3.0e-7
  }
  {
    const std::vector<int32_t> tokens = {2, 0, 2, 2, 1};
    const Vec dx = randn(sz(5 * in), 93);
    Vec dE(sz(3 * in), 0.0);
    VecF dEf(dE.size(), 0.0f);
    const VecF dxf = to_float(dx);
    lt::embedding_backward(tokens.data(), 5, in, dx.data(), dE.data());
    lt::embedding_backward(tokens.data(), 5, in, dxf.data(), dEf.data());
    expect_below(rel_err(dEf, dE), 3e-7, "float embedding");  // measured 4.5e-8
  }
}

// ---- bf16 products (compute = kBF16): the same results as the double path on operands rounded
// to bf16, i.e. only the rounding of the inputs differs from FP32 (this checks every transposed
// operand of the backward products), and a double instantiation refuses bf16.

Vec round_bf16(const Vec& v) {
  Vec r(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    r[i] = double(longrope::bf16_to_fp32(longrope::fp32_to_bf16(float(v[i]))));
  return r;
}

TEST(TrainOpsBf16, LinearEqualsRoundedOperands) {
  LONGROPE_REQUIRE_CPU_VARIANT(longrope::kernels::CpuVariant::kAvx512Bf16);
  // Odd sizes: partial blocks of the transposes and of the GEMM.
  const int64_t n = 77, in = 45, out = 70;
  const Vec X = randn(sz(n * in), 101), W = randn(sz(out * in), 102, 0.3), b = randn(sz(out), 103),
            G = randn(sz(n * out), 104), dX0 = randn(sz(n * in), 105);
  const Vec Xr = round_bf16(X), Wr = round_bf16(W), Gr = round_bf16(G);
  Vec Y(sz(n * out)), dX = dX0, dW(W.size(), 0.5), db(b.size(), 0.0);
  lt::linear_forward(Xr.data(), n, in, Wr.data(), out, b.data(), Y.data());
  lt::linear_backward(Xr.data(), n, in, Wr.data(), out, Gr.data(), dX.data(), true, dW.data(),
                      static_cast<double*>(nullptr));
  for (int64_t r = 0; r < n; ++r)  // the bias gradient is a plain FP32 sum of the unrounded dY
    for (int64_t j = 0; j < out; ++j) db[sz(j)] += G[sz(r * out + j)];
  const VecF Xf = to_float(X), Wf = to_float(W), bf = to_float(b), Gf = to_float(G);
  VecF Yf(Y.size()), dXf = to_float(dX0), dWf(dW.size(), 0.5f), dbf(db.size(), 0.0f);
  const auto c = longrope::kernels::Compute::kBF16;
  lt::linear_forward(Xf.data(), n, in, Wf.data(), out, bf.data(), Yf.data(), c);
  lt::linear_backward(Xf.data(), n, in, Wf.data(), out, Gf.data(), dXf.data(), true, dWf.data(),
                      dbf.data(), c);
  // Measured 8.3e-8: what remains is FP32 accumulation order.
  expect_below(std::max({rel_err(Yf, Y), rel_err(dXf, dX), rel_err(dWf, dW), rel_err(dbf, db)}),
               1e-6, "bf16 linear");
  const Vec Wd = W;
  Vec Yd(Y.size());
  expect_error([&] { lt::linear_forward(X.data(), n, in, Wd.data(), out, b.data(), Yd.data(), c); },
               {"bf16 compute is for float training only"});
}

TEST(TrainOpsBf16, LmHeadLossEqualsRoundedOperandsAndGradientsTrackFp32) {
  LONGROPE_REQUIRE_CPU_VARIANT(longrope::kernels::CpuVariant::kAvx512Bf16);
  const int64_t n = 41, d = 37, V = 300;
  const Vec H = randn(sz(n * d), 111), W = randn(sz(V * d), 112, 0.5);
  std::vector<int32_t> target(sz(n));
  for (int64_t r = 0; r < n; ++r) target[sz(r)] = r % 7 == 3 ? -1 : int32_t((r * 37) % V);
  const Vec Hr = round_bf16(H), Wr = round_bf16(W);
  const double nll_r =
      lt::lm_head_cross_entropy(Hr.data(), n, d, Wr.data(), V, target.data(), 1.0,
                                static_cast<double*>(nullptr), static_cast<double*>(nullptr), 16);
  Vec dh(H.size()), dW(W.size(), 0.0);
  const double nll = lt::lm_head_cross_entropy(H.data(), n, d, W.data(), V, target.data(), 1.0,
                                               dh.data(), dW.data(), 16);
  const VecF Hf = to_float(H), Wf = to_float(W);
  VecF dhf(dh.size()), dWf(dW.size(), 0.0f);
  const double nllf =
      lt::lm_head_cross_entropy(Hf.data(), n, d, Wf.data(), V, target.data(), 1.0f, dhf.data(),
                                dWf.data(), 16, longrope::kernels::Compute::kBF16);
  // The loss: measured 5.4e-9 from the rounded-operand double loss, 1.2e-4 from the unrounded one.
  expect_below(std::fabs(nllf - nll_r) / nll_r, 1e-7, "bf16 lm_head loss");
  EXPECT_GT(std::fabs(nllf - nll) / nll, 1e-5);
  // The gradients also round the softmax probabilities: measured 4.6e-3 from FP32.
  expect_below(std::max(rel_err(dhf, dh), rel_err(dWf, dW)), 2e-2, "bf16 lm_head gradients");
}

// ---- Accumulation

TEST(TrainOpsAccumulate, WeightGradsAddUp) {
  const int64_t n = 9, in = 6, out = 5;
  const Vec X = randn(sz(n * in), 101), W = randn(sz(out * in), 102), G = randn(sz(n * out), 103);
  {
    Vec dX(X.size()), dW(W.size(), 0.0), db(sz(out), 0.0);
    lt::linear_backward(X.data(), n, in, W.data(), out, G.data(), dX.data(), false, dW.data(),
                        db.data());
    const Vec dX1 = dX, dW1 = dW, db1 = db;
    lt::linear_backward(X.data(), n, in, W.data(), out, G.data(), dX.data(), true, dW.data(),
                        db.data());
    expect_below(rel_err(dX, twice(dX1)), 1e-15, "accumulate linear dX");  // measured 0
    expect_below(rel_err(dW, twice(dW1)), 1e-15, "accumulate linear dW");  // measured 0
    expect_below(rel_err(db, twice(db1)), 1e-15, "accumulate linear db");  // measured 1.9e-16
    // Without accumulate_dx, dX is overwritten; a null dX is skipped.
    lt::linear_backward<double>(X.data(), n, in, W.data(), out, G.data(), dX.data(), false,
                                dW.data(), nullptr);
    EXPECT_EQ(dX, dX1);
    lt::linear_backward<double>(X.data(), n, in, W.data(), out, G.data(), nullptr, false, dW.data(),
                                nullptr);
    expect_below(rel_err(dW, Vec(twice(twice(dW1)))), 1e-15, "accumulate linear x4");  // measured 0
  }
  {
    const Vec w = randn(sz(in), 104, 0.3, 1.0), dy = randn(X.size(), 105);
    Vec y(X.size()), rs(sz(n)), dx(X.size()), dw(w.size(), 0.0);
    lt::rmsnorm_forward(X.data(), w.data(), n, in, 1e-5, y.data(), rs.data());
    lt::rmsnorm_backward(X.data(), w.data(), rs.data(), dy.data(), n, in, dx.data(), false,
                         dw.data());
    const Vec dx1 = dx, dw1 = dw;
    lt::rmsnorm_backward(X.data(), w.data(), rs.data(), dy.data(), n, in, dx.data(), true,
                         dw.data());
    expect_below(rel_err(dx, twice(dx1)), 1e-15, "accumulate rmsnorm dx");  // measured 0
    expect_below(rel_err(dw, twice(dw1)), 1e-15, "accumulate rmsnorm dw");  // measured 4.7e-17
  }
  {
    const int64_t V = 11;
    const Vec Wv = randn(sz(V * in), 106);
    std::vector<int32_t> target(sz(n));
    for (int64_t r = 0; r < n; ++r) target[sz(r)] = int32_t((r * 5) % V);
    Vec dh(X.size()), dW(Wv.size(), 0.0);
    lt::lm_head_cross_entropy(X.data(), n, in, Wv.data(), V, target.data(), 1.0, dh.data(),
                              dW.data(), 4);
    const Vec dh1 = dh, dW1 = dW;
    lt::lm_head_cross_entropy(X.data(), n, in, Wv.data(), V, target.data(), 1.0, dh.data(),
                              dW.data(), 4);
    EXPECT_EQ(dh, dh1);  // written, not accumulated
    expect_below(rel_err(dW, twice(dW1)), 1e-15, "accumulate lm_head dW");  // measured 1.9e-16
  }
  {
    const std::vector<int32_t> tokens = {1, 1, 0};
    const Vec dx = randn(sz(3 * in), 107);
    Vec dE(sz(2 * in), 0.0);
    lt::embedding_backward(tokens.data(), 3, in, dx.data(), dE.data());
    const Vec dE1 = dE;
    lt::embedding_backward(tokens.data(), 3, in, dx.data(), dE.data());
    expect_below(rel_err(dE, twice(dE1)), 1e-15, "accumulate embedding dE");  // measured 1.1e-16
  }
}

// ---- Errors

TEST(TrainOpsErrors, LmHeadTargetOutOfRange) {
  const int64_t n = 4, d = 3, V = 31;
  const Vec h = randn(sz(n * d), 111), W = randn(sz(V * d), 112);
  const std::vector<int32_t> target = {1, -1, 40, 2};
  Vec dh(h.size()), dW(W.size(), 0.0);
  expect_error(
      [&] {
        lt::lm_head_cross_entropy(h.data(), n, d, W.data(), V, target.data(), 1.0, dh.data(),
                                  dW.data(), 2);
      },
      {"lm_head_cross_entropy", "40", "row 2", "[0, 31)"});
  EXPECT_EQ(dW, Vec(W.size(), 0.0));  // checked before any gradient is written
}

TEST(TrainOpsErrors, Preconditions) {
  const Vec buf(64, 0.0);
  Vec o(64);
  expect_error(
      [&] {
        lt::attention_forward<double>({4, 3, 2, 8, 0.3}, buf.data(), buf.data(), buf.data(),
                                      o.data(), o.data());
      },
      {"attention_forward", "n_head 3", "n_head_kv 2"});
  expect_error(
      [&] {
        lt::attention_backward<double>({-1, 2, 2, 8, 0.3}, buf.data(), buf.data(), buf.data(),
                                       buf.data(), buf.data(), buf.data(), o.data(), o.data(),
                                       o.data());
      },
      {"attention_backward", "-1"});
  expect_error(
      [&] {
        lt::attention_forward_reference<double>({4, 2, 2, 0, 0.3}, buf.data(), buf.data(),
                                                buf.data(), o.data());
      },
      {"attention_forward_reference", "head_dim 0"});
  const VecF tab(64, 0.0f);
  expect_error([&] { lt::rope_forward(o.data(), 2, 8, 1, 8, 5, tab.data(), tab.data()); },
               {"rope_forward", "n_rot 5"});
  expect_error([&] { lt::rope_backward(o.data(), 2, 8, 1, 8, 10, tab.data(), tab.data()); },
               {"rope_backward", "n_rot 10", "head_dim 8"});
}
