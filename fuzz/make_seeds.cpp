// Writes seed corpora for the fuzz targets: make_fuzz_seeds OUT_DIR [MODELS_DIR]
//   OUT_DIR/gguf/     small valid GGUF files (every value type, every tensor type, a micro llama
//                     model for each tokenizer kind) and, with MODELS_DIR, a truncated
//                     stories260K.gguf and its metadata alone.
//   OUT_DIR/llama2c/  inputs of llama2c_fuzz: a mode byte, then micro checkpoints (legacy, v1,
//                     v2) or tokenizers.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/model_file_internal.h"
#include "longrope/error.h"
#include "longrope/gguf.h"
#include "longrope/llama2c.h"

using namespace longrope;
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

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR [MODELS_DIR]\n", argv[0]);
    return 2;
  }
  try {
    const fs::path out = argv[1];
    fs::create_directories(out / "gguf");
    fs::create_directories(out / "llama2c");
    write_file(out / "gguf" / "all_types.gguf", all_types().to_bytes());
    write_file(out / "gguf" / "micro_spm.gguf", micro_llama(false).to_bytes());
    write_file(out / "gguf" / "micro_gpt2.gguf", micro_llama(true).to_bytes());
    // Sanity: the micro models must be valid for the loader.
    io::model_from_gguf(GgufFile::from_memory(micro_llama(false).to_bytes(), "micro_spm"));
    io::model_from_gguf(GgufFile::from_memory(micro_llama(true).to_bytes(), "micro_gpt2"));
    if (argc > 2) {
      const fs::path models = argv[2];
      const auto stories = read_file(models / "stories260K.gguf");
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
    // Each checkpoint seed must parse.
    for (int v = 0; v < 3; ++v) {
      auto b = micro_checkpoint(v, v != 1);
      parse_llama2c(b.data() + 1, b.size() - 1, "seed");
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "make_fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
