// Tokenizer::create and the helpers both tokenizers share.
#include "longrope/tokenizer.h"

#include <algorithm>

#include "longrope/error.h"
#include "tokenizer/tokenizer_internal.h"

namespace longrope {

std::unique_ptr<Tokenizer> Tokenizer::create(const VocabSpec& spec) {
  tok::validate_spec(spec);
  switch (spec.kind) {
    case VocabSpec::Kind::kSpm:
      return tok::make_spm_tokenizer(spec);
    case VocabSpec::Kind::kGpt2:
      return tok::make_bpe_tokenizer(spec);
  }
  throw Error("tokenizer: unknown vocabulary kind " + std::to_string(static_cast<int>(spec.kind)));
}

namespace tok {

size_t utf8_char_len(std::string_view s, size_t pos) {
  const auto c = static_cast<unsigned char>(s[pos]);
  size_t n;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
  } else {
    return 1;  // continuation byte or invalid lead byte
  }
  if (pos + n > s.size()) return 1;
  for (size_t i = 1; i < n; ++i) {
    if ((static_cast<unsigned char>(s[pos + i]) & 0xC0) != 0x80) return 1;
  }
  return n;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

TokenMap build_token_map(const std::vector<std::string>& tokens) {
  TokenMap map;
  map.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) map[tokens[i]] = static_cast<int32_t>(i);
  return map;
}

void validate_spec(const VocabSpec& spec) {
  const size_t n = spec.tokens.size();
  if (n == 0) throw Error("tokenizer: the vocabulary has no tokens");
  if (n > static_cast<size_t>(INT32_MAX)) throw Error("tokenizer: the vocabulary is too large");
  if (!spec.types.empty() && spec.types.size() != n) {
    throw Error("tokenizer: " + std::to_string(spec.types.size()) + " token types for " +
                std::to_string(n) + " tokens");
  }
  if (spec.kind == VocabSpec::Kind::kSpm && !spec.scores.empty() && spec.scores.size() != n) {
    throw Error("tokenizer: " + std::to_string(spec.scores.size()) + " token scores for " +
                std::to_string(n) + " tokens");
  }
}

SpecialSplitter::SpecialSplitter(const VocabSpec& spec) {
  for (size_t i = 0; i < spec.tokens.size(); ++i) {
    const int32_t type = token_type(spec, static_cast<int32_t>(i));
    if ((type == kTypeControl || type == kTypeUserDefined) && !spec.tokens[i].empty()) {
      specials_.push_back({spec.tokens[i], static_cast<int32_t>(i)});
    }
  }
  // Longest first; among equal lengths the lower id first, so the result does not depend on
  // the sort's stability.
  std::sort(specials_.begin(), specials_.end(), [](const Special& a, const Special& b) {
    if (a.text.size() != b.text.size()) return a.text.size() > b.text.size();
    return a.id < b.id;
  });
  for (const Special& s : specials_) first_byte_[static_cast<unsigned char>(s.text[0])] = true;
}

std::vector<Fragment> SpecialSplitter::split(std::string_view text) const {
  std::vector<Fragment> out;
  size_t start = 0;  // beginning of the pending plain-text fragment
  size_t pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    const Special* hit = nullptr;
    for (const Special& s : specials_) {
      if (text.compare(pos, s.text.size(), s.text) == 0) {
        hit = &s;
        break;
      }
    }
    if (!hit) {
      ++pos;
      continue;
    }
    if (pos > start) out.push_back({text.substr(start, pos - start), -1});
    out.push_back({text.substr(pos, hit->text.size()), hit->id});
    pos += hit->text.size();
    start = pos;
  }
  if (start < text.size()) out.push_back({text.substr(start), -1});
  return out;
}

const std::array<uint32_t, 256>& gpt2_byte_to_codepoint() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[b] = printable ? b : next++;
    }
    return t;
  }();
  return table;
}

const std::array<std::string, 256>& gpt2_byte_to_utf8() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    for (int b = 0; b < 256; ++b) append_utf8(t[b], gpt2_byte_to_codepoint()[b]);
    return t;
  }();
  return table;
}

}  // namespace tok
}  // namespace longrope
