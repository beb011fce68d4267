// Row-wise and element-wise kernels: RMSNorm, SwiGLU, rotary embedding, chunked log-softmax NLL.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/kernels/vec_math.h"
#include "longrope/kernels.h"

namespace longrope::kernels {

void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t d, float eps) {
#pragma omp parallel for schedule(static) if (n > 64)
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    float* yr = y + r * d;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < d; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) yr[i] = xr[i] * inv * w[i];
  }
}

void rmsnorm_scalar(const float* x, const float* w, float* y, int64_t n, int64_t d, float eps) {
  for (int64_t r = 0; r < n; ++r) {
    double ss = 0.0;
    for (int64_t i = 0; i < d; ++i) ss += double(x[r * d + i]) * x[r * d + i];
    const double inv = 1.0 / std::sqrt(ss / double(d) + eps);
    for (int64_t i = 0; i < d; ++i) y[r * d + i] = static_cast<float>(x[r * d + i] * inv * w[i]);
  }
}

void swiglu(float* g, const float* u, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float a = g[i];
    g[i] = a / (1.0f + fast_exp(-a)) * u[i];
  }
}

void swiglu_scalar(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double a = g[i];
    g[i] = static_cast<float>(a / (1.0 + std::exp(-a)) * u[i]);
  }
}

void rope_apply(float* x, int64_t n, int64_t row_stride, int n_heads, int head_dim, int n_rot,
                const float* cos_tab, const float* sin_tab) {
  const int half = n_rot / 2;
#pragma omp parallel for schedule(static) if (n > 64)
  for (int64_t r = 0; r < n; ++r) {
    const float* c = cos_tab + r * half;
    const float* s = sin_tab + r * half;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + r * row_stride + int64_t(h) * head_dim;
#pragma omp simd
      for (int j = 0; j < half; ++j) {
        const float a = v[2 * j], b = v[2 * j + 1];
        v[2 * j] = a * c[j] - b * s[j];
        v[2 * j + 1] = a * s[j] + b * c[j];
      }
    }
  }
}

void rope_apply_scalar(float* x, int64_t n, int64_t row_stride, int n_heads, int head_dim,
                       int n_rot, const float* cos_tab, const float* sin_tab) {
  const int half = n_rot / 2;
  for (int64_t r = 0; r < n; ++r)
    for (int h = 0; h < n_heads; ++h)
      for (int j = 0; j < half; ++j) {
        float* v = x + r * row_stride + int64_t(h) * head_dim + 2 * j;
        const double a = v[0], b = v[1], c = cos_tab[r * half + j], s = sin_tab[r * half + j];
        v[0] = static_cast<float>(a * c - b * s);
        v[1] = static_cast<float>(a * s + b * c);
      }
}

void lse_update_rows(const float* logits, int64_t n, int64_t width, int64_t v0,
                     const int32_t* target, float* m, double* s, float* tl) {
#pragma omp parallel for schedule(static) if (n * width > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const float* row = logits + r * width;
    float mx = row[0];
#pragma omp simd reduction(max : mx)
    for (int64_t i = 0; i < width; ++i) mx = row[i] > mx ? row[i] : mx;
    if (mx > m[r]) {
      s[r] = m[r] == -std::numeric_limits<float>::infinity() ? 0.0
                                                             : s[r] * std::exp(double(m[r]) - mx);
      m[r] = mx;
    }
    const float base = m[r];
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < width; ++i) sum += fast_exp(row[i] - base);
    s[r] += sum;
    const int64_t t = int64_t(target[r]) - v0;
    if (t >= 0 && t < width) tl[r] = row[t];
  }
}

void kl_update_rows(const float* a, const float* b, int64_t n, int64_t width, int64_t v0,
                    const int32_t* target, KlState* st) {
#pragma omp parallel for schedule(static) if (n * width > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const float* ra = a + r * width;
    const float* rb = b + r * width;
    KlState& s = st[r];
    int64_t ia = 0, ib = 0;
    for (int64_t i = 1; i < width; ++i) {
      if (ra[i] > ra[ia]) ia = i;
      if (rb[i] > rb[ib]) ib = i;
    }
    if (ra[ia] > s.ma) {  // strictly: the first of equal maxima stays the top token
      if (s.sa > 0) {
        const double f = std::exp(double(s.ma) - ra[ia]);
        s.sa *= f;
        s.t *= f;
      }
      s.ma = ra[ia];
      s.top_a = int32_t(v0 + ia);
    }
    if (rb[ib] > s.mb) {
      if (s.sb > 0) s.sb *= std::exp(double(s.mb) - rb[ib]);
      s.mb = rb[ib];
      s.top_b = int32_t(v0 + ib);
    }
    const float ma = s.ma, mb = s.mb;
    float sa = 0.0f, sb = 0.0f, t = 0.0f;
#pragma omp simd reduction(+ : sa, sb, t)
    for (int64_t i = 0; i < width; ++i) {
      const float ea = fast_exp(ra[i] - ma);
      sa += ea;
      t += ea * (ra[i] - rb[i]);
      sb += fast_exp(rb[i] - mb);
    }
    s.sa += sa;
    s.sb += sb;
    s.t += t;
    const int64_t tg = int64_t(target[r]) - v0;
    if (tg >= 0 && tg < width) s.target_b = rb[tg];
  }
}

KlRow kl_finish(const KlState& s) {
  KlRow r;
  const double lse_a = double(s.ma) + std::log(s.sa), lse_b = double(s.mb) + std::log(s.sb);
  // Rounding can leave a tiny negative value where the two distributions are equal.
  r.kl = std::max(0.0, s.t / s.sa - lse_a + lse_b);
  r.nll = lse_b - double(s.target_b);
  r.same_top = s.top_a == s.top_b;
  return r;
}

void kl_rows_scalar(const float* a, const float* b, int64_t n, int64_t vocab, const int32_t* target,
                    KlRow* out) {
  for (int64_t r = 0; r < n; ++r) {
    const float* ra = a + r * vocab;
    const float* rb = b + r * vocab;
    int64_t ia = 0, ib = 0;
    for (int64_t i = 1; i < vocab; ++i) {
      if (ra[i] > ra[ia]) ia = i;
      if (rb[i] > rb[ib]) ib = i;
    }
    double sa = 0, sb = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      sa += std::exp(double(ra[i]) - ra[ia]);
      sb += std::exp(double(rb[i]) - rb[ib]);
    }
    const double lse_a = ra[ia] + std::log(sa), lse_b = rb[ib] + std::log(sb);
    double kl = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      const double la = double(ra[i]) - lse_a;
      kl += std::exp(la) * (la - (double(rb[i]) - lse_b));
    }
    out[r].kl = kl;
    out[r].nll = lse_b - double(rb[target[r]]);
    out[r].same_top = ia == ib;
  }
}

// A whole row is one panel of the streamed log-sum-exp.
void nll_rows(const float* logits, int64_t n, int64_t vocab, const int32_t* target, double* nll) {
  std::vector<float> m(static_cast<size_t>(n), -std::numeric_limits<float>::infinity());
  std::vector<float> tl(static_cast<size_t>(n), 0.0f);
  std::vector<double> s(static_cast<size_t>(n), 0.0);
  lse_update_rows(logits, n, vocab, 0, target, m.data(), s.data(), tl.data());
  for (int64_t r = 0; r < n; ++r) nll[r] = double(m[r]) + std::log(s[r]) - double(tl[r]);
}

void nll_rows_scalar(const float* logits, int64_t n, int64_t vocab, const int32_t* target,
                     double* nll) {
  for (int64_t r = 0; r < n; ++r) {
    const float* row = logits + r * vocab;
    double mx = row[0];
    for (int64_t i = 1; i < vocab; ++i) mx = std::max(mx, double(row[i]));
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(row[i]) - mx);
    nll[r] = mx + std::log(sum) - double(row[target[r]]);
  }
}

}  // namespace longrope::kernels
