// GPT-2 byte-level BPE (GGUF "gpt2" vocabularies, e.g. SmolLM2): text is split into pre-tokens
// by the regexes named by spec.pre, each pre-token's bytes are mapped to printable code points,
// and the pair with the lowest merge rank is merged first (ties: leftmost) until none is left.
#include <algorithm>

#include "longrope/error.h"
#include "tokenizer/tokenizer_internal.h"

namespace longrope::tok {
namespace {

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(const VocabSpec& spec)
      : Tokenizer(spec), map_(build_token_map(spec_.tokens)), specials_(spec_), pre_(spec_) {
    const auto& byte_utf8 = gpt2_byte_to_utf8();
    for (int b = 0; b < 256; ++b) {
      const auto it = map_.find(byte_utf8[b]);
      byte_ids_[b] = it == map_.end() ? -1 : it->second;
    }
    codepoint_to_byte_.fill(-1);
    for (int b = 0; b < 256; ++b) codepoint_to_byte_[gpt2_byte_to_codepoint()[b]] = b;

    merges_.reserve(spec_.merges.size());
    std::string joined;
    for (size_t rank = 0; rank < spec_.merges.size(); ++rank) {
      const std::string& m = spec_.merges[rank];
      const size_t sp = m.find(' ', 1);  // a part is never empty
      if (sp == std::string::npos) continue;
      const std::string_view a = std::string_view(m).substr(0, sp);
      const std::string_view b = std::string_view(m).substr(sp + 1);
      const auto ia = map_.find(a), ib = map_.find(b);
      joined.assign(a);
      joined += b;
      const auto ij = map_.find(joined);
      if (ia == map_.end() || ib == map_.end() || ij == map_.end()) continue;
      merges_.try_emplace(pair_key(ia->second, ib->second),
                          Merge{static_cast<int32_t>(rank), ij->second});
    }

    const auto n = static_cast<int32_t>(spec_.tokens.size());
    pieces_.resize(n);
    for (int32_t id = 0; id < n; ++id) pieces_[id] = make_piece(id);
  }

  std::vector<int32_t> encode(std::string_view text, bool parse_special) const override {
    std::vector<int32_t> out;
    if (text.empty()) return out;
    const std::vector<Fragment> fragments = specials_.fragments(text, parse_special);
    Work work;
    for (const Fragment& f : fragments) {
      if (f.special >= 0) {
        out.push_back(f.special);
        continue;
      }
      for (std::string_view word : pre_.split(f.text)) encode_word(word, work, out);
    }
    return out;
  }

  std::string token_to_piece(int32_t id) const override {
    check_id(id);
    return pieces_[id];
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string out;
    for (int32_t id : ids) {
      check_id(id);
      out += pieces_[id];
    }
    return out;
  }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  struct Symbol {
    int32_t id;  // -1: a byte with no token
    int32_t prev, next;
  };
  struct Bigram {
    int32_t rank;
    int32_t left, right;
    int32_t left_id, right_id, result;
  };
  struct BigramOrder {
    // Lowest rank first; among equal ranks the leftmost.
    bool operator()(const Bigram& a, const Bigram& b) const {
      if (a.rank != b.rank) return a.rank > b.rank;
      return a.left > b.left;
    }
  };
  // Scratch space and the word cache for one encode call (so encode stays thread-safe).
  struct Work {
    std::vector<Symbol> symbols;
    std::vector<Bigram> heap;
    std::string mapped;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache;
  };
  static constexpr size_t kCacheMax = 1 << 16;
  static constexpr size_t kCacheWordMax = 256;  // longer pre-tokens are not cached

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  void check_id(int32_t id) const {
    if (id < 0 || id >= n_vocab()) {
      throw Error("tokenizer: token id " + std::to_string(id) + " out of range [0, " +
                  std::to_string(n_vocab()) + ")");
    }
  }

  std::string make_piece(int32_t id) const {
    const std::string& text = spec_.tokens[id];
    const int32_t type = token_type(spec_, id);
    if (type == kTypeControl) return "";
    if (type == kTypeUserDefined) return text;
    // Map each code point back to its byte; one outside the table is kept as it is.
    std::string piece;
    piece.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
      const size_t n = utf8_char_len(text, i);
      uint32_t cp = static_cast<unsigned char>(text[i]);
      if (n == 2) cp = ((cp & 0x1F) << 6) | (static_cast<unsigned char>(text[i + 1]) & 0x3F);
      const bool mappable = (n == 1 && cp < 0x80) || n == 2;
      const int b = mappable && cp < codepoint_to_byte_.size() ? codepoint_to_byte_[cp] : -1;
      if (b >= 0) {
        piece += static_cast<char>(b);
      } else {
        piece.append(text, i, n);
      }
      i += n;
    }
    return piece;
  }

  void encode_word(std::string_view word, Work& w, std::vector<int32_t>& out) const {
    const bool cacheable = word.size() <= kCacheWordMax;
    if (cacheable) {
      const auto it = w.cache.find(word);
      if (it != w.cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const size_t first = out.size();
    bpe(word, w, out);
    if (cacheable) {
      if (w.cache.size() >= kCacheMax) w.cache.clear();
      w.cache.emplace(std::string(word), std::vector<int32_t>(out.begin() + first, out.end()));
    }
  }

  void bpe(std::string_view word, Work& w, std::vector<int32_t>& out) const {
    const auto& byte_utf8 = gpt2_byte_to_utf8();
    if (pre_.ignore_merges()) {
      w.mapped.clear();
      for (char c : word) w.mapped += byte_utf8[static_cast<unsigned char>(c)];
      const auto it = map_.find(w.mapped);
      if (it != map_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    if (word.size() > static_cast<size_t>(INT32_MAX)) {
      throw Error("tokenizer: pre-token too long to tokenize");
    }
    auto& sym = w.symbols;
    sym.clear();
    const auto n = static_cast<int32_t>(word.size());
    for (int32_t i = 0; i < n; ++i) {
      sym.push_back(
          {byte_ids_[static_cast<unsigned char>(word[i])], i - 1, i + 1 < n ? i + 1 : -1});
    }
    auto& heap = w.heap;
    heap.clear();
    auto try_add = [&](int32_t left, int32_t right) {
      if (left < 0 || right < 0) return;
      const int32_t a = sym[left].id, b = sym[right].id;
      if (a < 0 || b < 0) return;
      const auto it = merges_.find(pair_key(a, b));
      if (it == merges_.end()) return;
      heap.push_back({it->second.rank, left, right, a, b, it->second.result});
      std::push_heap(heap.begin(), heap.end(), BigramOrder{});
    };
    for (int32_t i = 1; i < n; ++i) try_add(i - 1, i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), BigramOrder{});
      const Bigram bg = heap.back();
      heap.pop_back();
      Symbol& l = sym[bg.left];
      Symbol& r = sym[bg.right];
      // Stale if either side was merged away or changed since the pair was queued.
      if (l.id != bg.left_id || r.id != bg.right_id || l.next != bg.right) continue;
      l.id = bg.result;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = bg.left;
      r.id = -2;  // merged away
      r.prev = r.next = -1;
      try_add(l.prev, bg.left);
      try_add(bg.left, l.next);
    }
    for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = sym[i].next) {
      if (sym[i].id >= 0) {
        out.push_back(sym[i].id);
      } else if (spec_.unk >= 0) {
        out.push_back(spec_.unk);  // a byte the vocabulary cannot spell
      }
    }
  }

  TokenMap map_;
  SpecialSplitter specials_;
  PreTokenizer pre_;
  std::array<int32_t, 256> byte_ids_{};
  std::array<int16_t, 512> codepoint_to_byte_{};
  std::unordered_map<uint64_t, Merge> merges_;
  std::vector<std::string> pieces_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const VocabSpec& spec) {
  return std::make_unique<BpeTokenizer>(spec);
}

}  // namespace longrope::tok
