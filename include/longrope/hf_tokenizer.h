// Hugging Face tokenizer.json and tokenizer_config.json <-> VocabSpec: read from an HF model
// folder (load_hf_folder, longrope/hf.h) and written by `longrope export --hf-dir`
// (write_hf_folder, longrope/export.h). docs/models.md.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "longrope/vocab.h"

namespace longrope {

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
