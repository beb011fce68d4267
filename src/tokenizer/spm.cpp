// SentencePiece-style BPE with scores and byte fallback (GGUF "llama" vocabularies, llama2.c
// tokenizer.bin). Spaces become U+2581; the initial symbols are UTF-8 characters; the adjacent
// pair whose concatenation is a vocabulary token with the highest score is merged first (ties:
// leftmost), using a priority queue over a linked list of symbols (O(n log n)).
#include <cstdio>
#include <queue>

#include "longrope/error.h"
#include "tokenizer/tokenizer_internal.h"

namespace longrope::tok {
namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";         // U+2581 LOWER ONE EIGHTH BLOCK
constexpr std::string_view kUnknownPiece = "\xE2\x96\x85";  // U+2585, as llama.cpp shows <unk>

// Parses "<0xXX>"; returns the byte or -1.
int parse_byte_token(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(const VocabSpec& spec)
      : Tokenizer(spec), map_(build_token_map(spec_.tokens)), specials_(spec_) {
    byte_ids_.fill(-1);
    const auto n = static_cast<int32_t>(spec_.tokens.size());
    is_byte_.assign(n, false);
    for (int32_t id = 0; id < n; ++id) {
      const int32_t type = token_type(spec_, id);
      // With types, only type-6 tokens are bytes; without them, anything spelled "<0xXX>".
      if (!spec_.types.empty() && type != kTypeByte) continue;
      const int b = parse_byte_token(spec_.tokens[id]);
      if (b < 0) continue;
      is_byte_[id] = true;
      if (byte_ids_[b] < 0) byte_ids_[b] = id;
    }
    pieces_.resize(n);
    for (int32_t id = 0; id < n; ++id) pieces_[id] = make_piece(id);
  }

  std::vector<int32_t> encode(std::string_view text, bool parse_special) const override {
    std::vector<int32_t> out;
    if (text.empty()) return out;
    const std::vector<Fragment> fragments = specials_.fragments(text, parse_special);
    // Like llama.cpp: the space prefix goes before the text at the start and after a special.
    bool prev_special = true;
    for (const Fragment& f : fragments) {
      if (f.special >= 0) {
        out.push_back(f.special);
        prev_special = true;
      } else {
        encode_fragment(f.text, spec_.add_space_prefix && prev_special, out);
        prev_special = false;
      }
    }
    return out;
  }

  std::string token_to_piece(int32_t id) const override {
    check_id(id);
    return pieces_[id];
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string out;
    bool at_start = true;
    for (int32_t id : ids) {
      check_id(id);
      std::string_view piece = pieces_[id];
      if (piece.empty()) continue;
      // Drop the one space that add_space_prefix put before the text.
      if (at_start && spec_.add_space_prefix && piece[0] == ' ' && !is_byte_[id] &&
          token_type(spec_, id) == kTypeNormal) {
        piece.remove_prefix(1);
      }
      at_start = false;
      out += piece;
    }
    return out;
  }

 private:
  struct Symbol {
    uint32_t start;  // byte offset in the escaped text
    uint32_t len;    // 0 once merged into its left neighbour
    int32_t prev;
    int32_t next;
    bool in_vocab;  // false: a character with no token, emitted as byte tokens
  };
  struct Bigram {
    float score;
    int32_t left;
    int32_t right;
    uint32_t len;  // len(left) + len(right) when queued; a different sum means it is stale
  };
  struct BigramOrder {
    // Highest score first; among equal scores the leftmost.
    bool operator()(const Bigram& a, const Bigram& b) const {
      if (a.score != b.score) return a.score < b.score;
      return a.left > b.left;
    }
  };

  void check_id(int32_t id) const {
    if (id < 0 || id >= n_vocab()) {
      throw Error("tokenizer: token id " + std::to_string(id) + " out of range [0, " +
                  std::to_string(n_vocab()) + ")");
    }
  }

  std::string make_piece(int32_t id) const {
    const std::string& text = spec_.tokens[id];
    if (is_byte_[id]) return std::string(1, static_cast<char>(parse_byte_token(text)));
    switch (token_type(spec_, id)) {
      case kTypeControl:
        return "";
      case kTypeUnknown:
        return std::string(kUnknownPiece);
      case kTypeUserDefined:
        return text;
      default:
        break;
    }
    std::string piece;
    piece.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
      if (text.compare(i, kSpace.size(), kSpace) == 0) {
        piece += ' ';
        i += kSpace.size();
      } else {
        piece += text[i++];
      }
    }
    return piece;
  }

  float score(int32_t id) const { return spec_.scores.empty() ? 0.0f : spec_.scores[id]; }

  void encode_fragment(std::string_view raw, bool space_prefix, std::vector<int32_t>& out) const {
    std::string text;
    text.reserve(raw.size() + raw.size() / 4 + 3);
    if (space_prefix) text += kSpace;
    for (char c : raw) {
      if (c == ' ') {
        text += kSpace;
      } else {
        text += c;
      }
    }
    if (text.size() > UINT32_MAX / 2) throw Error("tokenizer: text too long to tokenize at once");

    std::vector<Symbol> symbols;
    symbols.reserve(text.size());
    for (size_t pos = 0; pos < text.size();) {
      const size_t n = utf8_char_len(text, pos);
      const auto idx = static_cast<int32_t>(symbols.size());
      const bool known = map_.find(std::string_view(text).substr(pos, n)) != map_.end();
      symbols.push_back(
          {static_cast<uint32_t>(pos), static_cast<uint32_t>(n), idx - 1, idx + 1, known});
      pos += n;
    }
    if (symbols.empty()) return;
    symbols.back().next = -1;

    std::vector<Bigram> storage;
    storage.reserve(symbols.size());
    std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue(BigramOrder{},
                                                                        std::move(storage));
    const std::string_view view = text;
    auto try_add = [&](int32_t left, int32_t right) {
      if (left < 0 || right < 0) return;
      const Symbol& l = symbols[left];
      const Symbol& r = symbols[right];
      if (!l.in_vocab || !r.in_vocab) return;
      const uint32_t len = l.len + r.len;
      const auto it = map_.find(view.substr(l.start, len));
      if (it == map_.end()) return;
      queue.push({score(it->second), left, right, len});
    };
    for (size_t i = 1; i < symbols.size(); ++i) {
      try_add(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));
    }
    while (!queue.empty()) {
      const Bigram b = queue.top();
      queue.pop();
      Symbol& l = symbols[b.left];
      Symbol& r = symbols[b.right];
      // Lengths only grow, so an unchanged sum means both symbols are as they were queued.
      if (l.len == 0 || r.len == 0 || l.len + r.len != b.len) continue;
      l.len += r.len;
      r.len = 0;
      l.next = r.next;
      if (r.next >= 0) symbols[r.next].prev = b.left;
      try_add(l.prev, b.left);
      try_add(b.left, l.next);
    }

    for (int32_t i = 0; i >= 0; i = symbols[i].next) {
      const Symbol& s = symbols[i];
      const std::string_view piece = view.substr(s.start, s.len);
      if (s.in_vocab) {
        out.push_back(map_.find(piece)->second);
        continue;
      }
      bool all_bytes = true;
      for (char c : piece) all_bytes = all_bytes && byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all_bytes) {
        for (char c : piece) out.push_back(byte_ids_[static_cast<unsigned char>(c)]);
      } else if (spec_.unk >= 0) {
        out.push_back(spec_.unk);
      }
    }
  }

  TokenMap map_;
  SpecialSplitter specials_;
  std::array<int32_t, 256> byte_ids_{};
  std::vector<bool> is_byte_;
  std::vector<std::string> pieces_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_spm_tokenizer(const VocabSpec& spec) {
  return std::make_unique<SpmTokenizer>(spec);
}

}  // namespace longrope::tok
