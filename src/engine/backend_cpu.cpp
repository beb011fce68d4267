// The CPU backend: each operation of the Backend table is the kernel of longrope/kernels.h that
// the engine called before the seam existed, with host memory for the cache and workspaces.
#include <fmt/core.h>

#include <cmath>
#include <cstring>

#include "engine/kernels/panel.h"
#include "longrope/backend.h"
#include "longrope/error.h"
#include "longrope/quant.h"

namespace longrope {

namespace {

struct CpuKvStorage : KvStorage {
  std::unique_ptr<float[]> k, v;
  std::unique_ptr<uint16_t[]> k16, v16;
};

struct CpuWorkspace : Workspace {
  std::vector<float> bx, bh, bq, bk, bv, batt, bg, bu;
};

struct CpuHeadPanel : HeadPanel {
  kernels::PanelBuffer pb;
};

// Final states as the LM head's GEMM reads them: FP32 in place, or a bf16 copy made once.
struct CpuHeadRows : HeadRows {
  const float* h = nullptr;
  int64_t d = 0;
  kernels::RowsBf16 b16;
};

void grow(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

}  // namespace

CpuBackend::CpuBackend(kernels::Compute c) : compute_(c) {
  kernels::require_compute(c);
}

std::string CpuBackend::name() const {
  return "cpu";
}

std::string CpuBackend::description() const {
  return fmt::format("cpu {}, {} compute", kernels::cpu_variant_name(kernels::cpu_variant()),
                     kernels::compute_name(compute_));
}

std::unique_ptr<KvStorage> CpuBackend::make_kv(const HParams& hp, int64_t cap, int layers) const {
  kernels::require_compute(compute_);
  auto s = std::make_unique<CpuKvStorage>();
  const int64_t per_layer = int64_t(hp.n_head_kv) * cap * hp.head_dim;
  const int64_t total = per_layer * layers;
  if (compute_ == kernels::Compute::kBF16) {
    s->k16.reset(new uint16_t[total]);
    s->v16.reset(new uint16_t[total]);
  } else {
    s->k.reset(new float[total]);
    s->v.reset(new float[total]);
  }
  s->view =
      KvView{s->k.get(), s->v.get(), s->k16.get(), s->v16.get(), cap, layers > 1 ? per_layer : 0,
             compute_};
  return s;
}

std::unique_ptr<Workspace> CpuBackend::make_workspace() const {
  return std::make_unique<CpuWorkspace>();
}

void CpuBackend::reserve_workspace(Workspace& ws, const HParams& hp, int64_t n) const {
  auto& w = static_cast<CpuWorkspace&>(ws);
  const int64_t d = hp.n_embd, qdim = int64_t(hp.n_head) * hp.head_dim,
                kvdim = int64_t(hp.n_head_kv) * hp.head_dim, ff = hp.n_ff;
  grow(w.bx, n * d);
  grow(w.bh, n * d);
  grow(w.bq, n * qdim);
  grow(w.bk, n * kvdim);
  grow(w.bv, n * kvdim);
  grow(w.batt, n * qdim);
  grow(w.bg, n * ff);
  grow(w.bu, n * ff);
  w.x = w.bx.data();
  w.h = w.bh.data();
  w.q = w.bq.data();
  w.k = w.bk.data();
  w.v = w.bv.data();
  w.att = w.batt.data();
  w.g = w.bg.data();
  w.u = w.bu.data();
}

std::unique_ptr<HeadPanel> CpuBackend::make_head_panel() const {
  return std::make_unique<CpuHeadPanel>();
}

void CpuBackend::embed(const kernels::WeightView& table, const int32_t* tokens, int64_t n,
                       float* x) const {
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= table.rows)
      throw Error(fmt::format("token id {} out of range [0, {})", tokens[i], table.rows));
    kernels::dequant_rows_f32(table, tokens[i], 1, x + i * table.cols, table.cols);
  }
}

void CpuBackend::matmul_w(int64_t M, const float* A, int64_t lda, const kernels::WeightView& W,
                          float* C, int64_t ldc, float beta) const {
  kernels::matmul_w(M, A, lda, W, C, ldc, beta, compute_);
}

void CpuBackend::gemv_w(int64_t m, const float* X, int64_t ldx, const kernels::WeightView& W,
                        float* Y, int64_t ldy, float beta) const {
  kernels::gemv_w(m, X, ldx, W, Y, ldy, beta);
}

void CpuBackend::add_bias(float* x, int64_t n, int64_t cols, const float* bias) const {
  if (!bias) return;
#pragma omp parallel for schedule(static) if (n * cols > 65536)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < cols; ++j) x[i * cols + j] += bias[j];
}

void CpuBackend::rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t d,
                         float eps) const {
  kernels::rmsnorm(x, w, y, n, d, eps);
}

void CpuBackend::rmsnorm_rows(const float* x, const int64_t* rows, int64_t m, const float* w,
                              float* y, int64_t d, float eps) const {
#pragma omp parallel for schedule(static) if (m > 64)
  for (int64_t r = 0; r < m; ++r) kernels::rmsnorm(x + rows[r] * d, w, y + r * d, 1, d, eps);
}

void CpuBackend::rope_apply(float* x, int64_t n, int64_t row_stride, int n_heads, int head_dim,
                            int n_rot, const float* cos_tab, const float* sin_tab) const {
  kernels::rope_apply(x, n, row_stride, n_heads, head_dim, n_rot, cos_tab, sin_tab);
}

void CpuBackend::store_kv(const KvView& kv, int layer, int64_t p0, int64_t n, int n_head_kv,
                          int head_dim, const float* k, const float* v) const {
  const int64_t KV = n_head_kv, hd = head_dim, kvdim = KV * hd;
#pragma omp parallel for collapse(2) schedule(static) if (n * kvdim > 65536)
  for (int64_t h = 0; h < KV; ++h)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t off = layer * kv.layer_stride + (h * kv.cap + p0 + i) * hd;
      const float* ks = k + i * kvdim + h * hd;
      const float* vs = v + i * kvdim + h * hd;
      if (kv.compute == kernels::Compute::kBF16) {
        kernels::f32_to_bf16(ks, kv.k16 + off, hd);
        kernels::f32_to_bf16(vs, kv.v16 + off, hd);
      } else {
        std::memcpy(kv.k + off, ks, sizeof(float) * hd);
        std::memcpy(kv.v + off, vs, sizeof(float) * hd);
      }
    }
}

void CpuBackend::attention(const KvView& kv, int layer, const AttentionCall& a) const {
  const int64_t off = layer * kv.layer_stride;
  const auto args = [&]<class T>(const T* kc, const T* vc) {
    return kernels::AttentionArgsT<T>{a.q,         a.q_stride,   kc,     vc,   kv.cap,
                                      a.out,       a.out_stride, a.n,    a.p0, a.n_head,
                                      a.n_head_kv, a.head_dim,   a.scale};
  };
  if (kv.compute == kernels::Compute::kBF16)
    kernels::attention_bf16(args(kv.k16 + off, kv.v16 + off));
  else
    kernels::attention(args(kv.k + off, kv.v + off));
}

void CpuBackend::swiglu(float* g, const float* u, int64_t n) const {
  kernels::swiglu(g, u, n);
}

void CpuBackend::rerotate_keys(const KvView& kv, int n_layer, int n_head_kv, int head_dim,
                               int n_rot, int64_t n, const float* cos_tab,
                               const float* sin_tab) const {
  const int64_t hd = head_dim;
  // One parallel region over (layer, kv head); rope_apply's own region then runs serially.
#pragma omp parallel for collapse(2) schedule(static)
  for (int l = 0; l < n_layer; ++l)
    for (int h = 0; h < n_head_kv; ++h) {
      const int64_t off = l * kv.layer_stride + int64_t(h) * kv.cap * hd;
      if (kv.compute == kernels::Compute::kBF16) {
        // Rotate an FP32 copy and round back to bf16.
        std::vector<float> tmp(static_cast<size_t>(n * hd));
        for (int64_t i = 0; i < n * hd; ++i) tmp[i] = bf16_to_fp32(kv.k16[off + i]);
        kernels::rope_apply(tmp.data(), n, hd, 1, head_dim, n_rot, cos_tab, sin_tab);
        kernels::f32_to_bf16(tmp.data(), kv.k16 + off, n * hd);
      } else {
        kernels::rope_apply(kv.k + off, n, hd, 1, head_dim, n_rot, cos_tab, sin_tab);
      }
    }
}

void CpuBackend::copy(const float* src, float* dst, int64_t count) const {
  if (count > 0) std::memcpy(dst, src, sizeof(float) * size_t(count));
}

bool CpuBackend::all_finite(const float* x, int64_t n) const {
  bool ok = true;
#pragma omp parallel for reduction(&& : ok) schedule(static)
  for (int64_t i = 0; i < n; ++i) ok = ok && std::isfinite(x[i]);
  return ok;
}

std::unique_ptr<HeadRows> CpuBackend::head_rows(const float* h, int64_t n, int64_t d) const {
  auto r = std::make_unique<CpuHeadRows>();
  r->h = h;
  r->d = d;
  if (compute_ == kernels::Compute::kBF16) kernels::rows_to_bf16(h, n, d, d, r->b16);
  return r;
}

void CpuBackend::decode_head_panel(const kernels::WeightView& W, int64_t v0, int64_t n,
                                   HeadPanel& p) const {
  kernels::decode_panel(W, v0, n, compute_, static_cast<CpuHeadPanel&>(p).pb);
}

void CpuBackend::head_logits(const HeadRows& h, int64_t r0, int64_t rows, const HeadPanel& p,
                             int64_t pv, float* out) const {
  const auto& hr = static_cast<const CpuHeadRows&>(h);
  const kernels::PanelBuffer& pb = static_cast<const CpuHeadPanel&>(p).pb;
  const int64_t d = hr.d;
  if (compute_ == kernels::Compute::kBF16)
    kernels::gemm_bf16_nt(rows, pv, d, hr.b16.data.data() + r0 * d, d, pb.b16.data(), d, out, pv,
                          0.0f);
  else
    kernels::gemm_nt(rows, pv, d, hr.h + r0 * d, d, pb.f32.data(), d, out, pv, 0.0f);
}

void CpuBackend::lse_update_rows(const float* logits, int64_t n, int64_t width, int64_t v0,
                                 const int32_t* target, float* m, double* s, float* tl) const {
  kernels::lse_update_rows(logits, n, width, v0, target, m, s, tl);
}

void CpuBackend::kl_update_rows(const float* a, const float* b, int64_t n, int64_t width,
                                int64_t v0, const int32_t* target, kernels::KlState* st) const {
  kernels::kl_update_rows(a, b, n, width, v0, target, st);
}

void CpuBackend::kl_finish_rows(const kernels::KlState* st, int64_t n, kernels::KlRow* out) const {
  for (int64_t r = 0; r < n; ++r) out[r] = kernels::kl_finish(st[r]);
}

namespace {
// A trainable weight: dense FP32 rows (what train_ops.h's functions take).
const float* dense_f32(const kernels::WeightView& W, const char* fn) {
  if (W.type != GgmlType::F32 || W.row_bytes != sizeof(float) * size_t(W.cols))
    throw Error(fmt::format("{}: the weights of a training step must be dense FP32 rows", fn));
  return reinterpret_cast<const float*>(W.data);
}
}  // namespace

void CpuBackend::attention_forward(const train::AttentionShape& s, const float* q, const float* k,
                                   const float* v, float* out, float* lse) const {
  train::attention_forward(s, q, k, v, out, lse);
}

void CpuBackend::attention_backward(const train::AttentionShape& s, const float* q, const float* k,
                                    const float* v, const float* out, const float* lse,
                                    const float* dout, float* dq, float* dk, float* dv) const {
  train::attention_backward(s, q, k, v, out, lse, dout, dq, dk, dv);
}

void CpuBackend::linear_backward(const float* X, int64_t n, const kernels::WeightView& W,
                                 const float* dY, float* dX, bool accumulate_dx, float* dW,
                                 float* db) const {
  train::linear_backward(X, n, W.cols, dense_f32(W, "linear_backward"), W.rows, dY, dX,
                         accumulate_dx, dW, db, compute_);
}

void CpuBackend::rmsnorm_backward(const float* x, const float* w, float eps, const float* dy,
                                  int64_t n, int64_t d, float* dx, bool accumulate_dx,
                                  float* dw) const {
  thread_local std::vector<float> rstd;
  grow(rstd, n);
  train::rmsnorm_rstd(x, n, d, eps, rstd.data());
  train::rmsnorm_backward(x, w, rstd.data(), dy, n, d, dx, accumulate_dx, dw);
}

void CpuBackend::rope_backward(float* dx, int64_t n, int64_t row_stride, int n_heads, int head_dim,
                               int n_rot, const float* cos_tab, const float* sin_tab) const {
  train::rope_backward(dx, n, row_stride, n_heads, head_dim, n_rot, cos_tab, sin_tab);
}

void CpuBackend::swiglu_backward(const float* g, const float* u, const float* dout, float* dg,
                                 float* du, int64_t n) const {
  train::swiglu_backward(g, u, dout, dg, du, n);
}

double CpuBackend::lm_head_cross_entropy(const float* h, int64_t n, const kernels::WeightView& W,
                                         const int32_t* target, float grad_scale, float* dh,
                                         float* dW) const {
  return train::lm_head_cross_entropy(h, n, W.cols, dense_f32(W, "lm_head_cross_entropy"), W.rows,
                                      target, grad_scale, dh, dW, 256, compute_);
}

void CpuBackend::embedding_backward(const int32_t* tokens, int64_t n, int64_t d, const float* dx,
                                    float* dE) const {
  train::embedding_backward(tokens, n, d, dx, dE);
}

std::shared_ptr<const Backend> cpu_backend(kernels::Compute c) {
  return std::make_shared<const CpuBackend>(c);
}

std::shared_ptr<const Backend> backend_or_cpu(std::shared_ptr<const Backend> backend,
                                              kernels::Compute compute) {
  return backend ? std::move(backend) : cpu_backend(compute);
}

}  // namespace longrope
