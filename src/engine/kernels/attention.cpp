// Causal grouped-query attention streamed over key tiles with an online softmax
// (flash-attention style): per (head, query tile) only a tile of scores exists at a time.
#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/kernels/bf16_internal.h"
#include "engine/kernels/vec_math.h"
#include "longrope/error.h"
#include "longrope/kernels.h"

namespace longrope::kernels {

namespace {
constexpr int64_t kTileQ = 64;
constexpr int64_t kTileK = 256;
}  // namespace

template <class KV>
void check_attention_args(const AttentionArgsT<KV>& a, const char* kernel) {
  auto fail = [kernel](const std::string& what) {
    throw Error(fmt::format("{}: {}", kernel, what));
  };
  if (a.n_head <= 0 || a.n_head_kv <= 0 || a.n_head % a.n_head_kv != 0)
    fail(fmt::format("{} query heads are not a positive multiple of {} key/value heads", a.n_head,
                     a.n_head_kv));
  if (a.head_dim <= 0) fail(fmt::format("head_dim {} is not positive", a.head_dim));
  if (a.n < 0 || a.p0 < 0 || a.p0 + a.n > a.kv_cap)
    fail(fmt::format("queries at positions [{}, {}) do not fit a cache of {} positions", a.p0,
                     a.p0 + a.n, a.kv_cap));
  const int64_t row = int64_t(a.n_head) * a.head_dim;
  if (a.n > 0 && (a.q_stride < row || a.out_stride < row))
    fail(fmt::format("row strides {} (q) and {} (out) must hold {} heads x {} = {} values",
                     a.q_stride, a.out_stride, a.n_head, a.head_dim, row));
  if (a.n > 0 && (!a.q || !a.k || !a.v || !a.out)) fail("a null buffer");
  if (!std::isfinite(a.scale)) fail(fmt::format("scale {} is not finite", a.scale));
}
template void check_attention_args(const AttentionArgsT<float>&, const char*);
template void check_attention_args(const AttentionArgsT<uint16_t>&, const char*);

void attention(const AttentionArgs& a) {
  check_attention_args(a, "attention");
  // With AVX-512: register-blocked micro-kernels (attention_avx512.cpp); without, the same
  // design on AVX2 for prefill (attention_avx2.cpp). Below: tiles of sgemm calls, for decoding on
  // CPUs without AVX-512 and for CPUs without AVX2.
  if (attention_f32_avx512(a)) return;
  if (attention_f32_avx2(a)) return;
  const int hd = a.head_dim;
  const int group = a.n_head / a.n_head_kv;
  const int64_t n_qt = (a.n + kTileQ - 1) / kTileQ;
  const int64_t total = n_qt * a.n_head;
  const float neg_inf = -std::numeric_limits<float>::infinity();

#pragma omp parallel if (total > 1)
  {
    std::vector<float> qt(kTileQ * hd), s(kTileQ * kTileK), o(kTileQ * hd), m(kTileQ), l(kTileQ);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < total; ++t) {
      // Longest (last) query tiles first: better balance under the causal mask.
      const int64_t tile = n_qt - 1 - t / a.n_head;
      const int h = static_cast<int>(t % a.n_head);
      const int kvh = h / group;
      const int64_t i0 = tile * kTileQ;
      const int64_t bq = std::min(kTileQ, a.n - i0);
      const float* K = a.k + int64_t(kvh) * a.kv_cap * hd;
      const float* V = a.v + int64_t(kvh) * a.kv_cap * hd;
      for (int64_t r = 0; r < bq; ++r) {
        const float* src = a.q + (i0 + r) * a.q_stride + int64_t(h) * hd;
        for (int d = 0; d < hd; ++d) qt[r * hd + d] = src[d] * a.scale;
      }
      std::fill(o.begin(), o.begin() + bq * hd, 0.0f);
      std::fill(m.begin(), m.begin() + bq, neg_inf);
      std::fill(l.begin(), l.begin() + bq, 0.0f);
      const int64_t kend = a.p0 + i0 + bq;  // keys [0, kend) are visible to some row of the tile
      for (int64_t k0 = 0; k0 < kend; k0 += kTileK) {
        const int64_t bk = std::min(kTileK, kend - k0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(bq), int(bk), hd, 1.0f, qt.data(),
                    hd, K + k0 * hd, hd, 0.0f, s.data(), int(bk));
        for (int64_t r = 0; r < bq; ++r) {
          float* sr = s.data() + r * bk;
          // Row r (position p0+i0+r) sees keys up to and including its own position.
          const int64_t visible = std::clamp<int64_t>(a.p0 + i0 + r - k0 + 1, 0, bk);
          if (visible == 0) {
            std::fill(sr, sr + bk, 0.0f);
            continue;
          }
          float mx = m[r];
#pragma omp simd reduction(max : mx)
          for (int64_t c = 0; c < visible; ++c) mx = std::max(mx, sr[c]);
          const float corr = fast_exp(m[r] - mx);  // 0 when m[r] was -inf
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int64_t c = 0; c < visible; ++c) {
            const float e = fast_exp(sr[c] - mx);
            sr[c] = e;
            sum += e;
          }
          std::fill(sr + visible, sr + bk, 0.0f);
          l[r] = l[r] * corr + sum;
          m[r] = mx;
          if (corr != 1.0f) {
            float* orow = o.data() + r * hd;
            for (int d = 0; d < hd; ++d) orow[d] *= corr;
          }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(bq), hd, int(bk), 1.0f, s.data(),
                    int(bk), V + k0 * hd, hd, 1.0f, o.data(), hd);
      }
      for (int64_t r = 0; r < bq; ++r) {
        float* dst = a.out + (i0 + r) * a.out_stride + int64_t(h) * hd;
        const float inv = 1.0f / l[r];
        for (int d = 0; d < hd; ++d) dst[d] = o[r * hd + d] * inv;
      }
    }
  }
}

void attention_scalar(const AttentionArgs& a) {
  check_attention_args(a, "attention_scalar");
  const int hd = a.head_dim;
  const int group = a.n_head / a.n_head_kv;
  std::vector<double> w;
  for (int64_t i = 0; i < a.n; ++i) {
    const int64_t npos = a.p0 + i + 1;
    w.resize(npos);
    for (int h = 0; h < a.n_head; ++h) {
      const int kvh = h / group;
      const float* q = a.q + i * a.q_stride + int64_t(h) * hd;
      const float* K = a.k + int64_t(kvh) * a.kv_cap * hd;
      const float* V = a.v + int64_t(kvh) * a.kv_cap * hd;
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t p = 0; p < npos; ++p) {
        double dot = 0.0;
        for (int d = 0; d < hd; ++d) dot += double(q[d]) * K[p * hd + d];
        w[p] = dot * a.scale;
        mx = std::max(mx, w[p]);
      }
      double sum = 0.0;
      for (int64_t p = 0; p < npos; ++p) sum += (w[p] = std::exp(w[p] - mx));
      float* dst = a.out + i * a.out_stride + int64_t(h) * hd;
      for (int d = 0; d < hd; ++d) {
        double acc = 0.0;
        for (int64_t p = 0; p < npos; ++p) acc += w[p] * V[p * hd + d];
        dst[d] = static_cast<float>(acc / sum);
      }
    }
  }
}

}  // namespace longrope::kernels
