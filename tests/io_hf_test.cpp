// Hugging Face model folders: safetensors, tokenizer.json, config.json, the rotary layout,
// Qwen2 biases and Phi-3's fused weights, `export --hf-dir`, and agreement with independent
// references (folders written by scripts/make_hf_folder.py with PyPI's safetensors and
// tokenizers, NLLs from the float64 numpy forward of scripts/ref_hf_nll.py).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "longrope/context.h"
#include "longrope/export.h"
#include "longrope/hf.h"
#include "longrope/model.h"
#include "longrope/perplexity.h"
#include "longrope/quant.h"
#include "longrope/safetensors.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// --- safetensors ------------------------------------------------------------------------------

std::vector<uint8_t> st_image(const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> out(8 + header.size() + data_bytes, 0);
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

TEST(IoSafetensors, WritesAndReadsBack) {
  const fs::path d = test::fresh_temp_dir("st");
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<uint16_t> h = {fp32_to_fp16(0.5f), fp32_to_fp16(-2.0f), fp32_to_fp16(3.0f)};
  SafetensorsOut b16;
  b16.name = "c";
  b16.type = GgmlType::BF16;
  b16.shape = {2};
  b16.make = [] {
    std::vector<uint8_t> v(4);
    const uint16_t x[2] = {fp32_to_bf16(1.5f), fp32_to_bf16(-7.0f)};
    std::memcpy(v.data(), x, 4);
    return v;
  };
  write_safetensors((d / "m.safetensors").string(), {{"a", GgmlType::F32, {2, 3}, a.data(), 24, {}},
                                                     {"b", GgmlType::F16, {3}, h.data(), 6, {}},
                                                     b16});
  const auto f = SafetensorsFile::open((d / "m.safetensors").string());
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  const SafetensorsTensor* ta = f->find("a");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ta->type, GgmlType::F32);
  EXPECT_EQ(std::memcmp(ta->data, a.data(), 24), 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ta->data) % 8, 0u);  // 8-byte aligned data
  const SafetensorsTensor* tb = f->find("b");
  ASSERT_NE(tb, nullptr);
  EXPECT_EQ(tb->type, GgmlType::F16);
  EXPECT_EQ(std::memcmp(tb->data, h.data(), 6), 0);
  const SafetensorsTensor* tc = f->find("c");
  ASSERT_NE(tc, nullptr);
  uint16_t c[2];
  std::memcpy(c, tc->data, 4);
  EXPECT_EQ(bf16_to_fp32(c[0]), 1.5f);
  EXPECT_EQ(bf16_to_fp32(c[1]), -7.0f);
  fs::remove_all(d);
}

TEST(IoSafetensors, BrokenHeadersAreOneLineErrors) {
  auto parse = [](const std::vector<uint8_t>& img) {
    SafetensorsFile::parse(img.data(), img.size(), "x.safetensors");
  };
  std::vector<uint8_t> tiny = {1, 2, 3};
  test::expect_error([&] { parse(tiny); }, {"x.safetensors", "3 bytes"});
  auto big = st_image("{}", 0);
  big[0] = 0xff;
  big[1] = 0xff;
  test::expect_error([&] { parse(big); }, {"x.safetensors", "header length", "does not fit"});
  test::expect_error([&] { parse(st_image("{not json", 0)); }, {"not valid JSON"});
  test::expect_error(
      [&] { parse(st_image(R"({"w":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", 8)); },
      {"tensor w", "dtype I64", "expected F32, F16 or BF16"});
  test::expect_error(
      [&] { parse(st_image(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8)); },
      {"tensor w", "outside the 8 data bytes"});
  test::expect_error(
      [&] { parse(st_image(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)); },
      {"tensor w", "hold 8 bytes (expected 12"});
  test::expect_error(
      [&] {
        parse(st_image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                       12));
      },
      {"overlap"});
  test::expect_error([&] { parse(st_image(R"({"w":{"dtype":"F32","shape":[1]}})", 4)); },
                     {"tensor w", "data_offsets missing"});
}

// --- folders ----------------------------------------------------------------------------------

std::string stories() {
  return test::stories_gguf().string();
}
std::string moby() {
  return test::shared_text("moby-dick.txt").string();
}

std::vector<int32_t> window_ids(const Model& m, size_t n) {
  std::vector<int32_t> ids = m.tokenizer().encode(normalize_newlines(test::slurp(moby())));
  ids.resize(n - 1);
  ids.insert(ids.begin(), m.tokenizer().bos());
  return ids;
}

std::vector<double> nll(const Model& m, const std::vector<int32_t>& ids,
                        const RopeScaling& scaling) {
  ScoreOptions o;
  o.compute = kernels::Compute::kF32;
  return score_window(m, ids, scaling, o);
}

TEST(IoHf, ExportedFolderScoresAsTheGguf) {
  LONGROPE_REQUIRE_FILE(stories());
  LONGROPE_REQUIRE_FILE(moby());
  const fs::path d = test::fresh_temp_dir("hf_export");
  export_hf_folder(stories(), "", nullptr, (d / "plain").string(), "f32");
  const auto g = Model::load(stories());
  const auto h = Model::load((d / "plain").string());
  EXPECT_EQ(h->file().format, "hf");
  EXPECT_EQ(h->hp().n_ctx_train, 512);
  EXPECT_EQ(h->hp().n_head_kv, g->hp().n_head_kv);
  // Same tokens (the SentencePiece vocabulary through tokenizer.json), same NLL to the bit: the
  // weights are F32 in both and the q/k rows come back in the engine's order.
  const std::string text = normalize_newlines(test::slurp(moby())).substr(0, 20000);
  EXPECT_EQ(h->tokenizer().encode(text), g->tokenizer().encode(text));
  const auto ids = window_ids(*g, 400);
  EXPECT_EQ(nll(*h, ids, h->default_rope()), nll(*g, ids, RopeScaling{}));

  // The file holds HF's half-split layout: q_proj row h*hd + i is the engine's row h*hd + 2i.
  const auto st = SafetensorsFile::open((d / "plain" / "model.safetensors").string());
  const SafetensorsTensor* q = st->find("model.layers.0.self_attn.q_proj.weight");
  ASSERT_NE(q, nullptr);
  const TensorRef& gq = g->file().get("blk.0.attn_q.weight");
  const int64_t hd = g->hp().head_dim, cols = g->hp().n_embd;
  const auto* qf = reinterpret_cast<const float*>(q->data);
  const auto* gf = reinterpret_cast<const float*>(gq.data);
  for (int64_t head : {int64_t{0}, int64_t{g->hp().n_head - 1}})
    for (int64_t i = 0; i < hd / 2; ++i) {
      EXPECT_EQ(qf[(head * hd + i) * cols], gf[(head * hd + 2 * i) * cols]);
      EXPECT_EQ(qf[(head * hd + hd / 2 + i) * cols], gf[(head * hd + 2 * i + 1) * cols]);
    }

  // With factors: a longrope rope_scaling that scores as --factors on the GGUF.
  RopeScaling f;
  f.method = RopeMethod::kLongrope;
  f.orig_ctx = 512;
  f.target_ctx = 2048;
  f.sets.push_back(FactorSet{{1.0, 1.0, 1.25, 1.5}, 512});
  f.sets.push_back(FactorSet{{1.0, 1.5, 2.25, 3.5}, 0});
  export_hf_folder(stories(), "", &f, (d / "long").string(), "f32");
  const auto cfg = json::parse(test::slurp(d / "long" / "config.json"));
  EXPECT_EQ(cfg["max_position_embeddings"], 2048);
  EXPECT_EQ(cfg["rope_scaling"]["rope_type"], "longrope");
  EXPECT_EQ(cfg["rope_scaling"]["original_max_position_embeddings"], 512);
  const auto l = Model::load((d / "long").string());
  for (size_t n : {size_t{300}, size_t{1500}}) {
    const auto w = window_ids(*g, n);
    EXPECT_EQ(nll(*l, w, l->default_rope()), nll(*g, w, f)) << n;
  }
  fs::remove_all(d);
}

// Runs a Python script of the project; skips (fails with CI=true) without its packages.
bool python_ready(std::string* why) {
  std::string log;
  if (test::run_command("python3 -c 'import numpy, gguf, safetensors, tokenizers'", &log) == 0)
    return true;
  *why =
      "python3 with numpy, gguf, safetensors and tokenizers is needed (scripts/setup.sh): " + log;
  return false;
}

void run_script(const std::string& script, const std::string& args) {
  const std::string cmd =
      fmt::format("python3 '{}' {}", (test::source_dir() / "scripts" / script).string(), args);
  std::string log;
  ASSERT_EQ(test::run_command(cmd, &log), 0) << cmd << "\n" << log;
}

std::string q(const fs::path& p) {
  return fmt::format("'{}'", p.string());
}

// NLLs of the folder's model from the independent numpy forward pass.
std::vector<double> ref_nll(const fs::path& folder, const std::vector<int32_t>& ids,
                            const fs::path& tmp) {
  std::ofstream(tmp / "ids.json") << json(ids).dump();
  run_script("ref_hf_nll.py", q(folder) + " " + q(tmp / "ids.json") + " " + q(tmp / "ref.json"));
  return json::parse(test::slurp(tmp / "ref.json"))["nll"].get<std::vector<double>>();
}

double worst_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double w = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) w = std::max(w, std::fabs(a[i] - b[i]));
  return w;
}

TEST(IoHf, ScriptFoldersMatchTheGgufAndAnIndependentReference) {
  LONGROPE_REQUIRE_FILE(stories());
  LONGROPE_REQUIRE_FILE(moby());
  std::string why;
  if (!python_ready(&why)) LONGROPE_SKIP_OR_FAIL(why);
  const fs::path d = test::fresh_temp_dir("hf_script");
  const auto g = Model::load(stories());
  const auto ids = window_ids(*g, 300);

  // Llama, F32 in two shards with an index: the same model as the GGUF, to the bit.
  run_script("make_hf_folder.py", q(stories()) + " " + q(d / "llama") + " --shards 2");
  ASSERT_TRUE(fs::exists(d / "llama" / "model.safetensors.index.json"));
  const auto llama = Model::load((d / "llama").string());
  EXPECT_EQ(nll(*llama, ids, llama->default_rope()), nll(*g, ids, RopeScaling{}));
  // Its tokenizer.json is SentencePiece as HF writes it (merges from the scores, byte fallback,
  // a Prepend/Replace normalizer): read back, it tokenizes as the GGUF vocabulary.
  const std::string text = normalize_newlines(test::slurp(moby())).substr(0, 20000);
  EXPECT_EQ(llama->tokenizer().encode(text), g->tokenizer().encode(text));

  // BF16 weights, Qwen2 with random q/k/v biases (F16), Phi-3's fused qkv / gate_up with a
  // longrope rope_scaling (two sets, 512 -> 2048, 700 tokens: the long set): against the float64
  // reference. Measured worst token NLL differences (float32 engine against float64): bf16
  // 1.7e-5, qwen2 8.4e-6, phi3 4.5e-5; the bounds leave a margin of 4-6x.
  struct Case {
    const char* name;
    std::string args;
    size_t n;
    double tol;
  };
  const std::string phi_scaling = R"('{"type": "longrope", "short_factor": [1.0, 1.0, 1.25, 1.5], )"
                                  R"("long_factor": [1.0, 1.5, 2.25, 3.5]}')";
  for (const Case& c :
       {Case{"bf16", "--dtype bf16", 300, 1e-4},
        Case{"qwen2", "--arch qwen2 --dtype f16 --seed 7", 300, 5e-5},
        Case{"phi3", "--arch phi3 --max-pos 2048 --rope-scaling " + phi_scaling, 700, 2e-4}}) {
    SCOPED_TRACE(c.name);
    const fs::path dir = d / c.name;
    run_script("make_hf_folder.py", q(stories()) + " " + q(dir) + " " + c.args);
    const auto m = Model::load(dir.string());
    const auto w = window_ids(*g, c.n);
    const std::vector<double> got = nll(*m, w, m->default_rope());
    const std::vector<double> want = ref_nll(dir, w, d);
    const double worst = worst_diff(got, want);
    std::printf("HF folder %s vs numpy reference: worst token NLL %.3g\n", c.name, worst);
    EXPECT_LT(worst, c.tol);
  }
  // The biases matter: the Qwen2 folder does not score as the plain model.
  const auto qwen = Model::load((d / "qwen2").string());
  EXPECT_GT(worst_diff(nll(*qwen, ids, RopeScaling{}), nll(*g, ids, RopeScaling{})), 0.01);
  fs::remove_all(d);
}

TEST(IoHf, SmolLmFolderTokenizesLikeHfTokenizersAndScoresAsTheGguf) {
  LONGROPE_REQUIRE_FILE(test::smollm_path());
  LONGROPE_REQUIRE_FILE(moby());
  std::string why;
  if (!python_ready(&why)) LONGROPE_SKIP_OR_FAIL(why);
  const fs::path d = test::fresh_temp_dir("hf_smollm");
  // 20,000 characters of two novels, with their punctuation, digits and line breaks.
  std::string text = normalize_newlines(test::slurp(moby())).substr(5000, 10000);
  text += normalize_newlines(test::slurp(test::shared_text("ulysses.txt"))).substr(20000, 10000);
  { std::ofstream(d / "text.txt", std::ios::binary) << text; }
  run_script("make_hf_folder.py", q(test::smollm_path()) + " " + q(d / "m") + " --encode " +
                                      q(d / "text.txt") + " " + q(d / "ids.json"));
  const auto hf_ids = json::parse(test::slurp(d / "ids.json"))["ids"].get<std::vector<int32_t>>();
  const auto g = Model::load(test::smollm_path().string());
  const auto h = Model::load((d / "m").string());
  EXPECT_EQ(h->tokenizer().spec().pre, "smollm");
  EXPECT_EQ(h->tokenizer().encode(text), hf_ids);
  EXPECT_EQ(g->tokenizer().encode(text), hf_ids);
  EXPECT_EQ(h->tokenizer().encode("<|im_start|>user", true),
            g->tokenizer().encode("<|im_start|>user", true));
  EXPECT_EQ(h->tokenizer().add_bos(), g->tokenizer().add_bos());
  EXPECT_EQ(h->tokenizer().spec().chat_template, g->tokenizer().spec().chat_template);
  const auto ids = window_ids(*g, 256);
  EXPECT_EQ(nll(*h, ids, RopeScaling{}), nll(*g, ids, RopeScaling{}));
  fs::remove_all(d);
}

// A copy of the exported stories folder with one file changed.
fs::path broken_copy(const fs::path& good, const fs::path& root, const std::string& tag) {
  const fs::path d = root / tag;
  fs::copy(good, d, fs::copy_options::recursive);
  return d;
}

void edit_json(const fs::path& p, const std::function<void(json&)>& f) {
  json j = json::parse(test::slurp(p));
  f(j);
  std::ofstream(p) << j.dump();
}

TEST(IoHf, BrokenFoldersAreOneLineErrors) {
  LONGROPE_REQUIRE_FILE(stories());
  const fs::path root = test::fresh_temp_dir("hf_broken");
  const fs::path good = root / "good";
  export_hf_folder(stories(), "", nullptr, good.string(), "f32");
  auto load = [](const fs::path& p) { (void)load_model_file(p.string()); };

  fs::create_directories(root / "empty");
  test::expect_error([&] { load(root / "empty"); }, {"no config.json", "Hugging Face"});

  fs::path d = broken_copy(good, root, "gpt2");
  edit_json(d / "config.json", [](json& j) { j["model_type"] = "gpt2"; });
  test::expect_error([&] { load(d); }, {"config.json", "model_type \"gpt2\"", "expected llama"});

  d = broken_copy(good, root, "sliding");
  edit_json(d / "config.json", [](json& j) {
    j["model_type"] = "mistral";
    j["sliding_window"] = 256;
  });
  test::expect_error([&] { load(d); }, {"sliding_window 256", "not supported"});

  d = broken_copy(good, root, "notok");
  fs::remove(d / "tokenizer.json");
  test::expect_error([&] { load(d); }, {"no tokenizer.json"});

  d = broken_copy(good, root, "wordpiece");
  edit_json(d / "tokenizer.json", [](json& j) { j["model"]["type"] = "WordPiece"; });
  test::expect_error([&] { load(d); }, {"tokenizer.json", "model.type", "WordPiece"});

  d = broken_copy(good, root, "nontext");  // a field of the wrong JSON type
  edit_json(d / "tokenizer.json", [](json& j) { j["normalizer"] = {{"type", 5}}; });
  test::expect_error([&] { load(d); }, {"tokenizer.json", "unexpected type"});

  d = broken_copy(good, root, "noweights");
  fs::remove(d / "model.safetensors");
  test::expect_error([&] { load(d); }, {"no model.safetensors"});

  d = broken_copy(good, root, "missing_layer");
  edit_json(d / "config.json", [](json& j) { j["num_hidden_layers"] = 6; });
  test::expect_error([&] { load(d); }, {"blk.5.attn_norm.weight not found"});

  d = broken_copy(good, root, "act");
  edit_json(d / "config.json", [](json& j) { j["hidden_act"] = "gelu"; });
  test::expect_error([&] { load(d); }, {"hidden_act is \"gelu\"", "expected silu"});

  d = broken_copy(good, root, "index");
  fs::rename(d / "model.safetensors", d / "part1.safetensors");
  {
    std::ofstream(d / "model.safetensors.index.json")
        << R"({"weight_map": {"model.norm.weight": "part1.safetensors", "lm_head.weight": "part1.safetensors"}})";
  }
  test::expect_error([&] { load(d); }, {"part1.safetensors", "lm_head.weight not found"});

  d = broken_copy(good, root, "badrope");
  edit_json(d / "config.json", [](json& j) { j["rope_scaling"] = {{"rope_type", "linear"}}; });
  test::expect_error([&] { load(d); }, {"config.json", "rope_scaling.factor", "missing"});

  fs::remove_all(root);
}

// A Llama 3 rope_scaling in config.json becomes the frequency divisors a Llama 3 GGUF carries
// (rope_freqs), so that scalings chosen later (and searched factors) compose with it.
TEST(IoHf, Llama3ScalingBecomesFrequencyFactors) {
  LONGROPE_REQUIRE_FILE(stories());
  const fs::path root = test::fresh_temp_dir("hf_llama3");
  export_hf_folder(stories(), "", nullptr, (root / "m").string(), "f32");
  const json rs = {{"rope_type", "llama3"},
                   {"factor", 8.0},
                   {"low_freq_factor", 1.0},
                   {"high_freq_factor", 4.0},
                   {"original_max_position_embeddings", 64}};
  edit_json(root / "m" / "config.json", [&](json& j) { j["rope_scaling"] = rs; });
  const auto m = Model::load((root / "m").string());
  EXPECT_EQ(m->default_rope().method, RopeMethod::kNone);
  RopeScaling l3;
  l3.method = RopeMethod::kLlama3;
  l3.factor = 8.0;
  l3.orig_ctx = 64;
  const int n_rot = m->hp().n_rot;
  const RopeTables t = l3.tables(64, n_rot, m->hp().rope_base, 64);
  const std::vector<double> w = default_inv_freq(n_rot, m->hp().rope_base);
  ASSERT_EQ(m->default_rope().freq_factors.size(), w.size());
  for (size_t j = 0; j < w.size(); ++j)
    EXPECT_DOUBLE_EQ(m->default_rope().freq_factors[j], w[j] / t.inv_freq[j]) << j;
  EXPECT_GT(m->default_rope().freq_factors.back(), 1.0);  // the low frequencies are divided
  fs::remove_all(root);
}

TEST(IoHf, AFolderKeepsItsNameWithATrailingSlash) {
  EXPECT_EQ(path_name("models/SmolLM2-hf/"), "SmolLM2-hf");
  EXPECT_EQ(path_name("models/SmolLM2-hf"), "SmolLM2-hf");
  EXPECT_EQ(path_name("../shared/models/stories260K.gguf"), "stories260K.gguf");
}

TEST(IoHf, ExportCommandLineErrors) {
  const std::string cli = test::cli_path().string();
  std::string log;
  EXPECT_EQ(test::run_command(fmt::format("'{}' export --hf-dir /tmp/x_hf_never", cli), &log), 2)
      << log;
  EXPECT_NE(log.find("error: --hf-dir writes the model given with -m"), std::string::npos) << log;
  EXPECT_NE(log.find("(see longrope export --help)"), std::string::npos) << log;
  EXPECT_EQ(test::run_command(fmt::format("'{}' export -m '{}' --hf-dir /tmp/x_hf_never -o "
                                          "/tmp/x.gguf",
                                          cli, stories()),
                              &log),
            2)
      << log;
  EXPECT_EQ(
      test::run_command(fmt::format("'{}' export -m '{}' -o /tmp/x.gguf", cli, stories()), &log), 2)
      << log;
  EXPECT_NE(log.find("--factors is required"), std::string::npos) << log;
}

}  // namespace
}  // namespace longrope
