// HF tokenizer.json (+ tokenizer_config.json) <-> VocabSpec (include/longrope/hf_tokenizer.h).
#include "longrope/hf_tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "longrope/error.h"
#include "tokenizer/tokenizer_internal.h"
#include "util/json_fields.h"

namespace longrope {

using nlohmann::json;

namespace {

const std::string kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space

using json_fields::field_error;

// A token given as a string or as {"content": ...} (tokenizer_config.json's two spellings).
std::optional<std::string> token_text(const json& obj, const char* key) {
  if (!obj.is_object()) return std::nullopt;
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return std::nullopt;
}

// An id from config.json (an int, or a list whose first entry counts).
std::optional<int64_t> config_id(const json& config, const char* key) {
  if (!config.is_object()) return std::nullopt;
  const auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_array() && !it->empty() && (*it)[0].is_number_integer())
    return (*it)[0].get<int64_t>();
  return std::nullopt;
}

// Flattens a pre-tokenizer / normalizer into its steps (a Sequence's children, in order).
std::vector<json> steps(const json& j, const char* list_key) {
  std::vector<json> out;
  if (j.is_null()) return out;
  if (j.is_object() && j.value("type", "") == "Sequence" && j.contains(list_key) &&
      j[list_key].is_array()) {
    for (const json& c : j[list_key])
      for (json& s : steps(c, list_key)) out.push_back(std::move(s));
  } else {
    out.push_back(j);
  }
  return out;
}

// The byte-level pre-tokenizer as regexes applied in turn.
std::vector<std::string> byte_level_regexes(const json& pre, const std::string& source) {
  std::vector<std::string> out;
  bool byte_level = false;
  for (const json& s : steps(pre, "pretokenizers")) {
    const std::string type = s.is_object() ? s.value("type", "") : "";
    if (type == "ByteLevel") {
      if (s.value("add_prefix_space", false))
        field_error(source, "pre_tokenizer",
                    "ByteLevel with add_prefix_space is not supported "
                    "(expected add_prefix_space false)");
      if (s.value("use_regex", true)) out.push_back(tok::gpt2_pretokenizer_regex());
      byte_level = true;
    } else if (type == "Digits") {
      out.push_back(s.value("individual_digits", false) ? tok::digit_pretokenizer_regex()
                                                        : std::string(R"(\p{N}+)"));
    } else if (type == "Split") {
      const json& p = s.contains("pattern") ? s["pattern"] : json();
      if (!p.is_object() || !p.contains("Regex") || !p["Regex"].is_string())
        field_error(source, "pre_tokenizer", "a Split without a Regex pattern is not supported");
      if (s.value("behavior", "") != "Isolated" || s.value("invert", false))
        field_error(
            source, "pre_tokenizer",
            fmt::format("Split behavior {} (invert {}) is not supported (expected Isolated)",
                        s.value("behavior", "?"), s.value("invert", false)));
      out.push_back(p["Regex"].get<std::string>());
    } else {
      field_error(source, "pre_tokenizer",
                  fmt::format("{} is not supported (expected ByteLevel, Digits or Split)",
                              type.empty() ? s.dump().substr(0, 60) : type));
    }
  }
  if (!byte_level)
    field_error(source, "pre_tokenizer", "no ByteLevel step (expected a byte-level BPE tokenizer)");
  return out;
}

std::vector<std::string> read_merges(const json& model, const std::string& source) {
  std::vector<std::string> out;
  const auto it = model.find("merges");
  if (it == model.end()) return out;
  if (!it->is_array()) field_error(source, "model.merges", "expected an array");
  out.reserve(it->size());
  for (size_t k = 0; k < it->size(); ++k) {
    const json& m = (*it)[k];
    if (m.is_string()) {
      out.push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      out.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
    } else {
      field_error(source, fmt::format("model.merges[{}]", k), "expected \"a b\" or [\"a\", \"b\"]");
    }
  }
  return out;
}

// The tokenizer's model object: a BPE model with a vocab object.
json bpe_model(const json& tok, const std::string& source) {
  json model = tok.contains("model") ? tok["model"] : json();
  if (!model.is_object())
    field_error(source, "model", "missing (expected the tokenizer model object)");
  const std::string type = model.value("type", "BPE");
  if (type != "BPE")
    field_error(source, "model.type", fmt::format("{} is not supported (expected BPE)", type));
  const auto vit = model.find("vocab");
  if (vit == model.end() || !vit->is_object())
    field_error(source, "model.vocab", "missing (expected an object token -> id)");
  return model;
}

// The token texts by id, and which ids are added tokens (and whether special).
struct Ids {
  std::map<int64_t, std::string> by_id;
  std::map<int64_t, bool> added;  // id -> special
};

// Ids: the vocabulary, then the added tokens (which may also extend it).
Ids read_ids(const json& tok, const json& model, const std::string& source) {
  Ids ids;
  for (const auto& [text, id] : model.find("vocab")->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0)
      field_error(source, "model.vocab." + text, "expected a non-negative integer id");
    ids.by_id[id.get<int64_t>()] = text;
  }
  if (tok.contains("added_tokens") && tok["added_tokens"].is_array()) {
    for (const json& a : tok["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string())
        field_error(source, "added_tokens",
                    "expected objects with an integer id and a content string");
      const int64_t id = a["id"].get<int64_t>();
      if (id < 0) field_error(source, "added_tokens", fmt::format("id {} is negative", id));
      ids.by_id[id] = a["content"].get<std::string>();
      ids.added[id] = a.value("special", false);
    }
  }
  return ids;
}

// The vocabulary's size: the ids given, or the model's vocab_size (n_vocab, 0 for none) when it is
// larger. Refuses ids beyond vocab_size, gaps without one and a vocab_size far beyond the tokens.
int64_t vocab_rows(const std::map<int64_t, std::string>& by_id, int64_t n_vocab,
                   const std::string& source) {
  if (by_id.empty()) field_error(source, "model.vocab", "empty (expected at least one token)");
  const int64_t n_tok = by_id.rbegin()->first + 1;
  if (n_vocab > 0 && n_tok > n_vocab)
    field_error(
        source, "model.vocab",
        fmt::format("token id {} is beyond the model's vocab_size {} (expected ids below it)",
                    n_tok - 1, n_vocab));
  const auto given = static_cast<int64_t>(by_id.size());
  if (n_vocab <= 0 && n_tok != given)
    field_error(
        source, "model.vocab",
        fmt::format("ids run to {} but only {} tokens are given (expected ids 0..{} without gaps, "
                    "or the model's vocab_size)",
                    n_tok - 1, given, given - 1));
  // Padding ids (Qwen2 rounds its embedding up) are filled below; a vocab_size far beyond the
  // tokenizer is a broken file, not padding.
  if (n_vocab > 2 * given + 1024)
    field_error(
        source, "model.vocab",
        fmt::format("{} tokens for a model vocab_size of {} (expected the tokenizer to cover "
                    "nearly all of it)",
                    given, n_vocab));
  return std::max(n_tok, n_vocab);
}

// A spec with n tokens and their types: the ids given, padding for the rest, added tokens typed
// control (special) or user-defined.
VocabSpec token_table(const Ids& ids, int64_t n) {
  VocabSpec v;
  v.tokens.resize(static_cast<size_t>(n));
  v.types.assign(static_cast<size_t>(n), tok::kTypeNormal);
  for (int64_t id = 0; id < n; ++id) {
    const auto it = ids.by_id.find(id);
    if (it == ids.by_id.end()) {
      v.tokens[id] = fmt::format("[PAD{}]", id);  // ids the tokenizer never produces
      v.types[id] = tok::kTypeUnused;
    } else {
      v.tokens[id] = it->second;
    }
  }
  for (const auto& [id, special] : ids.added)
    v.types[id] = special ? tok::kTypeControl : tok::kTypeUserDefined;
  return v;
}

// The id of the first token with this text (-1: none).
int32_t find_id(const VocabSpec& v, const std::string& text) {
  const auto n = static_cast<int64_t>(v.tokens.size());
  for (int64_t id = 0; id < n; ++id)
    if (v.tokens[id] == text) return static_cast<int32_t>(id);
  return -1;
}

// How text meets the vocabulary: SentencePiece-style (spaces as U+2581) or byte-level, and
// whether a space is prepended.
struct Spacing {
  bool spm = false;
  bool prepend = false;
};

// The spacing the normalizer and pre-tokenizer describe (byte_fallback also means SentencePiece).
Spacing read_spacing(const json& model, const json& norm, const json& pre,
                     const std::string& source) {
  bool spm = model.value("byte_fallback", false);
  bool prepend = false;
  for (const json& s : steps(norm, "normalizers")) {
    const std::string t = s.is_object() ? s.value("type", "") : "";
    if (t == "Prepend" && s.value("prepend", "") == kSpace) {
      prepend = spm = true;
    } else if (t == "Replace" && s.contains("content") && s["content"] == kSpace) {
      spm = true;
    } else if (t == "NFC") {
      // Text is taken as it comes (NFC-normal text, the usual case, is unaffected).
    } else {
      field_error(source, "normalizer",
                  fmt::format("{} is not supported (expected none, NFC, or SentencePiece's "
                              "Prepend/Replace of U+2581)",
                              t.empty() ? s.dump().substr(0, 60) : t));
    }
  }
  for (const json& s : steps(pre, "pretokenizers")) {
    if (s.is_object() && s.value("type", "") == "Metaspace") {
      spm = true;
      const std::string scheme = s.value("prepend_scheme", "");
      prepend = prepend || scheme == "always" || scheme == "first" ||
                (scheme.empty() && s.value("add_prefix_space", true));
    }
  }
  return {spm, prepend};
}

// Makes v a SentencePiece vocabulary: scores from the merge ranks (the merges dropped), byte
// tokens and the unknown token typed.
void make_spm(VocabSpec& v, const json& model, bool prepend) {
  const auto n = static_cast<int64_t>(v.tokens.size());
  v.kind = VocabSpec::Kind::kSpm;
  v.add_space_prefix = prepend;
  // SentencePiece merges the pair whose concatenation scores highest; HF BPE the pair with the
  // lowest merge rank. A token made by merge k gets score -k; tokens no merge makes (single
  // characters, byte tokens, specials) score below every merge.
  v.scores.assign(static_cast<size_t>(n), -1e30f);
  const tok::TokenMap map = tok::build_token_map(v.tokens);
  std::string joined;
  for (size_t k = 0; k < v.merges.size(); ++k) {
    const std::string& m = v.merges[k];
    const size_t sp = m.find(' ', 1);
    if (sp == std::string::npos) continue;
    joined = m.substr(0, sp) + m.substr(sp + 1);
    const auto it = map.find(joined);
    if (it != map.end() && v.scores[it->second] == -1e30f)
      v.scores[it->second] = -static_cast<float>(k);
  }
  v.merges.clear();
  for (int64_t id = 0; id < n; ++id) {
    const std::string& t = v.tokens[id];
    if (t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>' && v.types[id] == tok::kTypeNormal)
      v.types[id] = tok::kTypeByte;
  }
  if (auto u = model.find("unk_token"); u != model.end() && u->is_string())
    v.unk = find_id(v, u->get<std::string>());
  if (v.unk >= 0) v.types[v.unk] = tok::kTypeUnknown;
}

// Makes v a GPT-2 style byte-level BPE vocabulary with the pre-tokenizer's regexes.
void make_gpt2(VocabSpec& v, const json& pre, const std::string& source) {
  v.kind = VocabSpec::Kind::kGpt2;
  v.pre_regexes = byte_level_regexes(pre, source);
  // Name the rule sets longrope knows, so GGUF-side code sees a familiar name.
  if (v.pre_regexes == std::vector<std::string>{tok::gpt2_pretokenizer_regex()}) {
    v.pre = "gpt2";
    v.pre_regexes.clear();
  } else if (v.pre_regexes == std::vector<std::string>{tok::digit_pretokenizer_regex(),
                                                       tok::gpt2_pretokenizer_regex()}) {
    v.pre = "smollm";
    v.pre_regexes.clear();
  } else {
    v.pre = "custom";
  }
  v.add_space_prefix = false;
  if (v.merges.empty())
    field_error(source, "model.merges", "missing or empty (expected BPE merges)");
}

// A special token's id: config.json's id_key, else the token tokenizer_config.json names by
// text_key (-1: neither).
int32_t special_id(const VocabSpec& v, const json& config, const json& tok_config,
                   const char* id_key, const char* text_key, const std::string& source) {
  const auto n = static_cast<int64_t>(v.tokens.size());
  if (auto id = config_id(config, id_key)) {
    if (*id < 0 || *id >= n)
      field_error(source, id_key, fmt::format("{} is not a token id below {}", *id, n));
    return static_cast<int32_t>(*id);
  }
  if (auto text = token_text(tok_config, text_key)) return find_id(v, *text);
  return -1;
}

// Special ids: config.json first, then tokenizer_config.json's token texts; the end of turn by
// the texts of known chat formats.
void read_special_ids(VocabSpec& v, const json& tok_config, const json& config,
                      const std::string& source) {
  v.bos = special_id(v, config, tok_config, "bos_token_id", "bos_token", source);
  v.eos = special_id(v, config, tok_config, "eos_token_id", "eos_token", source);
  v.pad = special_id(v, config, tok_config, "pad_token_id", "pad_token", source);
  if (v.unk < 0) {
    if (auto text = token_text(tok_config, "unk_token")) v.unk = find_id(v, *text);
  }
  for (const char* eot : {"<|im_end|>", "<|eot_id|>", "<|end|>"}) {
    if (v.eot < 0) v.eot = find_id(v, eot);
  }
}

// BOS: tokenizer_config's add_bos_token, else a post-processor template that starts with it (whose
// token is the BOS when none was named).
void read_add_bos(VocabSpec& v, const json& tok, const json& tok_config) {
  std::optional<bool> add_bos;
  if (tok_config.is_object() && tok_config.contains("add_bos_token") &&
      tok_config["add_bos_token"].is_boolean())
    add_bos = tok_config["add_bos_token"].get<bool>();
  if (!add_bos) {
    add_bos = false;
    for (const json& s :
         steps(tok.contains("post_processor") ? tok["post_processor"] : json(), "processors")) {
      if (!s.is_object() || s.value("type", "") != "TemplateProcessing") continue;
      const json& single = s.contains("single") ? s["single"] : json();
      if (single.is_array() && !single.empty() && single[0].contains("SpecialToken")) {
        const std::string text = single[0]["SpecialToken"].value("id", "");
        const int32_t id = find_id(v, text);
        if (id >= 0) {
          add_bos = true;
          if (v.bos < 0) v.bos = id;
        }
      }
    }
  }
  v.add_bos = *add_bos && v.bos >= 0;
}

// tokenizer_config's chat template: a string, or the "default" one of a list of named templates.
void read_chat_template(VocabSpec& v, const json& tok_config) {
  if (tok_config.is_object() && tok_config.contains("chat_template")) {
    const json& ct = tok_config["chat_template"];
    if (ct.is_string()) {
      v.chat_template = ct.get<std::string>();
    } else if (ct.is_array()) {  // [{"name": "default", "template": ...}, ...]
      for (const json& e : ct)
        if (e.is_object() && e.value("name", "") == "default" && e.contains("template"))
          v.chat_template = e["template"].get<std::string>();
    }
  }
}

VocabSpec read_vocab(const json& tok, const json& tok_config, const json& config, int64_t n_vocab,
                     const std::string& source) {
  if (!tok.is_object()) field_error(source, "(top)", "expected a JSON object");
  const json model = bpe_model(tok, source);
  const Ids ids = read_ids(tok, model, source);
  VocabSpec v = token_table(ids, vocab_rows(ids.by_id, n_vocab, source));
  v.merges = read_merges(model, source);
  if (model.contains("ignore_merges") && model["ignore_merges"].is_boolean())
    v.ignore_merges = model["ignore_merges"].get<bool>();

  const json pre = tok.contains("pre_tokenizer") ? tok["pre_tokenizer"] : json();
  const json norm = tok.contains("normalizer") ? tok["normalizer"] : json();
  const Spacing spacing = read_spacing(model, norm, pre, source);
  if (spacing.spm)
    make_spm(v, model, spacing.prepend);
  else
    make_gpt2(v, pre, source);

  read_special_ids(v, tok_config, config, source);
  read_add_bos(v, tok, tok_config);
  v.add_eos = tok_config.is_object() && tok_config.value("add_eos_token", false);
  for (int32_t id : {v.bos, v.eos}) {
    if (id >= 0 && v.types[id] == tok::kTypeNormal) v.types[id] = tok::kTypeControl;
  }
  read_chat_template(v, tok_config);
  tok::validate_spec(v);
  return v;
}

}  // namespace

VocabSpec vocab_from_hf_tokenizer(const json& tok, const json& tok_config, const json& config,
                                  int64_t n_vocab, const std::string& source) {
  try {
    return read_vocab(tok, tok_config, config, n_vocab, source);
  } catch (const json::exception& e) {
    // A field of another JSON type than the reader expects (nlohmann's value()/get() throw).
    throw Error(fmt::format("{}: a field has an unexpected type ({})", source, e.what()));
  }
}

namespace {

json added_token(int32_t id, const std::string& content, bool special) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", special}};
}

json template_processing(const VocabSpec& v) {
  if (!v.add_bos || v.bos < 0) return nullptr;
  const std::string& b = v.tokens[v.bos];
  const json sp = {{"SpecialToken", {{"id", b}, {"type_id", 0}}}};
  return {{"type", "TemplateProcessing"},
          {"single", {sp, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
          {"pair",
           {sp,
            {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
            sp,
            {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
          {"special_tokens", {{b, {{"id", b}, {"ids", {v.bos}}, {"tokens", {b}}}}}}};
}

// Merges that make HF's BPE follow SentencePiece's scores: every split of a piece into two pieces
// of the vocabulary, ranked by the piece's score (highest first), ties by the parts' ids.
std::vector<std::string> spm_merges(const VocabSpec& v) {
  const tok::TokenMap map = tok::build_token_map(v.tokens);
  struct M {
    float score;
    int32_t a, b;
    std::string text;
  };
  std::vector<M> ms;
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    if (tok::token_type(v, static_cast<int32_t>(id)) != tok::kTypeNormal) continue;
    const std::string& t = v.tokens[id];
    for (size_t cut = tok::utf8_char_len(t, 0); cut < t.size(); cut += tok::utf8_char_len(t, cut)) {
      const auto ia = map.find(std::string_view(t).substr(0, cut));
      const auto ib = map.find(std::string_view(t).substr(cut));
      if (ia == map.end() || ib == map.end()) continue;
      ms.push_back({v.scores[id], ia->second, ib->second, t.substr(0, cut) + " " + t.substr(cut)});
    }
  }
  std::stable_sort(ms.begin(), ms.end(), [](const M& x, const M& y) {
    if (x.score != y.score) return x.score > y.score;
    if (x.a != y.a) return x.a < y.a;
    return x.b < y.b;
  });
  std::vector<std::string> out;
  out.reserve(ms.size());
  for (M& m : ms) out.push_back(std::move(m.text));
  return out;
}

}  // namespace

json hf_tokenizer_json(const VocabSpec& v) {
  const bool spm = v.kind == VocabSpec::Kind::kSpm;
  json vocab = json::object();
  json added = json::array();
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    const auto i = static_cast<int32_t>(id);
    const int32_t type = tok::token_type(v, i);
    if (type == tok::kTypeUnused) continue;  // padding ids: nothing to encode to
    vocab[v.tokens[id]] = i;
    if (type == tok::kTypeControl || type == tok::kTypeUserDefined ||
        (spm && type == tok::kTypeUnknown))
      added.push_back(added_token(i, v.tokens[id], type != tok::kTypeUserDefined));
  }
  json model = {{"type", "BPE"},
                {"dropout", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"vocab", std::move(vocab)}};
  json out = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}};
  if (spm) {
    model["unk_token"] = v.unk >= 0 ? json(v.tokens[v.unk]) : json(nullptr);
    model["fuse_unk"] = true;
    model["byte_fallback"] = true;
    model["ignore_merges"] = false;
    model["merges"] = spm_merges(v);
    const json replace = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}};
    out["normalizer"] =
        v.add_space_prefix
            ? json{{"type", "Sequence"},
                   {"normalizers", {{{"type", "Prepend"}, {"prepend", kSpace}}, replace}}}
            : replace;
    out["pre_tokenizer"] = nullptr;
    json dec =
        json::array({{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
                     {{"type", "ByteFallback"}},
                     {{"type", "Fuse"}}});
    if (v.add_space_prefix)
      dec.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    out["decoder"] = {{"type", "Sequence"}, {"decoders", dec}};
  } else {
    model["unk_token"] = nullptr;
    model["fuse_unk"] = false;
    model["byte_fallback"] = false;
    const tok::PreTokenizerRules rules = tok::pretokenizer_rules(v);
    model["ignore_merges"] = rules.ignore_merges;
    model["merges"] = v.merges;
    json steps = json::array();
    for (const std::string& r : rules.regexes)
      steps.push_back({{"type", "Split"},
                       {"pattern", {{"Regex", r}}},
                       {"behavior", "Isolated"},
                       {"invert", false}});
    steps.push_back({{"type", "ByteLevel"},
                     {"add_prefix_space", false},
                     {"trim_offsets", true},
                     {"use_regex", false}});
    out["normalizer"] = nullptr;
    out["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", steps}};
    out["decoder"] = {{"type", "ByteLevel"},
                      {"add_prefix_space", true},
                      {"trim_offsets", true},
                      {"use_regex", true}};
  }
  out["added_tokens"] = added;
  out["post_processor"] = template_processing(v);
  out["model"] = std::move(model);
  return out;
}

json hf_tokenizer_config(const VocabSpec& v, int64_t max_len) {
  json c = {{"tokenizer_class", "PreTrainedTokenizerFast"},
            {"add_bos_token", v.add_bos},
            {"add_eos_token", v.add_eos},
            {"clean_up_tokenization_spaces", false},
            {"model_max_length", max_len}};
  auto put = [&](const char* key, int32_t id) {
    if (id >= 0 && static_cast<size_t>(id) < v.tokens.size()) c[key] = v.tokens[id];
  };
  put("bos_token", v.bos);
  put("eos_token", v.eos);
  put("unk_token", v.unk);
  put("pad_token", v.pad);
  if (!v.chat_template.empty()) c["chat_template"] = v.chat_template;
  return c;
}

}  // namespace longrope
