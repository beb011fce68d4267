// llama2.c checkpoints and tokenizer.bin, presented like a GGUF llama model.
//
// Checkpoint layouts (little-endian, as written by llama2.c's export.py):
//  - legacy (version 0): 7 x i32 {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
//    seq_len} (vocab_size < 0: a separate classifier follows at the end), then fp32:
//    tok_embeddings, attention_norm[L], wq[L], wk[L], wv[L], wo[L], ffn_norm[L], w1[L], w2[L],
//    w3[L], norm, freq_cis_real[seq_len*head_dim/2], freq_cis_imag[same], [wcls].
//  - version 1: u32 magic 0x616b3432 ("ak42"), i32 version = 1, the 7 i32 params, u8
//    shared_classifier, zero padding to 256 bytes; then fp32: attention_norm[L], ffn_norm[L],
//    norm, tok_embeddings, wq[L], wk[L], wv[L], wo[L], w1[L], w2[L], w3[L], [wcls].
//  - version 2: as version 1 with version = 2 and an i32 group_size after the flag byte; then fp32
//    attention_norm[L], ffn_norm[L], norm; then for each of tok_embeddings, wq[L], wk[L], wv[L],
//    wo[L], w1[L], w2[L], w3[L], [wcls]: its int8 values followed by its fp32 scales (one per
//    group of group_size values); value = q * scale.
// Matrices are row-major [out][in], the same bytes as a GGUF tensor with ne = [in, out].
//
// tokenizer.bin: i32 max_token_length, then per token f32 score, i32 length, bytes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "longrope/model_file.h"

namespace longrope {

struct Llama2cConfig {
  int version = 0;  // 0 legacy, 1 fp32, 2 int8 groups
  int dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0,
      seq_len = 0;
  bool shared_classifier = true;
  int group_size = 0;       // version 2
  size_t header_bytes = 0;  // 28 (legacy) or 256
};

constexpr uint32_t kLlama2cMagic = 0x616b3432;  // "ak42"

// True when the bytes start with the "ak42" magic, or with a legacy header whose implied file
// size is exactly size.
bool llama2c_detect(const uint8_t* data, size_t size);

struct Llama2cCheckpoint {
  Llama2cConfig config;
  HParams hp;
  // F32 tensors under GGUF names: into data for versions 0 and 1, into `owned` (dequantized) for
  // version 2.
  std::vector<TensorRef> tensors;
  std::vector<std::shared_ptr<const void>> owned;
};

// Parses a checkpoint image (data must outlive the returned tensors). name prefixes every error:
// "<name>: <what is wrong> (expected <what>)".
Llama2cCheckpoint parse_llama2c(const uint8_t* data, size_t size, const std::string& name);

// Parses tokenizer.bin holding exactly n_vocab tokens into an SPM vocabulary matching the GGUF
// conversion of the same model: '\n<s>\n' and '\n</s>\n' become "<s>" and "</s>", byte tokens
// written as raw characters become "<0xXX>", ' ' becomes U+2581; types: byte tokens 6, id 0
// unknown (2), ids 1 and 2 control (3), the rest normal (1); bos 1, eos 2, unk 0.
VocabSpec parse_llama2c_tokenizer(const uint8_t* data, size_t size, int n_vocab,
                                  const std::string& name);

}  // namespace longrope
