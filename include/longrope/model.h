// A loaded Llama-family model: hyper-parameters, FP32 weights and tokenizer. Immutable once
// loaded and shared by any number of inference contexts (the search evaluates thousands of
// RoPE scalings against one Model without reloading or copying weights).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "longrope/model_file.h"
#include "longrope/rope.h"
#include "longrope/tokenizer.h"

namespace longrope {

// A weight matrix [rows][cols] in FP32: either a view of an F32 tensor in the mapped file or a
// dequantized copy owned by the Model.
struct Matrix {
  const float* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

struct LayerWeights {
  Matrix attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
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

  const Matrix& tok_embd() const { return tok_embd_; }
  const Matrix& output() const { return output_; }
  const Matrix& output_norm() const { return output_norm_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  // Bytes of FP32 weights owned (dequantized) by the model.
  size_t owned_bytes() const { return owned_bytes_; }
  // Parameter count (all weight matrices and norms, tied output counted once).
  int64_t n_params() const { return n_params_; }

 private:
  Model() = default;
  Matrix make_matrix(const TensorRef& t);
  ModelFile file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  RopeScaling default_rope_;
  std::vector<std::unique_ptr<float[]>> owned_;
  size_t owned_bytes_ = 0;
  int64_t n_params_ = 0;
  Matrix tok_embd_, output_, output_norm_;
  std::vector<LayerWeights> layers_;
};

}  // namespace longrope
