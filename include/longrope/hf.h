// Hugging Face model folders: config.json, safetensors weights (one file, or shards with
// model.safetensors.index.json), tokenizer.json and tokenizer_config.json. docs/models.md.
//
// Read: model_type llama, mistral (no sliding window), qwen2 (q/k/v biases) and phi3 (fused
// qkv_proj and gate_up_proj, its longrope rope_scaling); F32, F16 and BF16 weights. Tensors are
// presented under GGUF names, with q and k rows reordered from HF's half-split rotary layout to
// the interleaved pairs the engine (and GGUF) use, so every later stage sees one layout.
// Written by `longrope export --hf-dir` (write_hf_folder, longrope/export.h).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "longrope/model_file.h"
#include "longrope/rope.h"

namespace longrope {

// Loads the folder; errors (one line) name the file and the field.
ModelFile load_hf_folder(const std::string& dir);

// True when path is a folder (what load_model_file reads as an HF model folder).
bool is_hf_folder(const std::string& path);

// --- tokenizer.json <-> VocabSpec ----------------------------------------------------------------
// A BPE tokenizer.json: byte-level (GPT-2 style: ByteLevel / Digits / Split(regex) pre-tokenizers,
// read as regexes) or SentencePiece style (byte_fallback, "\u2581" for spaces: read as a scored
// SentencePiece vocabulary, scores from the merge ranks). tok_config: tokenizer_config.json or
// null; config: config.json or null (bos/eos/pad ids). n_vocab: the model's vocabulary size
// (ids the tokenizer lacks are filled with unused tokens); 0 = as many as the tokenizer has.
VocabSpec vocab_from_hf_tokenizer(const nlohmann::json& tok, const nlohmann::json& tok_config,
                                  const nlohmann::json& config, int64_t n_vocab,
                                  const std::string& source);
// The tokenizer.json and tokenizer_config.json (model_max_length = max_len) for a vocabulary.
nlohmann::json hf_tokenizer_json(const VocabSpec& vocab);
nlohmann::json hf_tokenizer_config(const VocabSpec& vocab, int64_t max_len);

}  // namespace longrope
