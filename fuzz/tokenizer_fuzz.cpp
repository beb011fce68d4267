// libFuzzer target, built twice: bpe_tokenizer_fuzz (LONGROPE_FUZZ_BPE=1, the byte-level BPE
// vocabulary of SmolLM2-135M-Instruct) and spm_tokenizer_fuzz (LONGROPE_FUZZ_BPE=0, the
// SentencePiece vocabulary of stories260K). The tokenizer is built once, from the model file read
// by the project's own loader; $LONGROPE_FUZZ_MODEL names another model file of the same kind.
//
// Each input is
//  - text, encoded with parse_special false and true: every id lies in [0, n_vocab), decoding
//    works, and decode(encode(x)) == x when x is valid UTF-8, with the exceptions tokenizer.h
//    states (bytes the vocabulary cannot spell, U+2581 for SentencePiece); with parse_special,
//    the special tokens found in x come back as their pieces, "" for control tokens (BPE);
//  - a sequence of little-endian int32 token ids: reduced modulo n_vocab they decode without
//    error, and as they are, an id out of range throws Error.
// A violated property aborts, so libFuzzer reports the input.
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "longrope/error.h"
#include "longrope/model_file.h"
#include "longrope/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"

using namespace longrope;
namespace fs = std::filesystem;

namespace {

volatile uint64_t g_sink;

fs::path default_model() {
#if LONGROPE_FUZZ_BPE
  const char* dir = std::getenv("LONGROPE_MODELS_DIR");
  return (dir ? fs::path(dir) : fs::path(LONGROPE_SOURCE_DIR) / "models") /
         "SmolLM2-135M-Instruct.Q4_1.gguf";
#else
  const char* dir = std::getenv("LONGROPE_SHARED_DIR");
  return (dir ? fs::path(dir) : fs::path(LONGROPE_SOURCE_DIR) / ".." / "shared") / "models" /
         "stories260K.gguf";
#endif
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "tokenizer_fuzz: %s\n", what.c_str());
  std::exit(1);
}

const Tokenizer& tokenizer() {
  static const std::unique_ptr<Tokenizer> tok = [] {
    const char* env = std::getenv("LONGROPE_FUZZ_MODEL");
    const std::string path = env ? env : default_model().string();
    try {
      ModelFile m = load_model_file(path);
      constexpr auto kWant = LONGROPE_FUZZ_BPE ? VocabSpec::Kind::kGpt2 : VocabSpec::Kind::kSpm;
      if (m.vocab.kind != kWant) {
        die(path + ": not a " + (LONGROPE_FUZZ_BPE ? "gpt2" : "SentencePiece") + " vocabulary");
      }
      return Tokenizer::create(m.vocab);
    } catch (const Error& e) {
      die(std::string(e.what()) +
          " (set LONGROPE_FUZZ_MODEL, or run scripts/setup.sh for the default model)");
    }
  }();
  return *tok;
}

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (i + n > s.size()) return false;
    const auto c1 = static_cast<unsigned char>(s[i + 1]);
    if (c1 < lo || c1 > hi) return false;
    for (size_t k = 2; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

// Bytes the vocabulary can spell on their own: a GPT-2 byte token (BPE), a byte-fallback token
// <0xXX> (SentencePiece).
const std::array<bool, 256>& spellable_bytes() {
  static const std::array<bool, 256> table = [] {
    const VocabSpec& spec = tokenizer().spec();
    std::array<bool, 256> t{};
    if (LONGROPE_FUZZ_BPE) {
      const tok::TokenMap map = tok::build_token_map(spec.tokens);
      for (int b = 0; b < 256; ++b) t[b] = map.count(tok::gpt2_byte_to_utf8()[b]) > 0;
    } else {
      for (size_t id = 0; id < spec.tokens.size(); ++id) {
        const std::string& s = spec.tokens[id];
        if (tok::token_type(spec, static_cast<int32_t>(id)) != tok::kTypeByte || s.size() != 6 ||
            s.compare(0, 3, "<0x") != 0 || s[5] != '>') {
          continue;
        }
        t[std::stoi(s.substr(3, 2), nullptr, 16) & 0xFF] = true;
      }
    }
    return t;
  }();
  return table;
}

// What decode(encode(text)) must give (tokenizer.h): the text itself, except that
//  - BPE: a byte the vocabulary cannot spell comes back as the unknown token's piece;
//  - SentencePiece: each U+2581 (the escaped space) comes back as a space; when a byte has no
//    byte-fallback token the result depends on the vocabulary (nullopt: not checked).
std::optional<std::string> expected_round_trip(const Tokenizer& tok, std::string_view text) {
  const auto& spellable = spellable_bytes();
  std::string out;
  out.reserve(text.size());
  if (LONGROPE_FUZZ_BPE) {
    const std::string unk = tok.spec().unk >= 0 ? tok.token_to_piece(tok.spec().unk) : "";
    for (char c : text) {
      if (spellable[static_cast<unsigned char>(c)]) {
        out += c;
      } else {
        out += unk;
      }
    }
    return out;
  }
  constexpr std::string_view kEscapedSpace = "\xE2\x96\x81";
  for (size_t i = 0; i < text.size();) {
    if (!spellable[static_cast<unsigned char>(text[i])]) return std::nullopt;
    if (text.substr(i, kEscapedSpace.size()) == kEscapedSpace) {
      out += ' ';
      i += kEscapedSpace.size();
    } else {
      out += text[i++];
    }
  }
  return out;
}

void check_ids(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.n_vocab()) __builtin_trap();
  }
}

// What decode(encode(text, true)) must give for a byte-level BPE vocabulary: the text with each
// special token found in it replaced by its piece ("" for control tokens).
std::string expected_with_specials(const Tokenizer& tok, std::string_view text) {
  static const tok::SpecialSplitter splitter(tok.spec());
  std::string out;
  for (const tok::Fragment& f : splitter.fragments(text, true)) {
    out += f.special >= 0 ? tok.token_to_piece(f.special) : *expected_round_trip(tok, f.text);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Tokenizer& tok = tokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const bool utf8 = valid_utf8(text);

  const std::vector<int32_t> ids = tok.encode(text, false);
  check_ids(tok, ids);
  const std::string back = tok.decode(ids);
  if (utf8) {
    const std::optional<std::string> want = expected_round_trip(tok, text);
    if (want && back != *want) __builtin_trap();  // decode(encode(x)) != x
  }

  const std::vector<int32_t> ids_special = tok.encode(text, true);
  check_ids(tok, ids_special);
  const std::string back_special = tok.decode(ids_special);
  if (LONGROPE_FUZZ_BPE && utf8 && back_special != expected_with_specials(tok, text)) {
    __builtin_trap();
  }

  // The bytes as token ids.
  std::vector<int32_t> raw(size / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data, raw.size() * 4);
  std::vector<int32_t> in_range(raw.size());
  const auto n = static_cast<uint32_t>(tok.n_vocab());
  bool all_in_range = true;
  for (size_t k = 0; k < raw.size(); ++k) {
    in_range[k] = static_cast<int32_t>(static_cast<uint32_t>(raw[k]) % n);
    all_in_range = all_in_range && raw[k] >= 0 && raw[k] < tok.n_vocab();
  }
  g_sink = g_sink + tok.decode(in_range).size();
  try {
    g_sink = g_sink + tok.decode(raw).size();
    if (!all_in_range) __builtin_trap();  // an id out of range was accepted
  } catch (const Error&) {
    if (all_in_range) __builtin_trap();  // valid ids rejected
  }
  return 0;
}
