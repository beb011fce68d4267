// A tokenizer's vocabulary as model files store it (GGUF's tokenizer.ggml.* keys, llama2.c's
// tokenizer.bin, an HF tokenizer.json): read by src/io and src/tokenizer/hf_tokenizer.cpp, turned
// into a Tokenizer by Tokenizer::create (longrope/tokenizer.h).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace longrope {

struct VocabSpec {
  enum class Kind { kSpm, kGpt2 };
  Kind kind = Kind::kSpm;
  std::vector<std::string> tokens;
  std::vector<float> scores;  // SPM merge scores (empty for gpt2)
  std::vector<int32_t>
      types;  // llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user, 6 byte
  std::vector<std::string> merges;  // gpt2: "a b" per line, in rank order
  std::string pre = "default";      // gpt2 pre-tokenizer name (tokenizer.ggml.pre)
  // gpt2: the pre-tokenizer as regexes applied in turn (from an HF tokenizer.json); when given,
  // they replace the rules named by `pre`.
  std::vector<std::string> pre_regexes;
  std::optional<bool> ignore_merges;  // gpt2: overrides the pre-tokenizer rules' choice
  int32_t bos = -1, eos = -1, unk = -1, pad = -1, eot = -1;
  bool add_bos = true;
  bool add_eos = false;
  bool add_space_prefix = true;  // SPM: prepend a space before encoding
  std::string chat_template;     // tokenizer.chat_template, if any
};

}  // namespace longrope
