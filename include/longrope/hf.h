// Hugging Face model folders: config.json, safetensors weights (one file, or shards with
// model.safetensors.index.json), tokenizer.json and tokenizer_config.json. docs/models.md.
//
// Read: model_type llama, mistral (no sliding window), qwen2 (q/k/v biases) and phi3 (fused
// qkv_proj and gate_up_proj, its longrope rope_scaling); F32, F16 and BF16 weights. Tensors are
// presented under GGUF names, with q and k rows reordered from HF's half-split rotary layout to
// the interleaved pairs the engine (and GGUF) use, so every later stage sees one layout.
// Written by `longrope export --hf-dir` (write_hf_folder, longrope/export.h). The tokenizer files
// are read and written by longrope/hf_tokenizer.h.
#pragma once
#include <string>

#include "longrope/model_file.h"

namespace longrope {

// Loads the folder; errors (one line) name the file and the field.
ModelFile load_hf_folder(const std::string& dir);

// True when path is a folder (what load_model_file reads as an HF model folder).
bool is_hf_folder(const std::string& path);

}  // namespace longrope
