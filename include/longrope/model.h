// A loaded Llama-family model: hyper-parameters, weights and tokenizer. Immutable once loaded and
// shared by any number of inference contexts (the search evaluates thousands of RoPE scalings
// against one Model without reloading or copying weights).
//
// Weight matrices stay in their file encoding (quantized blocks, F16, BF16 or F32), as views of
// the memory-mapped file: the model costs what its file costs. The kernels decode blocks on the
// fly (kernels::gemv_w for decoding, panels inside kernels::matmul_w for prefill). Only the 1-D
// norm weights are held as FP32 (copied when the file stores them otherwise).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "longrope/kernels.h"
#include "longrope/model_file.h"
#include "longrope/rope.h"
#include "longrope/tokenizer.h"

namespace longrope {

using kernels::WeightView;

struct LayerWeights {
  const float* attn_norm = nullptr;  // n_embd values
  const float* ffn_norm = nullptr;   // n_embd values
  WeightView wq, wk, wv, wo, w_gate, w_up, w_down;
  // Projection biases (Qwen2: q, k, v; Llama with attention_bias: all four); null when absent.
  const float* bq = nullptr;
  const float* bk = nullptr;
  const float* bv = nullptr;
  const float* bo = nullptr;
};

struct LoadOptions {
  std::string tokenizer_path;  // llama2.c tokenizer.bin (ignored for GGUF)
  int n_threads = 0;           // for dequantization; 0 = all cores
};

class Model {
 public:
  static std::shared_ptr<const Model> load(const std::string& path, const LoadOptions& opts = {});

  const HParams& hp() const { return file_.hp; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ModelFile& file() const { return file_; }
  // The RoPE scaling the model file declares (method none for a plain model).
  const RopeScaling& default_rope() const { return default_rope_; }

  const WeightView& tok_embd() const { return tok_embd_; }
  const WeightView& output() const { return output_; }
  const float* output_norm() const { return output_norm_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  // FP32 embedding of token `tok` (n_embd values) into dst; throws for an id out of range.
  void embed(int32_t tok, float* dst) const;
  // Bytes the model holds besides the mapped file (norm weights decoded to FP32).
  size_t owned_bytes() const { return owned_bytes_; }
  // Bytes of all weight matrices in their file encoding (what decoding streams per token).
  size_t weight_bytes() const { return weight_bytes_; }
  // Parameter count (all weight matrices and norms, tied output counted once).
  int64_t n_params() const { return n_params_; }

 private:
  Model() = default;
  WeightView make_weight(const TensorRef& t);
  const float* make_vector(const TensorRef& t);
  ModelFile file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  RopeScaling default_rope_;
  std::vector<std::unique_ptr<float[]>> owned_;
  size_t owned_bytes_ = 0;
  size_t weight_bytes_ = 0;
  int64_t n_params_ = 0;
  WeightView tok_embd_, output_;
  const float* output_norm_ = nullptr;
  std::vector<LayerWeights> layers_;
};

}  // namespace longrope
