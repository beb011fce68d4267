// The seam between the model code and the hardware it runs on. Inference (src/engine/forward.cpp,
// src/engine/context.cpp) and training (src/train/model_grad.cpp) run one layer code
// (src/engine/layer.h) that does its arithmetic only through a Backend: the arithmetic choice
// (compute()), the storage of the KV cache and of the forward workspaces, and the table of
// forward operations and their backward siblings below. CpuBackend runs the kernels of
// longrope/kernels.h and longrope/train_ops.h; a CUDA backend would implement the same table over
// device memory (docs/design.md, "How to add a backend"). The backend is passed explicitly
// (ContextParams::backend, ScoreOptions::backend, train::LossOptions::backend); there is no
// global.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "longrope/kernels.h"
#include "longrope/model.h"
#include "longrope/train_ops.h"

namespace longrope {

// Key/value cache: layer l, kv head h, position p, dim d at
// base + l*layer_stride + (h*cap + p)*head_dim + d. layer_stride 0 shares one layer's storage
// between all layers (enough when a whole sequence goes through the model layer by layer).
// With kernels::Compute::kBF16 the cache holds bf16 values in k16/v16 (same layout) and k/v are
// unused; with kF32 it holds FP32 values in k/v. The pointers are in the backend's memory: only
// the backend's operations read or write through them.
struct KvView {
  float* k = nullptr;
  float* v = nullptr;
  uint16_t* k16 = nullptr;
  uint16_t* v16 = nullptr;
  int64_t cap = 0;
  int64_t layer_stride = 0;
  kernels::Compute compute = kernels::Compute::kF32;
};

// Owns the storage behind a KvView (made by Backend::make_kv).
class KvStorage {
 public:
  virtual ~KvStorage() = default;
  KvView view;
};

// The forward pass's scratch rows, in the backend's memory, valid for the rows given to the last
// Backend::reserve_workspace: x, h (n_embd per row), q, att (n_head * head_dim), k, v
// (n_head_kv * head_dim), g, u (n_ff). cos_tab and sin_tab are the rotary tables of those rows
// (n_rot / 2 values each), built by the engine on the host and read by Backend::rope_apply.
class Workspace {
 public:
  virtual ~Workspace() = default;
  float *x = nullptr, *h = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *att = nullptr,
        *g = nullptr, *u = nullptr;
  std::vector<float> cos_tab, sin_tab;
};

// A decoded panel of LM-head rows (Backend::decode_head_panel) and final states in the form the
// LM head's GEMM reads them (Backend::head_rows): opaque, the backend's own.
class HeadPanel {
 public:
  virtual ~HeadPanel() = default;
};
class HeadRows {
 public:
  virtual ~HeadRows() = default;
};

// Attention of n new queries (rows of q, query i at position p0 + i) against layer `layer` of a
// cache, written to out: kernels::AttentionArgsT without the cache, which the backend supplies.
struct AttentionCall {
  const float* q = nullptr;
  int64_t q_stride = 0;
  float* out = nullptr;
  int64_t out_stride = 0;
  int64_t n = 0;
  int64_t p0 = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  float scale = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // ---- Identity and arithmetic.
  virtual std::string name() const = 0;         // "cpu"
  virtual std::string description() const = 0;  // "cpu avx512_bf16, bf16 compute"
  // The arithmetic of the projections, attention and KV cache (kBF16: bf16 cache and products).
  virtual kernels::Compute compute() const = 0;

  // ---- Storage.
  // The KV cache of `layers` layers of `cap` positions of a model with hp (layer_stride 0 for
  // one layer shared by all), in compute()'s element type.
  virtual std::unique_ptr<KvStorage> make_kv(const HParams& hp, int64_t cap, int layers) const = 0;
  virtual std::unique_ptr<Workspace> make_workspace() const = 0;
  // Makes ws hold at least n rows of every buffer for a model with hp (rows already written stay).
  virtual void reserve_workspace(Workspace& ws, const HParams& hp, int64_t n) const = 0;
  virtual std::unique_ptr<HeadPanel> make_head_panel() const = 0;

  // ---- The forward pass (same semantics as the kernels of longrope/kernels.h).
  // FP32 rows of the embedding table (rows: the vocabulary) for tokens[0, n) into rows of x
  // (table.cols each); throws for an id out of range.
  virtual void embed(const kernels::WeightView& table, const int32_t* tokens, int64_t n,
                     float* x) const = 0;
  // C[M, W.rows] = beta*C + A[M, W.cols] * W^T with W in its file encoding (kernels::matmul_w
  // with compute()).
  virtual void matmul_w(int64_t M, const float* A, int64_t lda, const kernels::WeightView& W,
                        float* C, int64_t ldc, float beta) const = 0;
  // The same for a few rows straight from the blocks (kernels::gemv_w; FP32 whatever compute()).
  virtual void gemv_w(int64_t m, const float* X, int64_t ldx, const kernels::WeightView& W,
                      float* Y, int64_t ldy, float beta) const = 0;
  // Adds the bias row (cols values) to each of n rows of x.
  virtual void add_bias(float* x, int64_t n, int64_t cols, const float* bias) const = 0;
  virtual void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t d,
                       float eps) const = 0;
  // rmsnorm of rows rows[0, m) of x (row length d), written densely to y (m rows).
  virtual void rmsnorm_rows(const float* x, const int64_t* rows, int64_t m, const float* w,
                            float* y, int64_t d, float eps) const = 0;
  virtual void rope_apply(float* x, int64_t n, int64_t row_stride, int n_heads, int head_dim,
                          int n_rot, const float* cos_tab, const float* sin_tab) const = 0;
  // Stores n rows of keys and values (n_head_kv heads of head_dim each, dense) into layer `layer`
  // of the cache at positions p0.., converting to the cache's element type.
  virtual void store_kv(const KvView& kv, int layer, int64_t p0, int64_t n, int n_head_kv,
                        int head_dim, const float* k, const float* v) const = 0;
  // Causal attention over layer `layer` of the cache (kernels::attention or attention_bf16 by
  // the cache's element type).
  virtual void attention(const KvView& kv, int layer, const AttentionCall& a) const = 0;
  virtual void swiglu(float* g, const float* u, int64_t n) const = 0;
  // Rotates the cached keys at positions [0, n) of every layer (n_layer) and kv head by the
  // per-position tables cos/sin (n_rot / 2 values per position): a RoPE switch in place.
  virtual void rerotate_keys(const KvView& kv, int n_layer, int n_head_kv, int head_dim, int n_rot,
                             int64_t n, const float* cos_tab, const float* sin_tab) const = 0;
  // dst[0, count) = src[0, count) (both in the backend's memory; a residual kept aside).
  virtual void copy(const float* src, float* dst, int64_t count) const = 0;
  // True when x[0, n) holds no NaN or Inf (the non-finite diagnostic).
  virtual bool all_finite(const float* x, int64_t n) const = 0;

  // ---- The streamed LM head.
  // n final states (rows of d values, through the output norm) as the LM head's GEMM reads them.
  virtual std::unique_ptr<HeadRows> head_rows(const float* h, int64_t n, int64_t d) const = 0;
  // Rows [v0, v0 + n) of the output matrix decoded into p (compute()'s element type).
  virtual void decode_head_panel(const kernels::WeightView& W, int64_t v0, int64_t n,
                                 HeadPanel& p) const = 0;
  // Logits of rows [r0, r0 + rows) of h against a decoded panel of pv vocabulary rows: out is
  // rows x pv.
  virtual void head_logits(const HeadRows& h, int64_t r0, int64_t rows, const HeadPanel& p,
                           int64_t pv, float* out) const = 0;
  // kernels::lse_update_rows, kl_update_rows, and kl_finish for n rows.
  virtual void lse_update_rows(const float* logits, int64_t n, int64_t width, int64_t v0,
                               const int32_t* target, float* m, double* s, float* tl) const = 0;
  virtual void kl_update_rows(const float* a, const float* b, int64_t n, int64_t width, int64_t v0,
                              const int32_t* target, kernels::KlState* st) const = 0;
  virtual void kl_finish_rows(const kernels::KlState* st, int64_t n, kernels::KlRow* out) const = 0;

  // ---- Training (src/train): the forward ops that keep what a backward pass needs, and the
  // backward sibling of each forward op above (semantics of longrope/train_ops.h, float). A
  // trainable model's weights are dense FP32 matrices: WeightViews of type F32. The products
  // follow compute() (kBF16: both operands rounded to bf16, FP32 sums); attention, norms, RoPE
  // and SwiGLU stay FP32.
  // Dense causal attention over one sequence, saving each query's log-sum-exp in lse.
  virtual void attention_forward(const train::AttentionShape& s, const float* q, const float* k,
                                 const float* v, float* out, float* lse) const = 0;
  virtual void attention_backward(const train::AttentionShape& s, const float* q, const float* k,
                                  const float* v, const float* out, const float* lse,
                                  const float* dout, float* dq, float* dk, float* dv) const = 0;
  // Of C = A W^T (matmul_w): dX = dY W (+= with accumulate_dx; skipped when dX is null),
  // dW += dY^T X, db += column sums of dY (when db is not null). W dense F32.
  virtual void linear_backward(const float* X, int64_t n, const kernels::WeightView& W,
                               const float* dY, float* dX, bool accumulate_dx, float* dW,
                               float* db) const = 0;
  // Of rmsnorm (the rows' rms recomputed from x): dx (+= with accumulate_dx), dw +=.
  virtual void rmsnorm_backward(const float* x, const float* w, float eps, const float* dy,
                                int64_t n, int64_t d, float* dx, bool accumulate_dx,
                                float* dw) const = 0;
  // Of rope_apply: the transposed rotation, in place on the gradient.
  virtual void rope_backward(float* dx, int64_t n, int64_t row_stride, int n_heads, int head_dim,
                             int n_rot, const float* cos_tab, const float* sin_tab) const = 0;
  // Of swiglu: dg, du (written) from dout.
  virtual void swiglu_backward(const float* g, const float* u, const float* dout, float* dg,
                               float* du, int64_t n) const = 0;
  // The LM head and cross-entropy of n rows of final states h (through the output norm) against
  // W (dense F32, rows: the vocabulary), streamed in row chunks (train::lm_head_cross_entropy):
  // returns the sum of the NLLs of rows with target >= 0; dh (written) and dW (+=) scaled by
  // grad_scale when not null.
  virtual double lm_head_cross_entropy(const float* h, int64_t n, const kernels::WeightView& W,
                                       const int32_t* target, float grad_scale, float* dh,
                                       float* dW) const = 0;
  // Of embed: dE[tokens[r]] += dx[r] for n rows of d values.
  virtual void embedding_backward(const int32_t* tokens, int64_t n, int64_t d, const float* dx,
                                  float* dE) const = 0;
};

// The CPU backend: the kernels of longrope/kernels.h with host memory, so results are those of
// the kernels themselves. Throws Error (kernels::require_compute) when this CPU cannot run `c`.
class CpuBackend : public Backend {
 public:
  explicit CpuBackend(kernels::Compute c);
  std::string name() const override;
  std::string description() const override;
  kernels::Compute compute() const override { return compute_; }

  std::unique_ptr<KvStorage> make_kv(const HParams& hp, int64_t cap, int layers) const override;
  std::unique_ptr<Workspace> make_workspace() const override;
  void reserve_workspace(Workspace& ws, const HParams& hp, int64_t n) const override;
  std::unique_ptr<HeadPanel> make_head_panel() const override;

  void embed(const kernels::WeightView& table, const int32_t* tokens, int64_t n,
             float* x) const override;
  void matmul_w(int64_t M, const float* A, int64_t lda, const kernels::WeightView& W, float* C,
                int64_t ldc, float beta) const override;
  void gemv_w(int64_t m, const float* X, int64_t ldx, const kernels::WeightView& W, float* Y,
              int64_t ldy, float beta) const override;
  void add_bias(float* x, int64_t n, int64_t cols, const float* bias) const override;
  void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t d,
               float eps) const override;
  void rmsnorm_rows(const float* x, const int64_t* rows, int64_t m, const float* w, float* y,
                    int64_t d, float eps) const override;
  void rope_apply(float* x, int64_t n, int64_t row_stride, int n_heads, int head_dim, int n_rot,
                  const float* cos_tab, const float* sin_tab) const override;
  void store_kv(const KvView& kv, int layer, int64_t p0, int64_t n, int n_head_kv, int head_dim,
                const float* k, const float* v) const override;
  void attention(const KvView& kv, int layer, const AttentionCall& a) const override;
  void swiglu(float* g, const float* u, int64_t n) const override;
  void rerotate_keys(const KvView& kv, int n_layer, int n_head_kv, int head_dim, int n_rot,
                     int64_t n, const float* cos_tab, const float* sin_tab) const override;
  void copy(const float* src, float* dst, int64_t count) const override;
  bool all_finite(const float* x, int64_t n) const override;

  std::unique_ptr<HeadRows> head_rows(const float* h, int64_t n, int64_t d) const override;
  void decode_head_panel(const kernels::WeightView& W, int64_t v0, int64_t n,
                         HeadPanel& p) const override;
  void head_logits(const HeadRows& h, int64_t r0, int64_t rows, const HeadPanel& p, int64_t pv,
                   float* out) const override;
  void lse_update_rows(const float* logits, int64_t n, int64_t width, int64_t v0,
                       const int32_t* target, float* m, double* s, float* tl) const override;
  void kl_update_rows(const float* a, const float* b, int64_t n, int64_t width, int64_t v0,
                      const int32_t* target, kernels::KlState* st) const override;
  void kl_finish_rows(const kernels::KlState* st, int64_t n, kernels::KlRow* out) const override;

  void attention_forward(const train::AttentionShape& s, const float* q, const float* k,
                         const float* v, float* out, float* lse) const override;
  void attention_backward(const train::AttentionShape& s, const float* q, const float* k,
                          const float* v, const float* out, const float* lse, const float* dout,
                          float* dq, float* dk, float* dv) const override;
  void linear_backward(const float* X, int64_t n, const kernels::WeightView& W, const float* dY,
                       float* dX, bool accumulate_dx, float* dW, float* db) const override;
  void rmsnorm_backward(const float* x, const float* w, float eps, const float* dy, int64_t n,
                        int64_t d, float* dx, bool accumulate_dx, float* dw) const override;
  void rope_backward(float* dx, int64_t n, int64_t row_stride, int n_heads, int head_dim, int n_rot,
                     const float* cos_tab, const float* sin_tab) const override;
  void swiglu_backward(const float* g, const float* u, const float* dout, float* dg, float* du,
                       int64_t n) const override;
  double lm_head_cross_entropy(const float* h, int64_t n, const kernels::WeightView& W,
                               const int32_t* target, float grad_scale, float* dh,
                               float* dW) const override;
  void embedding_backward(const int32_t* tokens, int64_t n, int64_t d, const float* dx,
                          float* dE) const override;

 private:
  kernels::Compute compute_;
};

// A CPU backend with arithmetic c (kernels::require_compute(c) first: throws Error when this CPU
// cannot run it).
std::shared_ptr<const Backend> cpu_backend(kernels::Compute c);

// `backend` when set, else cpu_backend(compute): how ContextParams and ScoreOptions resolve theirs.
std::shared_ptr<const Backend> backend_or_cpu(std::shared_ptr<const Backend> backend,
                                              kernels::Compute compute);

}  // namespace longrope
