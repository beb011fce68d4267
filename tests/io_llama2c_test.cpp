// llama2.c checkpoints and tokenizer.bin: the legacy stories260K.bin must give the same model as
// stories260K.gguf; versions 1 and 2 are checked on images synthesized from the same weights.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/llama2c.h"
#include "longrope/model_file.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;
using test::expect_error;
using test::read_bytes;

fs::path models() {
  return test::shared_dir() / "models";
}

void expect_same_hparams(const HParams& a, const HParams& b) {
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.n_layer, b.n_layer);
  EXPECT_EQ(a.n_embd, b.n_embd);
  EXPECT_EQ(a.n_head, b.n_head);
  EXPECT_EQ(a.n_head_kv, b.n_head_kv);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.n_ff, b.n_ff);
  EXPECT_EQ(a.n_vocab, b.n_vocab);
  EXPECT_EQ(a.n_ctx_train, b.n_ctx_train);
  EXPECT_EQ(a.n_rot, b.n_rot);
  EXPECT_EQ(a.rope_base, b.rope_base);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
}

class IoLlama2c : public ::testing::Test {
 protected:
  void SetUp() override {
    LONGROPE_REQUIRE_FILE(models() / "stories260K.gguf");
    LONGROPE_REQUIRE_FILE(models() / "stories260K.bin");
    LONGROPE_REQUIRE_FILE(models() / "tok512.bin");
    dir_ = fs::temp_directory_path() /
           ("longrope_io_l2c_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    gguf_ = load_model_file((models() / "stories260K.gguf").string());
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  std::string write(const std::string& name, const std::vector<uint8_t>& bytes) {
    const fs::path p = dir_ / name;
    std::ofstream f(p, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
    return p.string();
  }
  std::string tok() const { return (models() / "tok512.bin").string(); }
  // The GGUF tensor's floats.
  std::vector<float> floats(const std::string& name) const {
    const TensorRef& t = gguf_.get(name);
    std::vector<float> v(static_cast<size_t>(t.nelements()));
    std::memcpy(v.data(), t.data, t.nbytes);
    return v;
  }
  // A versioned header: magic, version, the stories params, shared flag, [group size].
  std::vector<uint8_t> header(int version, bool shared, int group_size = 0) const {
    std::vector<uint8_t> h(256, 0);
    auto put32 = [&](size_t at, uint32_t v) { std::memcpy(h.data() + at, &v, 4); };
    put32(0, kLlama2cMagic);
    put32(4, static_cast<uint32_t>(version));
    const int p[7] = {64, 172, 5, 8, 4, 512, 512};
    for (int k = 0; k < 7; ++k) put32(8 + 4 * k, static_cast<uint32_t>(p[k]));
    h[36] = shared ? 1 : 0;
    if (version == 2) std::memcpy(h.data() + 37, &group_size, 4);
    return h;
  }
  static void append(std::vector<uint8_t>& out, const std::vector<float>& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(v.data());
    out.insert(out.end(), p, p + v.size() * 4);
  }
  std::vector<std::string> layer_names(const char* what) const {
    std::vector<std::string> n;
    for (int l = 0; l < 5; ++l) n.push_back("blk." + std::to_string(l) + "." + what + ".weight");
    return n;
  }

  fs::path dir_;
  ModelFile gguf_;
};

TEST_F(IoLlama2c, LegacyStoriesMatchesGguf) {
  const ModelFile bin = load_model_file((models() / "stories260K.bin").string(), tok());
  EXPECT_EQ(bin.format, "llama2c");
  EXPECT_EQ(bin.gguf, nullptr);
  expect_same_hparams(bin.hp, gguf_.hp);
  EXPECT_EQ(bin.hp.n_ctx_train, 512);
  EXPECT_EQ(bin.hp.n_rot, 8);
  // Same tensor set (tied output: no output.weight in either), bit-identical data.
  EXPECT_EQ(bin.tensors.size(), gguf_.tensors.size());
  EXPECT_EQ(bin.find("output.weight"), nullptr);
  for (const TensorRef& g : gguf_.tensors) {
    SCOPED_TRACE(g.name);
    const TensorRef* b = bin.find(g.name);
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->type, GgmlType::F32);
    EXPECT_EQ(b->ne, g.ne);
    ASSERT_EQ(b->nbytes, g.nbytes);
    EXPECT_EQ(std::memcmp(b->data, g.data, g.nbytes), 0);
  }
}

TEST_F(IoLlama2c, Tok512VocabMatchesGguf) {
  const ModelFile bin = load_model_file((models() / "stories260K.bin").string(), tok());
  const VocabSpec& a = bin.vocab;
  const VocabSpec& b = gguf_.vocab;
  EXPECT_EQ(a.kind, VocabSpec::Kind::kSpm);
  ASSERT_EQ(a.tokens.size(), 512u);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.scores, b.scores);
  EXPECT_EQ(a.types, b.types);
  EXPECT_EQ(a.tokens[1], "<s>");
  EXPECT_EQ(a.tokens[259], "\xe2\x96\x81t");  // " t" in tok512.bin
  EXPECT_EQ(a.bos, 1);
  EXPECT_EQ(a.eos, 2);
  EXPECT_EQ(a.unk, 0);
  EXPECT_EQ(a.bos, b.bos);
  EXPECT_EQ(a.eos, b.eos);
  EXPECT_EQ(a.unk, b.unk);
  EXPECT_EQ(a.pad, b.pad);
  EXPECT_EQ(a.eot, b.eot);
  EXPECT_EQ(a.add_bos, b.add_bos);
  EXPECT_EQ(a.add_eos, b.add_eos);
  EXPECT_EQ(a.add_space_prefix, b.add_space_prefix);
  EXPECT_TRUE(a.add_space_prefix);
  EXPECT_EQ(a.merges, b.merges);
}

TEST_F(IoLlama2c, NewerExporterByteTokensAreRestored) {
  // A newer tokenizer.py writes byte tokens as the characters themselves (chr(b) in UTF-8).
  const auto orig = read_bytes(tok());
  std::vector<uint8_t> out(orig.begin(), orig.begin() + 4);
  size_t pos = 4;
  for (int id = 0; id < 512; ++id) {
    float score;
    int32_t len;
    std::memcpy(&score, orig.data() + pos, 4);
    std::memcpy(&len, orig.data() + pos + 4, 4);
    std::string t(reinterpret_cast<const char*>(orig.data() + pos + 8), static_cast<size_t>(len));
    pos += 8 + static_cast<size_t>(len);
    if (id >= 3 && id < 259) {
      const unsigned b = static_cast<unsigned>(id - 3);
      t = b < 0x80 ? std::string(1, static_cast<char>(b))
                   : std::string{static_cast<char>(0xc0 | (b >> 6)),
                                 static_cast<char>(0x80 | (b & 0x3f))};
    }
    const int32_t n = static_cast<int32_t>(t.size());
    out.insert(out.end(), reinterpret_cast<const uint8_t*>(&score),
               reinterpret_cast<const uint8_t*>(&score) + 4);
    out.insert(out.end(), reinterpret_cast<const uint8_t*>(&n),
               reinterpret_cast<const uint8_t*>(&n) + 4);
    out.insert(out.end(), t.begin(), t.end());
  }
  const VocabSpec v = parse_llama2c_tokenizer(out.data(), out.size(), 512, "new.bin");
  EXPECT_EQ(v.tokens, gguf_.vocab.tokens);
  EXPECT_EQ(v.types, gguf_.vocab.types);
}

TEST_F(IoLlama2c, Version1MatchesGguf) {
  for (bool shared : {true, false}) {
    SCOPED_TRACE(shared);
    std::vector<uint8_t> img = header(1, shared);
    for (auto& n : layer_names("attn_norm")) append(img, floats(n));
    for (auto& n : layer_names("ffn_norm")) append(img, floats(n));
    append(img, floats("output_norm.weight"));
    append(img, floats("token_embd.weight"));
    for (const char* w :
         {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up"}) {
      for (auto& n : layer_names(w)) append(img, floats(n));
    }
    std::vector<float> wcls = floats("token_embd.weight");
    for (float& x : wcls) x *= 2.0f;
    if (!shared) append(img, wcls);
    EXPECT_TRUE(llama2c_detect(img.data(), img.size()));
    const std::string path = write(shared ? "v1s.bin" : "v1.bin", img);
    const ModelFile m = load_model_file(path, tok());
    EXPECT_EQ(m.format, "llama2c");
    expect_same_hparams(m.hp, gguf_.hp);
    for (const TensorRef& g : gguf_.tensors) {
      const TensorRef& b = m.get(g.name);
      EXPECT_EQ(b.ne, g.ne) << g.name;
      EXPECT_EQ(std::memcmp(b.data, g.data, g.nbytes), 0) << g.name;
    }
    if (shared) {
      EXPECT_EQ(m.find("output.weight"), nullptr);
    } else {
      const TensorRef& o = m.get("output.weight");
      EXPECT_EQ(o.ne, (std::vector<int64_t>{64, 512}));
      EXPECT_EQ(std::memcmp(o.data, wcls.data(), o.nbytes), 0);
    }
  }
}

TEST_F(IoLlama2c, Version2GroupQuantized) {
  const int gs = 32;
  std::vector<uint8_t> img = header(2, false, gs);
  for (auto& n : layer_names("attn_norm")) append(img, floats(n));
  for (auto& n : layer_names("ffn_norm")) append(img, floats(n));
  append(img, floats("output_norm.weight"));
  std::vector<std::pair<std::string, std::vector<float>>> expected;
  auto quant = [&](const std::string& name, const std::vector<float>& w) {
    std::vector<float> deq(w.size()), scales;
    std::vector<int8_t> q(w.size());
    for (size_t g = 0; g < w.size() / gs; ++g) {
      float amax = 0;
      for (int k = 0; k < gs; ++k) amax = std::max(amax, std::fabs(w[g * gs + k]));
      const float s = amax / 127.0f;
      scales.push_back(s);
      for (int k = 0; k < gs; ++k) {
        q[g * gs + k] = static_cast<int8_t>(s > 0 ? std::lround(w[g * gs + k] / s) : 0);
        deq[g * gs + k] = static_cast<float>(q[g * gs + k]) * s;
      }
    }
    img.insert(img.end(), reinterpret_cast<uint8_t*>(q.data()),
               reinterpret_cast<uint8_t*>(q.data()) + q.size());
    append(img, scales);
    expected.emplace_back(name, deq);
  };
  quant("token_embd.weight", floats("token_embd.weight"));
  for (const char* w :
       {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up"}) {
    for (auto& n : layer_names(w)) quant(n, floats(n));
  }
  std::vector<float> wcls = floats("token_embd.weight");
  for (float& x : wcls) x = -x;
  quant("output.weight", wcls);

  const Llama2cCheckpoint ck = parse_llama2c(img.data(), img.size(), "v2.bin");
  EXPECT_EQ(ck.config.version, 2);
  EXPECT_EQ(ck.config.group_size, gs);
  EXPECT_FALSE(ck.config.shared_classifier);
  expect_same_hparams(ck.hp, gguf_.hp);
  auto find = [&](const std::string& n) -> const TensorRef* {
    for (const auto& t : ck.tensors) {
      if (t.name == n) return &t;
    }
    return nullptr;
  };
  for (const auto& [name, deq] : expected) {
    const TensorRef* t = find(name);
    ASSERT_NE(t, nullptr) << name;
    ASSERT_EQ(t->nbytes, deq.size() * 4);
    EXPECT_EQ(std::memcmp(t->data, deq.data(), t->nbytes), 0) << name;
  }
  // Norms stay fp32, bit-identical.
  const TensorRef* on = find("output_norm.weight");
  ASSERT_NE(on, nullptr);
  EXPECT_EQ(std::memcmp(on->data, gguf_.get("output_norm.weight").data, 256), 0);
  // Quantization error is small: within half a step of each group's scale.
  const TensorRef* q0 = find("blk.0.attn_q.weight");
  const auto orig = floats("blk.0.attn_q.weight");
  const float* d = reinterpret_cast<const float*>(q0->data);
  for (size_t k = 0; k < orig.size(); ++k) EXPECT_NEAR(d[k], orig[k], 0.01f);

  // The same through load_model_file (the dequantized buffers stay alive with the ModelFile).
  const ModelFile m = load_model_file(write("v2.bin", img), tok());
  EXPECT_EQ(m.tensors.size(), gguf_.tensors.size() + 1);
  EXPECT_EQ(std::memcmp(m.get("output.weight").data, expected.back().second.data(), 64 * 512 * 4),
            0);

  // group size that does not divide dim
  std::vector<uint8_t> bad = img;
  const int gs_bad = 48;
  std::memcpy(bad.data() + 37, &gs_bad, 4);
  expect_error([&] { parse_llama2c(bad.data(), bad.size(), "v2.bin"); },
               "v2.bin: group_size 48 does not divide the weight sizes");
}

TEST_F(IoLlama2c, LegacySeparateClassifier) {
  std::vector<uint8_t> img = read_bytes(models() / "stories260K.bin");
  const int32_t neg = -512;
  std::memcpy(img.data() + 20, &neg, 4);
  std::vector<float> wcls(64 * 512);
  for (size_t k = 0; k < wcls.size(); ++k) wcls[k] = static_cast<float>(k % 97) * 0.01f;
  append(img, wcls);
  const ModelFile m = load_model_file(write("sep.bin", img), tok());
  EXPECT_EQ(m.hp.n_vocab, 512);
  const TensorRef& o = m.get("output.weight");
  EXPECT_EQ(std::memcmp(o.data, wcls.data(), o.nbytes), 0);
}

TEST_F(IoLlama2c, BadCheckpoints) {
  const std::vector<uint8_t> legacy = read_bytes(models() / "stories260K.bin");
  // One byte too many / too few: not a legacy file any more, and the error says why.
  std::vector<uint8_t> longer = legacy;
  longer.push_back(0);
  EXPECT_FALSE(llama2c_detect(longer.data(), longer.size()));
  expect_error([&] { load_model_file(write("long.bin", longer), tok()); },
               "is 1056541 bytes (expected 1056540)");
  std::vector<uint8_t> shorter(legacy.begin(), legacy.end() - 1);
  expect_error([&] { load_model_file(write("short.bin", shorter), tok()); },
               "is 1056539 bytes (expected 1056540)");
  // A header whose n_kv_heads does not divide n_heads is not recognized as llama2.c at all.
  std::vector<uint8_t> odd = legacy;
  const int32_t three = 3;
  std::memcpy(odd.data() + 16, &three, 4);
  expect_error([&] { load_model_file(write("odd.bin", odd), tok()); }, "unrecognized model format");

  // Versioned headers.
  std::vector<uint8_t> v3 = header(3, true);
  expect_error([&] { parse_llama2c(v3.data(), v3.size(), "v3.bin"); },
               "v3.bin: unsupported llama2.c checkpoint version 3 (expected version 1 or 2)");
  std::vector<uint8_t> v1 = header(1, true);
  expect_error([&] { parse_llama2c(v1.data(), 100, "v1.bin"); },
               "truncated llama2.c header: 100 bytes (expected 256)");
  expect_error([&] { parse_llama2c(v1.data(), v1.size(), "v1.bin"); },
               "is 256 bytes (expected 1040384)");
  std::vector<uint8_t> heads = header(1, true);
  const int32_t seven = 7;
  std::memcpy(heads.data() + 20, &seven, 4);
  expect_error([&] { parse_llama2c(heads.data(), heads.size(), "h.bin"); },
               "invalid llama2.c header: n_heads is 7 (expected a divisor of dim 64)");
  std::vector<uint8_t> flag = header(1, true);
  flag[36] = 9;
  expect_error([&] { parse_llama2c(flag.data(), flag.size(), "f.bin"); },
               "shared_classifier flag is 9 (expected 0 or 1)");
  std::vector<uint8_t> huge = header(1, true);
  const int32_t params[7] = {1 << 24, 1 << 24, 65536, 1 << 23, 1 << 23, 1 << 24, 1 << 24};
  std::memcpy(huge.data() + 8, params, sizeof params);
  expect_error([&] { parse_llama2c(huge.data(), huge.size(), "huge.bin"); },
               "huge.bin: llama2.c header implies an impossible file size");
  std::vector<uint8_t> ctx0 = header(1, true);
  const int32_t zero = 0;
  std::memcpy(ctx0.data() + 32, &zero, 4);
  expect_error([&] { parse_llama2c(ctx0.data(), ctx0.size(), "c.bin"); },
               "seq_len is 0 (expected 1..16777216)");
}

TEST_F(IoLlama2c, BadTokenizers) {
  const std::string bin = (models() / "stories260K.bin").string();
  expect_error([&] { load_model_file(bin); }, "llama2.c checkpoint needs a tokenizer");
  expect_error([&] { load_model_file(bin, (dir_ / "missing.bin").string()); },
               "missing.bin: cannot open: No such file or directory");
  const auto t = read_bytes(tok());
  std::vector<uint8_t> cut(t.begin(), t.end() - 3);
  expect_error([&] { load_model_file(bin, write("cut.bin", cut)); },
               "token 511 claims 3 bytes at offset 6224 (expected a length within the 0 remaining");
  std::vector<uint8_t> cut2(t.begin(), t.begin() + 1000);
  expect_error([&] { load_model_file(bin, write("cut2.bin", cut2)); },
               "(expected 512, the model's vocab_size)");
  std::vector<uint8_t> extra = t;
  extra.insert(extra.end(), {0, 0, 0, 0, 1, 0, 0, 0, 'x'});
  expect_error([&] { load_model_file(bin, write("extra.bin", extra)); },
               "tokenizer has 9 bytes after token 511 (expected exactly 512 tokens");
  std::vector<uint8_t> neg = t;
  const int32_t minus = -5;
  std::memcpy(neg.data() + 8, &minus, 4);
  expect_error([&] { parse_llama2c_tokenizer(neg.data(), neg.size(), 512, "neg.bin"); },
               "neg.bin: token 0 claims -5 bytes");
  expect_error([&] { parse_llama2c_tokenizer(t.data(), 2, 512, "tiny.bin"); }, "too small");
  std::vector<uint8_t> zero_max = t;
  std::memset(zero_max.data(), 0, 4);
  expect_error([&] { parse_llama2c_tokenizer(zero_max.data(), zero_max.size(), 512, "z.bin"); },
               "max_token_length is 0");
}

}  // namespace
}  // namespace longrope
