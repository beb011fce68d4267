// GPT-2 byte-level BPE on small synthetic vocabularies (merge ranks, ties, special tokens, bytes,
// round trips, errors), the byte<->unicode table, and the named pre-tokenizers.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"

namespace longrope {
namespace {

using Ids = std::vector<int32_t>;
using Strs = std::vector<std::string>;

// Byte-level spelling of raw bytes.
std::string bl(const std::string& raw) {
  std::string out;
  for (char c : raw) out += tok::gpt2_byte_to_utf8()[static_cast<unsigned char>(c)];
  return out;
}

struct BpeVocab {
  VocabSpec spec;
  std::map<std::string, int32_t> id;  // by raw text
  BpeVocab() {
    spec.kind = VocabSpec::Kind::kGpt2;
    spec.pre = "gpt2";
    spec.add_space_prefix = false;
    for (int b = 0; b < 256; ++b) add(std::string(1, static_cast<char>(b)));
  }
  int32_t add(const std::string& raw, int32_t type = 1) {
    spec.tokens.push_back(type == 1 ? bl(raw) : raw);
    spec.types.push_back(type);
    return id[raw] = static_cast<int32_t>(spec.tokens.size() - 1);
  }
  // Adds the merge "a b" (raw texts) and its result token.
  int32_t merge(const std::string& a, const std::string& b) {
    spec.merges.push_back(bl(a) + " " + bl(b));
    return add(a + b);
  }
  Ids ids(const Strs& raws) const {
    Ids out;
    for (const auto& r : raws) out.push_back(id.at(r));
    return out;
  }
};

TEST(TokenizerBpe, ByteToUnicodeTable) {
  const auto& cp = tok::gpt2_byte_to_codepoint();
  EXPECT_EQ(cp['A'], static_cast<uint32_t>('A'));
  EXPECT_EQ(cp['~'], static_cast<uint32_t>('~'));
  EXPECT_EQ(cp[0xA1], 0xA1u);
  EXPECT_EQ(cp[0], 0x100u);
  EXPECT_EQ(cp[' '], 0x120u);   // Ġ
  EXPECT_EQ(cp['\n'], 0x10Au);  // Ċ
  EXPECT_EQ(cp[0x7F], 0x121u);
  EXPECT_EQ(cp[0xAD], 0x143u);  // the last one
  EXPECT_EQ(tok::gpt2_byte_to_utf8()[' '], "\xC4\xA0");
  std::map<uint32_t, int> seen;
  for (int b = 0; b < 256; ++b) ++seen[cp[b]];
  EXPECT_EQ(seen.size(), 256u);  // a bijection
}

TEST(TokenizerBpe, MergesFollowRankOrder) {
  BpeVocab v;
  v.merge("h", "e");    // rank 0
  v.merge("t", "h");    // rank 1
  v.merge("t", "he");   // rank 2
  v.merge(" ", "t");    // rank 3
  v.merge(" t", "he");  // rank 4
  auto tok = Tokenizer::create(v.spec);
  // "he" (rank 0) goes before "th" (rank 1): t|he -> the.
  EXPECT_EQ(tok->encode("the"), v.ids({"the"}));
  // In " the", "t he" (rank 2) beats " t" (rank 3), so " t"+"he" never happens.
  EXPECT_EQ(tok->encode(" the"), v.ids({" ", "the"}));
  // Swap: make " t" outrank "t he".
  std::swap(v.spec.merges[2], v.spec.merges[3]);
  tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode(" the"), v.ids({" the"}));
  EXPECT_EQ(tok->encode("the the"), v.ids({"the", " the"}));
}

TEST(TokenizerBpe, TiesGoToTheLeftmostPair) {
  BpeVocab v;
  v.merge("a", "a");
  auto tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode("aaa"), v.ids({"aa", "a"}));
  EXPECT_EQ(tok->encode("aaaaa"), v.ids({"aa", "aa", "a"}));
}

TEST(TokenizerBpe, MergesWhoseTokensAreMissingAreIgnored) {
  BpeVocab v;
  v.spec.merges.push_back(bl("x") + " " + bl("y"));  // "xy" is not a token
  v.merge("a", "b");
  auto tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode("xyab"), v.ids({"x", "y", "ab"}));
}

TEST(TokenizerBpe, BytesAndUnicode) {
  BpeVocab v;
  const std::string e_acute = "\xC3\xA9";
  v.merge("\xC3", "\xA9");
  v.merge(" ", e_acute);
  auto tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode(e_acute), v.ids({e_acute}));
  EXPECT_EQ(tok->encode("caf" + e_acute + " " + e_acute),
            v.ids({"c", "a", "f", e_acute, " " + e_acute}));
  // Emoji without merges: four byte tokens.
  EXPECT_EQ(tok->encode("\xF0\x9F\x98\x80"), v.ids({"\xF0", "\x9F", "\x98", "\x80"}));
  EXPECT_EQ(tok->token_to_piece(v.id.at(" " + e_acute)), " " + e_acute);
  EXPECT_EQ(tok->token_to_piece(v.id.at("\n")), "\n");
  for (const std::string& s :
       Strs{"caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC\n", "\xF0\x9F\x98\x80!", "  two  spaces  ",
            "\r\n\t", "\xFF\xFE invalid \xC3", std::string("nul\0byte", 8), "12345 x's"}) {
    EXPECT_EQ(tok->decode(tok->encode(s)), s) << "text: " << s;
  }
}

TEST(TokenizerBpe, BytesWithoutATokenBecomeUnknown) {
  // As in SmolLM2's vocabulary: no token for the byte 0x1D, the unknown token is a control token.
  BpeVocab v;
  const int32_t unk = v.id.at("\x1D");
  v.spec.tokens[unk] = "<|endoftext|>";
  v.spec.types[unk] = 3;
  v.spec.unk = unk;
  const std::string text = "a\035b";  // 0x1D between a and b
  auto tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode(text), (Ids{v.id.at("a"), unk, v.id.at("b")}));
  EXPECT_EQ(tok->decode(tok->encode(text)), "ab");
  // Without an unknown token the byte is left out.
  v.spec.unk = -1;
  tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode(text), v.ids({"a", "b"}));
}

TEST(TokenizerBpe, SpecialTokensOnlyWhenParsed) {
  BpeVocab v;
  v.merge("h", "i");
  const int32_t eot = v.add("<|endoftext|>", 3);
  const int32_t start = v.add("<|im_start|>", 3);
  const int32_t start_long = v.add("<|im_start|>x", 3);  // longest match wins
  const int32_t user = v.add("<tool>", 4);
  auto tok = Tokenizer::create(v.spec);
  EXPECT_EQ(tok->encode("<|im_start|>hi<|endoftext|>", true), (Ids{start, v.id.at("hi"), eot}));
  EXPECT_EQ(tok->encode("<|im_start|>xhi", true), (Ids{start_long, v.id.at("hi")}));
  EXPECT_EQ(tok->encode("hi<tool>", true), (Ids{v.id.at("hi"), user}));
  // Not parsed: plain text, split by the GPT-2 regex into "<|", "im", "_", ...
  const Ids plain = tok->encode("<|endoftext|>", false);
  EXPECT_EQ(plain.size(), 13u);
  EXPECT_EQ(tok->decode(plain), "<|endoftext|>");
  // Control tokens decode to nothing, user-defined ones to their text.
  EXPECT_EQ(tok->decode(Ids{start, v.id.at("hi"), eot}), "hi");
  EXPECT_EQ(tok->decode(Ids{user}), "<tool>");
  EXPECT_EQ(tok->token_to_piece(eot), "");
}

TEST(TokenizerBpe, ErrorsAreErrors) {
  BpeVocab v;
  auto tok = Tokenizer::create(v.spec);
  EXPECT_THROW(tok->decode(Ids{256}), Error);
  EXPECT_THROW(tok->decode(Ids{-5}), Error);
  EXPECT_THROW(tok->token_to_piece(1 << 30), Error);
  EXPECT_TRUE(tok->encode("").empty());
}

// Plain BPE on one pre-token: repeatedly merge the lowest-ranked adjacent pair (leftmost on ties).
Ids brute_force_word(const BpeVocab& v, const std::string& word) {
  std::map<std::string, int> rank;
  for (size_t i = 0; i < v.spec.merges.size(); ++i) rank[v.spec.merges[i]] = static_cast<int>(i);
  std::vector<std::string> sym;
  for (char c : word) sym.push_back(bl(std::string(1, c)));
  while (true) {
    int best = 1 << 30, bi = -1;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      const auto it = rank.find(sym[i] + " " + sym[i + 1]);
      if (it != rank.end() && it->second < best) {
        best = it->second;
        bi = static_cast<int>(i);
      }
    }
    if (bi < 0) break;
    sym[bi] += sym[bi + 1];
    sym.erase(sym.begin() + bi + 1);
  }
  Ids out;
  for (const auto& s : sym) {
    for (size_t i = 0; i < v.spec.tokens.size(); ++i) {
      if (v.spec.tokens[i] == s) out.push_back(static_cast<int32_t>(i));
    }
  }
  return out;
}

TEST(TokenizerBpe, MatchesBruteForceOnRandomWords) {
  std::mt19937 rng(99);
  BpeVocab v;
  std::vector<std::string> pieces = {"a", "b", "c", "d"};
  std::map<std::string, bool> seen = {{"a", true}, {"b", true}, {"c", true}, {"d", true}};
  for (int i = 0; i < 500 && v.spec.merges.size() < 60; ++i) {
    std::uniform_int_distribution<size_t> pick(0, pieces.size() - 1);
    const std::string a = pieces[pick(rng)], b = pieces[pick(rng)];
    if (a.size() + b.size() > 8 || seen[a + b]) continue;
    seen[a + b] = true;
    pieces.push_back(a + b);
    v.merge(a, b);
  }
  auto tok = Tokenizer::create(v.spec);
  std::uniform_int_distribution<int> len(1, 30), ch(0, 3);
  size_t merged = 0;
  for (int trial = 0; trial < 500; ++trial) {
    std::string word;
    const int n = len(rng);
    for (int k = 0; k < n; ++k) word += static_cast<char>('a' + ch(rng));
    const Ids ids = tok->encode(word);
    ASSERT_EQ(ids, brute_force_word(v, word)) << "word: " << word;
    ASSERT_EQ(tok->decode(ids), word);
    merged += static_cast<size_t>(n) - ids.size();
  }
  EXPECT_GT(merged, 1000u);
}

Strs split(const std::string& pre, const std::string& text) {
  tok::PreTokenizer p(pre);
  Strs out;
  for (auto piece : p.split(text)) out.emplace_back(piece);
  return out;
}

// Expected splits below agree with HF tokenizers' pre-tokenizers (ByteLevel with its GPT-2 regex;
// Digits(individual_digits) then ByteLevel for smollm; Split(llama3/qwen2 regex, isolated)),
// which were run once on these and 3000 random strings for comparison.
TEST(TokenizerPreTokenizer, Gpt2Regex) {
  EXPECT_EQ(split("gpt2", "Hello world's 12345  x\n"),
            (Strs{"Hello", " world", "'s", " 12345", " ", " x", "\n"}));
  EXPECT_EQ(split("default", "I'll do it!!  \n\nOK?"),
            (Strs{"I", "'ll", " do", " it", "!!", "  \n", "\n", "OK", "?"}));
  EXPECT_EQ(split("gpt-2", "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC"),
            (Strs{"caf\xC3\xA9", " \xE6\x97\xA5\xE6\x9C\xAC"}));
  EXPECT_EQ(split("gpt2", ""), Strs{});
  // Malformed UTF-8 is kept, byte for byte.
  const Strs bad = split("gpt2", "ab\xFF\xFE cd");
  std::string joined;
  for (const auto& s : bad) joined += s;
  EXPECT_EQ(joined, "ab\xFF\xFE cd");
}

TEST(TokenizerPreTokenizer, SmolLmSplitsEveryDigit) {
  EXPECT_EQ(split("smollm", "abc123 def 45"), (Strs{"abc", "1", "2", "3", " def", " ", "4", "5"}));
  EXPECT_EQ(split("smollm", "I'm  here\n"), (Strs{"I", "'m", " ", " here", "\n"}));
  tok::PreTokenizer p("smollm");
  EXPECT_EQ(p.rules(), "smollm");
}

TEST(TokenizerPreTokenizer, Llama3AndQwen2) {
  EXPECT_EQ(split("llama3", "12345 HELLO'S\n\n  world"),
            (Strs{"123", "45", " HELLO", "'S", "\n\n", " ", " world"}));
  EXPECT_EQ(split("llama-bpe", "(x) ...\r\n"), (Strs{"(x", ")", " ...\r\n"}));
  EXPECT_EQ(split("llama3", "it!!  \n\nOK"), (Strs{"it", "!!", "  \n\n", "OK"}));
  EXPECT_EQ(split("qwen2", "12345 HELLO'S"), (Strs{"1", "2", "3", "4", "5", " HELLO", "'S"}));
  EXPECT_TRUE(tok::PreTokenizer("llama3").ignore_merges());
  EXPECT_FALSE(tok::PreTokenizer("qwen2").ignore_merges());
}

TEST(TokenizerPreTokenizer, UnknownNameWarnsAndFallsBack) {
  testing::internal::CaptureStderr();
  tok::PreTokenizer p("no-such-pre");
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("no-such-pre"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1);
  EXPECT_EQ(p.rules(), "gpt2");
  Strs out;
  for (auto piece : p.split("Hello world")) out.emplace_back(piece);
  EXPECT_EQ(out, (Strs{"Hello", " world"}));
}

// The one ChatML layout of generate, passkey and ruler: the system prompt defaults to the one the
// chat template writes (its Jinja text spells the newline as \n).
TEST(TokenizerChat, ChatMlPrompt) {
  const ChatPrompt plain = chat_prompt();
  EXPECT_EQ(plain.open, "<|im_start|>user\n");
  EXPECT_EQ(plain.close, "<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(chat_prompt("Be brief.").wrap("Hi"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  const std::string tmpl =
      "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful."
      "<|im_end|>\\n' }}{% endif %}";
  EXPECT_EQ(chat_prompt("", tmpl).open,
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n");
  EXPECT_EQ(chat_prompt("Own.", tmpl).open,
            "<|im_start|>system\nOwn.<|im_end|>\n<|im_start|>user\n");
}

}  // namespace
}  // namespace longrope
