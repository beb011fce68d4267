// Writing a model as a Hugging Face model folder (write_hf_folder, include/longrope/export.h).
#include <fmt/format.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/model_file_internal.h"
#include "longrope/atomic_file.h"
#include "longrope/error.h"
#include "longrope/export.h"
#include "longrope/hf_tokenizer.h"
#include "longrope/safetensors.h"

namespace longrope {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Sets config's rope_scaling (and, for longrope, max_position_embeddings) for a scaling.
void set_rope_scaling(json& config, const RopeScaling& s, const HParams& hp) {
  const bool has_ff = !s.freq_factors.empty();
  if (s.method == RopeMethod::kNone && !has_ff) {
    config["rope_scaling"] = nullptr;
  } else if (s.method == RopeMethod::kLinear && !has_ff) {
    config["rope_scaling"] = {{"rope_type", "linear"}, {"factor", s.factor}};
  } else if (s.method == RopeMethod::kLongrope && !has_ff) {
    config = export_hf_config(config, s);
  } else if (s.method == RopeMethod::kNone) {
    // Fixed per-pair divisors (a Llama 3 GGUF's rope_freqs, a fine-tuned model's factors):
    // longrope's form for them, one set used at every length, with the model's attention factor.
    config["rope_scaling"] = {{"rope_type", "longrope"},
                              {"short_factor", s.freq_factors},
                              {"long_factor", s.freq_factors},
                              {"original_max_position_embeddings", hp.n_ctx_train},
                              {"factor", 1.0},
                              {"attention_factor", s.attn_factor.value_or(1.0)}};
  } else {
    throw Error(fmt::format(
        "export: the scaling {} cannot be written to an HF config (expected none, linear or "
        "longrope; frequency factors only with none)",
        s.describe()));
  }
}

}  // namespace

void write_hf_folder(const ModelFile& mf, const RopeScaling& scaling, const std::string& out_dir,
                     const std::string& dtype) {
  const std::optional<GgmlType> type_of_dtype = float_type_by_name(dtype);
  if (!type_of_dtype)
    throw Error(fmt::format("export: dtype {} (expected f32, f16 or bf16)", dtype));
  const GgmlType want = *type_of_dtype;
  const HParams& hp = mf.hp;
  const fs::path d(out_dir);
  std::error_code ec;
  fs::create_directories(d, ec);
  if (ec || !fs::is_directory(d, ec))
    throw Error(fmt::format("{}: cannot create the folder ({})", out_dir, ec.message()));

  const bool biases = mf.find("blk.0.attn_q.bias") != nullptr;
  const bool o_bias = mf.find("blk.0.attn_output.bias") != nullptr;
  const bool qwen2 = biases && !o_bias;
  const bool tied = mf.find("output.weight") == nullptr;
  const char* torch_dtype = want == GgmlType::F32   ? "float32"
                            : want == GgmlType::F16 ? "float16"
                                                    : "bfloat16";
  json cfg = {{"architectures", {qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
              {"model_type", qwen2 ? "qwen2" : "llama"},
              {"hidden_size", hp.n_embd},
              {"intermediate_size", hp.n_ff},
              {"num_attention_heads", hp.n_head},
              {"num_key_value_heads", hp.n_head_kv},
              {"num_hidden_layers", hp.n_layer},
              {"head_dim", hp.head_dim},
              {"rms_norm_eps", hp.norm_eps},
              {"rope_theta", hp.rope_base},
              {"max_position_embeddings", hp.n_ctx_train},
              {"vocab_size", hp.n_vocab},
              {"tie_word_embeddings", tied},
              {"hidden_act", "silu"},
              {"torch_dtype", torch_dtype}};
  if (qwen2) cfg["use_sliding_window"] = false;
  if (!qwen2) cfg["attention_bias"] = biases;
  if (hp.n_rot != hp.head_dim)
    cfg["partial_rotary_factor"] = static_cast<double>(hp.n_rot) / hp.head_dim;
  if (mf.vocab.bos >= 0) cfg["bos_token_id"] = mf.vocab.bos;
  if (mf.vocab.eos >= 0) cfg["eos_token_id"] = mf.vocab.eos;
  set_rope_scaling(cfg, scaling, hp);
  if (biases != (mf.find("blk.0.attn_k.bias") != nullptr))
    throw Error(
        "export: the model has some of the q/k/v biases but not all (expected all or none)");

  // Tensors in HF names and layout, made one at a time while the file is written.
  std::vector<SafetensorsOut> outs;
  auto plan = [&](const std::string& gguf_name, const std::string& hf_name, int64_t heads) {
    const TensorRef* t = mf.find(gguf_name);
    if (!t) return;
    const bool keep =
        t->type == GgmlType::F32 || t->type == GgmlType::F16 || t->type == GgmlType::BF16;
    const GgmlType type = keep ? t->type : want;
    SafetensorsOut o;
    o.name = hf_name;
    o.type = type;
    const int64_t cols = t->ne.empty() ? 1 : t->ne[0];
    const int64_t rows = cols == 0 ? 0 : t->nelements() / cols;
    o.shape = t->ne.size() >= 2 ? std::vector<int64_t>{rows, cols} : std::vector<int64_t>{cols};
    const int n_rot = hp.n_rot;
    const int64_t head_dim = hp.head_dim;
    const int64_t row_elems = t->ne.size() >= 2 ? cols : 1;  // a bias permutes single values
    o.make = [t, row_elems, heads, n_rot, head_dim, keep, type]() {
      std::vector<uint8_t> bytes;
      if (keep) {
        bytes.assign(t->data, t->data + t->nbytes);
      } else {
        std::vector<float> f(static_cast<size_t>(t->nelements()));
        dequantize(t->type, t->data, f.data(), t->nelements());
        bytes = encode_floats(f.data(), f.size(), type);
      }
      if (heads > 0) {
        const size_t row_bytes = static_cast<size_t>(row_elems) * ggml_type_size(type);
        bytes = io::permute_rotary_rows(bytes.data(), heads, head_dim, n_rot, row_bytes, false);
      }
      return bytes;
    };
    outs.push_back(std::move(o));
  };
  plan("token_embd.weight", "model.embed_tokens.weight", 0);
  for (int l = 0; l < hp.n_layer; ++l) {
    const std::string b = fmt::format("blk.{}.", l), h = fmt::format("model.layers.{}.", l);
    for (const io::HfLayerTensor& e : io::kHfLayerTensors)
      plan(b + e.gguf, h + e.hf, io::rotary_heads(e.rotary, hp));
  }
  plan("output_norm.weight", "model.norm.weight", 0);
  plan("output.weight", "lm_head.weight", 0);

  std::string tok_text, tok_cfg_text;
  try {
    tok_text = hf_tokenizer_json(mf.vocab).dump();
    tok_cfg_text = hf_tokenizer_config(mf.vocab, cfg["max_position_embeddings"]).dump(2);
  } catch (const json::exception& e) {
    throw Error(fmt::format("export: the vocabulary cannot be written as JSON ({})", e.what()));
  }
  write_safetensors((d / "model.safetensors").string(), outs);
  write_file_atomically((d / "tokenizer.json").string(), tok_text);
  write_file_atomically((d / "tokenizer_config.json").string(), tok_cfg_text + "\n");
  write_file_atomically((d / "config.json").string(), cfg.dump(2) + "\n");
}

}  // namespace longrope
