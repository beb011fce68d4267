// Exporting searched LongRoPE factors into model files (docs/search.md, "Export").
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "longrope/rope.h"

namespace longrope {

class ModelFile;

// Writes a copy of the GGUF model at model_path to out_path that llama.cpp (and longrope) load at
// the extended context:
//  - one factor set: tensor rope_freqs.weight (F32, n_rot/2 values = the factors);
//    two sets: rope_factors_short.weight and rope_factors_long.weight (Phi-3 style);
//  - {arch}.context_length = target, {arch}.rope.scaling.original_context_length = L_orig,
//    {arch}.rope.scaling.attn_factor = the attention factor (F32, resolved from the rule when
//    the factors file gives none), and longrope.n_hat (u32, only when n_hat > 0: llama.cpp has no
//    start-token rule and ignores it);
//  - existing rope_freqs / rope_factors tensors and rope.scaling.type/factor/yarn keys are
//    dropped; every other key and tensor is copied unchanged.
// Factors and the attention factor are stored as F32. Throws Error (one line).
void export_gguf(const std::string& model_path, const RopeScaling& factors,
                 const std::string& out_path);

// The metadata and rope tensors of export_gguf, set on a writer holding a copy of mf's GGUF (for
// tools that also replace the weights, such as finetune).
class GgufWriter;
void set_gguf_factors(GgufWriter& w, const ModelFile& mf, const RopeScaling& factors);

// Searched factors relative to the model's own frequencies: its rope_freqs divisors (Llama 3's)
// folded into every set, as export_gguf and export_hf_folder write them. Throws Error when the
// model has such divisors and the factors have start tokens (n_hat > 0).
RopeScaling fold_model_factors(const ModelFile& mf, const RopeScaling& searched);

// The HF config with a longrope rope_scaling: rope_type, short_factor (the first set; the long
// factors when there is one set), long_factor, original_max_position_embeddings, factor
// (target / L_orig) and attention_factor; max_position_embeddings = target. Throws Error.
// Refuses (Error, one line) a config of another model: one whose rotary pairs per head (head_dim
// or hidden_size / num_attention_heads, times partial_rotary_factor, over 2) differ from the
// number of factors, or whose trained context differs from the factors' original context, or,
// given rope_base (the base the factors were searched on: their provenance's rope_base), whose
// rope_theta differs from it.
nlohmann::json export_hf_config(const nlohmann::json& config, const RopeScaling& factors,
                                std::optional<double> rope_base = std::nullopt);
void check_hf_config_fits(const nlohmann::json& config, const RopeScaling& factors,
                          std::optional<double> rope_base = std::nullopt);

// Writes a Llama HF folder for a loaded model file (any format) at out_dir (created if missing;
// every file atomically): model.safetensors (F32/F16/BF16 tensors as they are, quantized ones
// decoded to `dtype`: "f32", "f16" or "bf16"; q/k rows back in HF's half-split layout),
// config.json (llama, or qwen2 for q/k/v biases without an o bias; `scaling` as rope_scaling:
// none, linear, longrope, or frequency divisors as a one-set longrope), tokenizer.json and
// tokenizer_config.json. Throws Error (one line).
void write_hf_folder(const ModelFile& mf, const RopeScaling& scaling, const std::string& out_dir,
                     const std::string& dtype);

// Writes the model (GGUF, llama2.c with its tokenizer, or an HF folder) as an HF model folder at
// out_dir (write_hf_folder, longrope/hf.h): with searched factors, a longrope rope_scaling holding
// them (composed with the model's own frequency factors, as export_gguf does); without, the
// model's own scaling. dtype: what quantized tensors become ("f32", "f16", "bf16").
void export_hf_folder(const std::string& model_path, const std::string& tokenizer_path,
                      const RopeScaling* searched, const std::string& out_dir,
                      const std::string& dtype);

// What llama.cpp (gguf = true) or transformers (false) will not do as longrope does with these
// factors, one line each (deploy_differences; the file keeps longrope's own keys for them, which
// longrope reads back).
std::vector<std::string> export_warnings(const RopeScaling& factors, bool gguf);

}  // namespace longrope
