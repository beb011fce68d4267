// Tokenizers: SentencePiece-style BPE with scores and byte fallback (GGUF "llama", llama2.c)
// and GPT-2 byte-level BPE with merges and a named pre-tokenizer (GGUF "gpt2").
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "longrope/vocab.h"

namespace longrope {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Text to token ids, without BOS/EOS. With parse_special, control tokens written in the text
  // (e.g. "<|im_start|>") become their ids; otherwise they are encoded as plain text.
  virtual std::vector<int32_t> encode(std::string_view text, bool parse_special = false) const = 0;
  // Bytes of one token as it appears in decoded text (control tokens give "").
  virtual std::string token_to_piece(int32_t id) const = 0;
  // Ids to text; decode(encode(x)) == x for any UTF-8 text x, with two exceptions:
  //  - a byte (byte-level BPE) or character (SentencePiece without byte fallback) the vocabulary
  //    has no token for is encoded as the unknown token (e.g. SmolLM2's vocabulary lacks 21 of the
  //    256 bytes, among them the control characters 0x04 and 0x1D);
  //  - with a SentencePiece vocabulary each U+2581 in x comes back as a space: U+2581 is how
  //    SentencePiece writes a space, so x encodes exactly as with spaces in its place (as in
  //    SentencePiece and llama.cpp).
  virtual std::string decode(std::span<const int32_t> ids) const = 0;

  int32_t bos() const { return spec_.bos; }
  int32_t eos() const { return spec_.eos; }
  // End-of-turn token if the vocabulary has one, else eos.
  int32_t eot() const { return spec_.eot >= 0 ? spec_.eot : spec_.eos; }
  bool add_bos() const { return spec_.add_bos; }
  int32_t n_vocab() const { return static_cast<int32_t>(spec_.tokens.size()); }
  const VocabSpec& spec() const { return spec_; }

  static std::unique_ptr<Tokenizer> create(const VocabSpec& spec);

 protected:
  explicit Tokenizer(VocabSpec spec) : spec_(std::move(spec)) {}
  VocabSpec spec_;
};

// ChatML (SmolLM2, Qwen, ...), the chat format of `generate --chat`, `passkey --chat` and
// `ruler --chat`: a prompt is open + the user's message + close. open holds the system turn, when
// there is a system prompt, and opens the user turn; close ends it and opens the assistant's turn.
// Encode open and close with parse_special, so that the markers become their control tokens.
struct ChatPrompt {
  std::string open;
  std::string close;
  // The whole prompt as one text (open + user + close).
  std::string wrap(const std::string& user) const { return open + user + close; }
};
// system: the system prompt; when empty, the one chat_template writes by default (its
// "<|im_start|>system\n" turn), if any. No system turn when neither gives one.
ChatPrompt chat_prompt(const std::string& system = "", const std::string& chat_template = "");

}  // namespace longrope
