// Pieces shared by the tokenizers and visible to the tests (not part of the public API):
// UTF-8 helpers, a string->id map with heterogeneous lookup, the special-token splitter, the
// GPT-2 byte<->unicode table and the PCRE2-based pre-tokenizer.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "longrope/tokenizer.h"
#include "longrope/vocab.h"

namespace longrope::tok {

// llama.cpp token types.
enum TokenType : int32_t {
  kTypeNormal = 1,
  kTypeUnknown = 2,
  kTypeControl = 3,
  kTypeUserDefined = 4,
  kTypeUnused = 5,
  kTypeByte = 6,
};

// Length of the UTF-8 character starting at s[pos]: 1..4 for a well-formed sequence, 1 for a
// stray or truncated byte (so that malformed input is still consumed one byte at a time).
size_t utf8_char_len(std::string_view s, size_t pos);
// Appends the UTF-8 encoding of a code point.
void append_utf8(std::string& out, uint32_t cp);

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// Token text -> id; when a text occurs twice the later id wins (as in llama.cpp).
TokenMap build_token_map(const std::vector<std::string>& tokens);
// Token type of id, kTypeNormal when the spec carries no types.
inline int32_t token_type(const VocabSpec& spec, int32_t id) {
  return id >= 0 && static_cast<size_t>(id) < spec.types.size() ? spec.types[id] : kTypeNormal;
}
// Throws Error when spec's parallel arrays disagree in size or the vocabulary is empty.
void validate_spec(const VocabSpec& spec);

// A piece of the input: plain text to tokenize, or a special token found in it.
struct Fragment {
  std::string_view text;
  int32_t special = -1;  // token id when this fragment is a special token
};

// Finds control (3) and user-defined (4) tokens written in a text, leftmost first and, among
// those starting at the same place, longest first.
class SpecialSplitter {
 public:
  explicit SpecialSplitter(const VocabSpec& spec);
  std::vector<Fragment> split(std::string_view text) const;
  // What an encoder works through: split(text) when specials are parsed, else the whole text.
  std::vector<Fragment> fragments(std::string_view text, bool parse_special) const {
    if (parse_special && !specials_.empty()) return split(text);
    return {Fragment{text, -1}};
  }
  bool empty() const { return specials_.empty(); }

 private:
  struct Special {
    std::string text;
    int32_t id;
  };
  std::vector<Special> specials_;  // sorted by length, longest first
  std::array<bool, 256> first_byte_{};
};

// GPT-2's reversible byte -> printable code point table: the printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100.. in byte order.
const std::array<uint32_t, 256>& gpt2_byte_to_codepoint();
// The same table as UTF-8 strings.
const std::array<std::string, 256>& gpt2_byte_to_utf8();

// A pre-tokenizer: its rule set's name ("gpt2", "smollm", "llama3", "qwen2" or "custom"), the
// regexes applied in turn, and whether a pre-token that is itself a vocabulary entry skips the
// merges.
struct PreTokenizerRules {
  std::string rules;
  std::vector<std::string> regexes;
  bool ignore_merges;
};
// The rules of a spec: spec.pre_regexes when given (an HF tokenizer.json's pre-tokenizer), else
// those named by spec.pre; spec.ignore_merges, when set, overrides the rule set's choice.
PreTokenizerRules pretokenizer_rules(const VocabSpec& spec);

// Splits text into pre-tokens with a sequence of Unicode regexes (PCRE2, UTF + UCP), as
// llama.cpp and HF tokenizers do: each regex further splits every piece produced by the previous
// ones, keeping both the matches and the text between them.
class PreTokenizer {
 public:
  // Known names: "default", "gpt2"/"gpt-2", "smollm" (and llama.cpp's aliases for the same
  // rules), "llama3"/"llama-bpe", "qwen2". An unknown name falls back to the GPT-2 regex with
  // one warning line on stderr.
  explicit PreTokenizer(const std::string& name);
  // pretokenizer_rules(spec).
  explicit PreTokenizer(const VocabSpec& spec);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  std::vector<std::string_view> split(std::string_view text) const;
  // The rule set actually used ("gpt2", "smollm", "llama3", "qwen2" or "custom").
  const std::string& rules() const { return rules_; }
  // Whether a pre-token that is itself a vocabulary entry skips the merges (llama3).
  bool ignore_merges() const { return ignore_merges_; }

 private:
  struct Regex;
  void init(const PreTokenizerRules& set);
  std::vector<std::unique_ptr<Regex>> regexes_;
  std::string rules_;
  bool ignore_merges_ = false;
};

// GPT-2's pattern (what HF's ByteLevel pre-tokenizer with use_regex applies) and the
// one-digit pattern (HF's Digits with individual_digits).
const std::string& gpt2_pretokenizer_regex();
const std::string& digit_pretokenizer_regex();

std::unique_ptr<Tokenizer> make_spm_tokenizer(const VocabSpec& spec);
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const VocabSpec& spec);

}  // namespace longrope::tok
