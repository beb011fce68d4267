// RoPE scaling declared by model files: HF config.json and GGUF metadata (RopeScalingMeta).
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/model_file.h"
#include "longrope/rope.h"
#include "test_paths.h"

namespace longrope {
namespace {

using test::expect_error;

using nlohmann::json;

std::vector<double> ramp(size_t n, double step) {
  std::vector<double> v(n);
  for (size_t j = 0; j < n; ++j) v[j] = 1.0 + step * static_cast<double>(j);
  return v;
}

// ---- HF config.json ----------------------------------------------------------------------------

TEST(RopeConfig, HfNoScaling) {
  EXPECT_EQ(rope_from_hf_config(json{{"max_position_embeddings", 2048}}), RopeScaling{});
  EXPECT_EQ(rope_from_hf_config(json{{"rope_scaling", nullptr}}), RopeScaling{});
  EXPECT_EQ(rope_from_hf_config(json::parse(
                R"({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})")),
            RopeScaling{});
}

TEST(RopeConfig, HfLlama3) {
  // Llama-3.1-8B
  json cfg = json::parse(R"({
    "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}})");
  RopeScaling s = rope_from_hf_config(cfg);
  EXPECT_EQ(s.method, RopeMethod::kLlama3);
  EXPECT_EQ(s.factor, 8.0);
  EXPECT_EQ(s.low_freq_factor, 1.0);
  EXPECT_EQ(s.high_freq_factor, 4.0);
  EXPECT_EQ(s.orig_ctx, 8192);
  EXPECT_FALSE(s.attn_factor.has_value());
  cfg["rope_scaling"].erase("original_max_position_embeddings");
  expect_error([&] { rope_from_hf_config(cfg); },
               {"config.json: rope_scaling.original_max_position_embeddings: missing"});
  cfg["rope_scaling"]["original_max_position_embeddings"] = 8192;
  cfg["rope_scaling"]["high_freq_factor"] = 0.5;
  expect_error([&] { rope_from_hf_config(cfg); },
               {"config.json: rope llama3", "high_freq_factor = 0.5"});
}

TEST(RopeConfig, HfYarn) {
  // Qwen2.5 style: legacy "type" key, original length inside rope_scaling.
  json qwen = json::parse(R"({"hidden_size": 3584, "num_attention_heads": 28,
    "max_position_embeddings": 32768,
    "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}})");
  RopeScaling s = rope_from_hf_config(qwen);
  EXPECT_EQ(s.method, RopeMethod::kYarn);
  EXPECT_EQ(s.factor, 4.0);
  EXPECT_EQ(s.orig_ctx, 32768);
  EXPECT_EQ(s.beta_fast, 32.0);
  EXPECT_EQ(s.beta_slow, 1.0);
  EXPECT_TRUE(s.truncate);
  // gpt-oss / DeepSeek style fields.
  json ds = json::parse(R"({"head_dim": 64, "max_position_embeddings": 4096,
    "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 16, "beta_slow": 2,
                     "truncate": false, "mscale": 1.0, "mscale_all_dim": 0.5}})");
  s = rope_from_hf_config(ds);
  EXPECT_EQ(s.orig_ctx, 4096);  // from max_position_embeddings when not in rope_scaling
  EXPECT_EQ(s.beta_fast, 16.0);
  EXPECT_EQ(s.beta_slow, 2.0);
  EXPECT_FALSE(s.truncate);
  EXPECT_EQ(s.mscale, 1.0);
  EXPECT_EQ(s.mscale_all_dim, 0.5);
  EXPECT_DOUBLE_EQ(s.tables(0, 64, 1e4, 0).attn_factor,
                   (0.1 * std::log(32.0) + 1.0) / (0.05 * std::log(32.0) + 1.0));
  ds["rope_scaling"]["attention_factor"] = 1.0;
  EXPECT_EQ(rope_from_hf_config(ds).tables(0, 64, 1e4, 0).attn_factor, 1.0);
  ds["rope_scaling"]["truncate"] = "no";
  expect_error([&] { rope_from_hf_config(ds); },
               {"config.json: rope_scaling.truncate: expected true or false, got string"});
  // transformers v5 rope_parameters.
  json v5 = json::parse(R"({"rope_parameters": {"rope_type": "yarn", "factor": 2.0,
    "original_max_position_embeddings": 1024, "rope_theta": 10000.0}})");
  s = rope_from_hf_config(v5);
  EXPECT_EQ(s.method, RopeMethod::kYarn);
  EXPECT_EQ(s.orig_ctx, 1024);
}

TEST(RopeConfig, HfLinearDynamic) {
  RopeScaling s =
      rope_from_hf_config(json::parse(R"({"rope_scaling": {"type": "linear", "factor": 2.0}})"));
  EXPECT_EQ(s.method, RopeMethod::kLinear);
  EXPECT_EQ(s.factor, 2.0);
  s = rope_from_hf_config(json::parse(
      R"({"max_position_embeddings": 2048, "rope_scaling": {"type": "dynamic", "factor": 4}})"));
  EXPECT_EQ(s.method, RopeMethod::kDynamic);
  EXPECT_EQ(s.factor, 4.0);
  EXPECT_EQ(s.orig_ctx, 2048);
}

TEST(RopeConfig, HfLongropePhi3) {
  // Phi-3-mini-128k style: original and target lengths at the top level.
  const std::vector<double> sf = ramp(48, 0.01), lf = ramp(48, 0.5);
  json cfg = {{"hidden_size", 3072},
              {"num_attention_heads", 32},
              {"max_position_embeddings", 131072},
              {"original_max_position_embeddings", 4096},
              {"rope_theta", 10000.0},
              {"rope_scaling", {{"type", "longrope"}, {"long_factor", lf}, {"short_factor", sf}}}};
  RopeScaling s = rope_from_hf_config(cfg);
  EXPECT_EQ(s.method, RopeMethod::kLongrope);
  EXPECT_EQ(s.orig_ctx, 4096);
  EXPECT_EQ(s.target_ctx, 131072);
  ASSERT_EQ(s.sets.size(), 2u);
  EXPECT_EQ(s.sets[0], (FactorSet{sf, 4096}));
  EXPECT_EQ(s.sets[1], (FactorSet{lf, 0}));
  RopeTables t = s.tables(4096, 96, 1e4, 131072);
  EXPECT_DOUBLE_EQ(t.inv_freq[5], default_inv_freq(96, 1e4)[5] / sf[5]);
  EXPECT_DOUBLE_EQ(t.attn_factor, std::sqrt(1.0 + std::log(32.0) / std::log(4096.0)));
  t = s.tables(4097, 96, 1e4, 131072);
  EXPECT_DOUBLE_EQ(t.inv_freq[5], default_inv_freq(96, 1e4)[5] / lf[5]);

  // Early Phi-3 configs say "su".
  cfg["rope_scaling"]["type"] = "su";
  EXPECT_EQ(rope_from_hf_config(cfg), s);

  // Without original_max_position_embeddings: max_position_embeddings is the original, s = factor.
  json nof = cfg;
  nof.erase("original_max_position_embeddings");
  nof["max_position_embeddings"] = 4096;
  nof["rope_scaling"]["factor"] = 8.0;
  RopeScaling n = rope_from_hf_config(nof);
  EXPECT_EQ(n.orig_ctx, 4096);
  EXPECT_EQ(n.target_ctx, 0);
  EXPECT_EQ(n.factor, 8.0);
  EXPECT_DOUBLE_EQ(n.tables(10, 96, 1e4, 0).attn_factor,
                   std::sqrt(1.0 + std::log(8.0) / std::log(4096.0)));

  // Errors.
  json bad = cfg;
  bad["rope_scaling"].erase("long_factor");
  expect_error([&] { rope_from_hf_config(bad); },
               {"config.json: rope_scaling.long_factor: missing"});
  bad = cfg;
  bad["rope_scaling"]["long_factor"] = ramp(47, 0.5);
  expect_error([&] { rope_from_hf_config(bad, "phi3/config.json"); },
               {"phi3/config.json: rope_scaling.short_factor: has 48 values and long_factor 47"});
  bad = cfg;
  bad["rope_scaling"]["short_factor"][3] = "x";
  expect_error([&] { rope_from_hf_config(bad); },
               {"config.json: rope_scaling.short_factor[3]: expected a number, got string"});
  bad = cfg;
  bad["rope_scaling"]["short_factor"][3] = 0.9;
  expect_error([&] { rope_from_hf_config(bad); }, {"set 0 factor[3] = 0.9"});
}

TEST(RopeConfig, HfErrors) {
  expect_error(
      [] {
        rope_from_hf_config(json::parse(R"({"rope_scaling": {"type": "linear", "factor": "2"}})"));
      },
      {"config.json: rope_scaling.factor: expected a number, got string"});
  expect_error([] { rope_from_hf_config(json::parse(R"({"rope_scaling": {"type": "linear"}})")); },
               {"rope_scaling.factor: missing"});
  expect_error([] { rope_from_hf_config(json::parse(R"({"rope_scaling": {"type": "mrope"}})")); },
               {"rope_scaling.type: unknown rope method 'mrope'"});
  expect_error([] { rope_from_hf_config(json::parse(R"({"rope_scaling": {"factor": 2}})")); },
               {"rope_scaling.rope_type: missing"});
  expect_error([] { rope_from_hf_config(json::parse(R"({"rope_scaling": [1, 2]})")); },
               {"rope_scaling: expected an object or null, got array"});
  expect_error([] { rope_from_hf_config(json::parse(R"([1])")); }, {"expected a JSON object"});
  // Rotary dims beyond int (once undefined behaviour in the conversion).
  expect_error(
      [] {
        rope_from_hf_config(
            json::parse(R"({"head_dim": 1e12, "rope_scaling": {"type": "linear", "factor": 2}})"));
      },
      {"config.json: rotary dims head_dim 1000000000000", "expected a positive even number"});
  expect_error(
      [] {
        rope_from_hf_config(json::parse(
            R"({"head_dim": 64, "partial_rotary_factor": 1e300, "rope_scaling": {"type": "linear", "factor": 2}})"));
      },
      {"partial_rotary_factor 1e+300"});
}

// ---- GGUF metadata -----------------------------------------------------------------------------

std::vector<float> framp(size_t n, float step) {
  std::vector<float> v(n);
  for (size_t j = 0; j < n; ++j) v[j] = 1.0f + step * static_cast<float>(j);
  return v;
}

TEST(RopeConfig, MetaNoneAndRopeFreqs) {
  RopeScalingMeta m;
  EXPECT_EQ(rope_from_meta(m, 8, 512), RopeScaling{});
  m.type = "none";
  m.rope_freqs = {1.0f, 1.0f, 2.0f, 8.0f};
  RopeScaling s = rope_from_meta(m, 8, 512);
  EXPECT_EQ(s.method, RopeMethod::kNone);
  EXPECT_EQ(s.freq_factors, (std::vector<double>{1.0, 1.0, 2.0, 8.0}));
  EXPECT_DOUBLE_EQ(s.tables(10, 8, 1e4, 512).inv_freq[3], 0.001 / 8.0);
  m.rope_freqs.pop_back();
  expect_error([&] { rope_from_meta(m, 8, 512); }, {"rope_freqs.weight has 3 values; expected 4"});
}

TEST(RopeConfig, MetaLinearYarn) {
  RopeScalingMeta m;
  m.type = "linear";
  expect_error([&] { rope_from_meta(m, 8, 512); }, {"type linear without rope.scaling.factor"});
  m.factor = 4.0;
  RopeScaling s = rope_from_meta(m, 8, 512);
  EXPECT_EQ(s.method, RopeMethod::kLinear);
  EXPECT_EQ(s.factor, 4.0);

  RopeScalingMeta y;
  y.type = "yarn";
  y.factor = 4.0;
  y.original_context_length = 512;
  y.yarn_beta_fast = 16.0;
  y.yarn_beta_slow = 2.0;
  s = rope_from_meta(y, 8, 2048);
  EXPECT_EQ(s.method, RopeMethod::kYarn);
  EXPECT_EQ(s.orig_ctx, 512);
  EXPECT_EQ(s.beta_fast, 16.0);
  EXPECT_EQ(s.beta_slow, 2.0);
  EXPECT_FALSE(s.attn_factor.has_value());
  const double a = 0.1 * std::log(4.0) + 1.0;
  EXPECT_DOUBLE_EQ(s.tables(2048, 8, 1e4, 2048).attn_factor, a);
  y.attn_factor = 0.5;  // ggml multiplies it by the YaRN factor
  EXPECT_DOUBLE_EQ(rope_from_meta(y, 8, 2048).tables(2048, 8, 1e4, 2048).attn_factor, 0.5 * a);
  y.attn_factor.reset();
  y.yarn_log_multiplier = 0.1;  // mscale_all_dim 1 -> ratio m(s,1)/m(s,1) = 1
  s = rope_from_meta(y, 8, 2048);
  EXPECT_EQ(s.mscale, 1.0);
  EXPECT_DOUBLE_EQ(*s.mscale_all_dim, 1.0);
  EXPECT_DOUBLE_EQ(s.tables(2048, 8, 1e4, 2048).attn_factor, 1.0);
  y.yarn_log_multiplier.reset();
  y.yarn_ext_factor = 0.5;
  expect_error([&] { rope_from_meta(y, 8, 2048); }, {"yarn_ext_factor = 0.5 is not supported"});
  y.yarn_ext_factor = -1.0;  // "default"
  rope_from_meta(y, 8, 2048);

  RopeScalingMeta u;
  u.type = "foo";
  u.factor = 2.0;
  expect_error([&] { rope_from_meta(u, 8, 512); },
               {"rope.scaling.type: unknown rope method 'foo'"});
}

TEST(RopeConfig, MetaLongropePhi3) {
  RopeScalingMeta m;  // Phi-3 GGUF: no type key, two tensors, original length, attn factor
  m.factors_long = framp(4, 0.5f);
  m.factors_short = framp(4, 0.125f);
  m.original_context_length = 4096;
  m.attn_factor = 1.1902380714238083;
  RopeScaling s = rope_from_meta(m, 8, 131072);
  EXPECT_EQ(s.method, RopeMethod::kLongrope);
  EXPECT_EQ(s.orig_ctx, 4096);
  EXPECT_EQ(s.target_ctx, 131072);
  ASSERT_EQ(s.sets.size(), 2u);
  EXPECT_EQ(s.sets[0], (FactorSet{{1.0, 1.125, 1.25, 1.375}, 4096}));
  EXPECT_EQ(s.sets[1], (FactorSet{{1.0, 1.5, 2.0, 2.5}, 0}));
  EXPECT_EQ(s.tables(100, 8, 1e4, 131072).attn_factor, 1.1902380714238083);
  EXPECT_EQ(longrope_set_index(s.sets, 4096), 0u);
  EXPECT_EQ(longrope_set_index(s.sets, 4097), 1u);
  // Without the attn_factor key: the sqrt rule from context_length / original.
  m.attn_factor.reset();
  EXPECT_DOUBLE_EQ(rope_from_meta(m, 8, 131072).tables(100, 8, 1e4, 131072).attn_factor,
                   std::sqrt(1.0 + std::log(32.0) / std::log(4096.0)));
  // One set.
  RopeScalingMeta one;
  one.type = "longrope";
  one.factors_long = framp(4, 1.0f);
  s = rope_from_meta(one, 8, 2048);
  ASSERT_EQ(s.sets.size(), 1u);
  EXPECT_EQ(s.sets[0].max_len, 0);
  EXPECT_EQ(s.orig_ctx, 2048);
  // Errors.
  RopeScalingMeta bad = m;
  bad.factors_long = framp(3, 0.5f);
  expect_error([&] { rope_from_meta(bad, 8, 131072); },
               {"rope_factors_long.weight has 3 values; expected 4"});
  bad = m;
  bad.factors_long.clear();
  expect_error([&] { rope_from_meta(bad, 8, 131072); },
               {"rope_factors_short.weight but no rope_factors_long.weight"});
  RopeScalingMeta empty_lr;
  empty_lr.type = "longrope";
  expect_error([&] { rope_from_meta(empty_lr, 8, 131072); },
               {"type longrope but no rope_factors_long.weight"});
  bad = m;
  bad.type = "yarn";
  expect_error([&] { rope_from_meta(bad, 8, 131072); }, {"type 'yarn' together with rope_factors"});
  bad = m;
  bad.factors_long[2] = 0.5f;
  expect_error([&] { rope_from_meta(bad, 8, 131072); },
               {"model rope scaling: rope longrope: set 1 factor[2] = 0.5"});
}

}  // namespace
}  // namespace longrope
