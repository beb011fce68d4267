// Model loading: weight matrices stay views of the mapped file in their own encoding; only 1-D
// norm weights that are not F32 in the file are decoded to an owned FP32 copy.
#include "longrope/model.h"

#include <omp.h>

#include <cstring>

#include "longrope/error.h"

namespace longrope {

namespace {

// A tensor as a matrix: ne[0] values per row.
int64_t tensor_cols(const TensorRef& t) {
  return t.ne.empty() ? 1 : t.ne[0];
}
int64_t tensor_rows(const TensorRef& t) {
  const int64_t c = tensor_cols(t);
  return c == 0 ? 0 : t.nelements() / c;
}

void expect_shape(const std::string& path, const TensorRef& t, int64_t cols, int64_t rows) {
  const int64_t c = tensor_cols(t), r = tensor_rows(t);
  if (c != cols || r != rows)
    throw Error(path + ": tensor " + t.name + " is " + std::to_string(r) + " x " +
                std::to_string(c) + ", expected " + std::to_string(rows) + " x " +
                std::to_string(cols) + " (rows x columns) for the model's hyper-parameters");
}

}  // namespace

WeightView Model::make_weight(const TensorRef& t) {
  WeightView w;
  w.type = t.type;
  w.data = t.data;
  w.cols = tensor_cols(t);
  w.rows = tensor_rows(t);
  w.row_bytes = ggml_row_size(t.type, w.cols);
  if (static_cast<size_t>(w.rows) * w.row_bytes > t.nbytes)
    throw Error(file_.path + ": tensor " + t.name + " holds " + std::to_string(t.nbytes) +
                " bytes, expected " + std::to_string(static_cast<size_t>(w.rows) * w.row_bytes));
  n_params_ += t.nelements();
  weight_bytes_ += static_cast<size_t>(w.rows) * w.row_bytes;
  return w;
}

const float* Model::make_vector(const TensorRef& t) {
  n_params_ += t.nelements();
  if (t.type == GgmlType::F32 && reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0)
    return reinterpret_cast<const float*>(t.data);
  auto buf = std::unique_ptr<float[]>(new float[static_cast<size_t>(t.nelements())]);
  dequantize(t.type, t.data, buf.get(), t.nelements());
  owned_bytes_ += static_cast<size_t>(t.nelements()) * sizeof(float);
  const float* p = buf.get();
  owned_.push_back(std::move(buf));
  return p;
}

void Model::embed(int32_t tok, float* dst) const {
  if (tok < 0 || tok >= tok_embd_.rows)
    throw Error("token id " + std::to_string(tok) + " out of range [0, " +
                std::to_string(tok_embd_.rows) + ")");
  kernels::dequant_rows_f32(tok_embd_, tok, 1, dst, tok_embd_.cols);
}

std::shared_ptr<const Model> Model::load(const std::string& path, const LoadOptions& opts) {
  // LONGROPE_CPU's error, if any, here: not first inside a parallel region of the kernels.
  (void)kernels::cpu_variant();
  std::shared_ptr<Model> m(new Model());
  m->file_ = load_model_file(path, opts.tokenizer_path);
  if (opts.n_threads > 0) omp_set_num_threads(opts.n_threads);
  m->tokenizer_ = Tokenizer::create(m->file_.vocab);
  m->default_rope_ = rope_of_model_file(m->file_);
  const HParams& hp = m->file_.hp;
  const int64_t d = hp.n_embd, qdim = int64_t(hp.n_head) * hp.head_dim,
                kvdim = int64_t(hp.n_head_kv) * hp.head_dim, ff = hp.n_ff, V = hp.n_vocab;
  auto weight = [&](const std::string& name, int64_t cols, int64_t rows) {
    const TensorRef& t = m->file_.get(name);
    expect_shape(m->file_.path, t, cols, rows);
    return m->make_weight(t);
  };
  auto vec = [&](const std::string& name, int64_t n) {
    const TensorRef& t = m->file_.get(name);
    expect_shape(m->file_.path, t, n, 1);
    return m->make_vector(t);
  };
  m->tok_embd_ = weight("token_embd.weight", d, V);
  m->output_norm_ = vec("output_norm.weight", d);
  if (m->file_.find("output.weight")) {
    m->output_ = weight("output.weight", d, V);
  } else {
    m->output_ = m->tok_embd_;  // tied
  }
  m->layers_.resize(hp.n_layer);
  for (int l = 0; l < hp.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights& L = m->layers_[l];
    L.attn_norm = vec(p + "attn_norm.weight", d);
    L.wq = weight(p + "attn_q.weight", d, qdim);
    L.wk = weight(p + "attn_k.weight", d, kvdim);
    L.wv = weight(p + "attn_v.weight", d, kvdim);
    L.wo = weight(p + "attn_output.weight", qdim, d);
    L.ffn_norm = vec(p + "ffn_norm.weight", d);
    L.w_gate = weight(p + "ffn_gate.weight", d, ff);
    L.w_up = weight(p + "ffn_up.weight", d, ff);
    L.w_down = weight(p + "ffn_down.weight", ff, d);
    auto bias = [&](const std::string& name, int64_t n) -> const float* {
      return m->file_.find(name) ? vec(name, n) : nullptr;
    };
    L.bq = bias(p + "attn_q.bias", qdim);
    L.bk = bias(p + "attn_k.bias", kvdim);
    L.bv = bias(p + "attn_v.bias", kvdim);
    L.bo = bias(p + "attn_output.bias", d);
  }
  if (m->tokenizer_->n_vocab() != hp.n_vocab)
    throw Error(path + ": tokenizer has " + std::to_string(m->tokenizer_->n_vocab()) +
                " tokens but the model has " + std::to_string(hp.n_vocab) +
                " (expected equal vocabulary sizes)");
  return m;
}

}  // namespace longrope
