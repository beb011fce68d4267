// load_model_file: the stories and SmolLM2 models, and bad inputs (each a one-line Error that
// names what is wrong), most of them written with GgufWriter from a modified stories260K.gguf.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/gguf.h"
#include "longrope/model_file.h"
#include "longrope/quant.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;
using test::expect_error;
using test::read_bytes;
using test::stories_gguf;

class IoModelFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("longrope_io_mf_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::vector<uint8_t>& bytes) {
    const fs::path p = dir_ / name;
    std::ofstream f(p, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
    return p.string();
  }
  // A writer holding a copy of stories260K.gguf, to be modified by a test.
  GgufWriter stories_writer() {
    GgufWriter w;
    w.copy_from(GgufFile::open(stories_gguf().string()));
    return w;
  }
  // Writes w and expects load_model_file to fail with a message containing want (and the path).
  void expect_load_error(const GgufWriter& w, const std::string& want) {
    const std::string path = (dir_ / "bad.gguf").string();
    w.write(path);
    expect_error([&] { load_model_file(path); }, path + ": ");
    expect_error([&] { load_model_file(path); }, want);
  }
  fs::path dir_;
};

TEST_F(IoModelFile, StoriesGguf) {
  LONGROPE_REQUIRE_FILE(stories_gguf());
  const ModelFile m = load_model_file(stories_gguf().string());
  EXPECT_EQ(m.format, "gguf");
  EXPECT_EQ(m.path, stories_gguf().string());
  ASSERT_NE(m.gguf, nullptr);
  EXPECT_FALSE(m.keep_alive.empty());
  const HParams& hp = m.hp;
  EXPECT_EQ(hp.arch, "llama");
  EXPECT_EQ(hp.n_layer, 5);
  EXPECT_EQ(hp.n_embd, 64);
  EXPECT_EQ(hp.n_head, 8);
  EXPECT_EQ(hp.n_head_kv, 4);
  EXPECT_EQ(hp.head_dim, 8);
  EXPECT_EQ(hp.n_ff, 172);
  EXPECT_EQ(hp.n_vocab, 512);
  EXPECT_EQ(hp.n_ctx_train, 512);
  EXPECT_EQ(hp.n_rot, 8);
  EXPECT_EQ(hp.rope_base, 10000.0);
  EXPECT_FLOAT_EQ(hp.norm_eps, 1e-5f);

  ASSERT_EQ(m.tensors.size(), 47u);
  std::vector<std::string> expected = {"token_embd.weight", "output_norm.weight"};
  for (int l = 0; l < 5; ++l) {
    for (const char* t : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down",
                          "ffn_up", "attn_norm", "ffn_norm"}) {
      expected.push_back("blk." + std::to_string(l) + "." + t + ".weight");
    }
  }
  for (const auto& n : expected) {
    const TensorRef* t = m.find(n);
    ASSERT_NE(t, nullptr) << n;
    EXPECT_EQ(t->type, GgmlType::F32) << n;
  }
  EXPECT_EQ(m.get("token_embd.weight").ne, (std::vector<int64_t>{64, 512}));
  EXPECT_EQ(m.get("blk.2.attn_k.weight").ne, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(m.get("blk.2.attn_output.weight").ne, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(m.get("blk.2.ffn_down.weight").ne, (std::vector<int64_t>{172, 64}));
  EXPECT_EQ(m.get("blk.2.ffn_up.weight").ne, (std::vector<int64_t>{64, 172}));
  EXPECT_EQ(m.get("blk.2.ffn_norm.weight").nbytes, 256u);
  EXPECT_EQ(m.find("output.weight"), nullptr);
  expect_error([&] { m.get("output.weight"); }, "tensor output.weight not found");

  const VocabSpec& v = m.vocab;
  EXPECT_EQ(v.kind, VocabSpec::Kind::kSpm);
  EXPECT_EQ(v.tokens.size(), 512u);
  EXPECT_EQ(v.scores.size(), 512u);
  EXPECT_EQ(v.types.size(), 512u);
  EXPECT_EQ(v.bos, 1);
  EXPECT_EQ(v.eos, 2);
  EXPECT_EQ(v.unk, 0);
  EXPECT_EQ(v.pad, -1);
  EXPECT_EQ(v.eot, -1);
  EXPECT_TRUE(v.add_bos);
  EXPECT_FALSE(v.add_eos);
  EXPECT_TRUE(v.add_space_prefix);
  EXPECT_TRUE(v.merges.empty());
  EXPECT_TRUE(m.rope.type.empty());
  EXPECT_FALSE(m.rope.factor.has_value());
  EXPECT_TRUE(m.rope.rope_freqs.empty());
}

TEST_F(IoModelFile, SmolLM2LoadsAndEveryTensorDequantizes) {
  LONGROPE_REQUIRE_FILE(test::smollm_path());
  const ModelFile m = load_model_file(test::smollm_path().string());
  // What the file says (llama.context_length, llama.rope.freq_base, ...).
  EXPECT_EQ(m.gguf->get<uint32_t>("llama.context_length"), 8192u);
  EXPECT_EQ(m.gguf->get<float>("llama.rope.freq_base"), 100000.0f);
  const HParams& hp = m.hp;
  EXPECT_EQ(hp.n_ctx_train, 8192);
  EXPECT_EQ(hp.rope_base, 100000.0);
  EXPECT_EQ(hp.n_layer, 30);
  EXPECT_EQ(hp.n_embd, 576);
  EXPECT_EQ(hp.n_head, 9);
  EXPECT_EQ(hp.n_head_kv, 3);
  EXPECT_EQ(hp.head_dim, 64);
  EXPECT_EQ(hp.n_rot, 64);
  EXPECT_EQ(hp.n_ff, 1536);
  EXPECT_EQ(hp.n_vocab, 49152);
  const VocabSpec& v = m.vocab;
  EXPECT_EQ(v.kind, VocabSpec::Kind::kGpt2);
  EXPECT_EQ(v.pre, "smollm");
  EXPECT_EQ(v.merges.size(), 48900u);
  EXPECT_TRUE(v.scores.empty());
  EXPECT_EQ(v.types.size(), 49152u);
  EXPECT_EQ(v.tokens[2], "<|im_end|>");
  EXPECT_EQ(v.eot, 2);  // no eot key: found by name
  EXPECT_EQ(v.bos, 1);
  EXPECT_EQ(v.eos, 2);
  EXPECT_EQ(v.pad, 2);
  EXPECT_FALSE(v.add_bos);
  EXPECT_FALSE(v.add_space_prefix);
  EXPECT_NE(v.chat_template.find("<|im_start|>"), std::string::npos);

  std::map<std::string, int> types;
  std::vector<float> buf;
  for (const TensorRef& t : m.tensors) {
    types[ggml_type_name(static_cast<uint32_t>(t.type))]++;
    buf.resize(static_cast<size_t>(t.nelements()));
    dequantize(t.type, t.data, buf.data(), t.nelements());
    double sum2 = 0;
    bool finite = true;
    for (float x : buf) {
      finite = finite && std::isfinite(x);
      sum2 += static_cast<double>(x) * x;
    }
    EXPECT_TRUE(finite) << t.name;
    EXPECT_GT(sum2, 0.0) << t.name;
    if (t.type == GgmlType::F32) {
      EXPECT_EQ(std::memcmp(buf.data(), t.data, t.nbytes), 0);
    }
  }
  std::string summary;
  for (const auto& [name, n] : types) summary += name + " x" + std::to_string(n) + " ";
  std::printf("SmolLM2 tensor types: %s\n", summary.c_str());
  EXPECT_EQ(types.size(), 3u) << summary;
  EXPECT_EQ(types["Q4_1"], 210);
  EXPECT_EQ(types["Q8_0"], 1);
  EXPECT_EQ(types["F32"], 61);
}

TEST_F(IoModelFile, MissingEmptyGarbageAndDirectory) {
  expect_error([&] { load_model_file((dir_ / "none.gguf").string()); },
               "none.gguf: cannot open: No such file or directory");
  expect_error([&] { load_model_file(write("empty.gguf", {})); },
               "empty.gguf: file is empty (expected a GGUF or llama2.c model)");
  expect_error(
      [&] {
        load_model_file(write("text.gguf", {'h', 'e', 'l', 'l', 'o', '\n'}));
      },
      "text.gguf: unrecognized model format (expected a GGUF file or a llama2.c checkpoint)");
  std::vector<uint8_t> junk(4096);
  for (size_t k = 0; k < junk.size(); ++k) junk[k] = static_cast<uint8_t>(k * 7919 >> 3);
  expect_error([&] { load_model_file(write("junk.bin", junk)); }, "unrecognized model format");
  expect_error(
      [&] {
        load_model_file(write("be.gguf", {'F', 'U', 'G', 'G', 0, 0, 0, 3}));
      },
      "big-endian GGUF");
  // A folder is read as an HF model folder; an empty one says what it lacks.
  expect_error([&] { load_model_file(dir_.string()); }, {"no config.json", "Hugging Face"});
}

TEST_F(IoModelFile, TruncatedAndOversizedGguf) {
  LONGROPE_REQUIRE_FILE(stories_gguf());
  const auto full = read_bytes(stories_gguf());
  const struct {
    size_t n;
    const char* want;
  } cases[] = {
      {4, "truncated at byte 4 while reading the version"},
      {23, "truncated at byte 16 while reading the metadata key count"},
      {3000, "key tokenizer.ggml.tokens claims 512 elements of type string but only 2431 bytes"},
      {5000, "truncated at byte 4996 while reading the length of the value of key"},
      {14045, "tensor data section would start at byte 14048"},
      {700000, "extends beyond the end of the file"},
      {full.size() - 100, "tensor output_norm.weight data"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.n);
    const std::string p = write(
        "cut.gguf", std::vector<uint8_t>(full.begin(), full.begin() + static_cast<long>(c.n)));
    expect_error([&] { load_model_file(p); }, c.want);
  }
  // Huge counts in an otherwise valid header.
  std::vector<uint8_t> many = full;
  const uint64_t huge = 1ull << 60;
  std::memcpy(many.data() + 16, &huge, 8);
  expect_error([&] { load_model_file(write("many.gguf", many)); },
               "claims 1152921504606846976 metadata keys");
  std::vector<uint8_t> longkey = full;
  std::memcpy(longkey.data() + 24, &huge, 8);  // length of the first key
  expect_error([&] { load_model_file(write("longkey.gguf", longkey)); },
               "metadata key #0 at byte 24 claims 1152921504606846976 bytes");
}

TEST_F(IoModelFile, ShapeDisagreesWithMetadata) {
  LONGROPE_REQUIRE_FILE(stories_gguf());
  GgufWriter w = stories_writer();
  w.add_tensor("blk.0.attn_k.weight", 0, {64, 64}, std::vector<uint8_t>(64 * 64 * 4));
  expect_load_error(w, "tensor blk.0.attn_k.weight has shape [64, 64] (expected [64, 32])");

  GgufWriter w2 = stories_writer();
  w2.set_u32("llama.feed_forward_length", 128);
  expect_load_error(w2, "tensor blk.0.ffn_gate.weight has shape [64, 172] (expected [64, 128])");

  GgufWriter w3 = stories_writer();
  w3.remove_tensor("blk.4.ffn_up.weight");
  expect_load_error(w3, "tensor blk.4.ffn_up.weight not found (expected shape [64, 172])");

  GgufWriter w4 = stories_writer();
  w4.add_tensor("output.weight", 0, {64, 500}, std::vector<uint8_t>(64 * 500 * 4));
  expect_load_error(w4, "tensor output.weight has shape [64, 500] (expected [64, 512]");

  // Fewer tokens than embedding rows.
  auto g = GgufFile::open(stories_gguf().string());
  GgufWriter w5 = stories_writer();
  auto toks = g->get_string_array("tokenizer.ggml.tokens");
  toks.resize(500);
  auto scores = g->get_float_array("tokenizer.ggml.scores");
  scores.resize(500);
  std::vector<int32_t> types(500, 1);
  w5.set("tokenizer.ggml.tokens", GgufValue::make_string_array(toks));
  w5.set("tokenizer.ggml.scores", GgufValue::make_f32_array(scores));
  w5.set("tokenizer.ggml.token_type", GgufValue::make_i32_array(types));
  expect_load_error(
      w5,
      "tensor token_embd.weight has shape [64, 512] (expected [64, 500]: n_embd 64 x n_vocab 500)");

  GgufWriter w6 = stories_writer();
  w6.set_u32("llama.vocab_size", 32000);
  expect_load_error(w6, "llama.vocab_size is 32000 (expected 512");
}

TEST_F(IoModelFile, UnsupportedArchTypeAndTokenizer) {
  LONGROPE_REQUIRE_FILE(stories_gguf());
  GgufWriter w = stories_writer();
  w.set_string("general.architecture", "qwen9");
  expect_load_error(w,
                    "unsupported architecture \"qwen9\" in general.architecture (expected llama)");

  GgufWriter w2 = stories_writer();
  w2.remove("general.architecture");
  expect_load_error(w2, "key general.architecture not found");

  GgufWriter w3 = stories_writer();
  w3.add_tensor("output_norm.weight", 24 /* I8 */, {64}, std::vector<uint8_t>(64));
  expect_load_error(w3, "tensor output_norm.weight has unsupported type I8 (expected one of F32");

  GgufWriter w4 = stories_writer();
  w4.add_tensor("blk.0.attn_q.weight", 16 /* IQ2_XXS */, {256, 16}, std::vector<uint8_t>(66 * 16));
  expect_load_error(w4, "tensor blk.0.attn_q.weight has unsupported type IQ2_XXS");

  GgufWriter w5 = stories_writer();
  w5.set_string("tokenizer.ggml.model", "bert");
  expect_load_error(
      w5, "unsupported tokenizer model \"bert\" in tokenizer.ggml.model (expected llama or gpt2)");

  GgufWriter w6 = stories_writer();
  w6.set_string("tokenizer.ggml.model", "gpt2");
  expect_load_error(w6, "tokenizer.ggml.merges not found");

  GgufWriter w7 = stories_writer();
  w7.set("tokenizer.ggml.scores", GgufValue::make_f32_array(std::vector<float>(10)));
  expect_load_error(w7, "tokenizer.ggml.scores has 10 entries (expected 512, one per token)");

  GgufWriter w8 = stories_writer();
  w8.set_u32("tokenizer.ggml.bos_token_id", 9999);
  expect_load_error(w8, "tokenizer.ggml.bos_token_id is 9999 (expected a token id below 512)");

  GgufWriter w9 = stories_writer();
  w9.set("tokenizer.ggml.token_type", GgufValue::make_f32_array(std::vector<float>(512)));
  expect_load_error(
      w9, "key tokenizer.ggml.token_type has type array of f32, expected array of integers");
}

TEST_F(IoModelFile, AbsurdHyperParameters) {
  LONGROPE_REQUIRE_FILE(stories_gguf());
  struct Case {
    const char* key;
    GgufValue value;
    const char* want;
  };
  const Case cases[] = {
      {"llama.context_length", GgufValue::make_u32(0),
       "llama.context_length is 0 (expected 1..16777216)"},
      {"llama.context_length", GgufValue::make_u32(1u << 30),
       "llama.context_length is 1073741824 (expected 1..16777216)"},
      {"llama.context_length", GgufValue::make_u64(1ull << 40),
       "llama.context_length is 1099511627776 (expected a value that fits in 32 bits)"},
      {"llama.context_length", GgufValue::make_string("512"),
       "key llama.context_length has type string, expected an integer"},
      {"llama.block_count", GgufValue::make_u32(0), "llama.block_count is 0 (expected 1..65536)"},
      {"llama.attention.head_count_kv", GgufValue::make_u32(3),
       "llama.attention.head_count 8 is not a multiple of llama.attention.head_count_kv 3"},
      {"llama.attention.head_count_kv", GgufValue::make_u32(16),
       "llama.attention.head_count_kv is 16 (expected 1..8)"},
      {"llama.attention.head_count", GgufValue::make_u32(0),
       "is not a multiple of llama.attention.head_count 0"},
      {"llama.embedding_length", GgufValue::make_u32(60),
       "llama.embedding_length 60 is not a multiple of llama.attention.head_count 8"},
      {"llama.rope.dimension_count", GgufValue::make_u32(7),
       "llama.rope.dimension_count is 7 (expected an even number in 2..8, the head dimension)"},
      {"llama.rope.dimension_count", GgufValue::make_u32(16), "llama.rope.dimension_count is 16"},
      {"llama.rope.freq_base", GgufValue::make_f32(-1.0f),
       "llama.rope.freq_base is -1.000000 (expected a finite positive number)"},
      {"llama.attention.layer_norm_rms_epsilon", GgufValue::make_f32(NAN),
       "llama.attention.layer_norm_rms_epsilon is nan"},
      {"llama.attention.key_length", GgufValue::make_u32(16),
       "tensor blk.0.attn_q.weight has shape [64, 64] (expected [64, 128])"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.want);
    GgufWriter w = stories_writer();
    w.set(c.key, c.value);
    expect_load_error(w, c.want);
  }
}

TEST_F(IoModelFile, RopeScalingMetadataAndFactorTensors) {
  LONGROPE_REQUIRE_FILE(stories_gguf());
  GgufWriter w = stories_writer();
  w.set_string("llama.rope.scaling.type", "yarn");
  w.set_f32("llama.rope.scaling.factor", 4.0f);
  w.set_u32("llama.rope.scaling.original_context_length", 512);
  w.set_f32("llama.rope.scaling.attn_factor", 1.25f);
  w.set_f32("llama.rope.scaling.yarn_beta_fast", 32.0f);
  w.set_f32("llama.rope.scaling.yarn_beta_slow", 1.0f);
  w.set_f32("llama.rope.scaling.yarn_ext_factor", 0.5f);
  w.set("llama.rope.scaling.yarn_log_multiplier", GgufValue::make_f64(0.1));
  const std::vector<float> freqs = {1.0f, 2.0f, 4.0f, 8.0f};
  std::vector<uint8_t> raw(16);
  std::memcpy(raw.data(), freqs.data(), 16);
  w.add_tensor("rope_freqs.weight", 0, {4}, raw);
  std::vector<uint8_t> half(8);
  const uint16_t h[4] = {0x3C00, 0x4000, 0x4200, 0x4400};  // 1, 2, 3, 4 in fp16
  std::memcpy(half.data(), h, 8);
  w.add_tensor("rope_factors_long.weight", 1, {4}, half);
  const std::string path = (dir_ / "yarn.gguf").string();
  w.write(path);
  const ModelFile m = load_model_file(path);
  EXPECT_EQ(m.rope.type, "yarn");
  EXPECT_EQ(m.rope.factor, 4.0);
  EXPECT_EQ(m.rope.original_context_length, 512);
  EXPECT_EQ(m.rope.attn_factor, 1.25);
  EXPECT_EQ(m.rope.yarn_beta_fast, 32.0);
  EXPECT_EQ(m.rope.yarn_beta_slow, 1.0);
  EXPECT_EQ(m.rope.yarn_ext_factor, 0.5);
  EXPECT_EQ(m.rope.yarn_log_multiplier, 0.1);
  EXPECT_EQ(m.rope.rope_freqs, freqs);
  EXPECT_EQ(m.rope.factors_long, (std::vector<float>{1, 2, 3, 4}));
  EXPECT_TRUE(m.rope.factors_short.empty());

  GgufWriter w2 = stories_writer();
  w2.add_tensor("rope_factors_short.weight", 0, {3}, std::vector<uint8_t>(12));
  expect_load_error(w2, "tensor rope_factors_short.weight has 3 elements (expected 4, n_rot / 2)");

  GgufWriter w3 = stories_writer();
  w3.set_f32("llama.rope.scale_linear", 2.0f);
  w3.write(path);
  const ModelFile lin = load_model_file(path);
  EXPECT_EQ(lin.rope.type, "linear");
  EXPECT_EQ(lin.rope.factor, 2.0);

  GgufWriter w4 = stories_writer();
  w4.set_u32("llama.rope.scaling.type", 1);
  expect_load_error(w4, "key llama.rope.scaling.type has type u32, expected string");
}

TEST_F(IoModelFile, DetectsFormatByContentNotName) {
  LONGROPE_REQUIRE_FILE(stories_gguf());
  // A GGUF named .bin and a llama2.c checkpoint named .gguf.
  const std::string g = write("model.bin", read_bytes(stories_gguf()));
  EXPECT_EQ(load_model_file(g).format, "gguf");
  const fs::path bin = test::shared_dir() / "models" / "stories260K.bin";
  LONGROPE_REQUIRE_FILE(bin);
  const std::string b = write("model.gguf", read_bytes(bin));
  EXPECT_EQ(load_model_file(b, (test::shared_dir() / "models" / "tok512.bin").string()).format,
            "llama2c");
}

}  // namespace
}  // namespace longrope
