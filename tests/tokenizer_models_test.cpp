// Tokenizers of the real models: stories260K (SentencePiece BPE, GGUF and llama2.c tok512.bin)
// and SmolLM2-135M-Instruct (GPT-2 byte-level BPE, "smollm" pre-tokenizer). Exact ids against
// independent references, agreement of the two stories260K vocab files, round trips of whole
// novels, and the tokenization speed (printed).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/model_file.h"
#include "longrope/tokenizer.h"
#include "test_paths.h"

namespace longrope {
namespace {

using Ids = std::vector<int32_t>;

std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The first n UTF-8 characters of s.
std::string first_chars(const std::string& s, size_t n) {
  size_t pos = 0;
  for (size_t k = 0; k < n && pos < s.size(); ++k) {
    ++pos;
    while (pos < s.size() && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) ++pos;
  }
  return s.substr(0, pos);
}

const char* const kNovels[] = {"moby-dick.txt", "pride_and_prejudice.txt", "ulysses.txt"};

struct Case {
  std::string text;
  bool parse_special;
  Ids ids;
};

// Encodes each novel whole, checks decode(encode(x)) == x and prints the speed.
void round_trip_novels(const Tokenizer& tok, const char* name) {
  for (const char* novel : kNovels) {
    const auto path = test::shared_dir() / "data" / novel;
    const std::string text = read_file(path);
    ASSERT_FALSE(text.empty()) << path;
    const auto t0 = std::chrono::steady_clock::now();
    const Ids ids = tok.encode(text);
    const auto t1 = std::chrono::steady_clock::now();
    const std::string back = tok.decode(ids);
    const auto t2 = std::chrono::steady_clock::now();
    const double enc = std::chrono::duration<double>(t1 - t0).count();
    const double dec = std::chrono::duration<double>(t2 - t1).count();
    std::printf(
        "[ speed    ] %s %s: %zu bytes -> %zu tokens, encode %.3f s (%.0f tokens/s, %.2f MB/s), "
        "decode %.3f s\n",
        name, novel, text.size(), ids.size(), enc, ids.size() / enc, text.size() / enc / 1e6, dec);
    EXPECT_EQ(back.size(), text.size()) << novel;
    EXPECT_TRUE(back == text) << novel << ": decode(encode(x)) differs from x";
    EXPECT_GT(ids.size(), text.size() / 8) << novel;
  }
}

class TokenizerStories260K : public testing::Test {
 protected:
  void SetUp() override {
    gguf_ = test::shared_dir() / "models" / "stories260K.gguf";
    bin_ = test::shared_dir() / "models" / "stories260K.bin";
    tok512_ = test::shared_dir() / "models" / "tok512.bin";
  }
  std::filesystem::path gguf_, bin_, tok512_;
};

// Expected ids produced once with the reference SentencePiece-BPE tokenizer of
// shared/tools/ref_llama.py (checked against llama.cpp by its author):
//   kv, _ = ref_llama.load_gguf("stories260K.gguf"); ref_llama.SPM(kv).encode(text)
TEST_F(TokenizerStories260K, ExactIdsMatchReference) {
  LONGROPE_REQUIRE_FILE(gguf_);
  const ModelFile mf = load_model_file(gguf_.string());
  const auto tok = Tokenizer::create(mf.vocab);
  const std::vector<Case> cases = {
      {"Once upon a time, there was a little girl named Lily.",
       false,
       {403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426}},
      {"She said: \"Hello!\"\nThe end.\n\nNew paragraph.",
       false,
       {338, 336, 467, 313, 440, 411, 306, 414, 443, 436, 13,  434, 260, 344, 264,
        426, 13,  13,  458, 411, 424, 282, 295, 412, 428, 420, 412, 427, 415, 426}},
      // "Café naïve — 日本語 😀 über"
      {"Caf\xC3\xA9 na\xC3\xAFve \xE2\x80\x94 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E "
       "\xF0\x9F\x98\x80 \xC3\xBC"
       "ber",
       false,
       {410, 457, 412, 431, 485, 297, 412, 198, 178, 360, 410, 481, 410, 233, 154, 168,
        233, 159, 175, 235, 173, 161, 410, 243, 162, 155, 131, 410, 198, 191, 430, 285}},
      {" leading space and  double  spaces", false, {410, 278, 411, 380, 299, 262, 427,
                                                     412, 331, 269, 410, 279, 277, 430,
                                                     305, 410, 262, 427, 412, 331, 419}},
      {"\r\nWindows line\r\n",
       false,
       {410, 16, 13, 448, 417, 264, 327, 419, 278, 271, 411, 16, 13}},
  };
  for (const Case& c : cases) {
    const Ids ids = tok->encode(c.text, c.parse_special);
    EXPECT_EQ(ids, c.ids) << "text: " << c.text;
    EXPECT_EQ(tok->decode(ids), c.text);
  }
  EXPECT_EQ(tok->n_vocab(), 512);
  EXPECT_EQ(tok->bos(), 1);
  EXPECT_EQ(tok->eos(), 2);
  // <s> and </s> in the text are control tokens only when asked for.
  EXPECT_EQ(tok->encode("<s>Once</s>", true).front(), 1);
  EXPECT_EQ(tok->encode("<s>Once</s>", true).back(), 2);
  EXPECT_NE(tok->encode("<s>Once</s>", false).front(), 1);
  EXPECT_THROW(tok->decode(Ids{1, 512}), Error);
  EXPECT_THROW(tok->token_to_piece(-1), Error);
}

TEST_F(TokenizerStories260K, GgufAndLlama2cVocabsAgree) {
  LONGROPE_REQUIRE_FILE(gguf_);
  LONGROPE_REQUIRE_FILE(bin_);
  LONGROPE_REQUIRE_FILE(tok512_);
  const auto a = Tokenizer::create(load_model_file(gguf_.string()).vocab);
  const auto b = Tokenizer::create(load_model_file(bin_.string(), tok512_.string()).vocab);
  ASSERT_EQ(a->n_vocab(), b->n_vocab());
  for (int32_t id = 0; id < a->n_vocab(); ++id) {
    ASSERT_EQ(a->token_to_piece(id), b->token_to_piece(id)) << "token " << id;
  }
  for (const char* novel : kNovels) {
    const auto path = test::shared_dir() / "data" / novel;
    LONGROPE_REQUIRE_FILE(path);
    const std::string text = first_chars(read_file(path), 20000);
    const Ids ia = a->encode(text), ib = b->encode(text);
    EXPECT_GT(ia.size(), 5000u) << novel;
    EXPECT_EQ(ia, ib) << novel;
    EXPECT_EQ(b->decode(ib), text) << novel;
  }
}

TEST_F(TokenizerStories260K, NovelsRoundTrip) {
  LONGROPE_REQUIRE_FILE(gguf_);
  for (const char* novel : kNovels) LONGROPE_REQUIRE_FILE(test::shared_dir() / "data" / novel);
  const auto tok = Tokenizer::create(load_model_file(gguf_.string()).vocab);
  round_trip_novels(*tok, "stories260K");
}

// Expected ids produced once with HF `tokenizers` (0.23, PyPI), independently of this code: a
// models.BPE built from this GGUF's tokenizer.ggml.tokens and tokenizer.ggml.merges (read with the
// `gguf` package), pre-tokenizer Sequence[Digits(individual_digits=True),
// ByteLevel(add_prefix_space=False)] as in SmolLM2's tokenizer.json, the type-3 tokens added as
// special AddedTokens for the parse_special case; ids = tk.encode(text, add_special_tokens=False).
// The same construction gives ids identical to ours for each whole novel in shared/data.
TEST(TokenizerSmolLM2, ExactIdsMatchHfTokenizers) {
  const auto path = test::smollm_path();
  LONGROPE_REQUIRE_FILE(path);
  const ModelFile mf = load_model_file(path.string());
  ASSERT_EQ(mf.vocab.kind, VocabSpec::Kind::kGpt2);
  EXPECT_EQ(mf.vocab.pre, "smollm");
  const auto tok = Tokenizer::create(mf.vocab);
  const std::string chat = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
  const std::vector<Case> cases = {
      {"Hello, world! This is a test.", false, {19556, 28, 905, 17, 669, 314, 253, 1028, 30}},
      {"12345 and 3.14159", false, {33, 34, 35, 36, 37, 284, 216, 35, 30, 33, 36, 33, 37, 41}},
      {"I'm sure you'll see they've done it, haven't they? We'd",
       false,
       {57, 5248, 2090, 346, 3060, 963, 502, 3543, 2294, 357, 28, 8540, 982, 502, 47, 1046, 6737}},
      {"multiple   spaces    here  ", false, {30404, 256, 5600, 333, 1535, 256}},
      {"line one\nline two\n\n\tindented\r\n",
       false,
       {1311, 582, 198, 1311, 827, 1116, 197, 526, 6574, 2738}},
      // "Café naïve — 日本語 😀"
      {"Caf\xC3\xA9 na\xC3\xAFve \xE2\x80\x94 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E "
       "\xF0\x9F\x98\x80",
       false,
       {51, 1939, 2756, 15486, 46494, 1841, 17097, 241, 115, 40993, 179, 120, 248, 40303, 218}},
      {chat, true, {1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198}},
      {chat, false, {44,  108, 306, 79,  3738,  108,  46,  4093, 198, 1780, 314,
                     216, 34,  27,  34,  15137, 108,  306, 79,   486, 108,  46,
                     198, 44,  108, 306, 79,    3738, 108, 46,   520, 9531, 198}},
  };
  for (const Case& c : cases) {
    const Ids ids = tok->encode(c.text, c.parse_special);
    EXPECT_EQ(ids, c.ids) << "text: " << c.text << " (parse_special " << c.parse_special << ")";
    if (!c.parse_special) {
      EXPECT_EQ(tok->decode(ids), c.text);
    }
  }
  // Control tokens decode to nothing.
  EXPECT_EQ(tok->decode(tok->encode(chat, true)), "user\nWhat is 2+2?\nassistant\n");
  EXPECT_EQ(tok->token_to_piece(1), "");
  EXPECT_EQ(tok->token_to_piece(19556), "Hello");
  EXPECT_EQ(tok->token_to_piece(905), " world");
  EXPECT_EQ(tok->n_vocab(), 49152);
  EXPECT_THROW(tok->decode(Ids{19556, 49152}), Error);
  EXPECT_THROW(tok->decode(Ids{-1}), Error);
}

TEST(TokenizerSmolLM2, NovelsRoundTrip) {
  const auto path = test::smollm_path();
  LONGROPE_REQUIRE_FILE(path);
  for (const char* novel : kNovels) LONGROPE_REQUIRE_FILE(test::shared_dir() / "data" / novel);
  const auto tok = Tokenizer::create(load_model_file(path.string()).vocab);
  round_trip_novels(*tok, "SmolLM2");
}

}  // namespace
}  // namespace longrope
