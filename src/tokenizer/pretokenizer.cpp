// Regex pre-tokenization for byte-level BPE, on PCRE2 (UTF + UCP, JIT when available).
// The rule sets follow llama.cpp's list for each tokenizer.ggml.pre name.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstdio>

#include "longrope/error.h"
#include "tokenizer/tokenizer_internal.h"

namespace longrope::tok {
namespace {

// GPT-2's pattern. llama.cpp leaves out the final "|\s+"; it makes no difference here because
// the text between matches is kept as a piece too.
constexpr const char* kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Llama 3: case-insensitive contractions, letters with one leading non-letter, 1-3 digits.
constexpr const char* kLlama3 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen2: as Llama 3 but single digits.
constexpr const char* kQwen2 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// SmolLM / StarCoder: every digit on its own first, then GPT-2's pattern.
constexpr const char* kDigit = R"(\p{N})";

PreTokenizerRules rules_for(const std::string& name) {
  if (name.empty() || name == "default" || name == "gpt2" || name == "gpt-2") {
    return {"gpt2", {kGpt2}, false};
  }
  if (name == "smollm" || name == "starcoder" || name == "refact" || name == "command-r" ||
      name == "codeshell" || name == "exaone" || name == "minerva-7b") {
    return {"smollm", {kDigit, kGpt2}, false};
  }
  if (name == "llama3" || name == "llama-bpe" || name == "llama-v3" || name == "dbrx" ||
      name == "smaug-bpe") {
    return {"llama3", {kLlama3}, true};
  }
  if (name == "qwen2" || name == "stablelm2") return {"qwen2", {kQwen2}, false};
  std::fprintf(stderr,
               "longrope: warning: unknown pre-tokenizer '%s', using the GPT-2 regex instead\n",
               name.c_str());
  return {"gpt2", {kGpt2}, false};
}

struct Piece {
  size_t start, len;
};

}  // namespace

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  bool jit = false;
  explicit Regex(const std::string& pattern) {
    int err = 0;
    PCRE2_SIZE err_off = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                         PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_off, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      throw Error(std::string("tokenizer: cannot compile pre-tokenizer regex at offset ") +
                  std::to_string(err_off) + ": " + reinterpret_cast<const char*>(msg));
    }
    jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() { pcre2_code_free(code); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends to out the matches of this regex inside piece p of text, and the gaps between them.
  void split(std::string_view text, Piece p, pcre2_match_data* md, std::vector<Piece>& out) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data() + p.start);
    size_t pos = 0;  // relative to p.start
    size_t gap = 0;  // start of the unmatched text before the next match
    while (pos < p.len) {
      int rc = pcre2_match(code, subject, p.len, pos, 0, md, nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        rc = pcre2_match(code, subject, p.len, pos, PCRE2_NO_JIT, md, nullptr);
      }
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof(msg));
        throw Error(std::string("tokenizer: pre-tokenizer regex failed: ") +
                    reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t mstart = ov[0], mend = ov[1];
      if (mend <= mstart) {  // empty match: step over one character, leaving it in the gap
        pos = mstart + utf8_char_len(text.substr(p.start, p.len), mstart);
        continue;
      }
      if (mstart > gap) out.push_back({p.start + gap, mstart - gap});
      out.push_back({p.start + mstart, mend - mstart});
      pos = gap = mend;
    }
    if (gap < p.len) out.push_back({p.start + gap, p.len - gap});
  }
};

PreTokenizerRules pretokenizer_rules(const VocabSpec& spec) {
  if (!spec.pre_regexes.empty())
    return {"custom", spec.pre_regexes, spec.ignore_merges.value_or(false)};
  PreTokenizerRules set = rules_for(spec.pre);
  if (spec.ignore_merges) set.ignore_merges = *spec.ignore_merges;
  return set;
}

PreTokenizer::PreTokenizer(const std::string& name) {
  init(rules_for(name));
}

PreTokenizer::PreTokenizer(const VocabSpec& spec) {
  init(pretokenizer_rules(spec));
}

void PreTokenizer::init(const PreTokenizerRules& set) {
  rules_ = set.rules;
  ignore_merges_ = set.ignore_merges;
  for (const std::string& pattern : set.regexes)
    regexes_.push_back(std::make_unique<Regex>(pattern));
}

const std::string& gpt2_pretokenizer_regex() {
  static const std::string r = kGpt2;
  return r;
}

const std::string& digit_pretokenizer_regex() {
  static const std::string r = kDigit;
  return r;
}

PreTokenizer::~PreTokenizer() = default;

std::vector<std::string_view> PreTokenizer::split(std::string_view text) const {
  std::vector<Piece> pieces;
  if (!text.empty()) pieces.push_back({0, text.size()});
  std::vector<Piece> next;
  for (const auto& re : regexes_) {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(re->code, nullptr);
    if (!md) throw Error("tokenizer: out of memory for regex match data");
    next.clear();
    next.reserve(pieces.size() * 2);
    try {
      for (const Piece& p : pieces) re->split(text, p, md, next);
    } catch (...) {
      pcre2_match_data_free(md);
      throw;
    }
    pcre2_match_data_free(md);
    pieces.swap(next);
  }
  std::vector<std::string_view> out;
  out.reserve(pieces.size());
  for (const Piece& p : pieces) out.push_back(text.substr(p.start, p.len));
  return out;
}

}  // namespace longrope::tok
