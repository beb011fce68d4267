// Training a Llama-architecture model: its parameters as one flat array, the loss of a sequence
// with its gradient (forward and backward through every layer, with per-layer gradient
// checkpointing), and AdamW. The operations are in train_ops.h; the fine-tuning loop in
// finetune.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "longrope/backend.h"
#include "longrope/kernels.h"
#include "longrope/model.h"
#include "longrope/rope.h"

namespace longrope::train {

// One parameter tensor inside the flat array.
struct ParamTensor {
  std::string name;    // the GGUF name ("blk.3.attn_q.weight")
  size_t offset = 0;   // in elements
  int64_t rows = 0;    // 1 for vectors
  int64_t cols = 0;    // row length
  bool decay = false;  // AdamW weight decay applies (matrices; not norms or biases)
  size_t size() const { return static_cast<size_t>(rows * cols); }
};

// Where every parameter of a model lives in the flat array. kNone marks an absent bias.
struct ParamLayout {
  static constexpr size_t kNone = static_cast<size_t>(-1);
  struct Layer {
    size_t attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
    size_t bq = kNone, bk = kNone, bv = kNone, bo = kNone;
  };
  HParams hp;
  bool tied = false;  // the LM head is the token embedding
  size_t tok_embd = 0, output_norm = 0, output = 0;
  std::vector<Layer> layers;
  std::vector<ParamTensor> tensors;  // in file order
  size_t total = 0;                  // elements
};

// The layout of a loaded model (biases where the model has them).
ParamLayout param_layout(const Model& model);
// The model's parameters decoded to T (quantized, F16 and BF16 weights dequantized).
template <class T>
std::vector<T> load_params(const Model& model, const ParamLayout& layout);

// One layer's activations kept for its backward pass.
template <class T>
struct LayerActs {
  std::vector<T> h1, q, k, v, att, lse, xmid, h2, g, u, a;
};
// Scratch memory of loss_and_grad, reused between calls (grown, never shrunk).
template <class T>
struct TrainWorkspace {
  std::vector<T> xs;               // the input of every layer and the final hidden states
  std::vector<LayerActs<T>> acts;  // one layer's (checkpointing) or every layer's
  std::vector<T> xf, dy, dx, dxmid, dh, datt, dq, dk, dv, da, dg, du;
  std::vector<int32_t> target;
  std::vector<float> cos_tab, sin_tab;
  size_t bytes() const;  // held now
};

struct LossOptions {
  // Keep only each layer's input during the forward pass and recompute the layer in the backward
  // pass (activation memory ~ n_layer x n x n_embd instead of ~ n_layer x n x (8 n_embd + 3 n_ff)).
  bool checkpoint = true;
  // Arithmetic of the linear layers and the LM head (train_ops.h): kBF16 rounds both operands of
  // each product to bf16 and accumulates in FP32 (float only, CPUs with AVX512_BF16).
  kernels::Compute compute = kernels::Compute::kF32;
  // The backend the step runs on (float only); null: the CPU backend with `compute`.
  std::shared_ptr<const Backend> backend;
};

// Next-token loss of one sequence: tokens[0, n) are the inputs at positions 0..n-1, tokens[r + 1]
// the target of position r (n - 1 predictions). Returns the SUM of the n - 1 negative
// log-likelihoods. When grad is not null, grad (same layout as params) += grad_scale * d(sum)/d
// params. tables: the rotary tables for this sequence (RopeScaling::tables(n, ...)).
template <class T>
double loss_and_grad(const ParamLayout& layout, const T* params, const int32_t* tokens, int64_t n,
                     const RopeTables& tables, T* grad, T grad_scale, TrainWorkspace<T>& ws,
                     const LossOptions& opts = {});

// ---- AdamW (decoupled weight decay), FP32 master weights and moments.
struct AdamW {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};
// One update of params with the gradient g at learning rate lr; m, v are the moments, step the
// 1-based step (bias correction). Decay applies to the tensors whose `decay` is set.
void adamw_update(const ParamLayout& layout, const AdamW& opt, double lr, int64_t step,
                  float* params, const float* g, float* m, float* v);
// The global L2 norm of g; scales g so that its norm is at most max_norm (when max_norm > 0).
// Returns the norm before clipping.
double clip_grad_norm(float* g, size_t n, double max_norm);

// Learning-rate schedule: linear warm-up over `warmup` steps from lr/warmup to lr, then linear or
// cosine decay to min_lr at `steps` (step is 1-based).
enum class Decay { kConstant, kLinear, kCosine };
Decay parse_decay(const std::string& name);  // "constant", "linear", "cosine"; throws Error
double schedule_lr(double lr, double min_lr, int64_t warmup, int64_t steps, Decay decay,
                   int64_t step);

}  // namespace longrope::train
