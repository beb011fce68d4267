// The operations of a training step, forward and backward (include/longrope/train_ops.h): the
// backward siblings of the engine kernels, which the CPU backend (backend_cpu.cpp) runs for
// training, and their double instantiations, which the reference ops of the gradient checks run.
// Matrix products go through BLAS, or through kernels::gemm_bf16_nt for the bf16 linear layers and
// LM head; every parallel loop writes disjoint outputs in a fixed order,
// so the results do not depend on the number of threads.
#include "longrope/train_ops.h"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "engine/kernels/bf16_internal.h"
#include "engine/kernels/vec_math.h"
#include "longrope/error.h"
#include "longrope/kernels.h"

namespace longrope::train {

namespace {

// Attention tiles: queries x keys. Equal sizes keep the diagonal tile square.
constexpr int64_t kTileQ = 64;
constexpr int64_t kTileK = 64;

// exp: the engine's vectorisable fast_exp for float (relative error < 2e-7, below FP32 rounding of
// the sums it feeds), std::exp for the double instantiation of the finite-difference checks.
inline float exp_of(float x) {
  return kernels::fast_exp(x);
}
inline double exp_of(double x) {
  return std::exp(x);
}

// C = beta C when the product is empty (K == 0); true when there is nothing left to do.
template <class T>
bool gemm_trivial(int64_t M, int64_t N, int64_t K, T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return true;
  if (K > 0) return false;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
  return true;
}

// Row-major C[M][N] = alpha op(A) op(B) + beta C with op(X) = X^T when the flag is set.
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (gemm_trivial(M, N, K, beta, C, ldc)) return;
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M),
              int(N), int(K), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (gemm_trivial(M, N, K, beta, C, ldc)) return;
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M),
              int(N), int(K), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}

[[noreturn]] void fail(const char* fn, const std::string& what) {
  throw Error(fmt::format("{}: {}", fn, what));
}

// ---- bf16 products

// dst = the rows x cols matrix op(src) in bf16 (round to nearest even), dense (row stride cols):
// op(src)[r][c] = src[r * ld + c], or src[c * ld + r] with `transpose` (src is then cols x rows).
void to_bf16(const float* src, int64_t ld, int64_t rows, int64_t cols, bool transpose,
             std::vector<uint16_t>& dst) {
  dst.resize(size_t(rows * cols));
  uint16_t* out = dst.data();
  if (!transpose) {
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t r = 0; r < rows; ++r) kernels::f32_to_bf16(src + r * ld, out + r * cols, cols);
    return;
  }
  // Convert src's rows (vectorised) into a scratch of the calling thread, then transpose the
  // 16-bit values in square blocks that stay in cache.
  static thread_local std::vector<uint16_t> tmp;
  tmp.resize(size_t(rows * cols));
  uint16_t* t = tmp.data();
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t c = 0; c < cols; ++c) kernels::f32_to_bf16(src + c * ld, t + c * rows, rows);
  constexpr int64_t kB = 64;
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t r0 = 0; r0 < rows; r0 += kB)
    for (int64_t c0 = 0; c0 < cols; c0 += kB) {
      const int64_t r1 = std::min(rows, r0 + kB), c1 = std::min(cols, c0 + kB);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) out[r * cols + c] = t[c * rows + r];
    }
}

// C[M][N] = op(A) B16^T + beta C, B16 being a matrix already in bf16 as N dense rows of K (as
// gemm_bf16_nt wants it); A is rounded to bf16, the sums are FP32. The operands are converted
// into buffers of the calling thread, kept between calls (the training step calls this from one
// thread; the product itself is parallel).
void gemm_bf16_b16(bool ta, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                   const uint16_t* B16, float beta, float* C, int64_t ldc) {
  if (gemm_trivial(M, N, K, beta, C, ldc)) return;
  static thread_local std::vector<uint16_t> a16;
  to_bf16(A, lda, M, K, ta, a16);
  kernels::gemm_bf16_nt(M, N, K, a16.data(), K, B16, K, C, ldc, beta);
}

// C[M][N] = op(A) op(B) + beta C with both operands rounded to bf16 and FP32 accumulation
// (op as in gemm).
void gemm_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (gemm_trivial(M, N, K, beta, C, ldc)) return;
  static thread_local std::vector<uint16_t> b16;
  to_bf16(B, ldb, N, K, !tb, b16);
  gemm_bf16_b16(ta, M, N, K, A, lda, b16.data(), beta, C, ldc);
}

// C = op(A) op(B) + beta C in the arithmetic `compute` asks for (bf16: float only).
template <class T>
void product(kernels::Compute compute, const char* fn, bool ta, bool tb, int64_t M, int64_t N,
             int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C,
             int64_t ldc) {
  if (compute == kernels::Compute::kBF16) {
    if constexpr (std::is_same_v<T, float>) {
      gemm_bf16(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
      return;
    } else {
      fail(fn, "bf16 compute is for float training only");
    }
  }
  gemm(ta, tb, M, N, K, T(1), A, lda, B, ldb, beta, C, ldc);
}

void check_rows(const char* fn, int64_t n, int64_t d) {
  if (n < 0) fail(fn, fmt::format("row count {} is negative", n));
  if (d < 0) fail(fn, fmt::format("row width {} is negative", d));
}

void check_shape(const AttentionShape& s, const char* fn) {
  if (s.n < 0) fail(fn, fmt::format("sequence length {} is negative", s.n));
  if (s.n_head <= 0 || s.n_head_kv <= 0 || s.n_head % s.n_head_kv != 0)
    fail(fn, fmt::format("n_head {} is not a positive multiple of n_head_kv {}", s.n_head,
                         s.n_head_kv));
  if (s.head_dim <= 0) fail(fn, fmt::format("head_dim {} is not positive", s.head_dim));
  if (!std::isfinite(s.scale)) fail(fn, fmt::format("scale {} is not finite", s.scale));
}

void check_rope(const char* fn, int64_t n, int64_t row_stride, int n_heads, int head_dim,
                int n_rot) {
  if (n < 0) fail(fn, fmt::format("row count {} is negative", n));
  if (n_heads <= 0) fail(fn, fmt::format("n_heads {} is not positive", n_heads));
  if (head_dim <= 0) fail(fn, fmt::format("head_dim {} is not positive", head_dim));
  if (n_rot < 0 || n_rot % 2 != 0 || n_rot > head_dim)
    fail(fn, fmt::format("n_rot {} is not an even number in [0, head_dim {}]", n_rot, head_dim));
  if (row_stride < int64_t(n_heads) * head_dim)
    fail(fn,
         fmt::format("row stride {} is less than {} heads x {}", row_stride, n_heads, head_dim));
}

template <class T>
T sigmoid(T x) {
  return T(1) / (T(1) + exp_of(-x));
}

// The shape of one attention call as the tiled kernels use it.
template <class T>
struct Attn {
  const AttentionShape& s;
  const T *q, *k, *v;
  int hd, group;
  int64_t qs, ks;  // row strides of q (and out, dout, dq) and of k (v, dk, dv)
  T scale;
  Attn(const AttentionShape& shape, const T* q_, const T* k_, const T* v_)
      : s(shape),
        q(q_),
        k(k_),
        v(v_),
        hd(shape.head_dim),
        group(shape.n_head / shape.n_head_kv),
        qs(int64_t(shape.n_head) * shape.head_dim),
        ks(int64_t(shape.n_head_kv) * shape.head_dim),
        scale(T(shape.scale)) {}
  // Task t of a (head, query tile) loop: the longest (last) query tiles first, for balance under
  // the causal mask.
  struct QueryTask {
    int h, kvh;
    int64_t i0, bq;
  };
  QueryTask query_task(int64_t t) const {
    const int64_t n_qt = (s.n + kTileQ - 1) / kTileQ;
    const int64_t tile = n_qt - 1 - t / s.n_head;
    const int h = int(t % s.n_head);
    return {h, h / group, tile * kTileQ, std::min(kTileQ, s.n - tile * kTileQ)};
  }
};

// For query rows [i0, i0+bq) of head h and keys [k0, k0+bk): P = exp(scale q.k - lse) on the
// causal mask (0 above it), then dS = P o (dout V^T - D) in dS. P and dS are bq x bk.
template <class T>
void attention_tile_grads(const Attn<T>& a, const T* lse, const T* dout, const T* D, int h,
                          int64_t i0, int64_t bq, int64_t k0, int64_t bk, T* P, T* dS) {
  const int kvh = h / a.group;
  const T* Q = a.q + i0 * a.qs + int64_t(h) * a.hd;
  const T* K = a.k + k0 * a.ks + int64_t(kvh) * a.hd;
  const T* V = a.v + k0 * a.ks + int64_t(kvh) * a.hd;
  const T* dO = dout + i0 * a.qs + int64_t(h) * a.hd;
  gemm(false, true, bq, bk, a.hd, a.scale, Q, a.qs, K, a.ks, T(0), P, bk);
  gemm(false, true, bq, bk, a.hd, T(1), dO, a.qs, V, a.ks, T(0), dS, bk);
  for (int64_t r = 0; r < bq; ++r) {
    const int64_t visible = std::clamp<int64_t>(i0 + r - k0 + 1, 0, bk);
    const T l = lse[int64_t(h) * a.s.n + i0 + r];
    T* p = P + r * bk;
    T* ds = dS + r * bk;
    const T dr = D[r];
#pragma omp simd
    for (int64_t c = 0; c < visible; ++c) {
      p[c] = exp_of(p[c] - l);
      ds[c] = p[c] * (ds[c] - dr);
    }
    std::fill(p + visible, p + bk, T(0));
    std::fill(ds + visible, ds + bk, T(0));
  }
}

// D_r = dout_r . out_r for query rows [i0, i0+bq) of head h.
template <class T>
void attention_delta(const Attn<T>& a, const T* out, const T* dout, int h, int64_t i0, int64_t bq,
                     T* D) {
  for (int64_t r = 0; r < bq; ++r) {
    const T* o = out + (i0 + r) * a.qs + int64_t(h) * a.hd;
    const T* g = dout + (i0 + r) * a.qs + int64_t(h) * a.hd;
    T acc = 0;
    for (int d = 0; d < a.hd; ++d) acc += o[d] * g[d];
    D[r] = acc;
  }
}

}  // namespace

// ---- Linear

template <class T>
void linear_forward(const T* X, int64_t n, int64_t in, const T* W, int64_t out, const T* b, T* Y,
                    kernels::Compute compute) {
  check_rows("linear_forward", n, in);
  if (out < 0) fail("linear_forward", fmt::format("output width {} is negative", out));
  if (b) {
    for (int64_t r = 0; r < n; ++r) std::copy(b, b + out, Y + r * out);
  }
  product(compute, "linear_forward", false, true, n, out, in, X, in, W, in, b ? T(1) : T(0), Y,
          out);
}

template <class T>
void linear_backward(const T* X, int64_t n, int64_t in, const T* W, int64_t out, const T* dY, T* dX,
                     bool accumulate_dx, T* dW, T* db, kernels::Compute compute) {
  constexpr const char* fn = "linear_backward";
  check_rows(fn, n, in);
  if (out < 0) fail(fn, fmt::format("output width {} is negative", out));
  if (dX)
    product(compute, fn, false, false, n, in, out, dY, out, W, in, accumulate_dx ? T(1) : T(0), dX,
            in);
  product(compute, fn, true, false, out, in, n, dY, out, X, in, T(1), dW, in);
  if (db) {
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < out; ++j) db[j] += dY[r * out + j];
  }
}

// ---- RMSNorm

namespace {
// 1 / sqrt(mean(x^2) + eps) of one row of d values, the sum in double.
template <class T>
T row_rstd(const T* xr, int64_t d, T eps) {
  double ss = 0.0;
  for (int64_t j = 0; j < d; ++j) ss += double(xr[j]) * xr[j];
  return T(1.0 / std::sqrt(ss / double(d) + double(eps)));
}
}  // namespace

template <class T>
void rmsnorm_forward(const T* x, const T* w, int64_t n, int64_t d, T eps, T* y, T* rstd) {
  check_rows("rmsnorm_forward", n, d);
  if (d == 0 && n > 0) fail("rmsnorm_forward", "row width 0");
#pragma omp parallel for schedule(static) if (n * d > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const T* xr = x + r * d;
    const T rs = row_rstd(xr, d, eps);
    rstd[r] = rs;
    T* yr = y + r * d;
    for (int64_t j = 0; j < d; ++j) yr[j] = xr[j] * rs * w[j];
  }
}

template <class T>
void rmsnorm_rstd(const T* x, int64_t n, int64_t d, T eps, T* rstd) {
  check_rows("rmsnorm_rstd", n, d);
  if (d == 0 && n > 0) fail("rmsnorm_rstd", "row width 0");
#pragma omp parallel for schedule(static) if (n * d > 65536)
  for (int64_t r = 0; r < n; ++r) rstd[r] = row_rstd(x + r * d, d, eps);
}

template <class T>
void rmsnorm_backward(const T* x, const T* w, const T* rstd, const T* dy, int64_t n, int64_t d,
                      T* dx, bool accumulate_dx, T* dw) {
  check_rows("rmsnorm_backward", n, d);
  if (d == 0) return;
  const bool par = n * d > 65536;
  // dx = r (dy w) - r^3 x mean(dy w x), row by row.
#pragma omp parallel for schedule(static) if (par)
  for (int64_t r = 0; r < n; ++r) {
    const T* xr = x + r * d;
    const T* g = dy + r * d;
    double dot = 0.0;
    for (int64_t j = 0; j < d; ++j) dot += double(g[j]) * w[j] * xr[j];
    const T rs = rstd[r];
    const T c = T(double(rs) * rs * rs * dot / double(d));
    T* o = dx + r * d;
    for (int64_t j = 0; j < d; ++j) {
      const T val = rs * (g[j] * w[j]) - c * xr[j];
      o[j] = accumulate_dx ? o[j] + val : val;
    }
  }
  // dw += sum over rows of dy x r: blocks of columns, rows in order.
  constexpr int64_t kCols = 64;
  const int64_t blocks = (d + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (par && blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * kCols, j1 = std::min(d, j0 + kCols);
    for (int64_t r = 0; r < n; ++r) {
      const T rs = rstd[r];
      for (int64_t j = j0; j < j1; ++j) dw[j] += dy[r * d + j] * x[r * d + j] * rs;
    }
  }
}

// ---- RoPE

namespace {
// Rotates each pair by the table's angle (sign +1) or by its negative (sign -1: the transpose,
// since a rotation's inverse is its transpose and the attention factor is a common scale).
template <class T>
void rotate_pairs(const char* fn, T* x, int64_t n, int64_t row_stride, int n_heads, int head_dim,
                  int n_rot, const float* cos_tab, const float* sin_tab, T sign) {
  check_rope(fn, n, row_stride, n_heads, head_dim, n_rot);
  const int half = n_rot / 2;
#pragma omp parallel for schedule(static) if (n > 64)
  for (int64_t r = 0; r < n; ++r) {
    const float* c = cos_tab + r * half;
    const float* s = sin_tab + r * half;
    for (int h = 0; h < n_heads; ++h) {
      T* v = x + r * row_stride + int64_t(h) * head_dim;
      for (int j = 0; j < half; ++j) {
        const T a = v[2 * j], b = v[2 * j + 1], cj = T(c[j]), sj = sign * T(s[j]);
        v[2 * j] = a * cj - b * sj;
        v[2 * j + 1] = a * sj + b * cj;
      }
    }
  }
}
}  // namespace

template <class T>
void rope_forward(T* x, int64_t n, int64_t row_stride, int n_heads, int head_dim, int n_rot,
                  const float* cos_tab, const float* sin_tab) {
  rotate_pairs("rope_forward", x, n, row_stride, n_heads, head_dim, n_rot, cos_tab, sin_tab, T(1));
}

template <class T>
void rope_backward(T* dx, int64_t n, int64_t row_stride, int n_heads, int head_dim, int n_rot,
                   const float* cos_tab, const float* sin_tab) {
  rotate_pairs("rope_backward", dx, n, row_stride, n_heads, head_dim, n_rot, cos_tab, sin_tab,
               T(-1));
}

// ---- SwiGLU

template <class T>
void swiglu_forward(const T* g, const T* u, T* out, int64_t n) {
  if (n < 0) fail("swiglu_forward", fmt::format("count {} is negative", n));
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] * sigmoid(g[i]) * u[i];
}

template <class T>
void swiglu_backward(const T* g, const T* u, const T* dout, T* dg, T* du, int64_t n) {
  if (n < 0) fail("swiglu_backward", fmt::format("count {} is negative", n));
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const T sg = sigmoid(g[i]);
    const T gi = g[i], ui = u[i], go = dout[i];
    dg[i] = go * ui * sg * (T(1) + gi * (T(1) - sg));
    du[i] = go * gi * sg;
  }
}

// ---- Attention, tiled

template <class T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* out,
                       T* lse) {
  check_shape(s, "attention_forward");
  // FP32 with AVX-512: the engine's register-blocked kernel (attention_avx512.cpp).
  if constexpr (std::is_same_v<T, float>)
    if (kernels::attention_forward_f32_avx512(s, q, k, v, out, lse)) return;
  const Attn<T> a(s, q, k, v);
  const int hd = a.hd;
  const int64_t n = s.n;
  const int64_t n_qt = (n + kTileQ - 1) / kTileQ;
  const int64_t total = n_qt * s.n_head;
  const T neg_inf = -std::numeric_limits<T>::infinity();

#pragma omp parallel if (total > 1)
  {
    std::vector<T> sc(kTileQ * kTileK), o(kTileQ * hd), m(kTileQ), l(kTileQ);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < total; ++t) {
      const auto [h, kvh, i0, bq] = a.query_task(t);
      const T* Q = q + i0 * a.qs + int64_t(h) * hd;
      const T* K = k + int64_t(kvh) * hd;
      const T* V = v + int64_t(kvh) * hd;
      std::fill(o.begin(), o.begin() + bq * hd, T(0));
      std::fill(m.begin(), m.begin() + bq, neg_inf);
      std::fill(l.begin(), l.begin() + bq, T(0));
      const int64_t kend = i0 + bq;  // keys [0, kend) are visible to some row of the tile
      for (int64_t k0 = 0; k0 < kend; k0 += kTileK) {
        const int64_t bk = std::min(kTileK, kend - k0);
        gemm(false, true, bq, bk, hd, a.scale, Q, a.qs, K + k0 * a.ks, a.ks, T(0), sc.data(), bk);
        for (int64_t r = 0; r < bq; ++r) {
          T* sr = sc.data() + r * bk;
          const int64_t visible = std::clamp<int64_t>(i0 + r - k0 + 1, 0, bk);
          if (visible == 0) {
            std::fill(sr, sr + bk, T(0));
            continue;
          }
          T mx = m[r];
#pragma omp simd reduction(max : mx)
          for (int64_t c = 0; c < visible; ++c) mx = sr[c] > mx ? sr[c] : mx;
          const T corr = m[r] == neg_inf ? T(0) : std::exp(m[r] - mx);
          T sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t c = 0; c < visible; ++c) {
            const T e = exp_of(sr[c] - mx);
            sr[c] = e;
            sum += e;
          }
          std::fill(sr + visible, sr + bk, T(0));
          l[r] = l[r] * corr + sum;
          m[r] = mx;
          if (corr != T(1)) {
            T* orow = o.data() + r * hd;
            for (int d = 0; d < hd; ++d) orow[d] *= corr;
          }
        }
        gemm(false, false, bq, hd, bk, T(1), sc.data(), bk, V + k0 * a.ks, a.ks, T(1), o.data(),
             hd);
      }
      for (int64_t r = 0; r < bq; ++r) {
        T* dst = out + (i0 + r) * a.qs + int64_t(h) * hd;
        const T inv = T(1) / l[r];
        for (int d = 0; d < hd; ++d) dst[d] = o[r * hd + d] * inv;
        lse[int64_t(h) * n + i0 + r] = m[r] + std::log(l[r]);
      }
    }
  }
}

template <class T>
void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* out,
                        const T* lse, const T* dout, T* dq, T* dk, T* dv) {
  check_shape(s, "attention_backward");
  const Attn<T> a(s, q, k, v);
  const int hd = a.hd;
  const int64_t n = s.n;
  const int64_t n_qt = (n + kTileQ - 1) / kTileQ;
  const int64_t n_kt = (n + kTileK - 1) / kTileK;
  const int64_t kv_tasks = n_kt * s.n_head_kv;
  const int64_t q_tasks = n_qt * s.n_head;

#pragma omp parallel if (std::max(kv_tasks, q_tasks) > 1)
  {
    std::vector<T> P(kTileQ * kTileK), dS(kTileQ * kTileK), D(kTileQ);
    std::vector<T> acc0(std::max(kTileQ, kTileK) * hd), acc1(kTileK * hd);

    // Pass 1: dK and dV of each (kv head, key tile), summed over the group's query heads and the
    // query tiles at or after the key tile, in that fixed order.
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < kv_tasks; ++t) {
      const int64_t tile = t / s.n_head_kv;  // early key tiles see the most queries: first
      const int kvh = int(t % s.n_head_kv);
      const int64_t k0 = tile * kTileK, bk = std::min(kTileK, n - k0);
      T* dKt = acc0.data();
      T* dVt = acc1.data();
      std::fill(dKt, dKt + bk * hd, T(0));
      std::fill(dVt, dVt + bk * hd, T(0));
      for (int g = 0; g < a.group; ++g) {
        const int h = kvh * a.group + g;
        for (int64_t i0 = (k0 / kTileQ) * kTileQ; i0 < n; i0 += kTileQ) {
          const int64_t bq = std::min(kTileQ, n - i0);
          attention_delta(a, out, dout, h, i0, bq, D.data());
          attention_tile_grads(a, lse, dout, D.data(), h, i0, bq, k0, bk, P.data(), dS.data());
          const T* dO = dout + i0 * a.qs + int64_t(h) * hd;
          const T* Q = q + i0 * a.qs + int64_t(h) * hd;
          gemm(true, false, bk, hd, bq, T(1), P.data(), bk, dO, a.qs, T(1), dVt, hd);
          gemm(true, false, bk, hd, bq, a.scale, dS.data(), bk, Q, a.qs, T(1), dKt, hd);
        }
      }
      for (int64_t c = 0; c < bk; ++c) {
        const int64_t off = (k0 + c) * a.ks + int64_t(kvh) * hd;
        std::copy(dKt + c * hd, dKt + (c + 1) * hd, dk + off);
        std::copy(dVt + c * hd, dVt + (c + 1) * hd, dv + off);
      }
    }

    // Pass 2: dQ of each (head, query tile) over the key tiles up to the diagonal.
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < q_tasks; ++t) {
      const auto [h, kvh, i0, bq] = a.query_task(t);
      T* dQt = acc0.data();
      std::fill(dQt, dQt + bq * hd, T(0));
      attention_delta(a, out, dout, h, i0, bq, D.data());
      for (int64_t k0 = 0; k0 < i0 + bq; k0 += kTileK) {
        const int64_t bk = std::min(kTileK, i0 + bq - k0);
        attention_tile_grads(a, lse, dout, D.data(), h, i0, bq, k0, bk, P.data(), dS.data());
        const T* K = k + k0 * a.ks + int64_t(kvh) * hd;
        gemm(false, false, bq, hd, bk, a.scale, dS.data(), bk, K, a.ks, T(1), dQt, hd);
      }
      for (int64_t r = 0; r < bq; ++r)
        std::copy(dQt + r * hd, dQt + (r + 1) * hd, dq + (i0 + r) * a.qs + int64_t(h) * hd);
    }
  }
}

// ---- Attention, references: an n x n score matrix per head in double precision.

template <class T>
void attention_forward_reference(const AttentionShape& s, const T* q, const T* k, const T* v,
                                 T* out) {
  check_shape(s, "attention_forward_reference");
  const int64_t n = s.n;
  const int hd = s.head_dim, group = s.n_head / s.n_head_kv;
  const int64_t qs = int64_t(s.n_head) * hd, ks = int64_t(s.n_head_kv) * hd;
  std::vector<double> S(size_t(n * n));
  for (int h = 0; h < s.n_head; ++h) {
    const int kvh = h / group;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j) {
        double dot = 0.0;
        for (int d = 0; d < hd; ++d)
          dot += double(q[i * qs + h * hd + d]) * double(k[j * ks + kvh * hd + d]);
        S[i * n + j] = s.scale * dot;
      }
    for (int64_t i = 0; i < n; ++i) {
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j <= i; ++j) mx = std::max(mx, S[i * n + j]);
      double sum = 0.0;
      for (int64_t j = 0; j <= i; ++j) sum += (S[i * n + j] = std::exp(S[i * n + j] - mx));
      for (int d = 0; d < hd; ++d) {
        double acc = 0.0;
        for (int64_t j = 0; j <= i; ++j) acc += S[i * n + j] * double(v[j * ks + kvh * hd + d]);
        out[i * qs + h * hd + d] = T(acc / sum);
      }
    }
  }
}

template <class T>
void attention_backward_reference(const AttentionShape& s, const T* q, const T* k, const T* v,
                                  const T* dout, T* dq, T* dk, T* dv) {
  check_shape(s, "attention_backward_reference");
  const int64_t n = s.n;
  const int hd = s.head_dim, group = s.n_head / s.n_head_kv;
  const int64_t qs = int64_t(s.n_head) * hd, ks = int64_t(s.n_head_kv) * hd;
  std::vector<double> P(size_t(n * n)), dS(size_t(n * n));
  std::vector<double> gk(size_t(n * ks), 0.0), gv(size_t(n * ks), 0.0);
  for (int h = 0; h < s.n_head; ++h) {
    const int kvh = h / group;
    auto Q = [&](int64_t i, int d) { return double(q[i * qs + h * hd + d]); };
    auto K = [&](int64_t j, int d) { return double(k[j * ks + kvh * hd + d]); };
    auto V = [&](int64_t j, int d) { return double(v[j * ks + kvh * hd + d]); };
    auto G = [&](int64_t i, int d) { return double(dout[i * qs + h * hd + d]); };
    for (int64_t i = 0; i < n; ++i) {
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j <= i; ++j) {
        double dot = 0.0;
        for (int d = 0; d < hd; ++d) dot += Q(i, d) * K(j, d);
        P[i * n + j] = s.scale * dot;
        mx = std::max(mx, P[i * n + j]);
      }
      double sum = 0.0;
      for (int64_t j = 0; j <= i; ++j) sum += (P[i * n + j] = std::exp(P[i * n + j] - mx));
      for (int64_t j = 0; j <= i; ++j) P[i * n + j] /= sum;
      // dP_ij = dout_i . v_j; D_i = sum_j P_ij dP_ij; dS = P o (dP - D).
      double Di = 0.0;
      for (int64_t j = 0; j <= i; ++j) {
        double dot = 0.0;
        for (int d = 0; d < hd; ++d) dot += G(i, d) * V(j, d);
        dS[i * n + j] = dot;
        Di += P[i * n + j] * dot;
      }
      for (int64_t j = 0; j <= i; ++j) dS[i * n + j] = P[i * n + j] * (dS[i * n + j] - Di);
    }
    for (int64_t i = 0; i < n; ++i)
      for (int d = 0; d < hd; ++d) {
        double acc = 0.0;
        for (int64_t j = 0; j <= i; ++j) acc += dS[i * n + j] * K(j, d);
        dq[i * qs + h * hd + d] = T(s.scale * acc);
      }
    for (int64_t j = 0; j < n; ++j)
      for (int d = 0; d < hd; ++d) {
        double ak = 0.0, av = 0.0;
        for (int64_t i = j; i < n; ++i) {
          ak += dS[i * n + j] * Q(i, d);
          av += P[i * n + j] * G(i, d);
        }
        gk[j * ks + kvh * hd + d] += s.scale * ak;
        gv[j * ks + kvh * hd + d] += av;
      }
  }
  for (size_t i = 0; i < gk.size(); ++i) {
    dk[i] = T(gk[i]);
    dv[i] = T(gv[i]);
  }
}

// ---- LM head + cross-entropy

template <class T>
double lm_head_cross_entropy(const T* h, int64_t n, int64_t d, const T* W, int64_t V,
                             const int32_t* target, T grad_scale, T* dh, T* dW, int64_t chunk,
                             kernels::Compute compute) {
  constexpr const char* fn = "lm_head_cross_entropy";
  check_rows(fn, n, d);
  if (V < 0) fail(fn, fmt::format("vocabulary size {} is negative", V));
  if (chunk <= 0) fail(fn, fmt::format("chunk {} is not positive", chunk));
  for (int64_t r = 0; r < n; ++r)
    if (target[r] >= V)
      fail(fn, fmt::format("target id {} at row {} is outside the vocabulary [0, {})", target[r], r,
                           V));
  const bool grads = dh || dW;
  // bf16: W is converted once per call, in both layouts the logits and dh need (not once per
  // chunk); dW converts its operands per chunk anyway (product).
  const bool bf = compute == kernels::Compute::kBF16;
  std::vector<uint16_t> w16, wt16;
  if (bf) {
    if constexpr (std::is_same_v<T, float>) {
      to_bf16(W, d, V, d, false, w16);
      if (dh) to_bf16(W, d, d, V, true, wt16);
    } else {
      fail(fn, "bf16 compute is for float training only");
    }
  }
  const int64_t rows = std::min(chunk, n);
  std::vector<T> logits(size_t(rows * V));
  std::vector<double> nll(static_cast<size_t>(rows));
  double total = 0.0;
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t c = std::min(chunk, n - r0);
    const T* hc = h + r0 * d;
    bool any = false;
    for (int64_t r = 0; r < c; ++r) any = any || target[r0 + r] >= 0;
    if (!any) {
      if (dh) std::fill(dh + r0 * d, dh + (r0 + c) * d, T(0));
      continue;
    }
    if (bf) {
      if constexpr (std::is_same_v<T, float>)
        gemm_bf16_b16(false, c, V, d, hc, d, w16.data(), 0.0f, logits.data(), V);
    } else {
      gemm(false, true, c, V, d, T(1), hc, d, W, d, T(0), logits.data(), V);
    }
#pragma omp parallel for schedule(static) if (c * V > 65536)
    for (int64_t r = 0; r < c; ++r) {
      T* row = logits.data() + r * V;
      const int32_t t = target[r0 + r];
      nll[r] = 0.0;
      if (t < 0) {
        if (grads) std::fill(row, row + V, T(0));
        continue;
      }
      T mx = row[0];
#pragma omp simd reduction(max : mx)
      for (int64_t j = 0; j < V; ++j) mx = row[j] > mx ? row[j] : mx;
      double sum = 0.0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < V; ++j) sum += double(exp_of(row[j] - mx));
      const double lse = double(mx) + std::log(sum);
      nll[r] = lse - double(row[t]);
      if (grads) {
        const T lse_t = T(lse);
#pragma omp simd
        for (int64_t j = 0; j < V; ++j) row[j] = grad_scale * exp_of(row[j] - lse_t);
        row[t] -= grad_scale;
      }
    }
    for (int64_t r = 0; r < c; ++r) total += nll[r];
    if (dh) {
      if (bf) {
        if constexpr (std::is_same_v<T, float>)
          gemm_bf16_b16(false, c, d, V, logits.data(), V, wt16.data(), 0.0f, dh + r0 * d, d);
      } else {
        gemm(false, false, c, d, V, T(1), logits.data(), V, W, d, T(0), dh + r0 * d, d);
      }
    }
    if (dW) product(compute, fn, true, false, V, d, c, logits.data(), V, hc, d, T(1), dW, d);
  }
  return total;
}

// ---- Embedding

template <class T>
void embedding_backward(const int32_t* tokens, int64_t n, int64_t d, const T* dx, T* dE) {
  check_rows("embedding_backward", n, d);
  for (int64_t r = 0; r < n; ++r)
    if (tokens[r] < 0)
      fail("embedding_backward", fmt::format("token id {} at row {} is negative", tokens[r], r));
  // Blocks of columns in parallel, rows in order within each: repeated tokens add up in the same
  // order whatever the thread count.
  constexpr int64_t kCols = 64;
  const int64_t blocks = (d + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (blocks > 1 && n * d > 65536)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * kCols, j1 = std::min(d, j0 + kCols);
    for (int64_t r = 0; r < n; ++r) {
      T* e = dE + int64_t(tokens[r]) * d;
      const T* g = dx + r * d;
      for (int64_t j = j0; j < j1; ++j) e[j] += g[j];
    }
  }
}

// ---- Instantiations

#define LONGROPE_TRAIN_OPS(T)                                                                      \
  template void linear_forward<T>(const T*, int64_t, int64_t, const T*, int64_t, const T*, T*,     \
                                  kernels::Compute);                                               \
  template void linear_backward<T>(const T*, int64_t, int64_t, const T*, int64_t, const T*, T*,    \
                                   bool, T*, T*, kernels::Compute);                                \
  template void rmsnorm_forward<T>(const T*, const T*, int64_t, int64_t, T, T*, T*);               \
  template void rmsnorm_rstd<T>(const T*, int64_t, int64_t, T, T*);                                \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, T*,  \
                                    bool, T*);                                                     \
  template void rope_forward<T>(T*, int64_t, int64_t, int, int, int, const float*, const float*);  \
  template void rope_backward<T>(T*, int64_t, int64_t, int, int, int, const float*, const float*); \
  template void swiglu_forward<T>(const T*, const T*, T*, int64_t);                                \
  template void swiglu_backward<T>(const T*, const T*, const T*, T*, T*, int64_t);                 \
  template void attention_forward<T>(const AttentionShape&, const T*, const T*, const T*, T*, T*); \
  template void attention_backward<T>(const AttentionShape&, const T*, const T*, const T*,         \
                                      const T*, const T*, const T*, T*, T*, T*);                   \
  template void attention_forward_reference<T>(const AttentionShape&, const T*, const T*,          \
                                               const T*, T*);                                      \
  template void attention_backward_reference<T>(const AttentionShape&, const T*, const T*,         \
                                                const T*, const T*, T*, T*, T*);                   \
  template double lm_head_cross_entropy<T>(const T*, int64_t, int64_t, const T*, int64_t,          \
                                           const int32_t*, T, T*, T*, int64_t, kernels::Compute);  \
  template void embedding_backward<T>(const int32_t*, int64_t, int64_t, const T*, T*);

LONGROPE_TRAIN_OPS(float)
LONGROPE_TRAIN_OPS(double)
#undef LONGROPE_TRAIN_OPS

}  // namespace longrope::train
