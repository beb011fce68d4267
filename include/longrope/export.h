// Exporting searched LongRoPE factors into model files (docs/search.md, "Export").
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "longrope/rope.h"

namespace longrope {

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

// The HF config with a longrope rope_scaling: rope_type, short_factor (the first set; the long
// factors when there is one set), long_factor, original_max_position_embeddings, factor
// (target / L_orig) and attention_factor; max_position_embeddings = target. Throws Error.
nlohmann::json export_hf_config(const nlohmann::json& config, const RopeScaling& factors);

// What llama.cpp (gguf = true) or transformers (false) will not do as longrope does with these
// factors, one line each (no "warning:" prefix): start tokens (n_hat), a short set switched at
// another length than L_orig, a short set with its own attention factor.
std::vector<std::string> export_warnings(const RopeScaling& factors, bool gguf);

}  // namespace longrope
