// libFuzzer target, built twice, for the two parsers behind HF model folders:
//  - safetensors_fuzz (LONGROPE_FUZZ_TOKENIZER_JSON=0): arbitrary bytes as a safetensors file.
//    SafetensorsFile::parse may throw only longrope::Error; a parsed file's tensors lie inside the
//    input, do not overlap, and hold exactly shape x dtype bytes (all read here, so ASan sees any
//    stray pointer).
//  - hf_tokenizer_fuzz (LONGROPE_FUZZ_TOKENIZER_JSON=1): arbitrary bytes as tokenizer.json text.
//    json::parse may throw its documented exceptions; vocab_from_hf_tokenizer and
//    Tokenizer::create may throw only longrope::Error. A tokenizer that loads encodes a few texts
//    to ids in [0, n_vocab) and decodes them; written back with hf_tokenizer_json and read
//    again, it has the same kind, tokens, types and special ids, and (byte-level BPE, whose
//    merges travel as they are) encodes the texts to the same ids.
// A violated property aborts, so libFuzzer reports the input.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/hf_tokenizer.h"
#include "longrope/safetensors.h"
#include "longrope/tokenizer.h"

using namespace longrope;
using nlohmann::json;

namespace {

volatile uint64_t g_sink;

[[noreturn]] void violated(const char* what) {
  std::fprintf(stderr, "property violated: %s\n", what);
  std::abort();
}

#if !LONGROPE_FUZZ_TOKENIZER_JSON
void fuzz_safetensors(const uint8_t* data, size_t size) {
  std::shared_ptr<const SafetensorsFile> f;
  try {
    f = SafetensorsFile::parse(data, size, "fuzz.safetensors");
  } catch (const Error&) {
    return;
  }
  for (const SafetensorsTensor& t : f->tensors()) {
    if (t.data < data || t.data + t.nbytes > data + size) violated("tensor outside the input");
    if (static_cast<uint64_t>(t.nelements()) * ggml_type_size(t.type) != t.nbytes)
      violated("tensor size differs from shape x dtype");
    uint64_t h = 0;
    for (size_t i = 0; i < t.nbytes; ++i) h = h * 31 + t.data[i];
    g_sink = h;
  }
}
#else
const std::vector<std::string>& texts() {
  static const std::vector<std::string> t = {"Hello world, 12345 times!",
                                             "  two  spaces\n\nand lines",
                                             "caf\xC3\xA9 \xE2\x96\x81 x", "<|im_start|>user"};
  return t;
}

void check_ids(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  for (int32_t id : ids)
    if (id < 0 || id >= tok.n_vocab()) violated("id out of range");
  g_sink = tok.decode(ids).size();
}

void fuzz_tokenizer_json(const uint8_t* data, size_t size) {
  json j;
  try {
    j = json::parse(data, data + size);
  } catch (const json::exception&) {
    return;
  }
  VocabSpec spec;
  std::unique_ptr<Tokenizer> tok;
  try {
    spec = vocab_from_hf_tokenizer(j, nullptr, nullptr, 0, "fuzz.json");
    if (spec.tokens.size() > 100000) return;  // big vocabularies: slow, nothing new
    tok = Tokenizer::create(spec);
  } catch (const Error&) {
    return;
  }
  std::vector<std::optional<std::vector<int32_t> > > enc;  // plain encodings of texts()
  for (const std::string& s : texts()) {
    enc.emplace_back();
    for (bool special : {false, true}) {
      std::vector<int32_t> ids;
      try {
        ids = tok->encode(s, special);
      } catch (const Error&) {
        continue;  // e.g. no byte token for a character and no unknown token
      }
      check_ids(*tok, ids);
      if (!special) enc.back() = ids;
    }
  }
  // Round trip through the writer (only for vocabularies whose texts are unique: a JSON object
  // keeps one id per text).
  std::set<std::string> seen(spec.tokens.begin(), spec.tokens.end());
  if (seen.size() != spec.tokens.size()) return;
  json back;
  try {
    back = json::parse(hf_tokenizer_json(spec).dump());
  } catch (const json::exception&) {
    violated("hf_tokenizer_json wrote something json cannot read");
  }
  VocabSpec again;
  try {
    again = vocab_from_hf_tokenizer(back, nullptr, nullptr,
                                    static_cast<int64_t>(spec.tokens.size()), "written.json");
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    violated("a written tokenizer.json does not read back");
  }
  if (again.kind != spec.kind) violated("kind changed");
  if (again.tokens.size() != spec.tokens.size()) violated("vocabulary size changed");
  for (size_t i = 0; i < spec.tokens.size(); ++i) {
    if (spec.types[i] == 5) continue;  // unused ids are not written
    if (again.tokens[i] != spec.tokens[i] || again.types[i] != spec.types[i])
      violated("a token or its type changed");
  }
  if (again.bos != spec.bos || again.unk != spec.unk || again.add_bos != spec.add_bos)
    violated("special ids changed");
  if (spec.kind != VocabSpec::Kind::kGpt2) return;
  const auto tok2 = Tokenizer::create(again);
  for (size_t k = 0; k < texts().size(); ++k) {
    std::optional<std::vector<int32_t> > ids;
    try {
      ids = tok2->encode(texts()[k], false);
    } catch (const Error&) {
    }
    if (ids != enc[k]) violated("the written tokenizer encodes differently");
  }
}
#endif

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
#if LONGROPE_FUZZ_TOKENIZER_JSON
  fuzz_tokenizer_json(data, size);
#else
  fuzz_safetensors(data, size);
#endif
  return 0;
}
