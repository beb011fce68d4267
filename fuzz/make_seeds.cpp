// Writes seed corpora for the fuzz targets: make_fuzz_seeds OUT_DIR [MODELS_DIR]
//   OUT_DIR/gguf/       small valid GGUF files (every value type, every tensor type, a micro llama
//                       model for each tokenizer kind) and, with MODELS_DIR, a truncated
//                       stories260K.gguf and its metadata alone.
//   OUT_DIR/llama2c/    inputs of llama2c_fuzz: a mode byte, then micro checkpoints (legacy, v1,
//                       v2) or tokenizers.
//   OUT_DIR/text/       inputs of the tokenizer targets: ASCII, multi-byte UTF-8, special tokens,
//                       whitespace runs, digits, invalid UTF-8, token id sequences.
//   OUT_DIR/factors/    inputs of factors_fuzz: the factors files in docs/factors, small valid
//                       variants and broken ones.
//   OUT_DIR/hf_config/  inputs of hf_config_fuzz: config.json with each rope_scaling type, and
//                       broken ones.
//   OUT_DIR/safetensors/     inputs of safetensors_fuzz: small valid files and broken headers.
//   OUT_DIR/tokenizer_json/  inputs of hf_tokenizer_fuzz: tokenizer.json of the micro models
//                            (both kinds) and of stories260K, and broken variants.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/model_file_internal.h"
#include "longrope/error.h"
#include "longrope/gguf.h"
#include "longrope/hf_tokenizer.h"
#include "longrope/llama2c.h"
#include "longrope/rope.h"
#include "longrope/safetensors.h"

using namespace longrope;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

void write_file(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::vector<uint8_t> read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> b(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& v : b) {
    x = x * 1664525u + 1013904223u;
    v = static_cast<uint8_t>(x >> 24);
  }
  return b;
}

// F32 values in [-0.5, 0.5) (so the micro models carry finite weights).
std::vector<uint8_t> f32s(size_t n, uint32_t seed) {
  std::vector<uint8_t> b(n * 4);
  auto p = pattern(n, seed);
  for (size_t k = 0; k < n; ++k) {
    const float v = static_cast<float>(p[k]) / 256.0f - 0.5f;
    std::memcpy(b.data() + 4 * k, &v, 4);
  }
  return b;
}

// Bytes of a tensor of the given type: random quants, small fp16 scales every block.
std::vector<uint8_t> tensor_bytes(uint32_t type, int64_t n, uint32_t seed) {
  if (type == 0) return f32s(static_cast<size_t>(n), seed);
  const int64_t bs = ggml_block_size(static_cast<GgmlType>(type));
  const size_t ts = ggml_type_size(static_cast<GgmlType>(type));
  auto b = pattern(static_cast<size_t>(n / bs) * ts, seed);
  if (type == 1 || type == 30) {
    for (size_t k = 0; k + 1 < b.size(); k += 2) b[k + 1] &= 0x3b;  // modest exponents
  }
  return b;
}

GgufWriter micro_llama(bool gpt2) {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", "micro");
  w.set_u32("llama.context_length", 16);
  w.set_u32("llama.embedding_length", 32);
  w.set_u32("llama.block_count", 1);
  w.set_u32("llama.feed_forward_length", 32);
  w.set_u32("llama.attention.head_count", 4);
  w.set_u32("llama.attention.head_count_kv", 2);
  w.set_u32("llama.rope.dimension_count", 8);
  w.set_f32("llama.rope.freq_base", 10000.0f);
  w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.set_string("llama.rope.scaling.type", "yarn");
  w.set_f32("llama.rope.scaling.factor", 4.0f);
  w.set_u32("llama.rope.scaling.original_context_length", 16);
  if (gpt2) {
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set_string("tokenizer.ggml.pre", "smollm");
    w.set("tokenizer.ggml.tokens", GgufValue::make_string_array({"<|im_end|>", "a", "b", "ab"}));
    w.set("tokenizer.ggml.merges", GgufValue::make_string_array({"a b"}));
    w.set_bool("tokenizer.ggml.add_bos_token", false);
    w.set_string("tokenizer.chat_template", "{{ messages }}");
  } else {
    w.set_string("tokenizer.ggml.model", "llama");
    w.set("tokenizer.ggml.tokens", GgufValue::make_string_array({"<unk>", "<s>", "</s>", "a"}));
    w.set("tokenizer.ggml.scores", GgufValue::make_f32_array({0.0f, 0.0f, 0.0f, -1.0f}));
    w.set("tokenizer.ggml.token_type", GgufValue::make_i32_array({2, 3, 3, 1}));
  }
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_u32("tokenizer.ggml.eos_token_id", 2);
  auto add = [&](const std::string& name, uint32_t type, std::vector<int64_t> ne, uint32_t seed) {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    w.add_tensor(name, type, ne, tensor_bytes(type, n, seed));
  };
  add("token_embd.weight", 8, {32, 4}, 1);  // Q8_0
  add("output_norm.weight", 0, {32}, 2);
  add("blk.0.attn_norm.weight", 0, {32}, 3);
  add("blk.0.attn_q.weight", 2, {32, 32}, 4);       // Q4_0
  add("blk.0.attn_k.weight", 3, {32, 16}, 5);       // Q4_1
  add("blk.0.attn_v.weight", 6, {32, 16}, 6);       // Q5_0
  add("blk.0.attn_output.weight", 7, {32, 32}, 7);  // Q5_1
  add("blk.0.ffn_norm.weight", 0, {32}, 8);
  add("blk.0.ffn_gate.weight", 1, {32, 32}, 9);    // F16
  add("blk.0.ffn_down.weight", 30, {32, 32}, 10);  // BF16
  add("blk.0.ffn_up.weight", 0, {32, 32}, 11);
  add("rope_freqs.weight", 0, {4}, 12);
  return w;
}

GgufWriter all_types() {
  GgufWriter w;
  w.set("u8", GgufValue::make_u8(1));
  w.set("i8", GgufValue::make_i8(-1));
  w.set("u16", GgufValue::make_u16(2));
  w.set("i16", GgufValue::make_i16(-2));
  w.set("u32", GgufValue::make_u32(3));
  w.set("i32", GgufValue::make_i32(-3));
  w.set("f32", GgufValue::make_f32(0.5f));
  w.set("bool", GgufValue::make_bool(true));
  w.set("str", GgufValue::make_string("text"));
  w.set("u64", GgufValue::make_u64(4));
  w.set("i64", GgufValue::make_i64(-4));
  w.set("f64", GgufValue::make_f64(0.25));
  w.set("arr.str", GgufValue::make_string_array({"a", "bc"}));
  w.set("arr.i32", GgufValue::make_i32_array({1, -2}));
  w.set("arr.f32", GgufValue::make_f32_array({1.5f}));
  w.set("arr.nested", GgufValue::make_array_of_arrays(
                          {GgufValue::make_u32_array({7}), GgufValue::make_string_array({"x"})}));
  w.set_u32("general.alignment", 16);
  uint32_t seed = 100;
  for (uint32_t t : {0u, 1u, 2u, 3u, 6u, 7u, 8u, 9u, 10u, 11u, 12u, 13u, 14u, 15u, 30u}) {
    const int64_t bs = ggml_block_size(static_cast<GgmlType>(t));
    w.add_tensor("t" + std::to_string(t), t, {bs, 1}, tensor_bytes(t, bs, seed++));
  }
  w.add_tensor("iq2", 16, {256}, pattern(66, 7));
  return w;
}

void put32(std::vector<uint8_t>& b, int32_t v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  b.insert(b.end(), p, p + 4);
}

// A micro llama2.c checkpoint: dim 8, hidden 8, 1 layer, 2 heads, 1 kv head, vocab 4, seq 4.
std::vector<uint8_t> micro_checkpoint(int version, bool shared) {
  const int dim = 8, hidden = 8, L = 1, heads = 2, kv = 1, vocab = 4, seq = 4;
  const int head = dim / heads;
  std::vector<uint8_t> b;
  b.push_back(static_cast<uint8_t>(version * 2));  // mode byte: checkpoint (even)
  if (version > 0) {
    put32(b, static_cast<int32_t>(kLlama2cMagic));
    put32(b, version);
  }
  for (int v : {dim, hidden, L, heads, kv, version == 0 && !shared ? -vocab : vocab, seq})
    put32(b, v);
  if (version > 0) {
    b.push_back(shared ? 1 : 0);
    if (version == 2) put32(b, 8);  // group size
    b.resize(1 + 256, 0);
  }
  const size_t fp = static_cast<size_t>(vocab * dim + 2 * L * dim + L * dim * dim * 2 +
                                        2 * L * dim * kv * head + 3 * L * dim * hidden + dim);
  if (version < 2) {
    size_t n = fp + (version == 0 ? static_cast<size_t>(seq * head) : 0) +
               (shared ? 0 : static_cast<size_t>(vocab * dim));
    auto w = f32s(n, 42);
    b.insert(b.end(), w.begin(), w.end());
    return b;
  }
  auto norms = f32s(static_cast<size_t>(2 * L * dim + dim), 43);
  b.insert(b.end(), norms.begin(), norms.end());
  auto q = [&](size_t numel, int count) {
    for (int c = 0; c < count; ++c) {
      auto v = pattern(numel, static_cast<uint32_t>(numel + c));
      b.insert(b.end(), v.begin(), v.end());
      auto s = f32s(numel / 8, 44);
      b.insert(b.end(), s.begin(), s.end());
    }
  };
  q(static_cast<size_t>(vocab * dim), 1);
  q(static_cast<size_t>(dim * dim), L);
  q(static_cast<size_t>(dim * kv * head), L);
  q(static_cast<size_t>(dim * kv * head), L);
  q(static_cast<size_t>(dim * dim), L);
  q(static_cast<size_t>(dim * hidden), 3 * L);
  if (!shared) q(static_cast<size_t>(vocab * dim), 1);
  return b;
}

std::vector<uint8_t> micro_tokenizer() {
  std::vector<uint8_t> b = {1, 3, 0};  // mode odd, n_vocab = 3 + 1 = 4
  put32(b, 6);
  for (const char* t : {"<unk>", "\n<s>\n", "\n</s>\n", " a"}) {
    const float score = -1.0f;
    const auto* p = reinterpret_cast<const uint8_t*>(&score);
    b.insert(b.end(), p, p + 4);
    put32(b, static_cast<int32_t>(std::strlen(t)));
    b.insert(b.end(), t, t + std::strlen(t));
  }
  return b;
}

void write_text(const fs::path& p, const std::string& s) {
  write_file(p, std::vector<uint8_t>(s.begin(), s.end()));
}

std::string read_text(const fs::path& p) {
  const auto b = read_file(p);
  return std::string(b.begin(), b.end());
}

void write_texts(const fs::path& dir, const fs::path& shared) {
  const std::vector<std::pair<const char*, std::string>> texts = {
      {"ascii.txt", "Once upon a time, there was a little girl named Lily. She liked to play."},
      {"utf8.txt",
       "caf\xC3\xA9 na\xC3\xAFve \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E "
       "\xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xF0\x9F\x99\x82 "
       "e\xCC\x81 \xE2\x96\x81x"},
      {"chat.txt",
       "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!"
       "<|im_end|>\n<|im_start|>assistant\n"},
      {"spm_specials.txt", "<s>Hello</s> <unk> <0x41> world"},
      {"spaces.txt", "   a  \t\tb \n\n\n  c\r\n    \xC2\xA0\xE3\x80\x80 end   "},
      {"digits.txt", "0 12 345 6789 3.14159 1,000,000 2025-01-01 x1y22z333"},
      {"contractions.txt", "don't I'll we've she'd THEY'RE it's O'Neil"},
      {"punct.txt", "!!! ??? ... --- ((x)) [a]{b} \"q\" 'q' #$%&*+/<=>@\\^_`|~"},
      {"invalid.txt", "ok \xFF\xFE bad \xC3 cut \xED\xA0\x80 sur \xF4\x90\x80\x80"},
      {"nul.txt", std::string("a\0b\0\0c", 6)},
      {"controls.txt", "tab\tbell\a esc\x1B gs\x1D eot\x04 plane4 \xF1\x80\x80\x80 end"},
      {"empty.txt", ""},
  };
  for (const auto& [name, text] : texts) write_text(dir / name, text);
  // Token id sequences (the same inputs read as little-endian int32 ids).
  std::vector<uint8_t> ids;
  for (int32_t id : {0, 1, 2, 3, 100, 255, 256, 300, 511, 1000, 49151, 49152, -1}) put32(ids, id);
  write_file(dir / "ids.bin", ids);
  const std::string novel = read_text(shared / "data" / "moby-dick.txt");
  if (novel.size() > 20000) write_text(dir / "moby_dick_part.txt", novel.substr(16000, 2048));
}

// The factors files of docs/factors, variants and broken copies (each valid one must parse).
void write_factors(const fs::path& dir, const fs::path& docs_factors) {
  int n_docs = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(docs_factors, ec)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() != ".json" || name.find(".ckpt.") != std::string::npos ||
        name.find(".log.") != std::string::npos) {
      continue;
    }
    const std::string text = read_text(e.path());
    factors_from_json(json::parse(text), name);
    write_text(dir / name, text);
    write_text(dir / ("cut_" + name), text.substr(0, text.size() / 2));
    ++n_docs;
  }
  if (n_docs == 0)
    std::fprintf(stderr, "make_fuzz_seeds: no factors files in %s\n",
                 docs_factors.string().c_str());
  const json two = {{"rope_type", "longrope"},
                    {"original_max_position_embeddings", 512},
                    {"max_position_embeddings", 4096},
                    {"short_factor", {1.0, 1.25}},
                    {"long_factor", {1.5, 4.0}}};
  json sets = two;
  sets["format_version"] = 1;
  sets["n_hat"] = 4;
  sets["attention_rule"] = "yarn_log";
  sets["attention_factor"] = 1.2;
  sets["sets"] = {{{"max_len", 512}, {"attention_factor", 1.0}, {"factors", {1.0, 1.25}}},
                  {{"max_len", 2048}, {"factors", {1.25, 2.0}}},
                  {{"max_len", 0}, {"factors", {1.5, 4.0}}}};
  sets["provenance"] = {{"tool", "longrope search"}, {"seed", 7}, {"texts", {"a.txt"}}};
  json by_factor = {{"rope_type", "longrope"},
                    {"original_max_position_embeddings", 512},
                    {"factor", 8.0},
                    {"attention_rule", "constant"},
                    {"long_factor", {1.0, 2.0, 3.0, 4.0}}};
  json hf_whole = {{"max_position_embeddings", 131072},
                   {"original_max_position_embeddings", 4096},
                   {"rope_scaling",
                    {{"type", "su"}, {"short_factor", {1.0, 1.1}}, {"long_factor", {1.2, 3.0}}}}};
  // s = factor = 1 without a target length (write_factors_file once dropped the factor).
  json factor_one = {{"rope_type", "longrope"},
                     {"original_max_position_embeddings", 4},
                     {"factor", 1},
                     {"long_factor", {1}}};
  const std::vector<std::pair<const char*, json>> valid = {{"hf_object.json", two},
                                                           {"three_sets.json", sets},
                                                           {"by_factor.json", by_factor},
                                                           {"factor_one.json", factor_one},
                                                           {"hf_config.json", hf_whole}};
  for (const auto& [name, j] : valid) {
    factors_from_json(j, name);
    write_text(dir / name, j.dump(2));
  }
  const std::vector<std::pair<const char*, std::string>> broken = {
      {"bad_type.json", R"({"rope_type": "yarn", "long_factor": [1, 2]})"},
      {"bad_factor.json",
       R"({"rope_type": "longrope", "original_max_position_embeddings": 512, "max_position_embeddings": 4096, "long_factor": [1, 0.5]})"},
      {"bad_sets.json",
       R"({"rope_type": "longrope", "original_max_position_embeddings": 512, "max_position_embeddings": 4096, "sets": [{"max_len": 8, "factors": [1, 2]}, {"max_len": 4, "factors": [1, 2]}]})"},
      {"bad_huge.json",
       R"({"rope_type": "longrope", "original_max_position_embeddings": 1e400, "long_factor": [1e308, 2]})"},
      {"bad_ints.json",
       R"({"rope_type": "longrope", "original_max_position_embeddings": 18446744073709551615, "max_position_embeddings": -9223372036854775808, "n_hat": 4.5, "long_factor": [1]})"},
      {"bad_nested.json", R"({"rope_type": "longrope", "provenance": [[[[{"a": [[]]}]]]]})"},
      {"not_object.json", "[1, 2, 3]"},
  };
  for (const auto& [name, text] : broken) write_text(dir / name, text);
}

// HF config.json with each rope_scaling type (each valid one must parse), and broken ones.
void write_hf_configs(const fs::path& dir) {
  const json base = {{"architectures", {"LlamaForCausalLM"}},
                     {"hidden_size", 576},
                     {"num_attention_heads", 9},
                     {"max_position_embeddings", 8192},
                     {"rope_theta", 100000.0}};
  std::vector<double> sf(32, 1.0), lf(32);
  for (size_t j = 0; j < lf.size(); ++j) lf[j] = 1.0 + 0.25 * static_cast<double>(j);
  auto with = [&](json rs, json extra = json::object()) {
    json c = base;
    c["rope_scaling"] = std::move(rs);
    for (auto it = extra.begin(); it != extra.end(); ++it) c[it.key()] = it.value();
    return c;
  };
  const std::vector<std::pair<const char*, json>> valid = {
      {"none.json", base},
      {"null.json", with(nullptr)},
      {"default.json", with({{"rope_type", "default"}})},
      {"linear.json", with({{"type", "linear"}, {"factor", 4.0}})},
      {"dynamic.json", with({{"type", "dynamic"}, {"factor", 2.0}})},
      {"yarn.json", with({{"rope_type", "yarn"},
                          {"factor", 4.0},
                          {"original_max_position_embeddings", 2048},
                          {"beta_fast", 32},
                          {"beta_slow", 1},
                          {"mscale", 0.707},
                          {"mscale_all_dim", 0.707},
                          {"truncate", false}})},
      {"llama3.json", with({{"rope_type", "llama3"},
                            {"factor", 8.0},
                            {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 8192}},
                           {{"max_position_embeddings", 131072}})},
      {"longrope.json", with({{"type", "longrope"}, {"short_factor", sf}, {"long_factor", lf}},
                             {{"original_max_position_embeddings", 2048},
                              {"max_position_embeddings", 32768},
                              {"head_dim", 64}})},
      {"longrope_factor.json",
       with({{"rope_type", "su"}, {"factor", 8.0}, {"long_factor", lf}}, {{"head_dim", 64}})},
      {"partial_rotary.json", with({{"type", "linear"}, {"factor", 2.0}},
                                   {{"head_dim", 128}, {"partial_rotary_factor", 0.5}})},
  };
  for (const auto& [name, j] : valid) {
    rope_from_hf_config(j, name);
    write_text(dir / name, j.dump(2));
  }
  json v5 = base;
  v5["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 2.0}, {"rope_theta", 10000.0}};
  rope_from_hf_config(v5, "rope_parameters.json");
  write_text(dir / "rope_parameters.json", v5.dump());
  const std::vector<std::pair<const char*, std::string>> broken = {
      {"bad_method.json", R"({"rope_scaling": {"type": "mrope", "factor": 2}})"},
      {"bad_factor.json", R"({"rope_scaling": {"type": "linear", "factor": "2"}})"},
      {"bad_llama3.json",
       R"({"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 1, "original_max_position_embeddings": 8192}})"},
      {"bad_head_dim.json",
       R"({"head_dim": 1e12, "partial_rotary_factor": 1e300, "rope_scaling": {"type": "linear", "factor": 2}})"},
      {"bad_scaling.json", R"({"rope_scaling": [1, 2]})"},
  };
  for (const auto& [name, text] : broken) write_text(dir / name, text);
}

}  // namespace

void write_safetensors_seeds(const fs::path& dir) {
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<uint16_t> h = {0x3c00, 0xc000};
  write_safetensors((dir / "three.safetensors").string(),
                    {{"model.norm.weight", GgmlType::F32, {6}, a.data(), 24, {}},
                     {"w", GgmlType::F16, {1, 2}, h.data(), 4, {}},
                     {"b", GgmlType::BF16, {2, 1}, h.data(), 4, {}}});
  write_safetensors((dir / "empty.safetensors").string(), {});
  auto raw = [&](const char* name, const std::string& header, size_t data) {
    std::vector<uint8_t> b(8 + header.size() + data, 0);
    const uint64_t n = header.size();
    std::memcpy(b.data(), &n, 8);
    std::memcpy(b.data() + 8, header.data(), header.size());
    write_file(dir / name, b);
  };
  raw("i64.in", R"({"w":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", 8);
  raw("overlap.in",
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      12);
  raw("meta.in",
      R"({"__metadata__":{"format":"pt"},"x":{"dtype":"BF16","shape":[],"data_offsets":[0,2]}})",
      2);
}

void write_tokenizer_seeds(const fs::path& dir, const std::vector<uint8_t>& stories) {
  auto put = [&](const char* name, const json& j) {
    const std::string s = j.dump();
    write_file(dir / name, std::vector<uint8_t>(s.begin(), s.end()));
  };
  for (bool gpt2 : {false, true}) {
    const ModelFile m =
        io::model_from_gguf(GgufFile::from_memory(micro_llama(gpt2).to_bytes(), "micro"));
    const json t = hf_tokenizer_json(m.vocab);
    vocab_from_hf_tokenizer(t, nullptr, nullptr, 0, "seed");  // must read back
    put(gpt2 ? "micro_gpt2.json" : "micro_spm.json", t);
    json broken = t;
    broken["model"]["type"] = "WordPiece";
    put(gpt2 ? "wordpiece.json" : "wordpiece_spm.json", broken);
  }
  if (!stories.empty()) {
    const ModelFile m = io::model_from_gguf(GgufFile::from_memory(stories, "stories260K"));
    put("stories.json", hf_tokenizer_json(m.vocab));
  }
  json digits = json::parse(R"({"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2,"1":3},
      "merges":[["a","b"]]},"pre_tokenizer":{"type":"Sequence","pretokenizers":[
      {"type":"Digits","individual_digits":true},
      {"type":"ByteLevel","add_prefix_space":false,"use_regex":true}]},
      "added_tokens":[{"id":4,"content":"<s>","special":true}]})");
  put("digits.json", digits);
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR [MODELS_DIR]\n", argv[0]);
    return 2;
  }
  try {
    const fs::path out = argv[1];
    fs::create_directories(out / "gguf");
    fs::create_directories(out / "llama2c");
    for (const char* sub : {"text", "factors", "hf_config", "safetensors", "tokenizer_json"})
      fs::create_directories(out / sub);
    write_safetensors_seeds(out / "safetensors");
    write_file(out / "gguf" / "all_types.gguf", all_types().to_bytes());
    write_file(out / "gguf" / "micro_spm.gguf", micro_llama(false).to_bytes());
    write_file(out / "gguf" / "micro_gpt2.gguf", micro_llama(true).to_bytes());
    // Sanity: the micro models must be valid for the loader.
    io::model_from_gguf(GgufFile::from_memory(micro_llama(false).to_bytes(), "micro_spm"));
    io::model_from_gguf(GgufFile::from_memory(micro_llama(true).to_bytes(), "micro_gpt2"));
    if (argc > 2) {
      const fs::path models = argv[2];
      const auto stories = read_file(models / "stories260K.gguf");
      write_tokenizer_seeds(out / "tokenizer_json", stories);
      if (stories.size() > 4096) {
        write_file(out / "gguf" / "stories_head.gguf",
                   std::vector<uint8_t>(stories.begin(), stories.begin() + 4096));
        GgufWriter meta;
        const auto parsed = GgufFile::from_memory(stories);
        for (const auto& kv : parsed->metadata()) meta.set(kv.key, kv.value);
        write_file(out / "gguf" / "stories_meta.gguf", meta.to_bytes());
      }
      auto tok = read_file(models / "tok512.bin");
      if (!tok.empty()) {
        tok.insert(tok.begin(), {1, 0xff, 0x01});  // tokenizer, n_vocab = 511 % 4096 + 1
        write_file(out / "llama2c" / "tok512.in", tok);
      }
    }
    write_file(out / "llama2c" / "legacy_shared.in", micro_checkpoint(0, true));
    write_file(out / "llama2c" / "legacy_sep.in", micro_checkpoint(0, false));
    write_file(out / "llama2c" / "v1.in", micro_checkpoint(1, false));
    write_file(out / "llama2c" / "v2.in", micro_checkpoint(2, true));
    write_file(out / "llama2c" / "tok.in", micro_tokenizer());
    const fs::path source = LONGROPE_SOURCE_DIR;
    if (argc <= 2) write_tokenizer_seeds(out / "tokenizer_json", {});
    write_texts(out / "text", argc > 2 ? fs::path(argv[2]) / ".." : source / ".." / "shared");
    write_factors(out / "factors", source / "docs" / "factors");
    write_hf_configs(out / "hf_config");
    // Each checkpoint seed must parse.
    for (int v = 0; v < 3; ++v) {
      auto b = micro_checkpoint(v, v != 1);
      parse_llama2c(b.data() + 1, b.size() - 1, "seed");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
