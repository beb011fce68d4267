// SentencePiece-style BPE on small synthetic vocabularies: merge order by score, ties, byte
// fallback, unknown characters, special tokens, round trips, errors; and a brute-force
// comparison against the plain "rescan for the best pair" algorithm on random text.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/tokenizer.h"

namespace longrope {
namespace {

const std::string kSp = "\xE2\x96\x81";  // U+2581

struct VocabBuilder {
  VocabSpec spec;
  explicit VocabBuilder(bool byte_tokens = true) {
    spec.kind = VocabSpec::Kind::kSpm;
    add("<unk>", 0, 2);
    add("<s>", 0, 3);
    add("</s>", 0, 3);
    spec.unk = 0;
    spec.bos = 1;
    spec.eos = 2;
    if (byte_tokens) {
      for (int b = 0; b < 256; ++b) {
        char buf[8];
        std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
        add(buf, 0, 6);
      }
    }
  }
  int32_t add(const std::string& text, float score, int32_t type = 1) {
    spec.tokens.push_back(text);
    spec.scores.push_back(score);
    spec.types.push_back(type);
    return static_cast<int32_t>(spec.tokens.size() - 1);
  }
  int32_t byte(int b) const { return 3 + b; }
};

using Ids = std::vector<int32_t>;

TEST(TokenizerSpm, MergesHighestScoreFirst) {
  VocabBuilder v;
  const int32_t sp = v.add(kSp, -10), a = v.add("a", -10), b = v.add("b", -10), c = v.add("c", -10);
  const int32_t ab = v.add("ab", -2), bc = v.add("bc", -1);
  auto tok = Tokenizer::create(v.spec);
  // "bc" scores higher than "ab", so a|bc.
  EXPECT_EQ(tok->encode("abc"), (Ids{sp, a, bc}));
  v.spec.scores[ab] = -0.5f;  // now "ab" wins
  tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode("abc"), (Ids{sp, ab, c}));
  (void)b;
}

TEST(TokenizerSpm, MergesBuildOnEarlierMerges) {
  VocabBuilder v;
  const int32_t sp = v.add(kSp, -10);
  v.add("a", -10);
  v.add("b", -10);
  v.add("c", -10);
  v.add("bc", -1);
  const int32_t abc = v.add("abc", -3);
  const int32_t sp_abc = v.add(kSp + "abc", -4);
  auto tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode("abc"), (Ids{sp_abc}));
  EXPECT_EQ(tok->encode("abc abc"), (Ids{sp_abc, sp_abc}));
  v.spec.add_space_prefix = false;
  tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode("abc"), (Ids{abc}));
  EXPECT_EQ(tok->encode("abc abc"), (Ids{abc, sp_abc}));
  (void)sp;
}

TEST(TokenizerSpm, TiesGoToTheLeftmostPair) {
  VocabBuilder v;
  const int32_t sp = v.add(kSp, -10), a = v.add("a", -10), aa = v.add("aa", -1);
  auto tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode("aaa"), (Ids{sp, aa, a}));
  EXPECT_EQ(tok->encode("aaaaa"), (Ids{sp, aa, aa, a}));
  // Equal scores for different tokens: the leftmost pair still goes first.
  const int32_t b = v.add("b", -10), ab = v.add("ab", -1), ba = v.add("ba", -1);
  tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode("aba"), (Ids{sp, ab, a}));
  EXPECT_EQ(tok->encode("bab"), (Ids{sp, ba, b}));
}

TEST(TokenizerSpm, ByteFallbackForCharactersNotInVocab) {
  VocabBuilder v;
  const int32_t sp = v.add(kSp, -10), a = v.add("a", -10);
  const int32_t u_umlaut = v.add("\xC3\xBC", -10);  // ü is in the vocabulary, é is not
  auto tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode("a\xC3\xA9\xC3\xBC"), (Ids{sp, a, v.byte(0xC3), v.byte(0xA9), u_umlaut}));
  EXPECT_EQ(tok->encode("\n"), (Ids{sp, v.byte('\n')}));
  // A 4-byte character (emoji) becomes four byte tokens.
  EXPECT_EQ(tok->encode("\xF0\x9F\x98\x80"),
            (Ids{sp, v.byte(0xF0), v.byte(0x9F), v.byte(0x98), v.byte(0x80)}));
  EXPECT_EQ(tok->decode(tok->encode("a\xC3\xA9\xC3\xBC\n\xF0\x9F\x98\x80")),
            "a\xC3\xA9\xC3\xBC\n\xF0\x9F\x98\x80");
}

TEST(TokenizerSpm, UnknownWithoutByteTokens) {
  VocabBuilder v(/*byte_tokens=*/false);
  const int32_t sp = v.add(kSp, -10), a = v.add("a", -10);
  auto tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode("a\xC3\xA9"
                        "a"),
            (Ids{sp, a, 0, a}));
  EXPECT_EQ(tok->token_to_piece(0), "\xE2\x96\x85");  // shown as llama.cpp shows <unk>
}

TEST(TokenizerSpm, SpecialTokensOnlyWhenParsed) {
  VocabBuilder v(/*byte_tokens=*/false);
  const int32_t sp = v.add(kSp, -10), a = v.add("a", -10), lt = v.add("<", -10),
                s = v.add("s", -10), gt = v.add(">", -10), sp_a = v.add(kSp + "a", -1);
  auto tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode("a<s>a", true), (Ids{sp_a, 1, sp_a}));
  EXPECT_EQ(tok->encode("<s>a</s>", true), (Ids{1, sp_a, 2}));
  EXPECT_EQ(tok->encode("a<s>a", false), (Ids{sp_a, lt, s, gt, a}));
  // Control tokens decode to nothing.
  EXPECT_EQ(tok->decode(Ids{1, sp_a, 2}), "a");
  EXPECT_EQ(tok->token_to_piece(1), "");
  (void)sp;
}

TEST(TokenizerSpm, DecodeRoundTrips) {
  VocabBuilder v;
  v.add(kSp, -10);
  for (const char* t : {"a", "b", "c", "d", "e", "h", "l", "o", "w", "r"}) v.add(t, -10);
  v.add("he", -1);
  v.add("ll", -2);
  v.add(kSp + "he", -3);
  v.add(kSp + kSp, -4);
  auto tok = Tokenizer::create(v.spec);
  for (const std::string& s : std::vector<std::string>{
           "hello world", " hello", "  two leading", "trailing  ", "\r\nline\r\n", "tab\there",
           "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC", " ", "   ", "a", "\xFF\xFE invalid utf8 \xC3",
           std::string("nul\0byte", 8)}) {
    EXPECT_EQ(tok->decode(tok->encode(s)), s) << "text: " << s;
  }
  EXPECT_TRUE(tok->encode("").empty());
  EXPECT_EQ(tok->decode(Ids{}), "");
  // Without the space prefix nothing is dropped either.
  v.spec.add_space_prefix = false;
  tok = Tokenizer::create(v.spec);
  for (const std::string s : {"hello world", " hello", "x y", " "}) {
    EXPECT_EQ(tok->decode(tok->encode(s)), s) << "text: " << s;
  }
}

TEST(TokenizerSpm, WrittenEscapedSpaceIsASpace) {
  // U+2581 in the text is SentencePiece's escaped space: the same ids as a space, decoded as one.
  VocabBuilder v;
  v.add(kSp, -10);
  for (const char* t : {"a", "b"}) v.add(t, -10);
  v.add(kSp + "b", -1);
  auto tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode("a" + kSp + "b"), tok->encode("a b"));
  EXPECT_EQ(tok->decode(tok->encode("a" + kSp + "b")), "a b");
  EXPECT_EQ(tok->decode(tok->encode(kSp)), " ");
}

TEST(TokenizerSpm, PiecesAndMetadata) {
  VocabBuilder v;
  const int32_t sp_he = v.add(kSp + "he", -1);
  v.spec.add_bos = true;
  auto tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->token_to_piece(sp_he), " he");
  EXPECT_EQ(tok->token_to_piece(v.byte('A')), "A");
  EXPECT_EQ(tok->token_to_piece(v.byte(0xE2)), "\xE2");
  EXPECT_EQ(tok->bos(), 1);
  EXPECT_EQ(tok->eos(), 2);
  EXPECT_EQ(tok->eot(), 2);
  EXPECT_TRUE(tok->add_bos());
  EXPECT_EQ(tok->n_vocab(), static_cast<int32_t>(v.spec.tokens.size()));
  // Decoding a sequence that starts with BOS still drops the prefix space once.
  EXPECT_EQ(tok->decode(Ids{1, sp_he, sp_he}), "he he");
}

TEST(TokenizerSpm, ErrorsAreErrors) {
  VocabBuilder v;
  v.add(kSp, -10);
  auto tok = Tokenizer::create(v.spec);
  const int32_t n = tok->n_vocab();
  EXPECT_THROW(tok->decode(Ids{0, n}), Error);
  EXPECT_THROW(tok->decode(Ids{-1}), Error);
  EXPECT_THROW(tok->token_to_piece(n), Error);
  VocabSpec bad = v.spec;
  bad.scores.pop_back();
  EXPECT_THROW(Tokenizer::create(bad), Error);
  bad = v.spec;
  bad.types.push_back(1);
  EXPECT_THROW(Tokenizer::create(bad), Error);
  EXPECT_THROW(Tokenizer::create(VocabSpec{}), Error);
}

// The algorithm as stated: rescan all adjacent pairs, merge the best-scoring one (leftmost on
// ties), until no pair is a token. Symbols hold token texts; characters not in the vocabulary
// are byte tokens from the start and, spelled "<0xXX>", never form a token with a neighbour.
Ids brute_force(const VocabSpec& spec, const std::string& raw) {
  std::map<std::string, int32_t> id;
  for (size_t i = 0; i < spec.tokens.size(); ++i) id[spec.tokens[i]] = static_cast<int32_t>(i);
  std::string text = kSp;
  for (char c : raw) text += c == ' ' ? kSp : std::string(1, c);
  Ids ids;
  for (size_t i = 0; i < text.size();) {
    size_t n = 1;
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0xF0)
      n = 4;
    else if (c >= 0xE0)
      n = 3;
    else if (c >= 0xC0)
      n = 2;
    const std::string ch = text.substr(i, n);
    if (id.count(ch)) {
      ids.push_back(id[ch]);
    } else {
      for (char b : ch) {
        char buf[8];
        std::snprintf(buf, sizeof(buf), "<0x%02X>", static_cast<unsigned char>(b));
        ids.push_back(id.at(buf));
      }
    }
    i += n;
  }
  while (true) {
    float best = -1e30f;
    int bi = -1, bm = -1;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      const auto it = id.find(spec.tokens[ids[i]] + spec.tokens[ids[i + 1]]);
      if (it != id.end() && spec.scores[it->second] > best) {
        best = spec.scores[it->second];
        bi = static_cast<int>(i);
        bm = it->second;
      }
    }
    if (bi < 0) break;
    ids[bi] = bm;
    ids.erase(ids.begin() + bi + 1);
  }
  return ids;
}

TEST(TokenizerSpm, MatchesBruteForceOnRandomText) {
  std::mt19937 rng(1234);
  const std::vector<std::string> alphabet = {"a", "b", "c", " ", "\xC3\xA9", "d"};
  VocabBuilder v;
  v.add(kSp, -5);
  for (const char* ch : {"a", "b", "c", "\xC3\xA9"}) v.add(ch, -5);  // "d" only as bytes
  // Random tokens made by joining two earlier ones (so every one is reachable by merges), with
  // few distinct scores so that ties are common.
  std::vector<std::string> pieces = {kSp, "a", "b", "c", "\xC3\xA9"};
  std::uniform_int_distribution<int> score_d(0, 7);
  std::map<std::string, bool> seen;
  for (const std::string& p : pieces) seen[p] = true;
  const auto first_joined = static_cast<int32_t>(v.spec.tokens.size());
  for (int i = 0; i < 400 && pieces.size() < 80; ++i) {
    std::uniform_int_distribution<size_t> pick_piece(0, pieces.size() - 1);
    const std::string t = pieces[pick_piece(rng)] + pieces[pick_piece(rng)];
    if (t.size() > 12 || seen[t]) continue;
    seen[t] = true;
    pieces.push_back(t);
    v.add(t, -static_cast<float>(score_d(rng)));
  }
  size_t merged = 0;
  auto tok = Tokenizer::create(v.spec);
  std::uniform_int_distribution<int> text_len(1, 40),
      pick(0, static_cast<int>(alphabet.size()) - 1);
  for (int trial = 0; trial < 500; ++trial) {
    std::string text;
    const int n = text_len(rng);
    for (int k = 0; k < n; ++k) text += alphabet[pick(rng)];
    const Ids ids = tok->encode(text);
    ASSERT_EQ(ids, brute_force(v.spec, text)) << "text: " << text;
    ASSERT_EQ(tok->decode(ids), text);
    for (int32_t id : ids) merged += id >= first_joined;
  }
  EXPECT_GT(merged, 1000u);  // the comparison exercised real merges
}

TEST(TokenizerSpm, LongInputIsNotQuadratic) {
  // 400k characters of one letter with a chain of doubling merges: a quadratic rescan would take
  // minutes; the queue does it in milliseconds.
  VocabBuilder v;
  v.add(kSp, -10);
  std::string t = "a";
  for (int i = 0; i < 6; ++i) {
    v.add(t, -static_cast<float>(10 - i));
    t += t;
  }
  auto tok = Tokenizer::create(v.spec);
  const std::string text(400000, 'a');
  const auto t0 = std::chrono::steady_clock::now();
  const Ids ids = tok->encode(text);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(tok->decode(ids), text);
  EXPECT_LT(ids.size(), text.size() / 16);
  EXPECT_LT(s, 20.0);  // generous, for sanitizer builds; typically well under 0.1 s
}

}  // namespace
}  // namespace longrope
