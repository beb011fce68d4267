// Model loading: file -> FP32 weight matrices (views of F32 tensors, dequantized copies otherwise).
#include "longrope/model.h"

#include <omp.h>

#include <cstring>

#include "longrope/error.h"

namespace longrope {

Matrix Model::make_matrix(const TensorRef& t) {
  Matrix m;
  m.cols = t.ne.empty() ? 1 : t.ne[0];
  m.rows = m.cols == 0 ? 0 : t.nelements() / m.cols;
  n_params_ += t.nelements();
  if (t.type == GgmlType::F32 && reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0) {
    m.data = reinterpret_cast<const float*>(t.data);
    return m;
  }
  auto buf = std::unique_ptr<float[]>(new float[static_cast<size_t>(t.nelements())]);
  const size_t row_bytes = ggml_row_size(t.type, m.cols);
  float* dst = buf.get();
  const int64_t rows = m.rows, cols = m.cols;
  const uint8_t* src = t.data;
  const GgmlType type = t.type;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) dequantize(type, src + r * row_bytes, dst + r * cols, cols);
  owned_bytes_ += static_cast<size_t>(t.nelements()) * sizeof(float);
  m.data = buf.get();
  owned_.push_back(std::move(buf));
  return m;
}

std::shared_ptr<const Model> Model::load(const std::string& path, const LoadOptions& opts) {
  std::shared_ptr<Model> m(new Model());
  m->file_ = load_model_file(path, opts.tokenizer_path);
  if (opts.n_threads > 0) omp_set_num_threads(opts.n_threads);
  m->tokenizer_ = Tokenizer::create(m->file_.vocab);
  m->default_rope_ = rope_from_meta(m->file_.rope, m->file_.hp.n_rot, m->file_.hp.n_ctx_train);
  const HParams& hp = m->file_.hp;
  m->tok_embd_ = m->make_matrix(m->file_.get("token_embd.weight"));
  m->output_norm_ = m->make_matrix(m->file_.get("output_norm.weight"));
  if (const TensorRef* out = m->file_.find("output.weight")) {
    m->output_ = m->make_matrix(*out);
  } else {
    m->output_ = m->tok_embd_;  // tied
  }
  m->layers_.resize(hp.n_layer);
  for (int l = 0; l < hp.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights& L = m->layers_[l];
    L.attn_norm = m->make_matrix(m->file_.get(p + "attn_norm.weight"));
    L.wq = m->make_matrix(m->file_.get(p + "attn_q.weight"));
    L.wk = m->make_matrix(m->file_.get(p + "attn_k.weight"));
    L.wv = m->make_matrix(m->file_.get(p + "attn_v.weight"));
    L.wo = m->make_matrix(m->file_.get(p + "attn_output.weight"));
    L.ffn_norm = m->make_matrix(m->file_.get(p + "ffn_norm.weight"));
    L.w_gate = m->make_matrix(m->file_.get(p + "ffn_gate.weight"));
    L.w_up = m->make_matrix(m->file_.get(p + "ffn_up.weight"));
    L.w_down = m->make_matrix(m->file_.get(p + "ffn_down.weight"));
  }
  if (m->tokenizer_->n_vocab() != hp.n_vocab)
    throw Error(path + ": tokenizer has " + std::to_string(m->tokenizer_->n_vocab()) +
                " tokens but the model has " + std::to_string(hp.n_vocab) +
                " (expected equal vocabulary sizes)");
  return m;
}

}  // namespace longrope
