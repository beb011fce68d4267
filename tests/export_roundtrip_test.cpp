// `longrope export`: GGUF round trip (same perplexity as --factors) and HF config output.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "longrope/error.h"
#include "longrope/export.h"
#include "longrope/gguf.h"
#include "longrope/model.h"
#include "longrope/perplexity.h"
#include "longrope/rope.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;
using test::slurp;

fs::path temp_dir(const std::string& tag) {
  return test::fresh_temp_dir("export_" + tag);
}

std::string model_path() {
  return (test::shared_dir() / "models" / "stories260K.gguf").string();
}
std::string text_path() {
  return (test::shared_dir() / "data" / "moby-dick.txt").string();
}

// Factors exactly representable in F32 (GGUF stores F32), so the round trip is bit-exact.
RopeScaling test_factors(bool two_sets, int64_t n_hat = 0, int64_t short_max_len = 512,
                         std::optional<double> short_attn = std::nullopt) {
  RopeScaling s;
  s.method = RopeMethod::kLongrope;
  s.orig_ctx = 512;
  s.target_ctx = 2048;
  s.attn_factor = 1.125;
  s.n_hat = n_hat;
  if (two_sets) s.sets.push_back(FactorSet{{1.0, 1.0, 1.25, 1.5}, short_max_len, short_attn});
  s.sets.push_back(FactorSet{{1.0, 1.5, 2.25, 3.5}, 0});
  return s;
}

TEST(ExportGguf, RoundTripGivesIdenticalPerplexity) {
  LONGROPE_REQUIRE_FILE(model_path());
  LONGROPE_REQUIRE_FILE(text_path());
  const fs::path d = temp_dir("gguf");
  const auto src = Model::load(model_path());
  const std::vector<int32_t> tokens =
      src->tokenizer().encode(normalize_newlines(slurp(text_path())));
  // One set, two sets, and both with start tokens (n_hat) and a short set that ends before
  // L_orig, and a short set with its own attention factor: those travel in longrope's own keys
  // (longrope.n_hat, longrope.short_max_len, longrope.short_attn_factor), and export warns.
  struct Case {
    bool two;
    int64_t n_hat, short_max;
    std::optional<double> short_attn;
  };
  for (const Case& c : {Case{false, 0, 512, {}}, Case{true, 0, 512, {}}, Case{false, 4, 512, {}},
                        Case{true, 8, 300, {}}, Case{true, 0, 512, 1.0}}) {
    const bool two = c.two;
    const std::string tag = std::to_string(two) + "_" + std::to_string(c.n_hat) + "_" +
                            std::to_string(c.short_max) + (c.short_attn ? "_a" : "");
    const std::string fpath = (d / ("f" + tag + ".json")).string();
    const std::string out = (d / ("m" + tag + ".gguf")).string();
    write_factors_file(fpath, test_factors(two, c.n_hat, c.short_max, c.short_attn));
    const std::string cmd = "'" + test::cli_path().string() + "' export -m '" + model_path() +
                            "' --factors '" + fpath + "' -o '" + out + "'";
    std::string log;
    ASSERT_EQ(test::run_command(cmd, &log), 0) << log;
    EXPECT_EQ(log.find("short set's attention factor 1:") != std::string::npos,
              c.short_attn.has_value())
        << log;

    const auto g = GgufFile::open(out);
    EXPECT_EQ(g->get_int("llama.context_length"), 2048);
    EXPECT_EQ(g->get_int("llama.rope.scaling.original_context_length"), 512);
    EXPECT_EQ(g->get_number("llama.rope.scaling.attn_factor"), 1.125);
    EXPECT_EQ(g->find_tensor("rope_freqs.weight") != nullptr, !two);
    EXPECT_EQ(g->find_tensor("rope_factors_long.weight") != nullptr, two);
    // llama.cpp reads rope_factors_long/short only under scaling type longrope, and rope_freqs
    // only without it; either mismatch makes it refuse the file ("wrong number of tensors").
    EXPECT_EQ(g->has("llama.rope.scaling.type"), two);
    if (two) {
      EXPECT_EQ(g->get<std::string>("llama.rope.scaling.type"), "longrope");
    }
    EXPECT_EQ(g->tensors().size(),
              GgufFile::open(model_path())->tensors().size() + (two ? 2u : 1u));

    const auto dst = Model::load(out);
    const RopeScaling factors = read_factors_file(fpath);
    EXPECT_EQ(dst->default_rope().n_hat, c.n_hat);
    for (int64_t ctx : {int64_t(2048), int64_t(512), int64_t(400)}) {
      const auto a = perplexity(*src, tokens, ctx, 1, factors, 1);
      const auto b = perplexity(*dst, tokens, ctx, 1, dst->default_rope(), 1);
      EXPECT_EQ(a.ppl, b.ppl) << tag << " ctx " << ctx;
    }
  }
  fs::remove_all(d);
}

TEST(ExportGguf, RefusesNonLongropeFactors) {
  LONGROPE_REQUIRE_FILE(model_path());
  RopeScaling s;
  s.method = RopeMethod::kLinear;
  s.factor = 2;
  EXPECT_THROW(export_gguf(model_path(), s, "/nonexistent/x.gguf"), Error);
}

TEST(ExportHf, ConfigHasLongropeScalingAndReadsBack) {
  const nlohmann::json cfg = {{"model_type", "llama"},
                              {"hidden_size", 64},
                              {"num_attention_heads", 8},
                              {"max_position_embeddings", 512},
                              {"rope_theta", 10000.0}};
  for (bool two : {false, true}) {
    const RopeScaling f = test_factors(two);
    const nlohmann::json out = export_hf_config(cfg, f);
    EXPECT_EQ(out["model_type"], "llama");
    EXPECT_EQ(out["max_position_embeddings"], 2048);
    const auto& rs = out["rope_scaling"];
    EXPECT_EQ(rs["rope_type"], "longrope");
    EXPECT_EQ(rs["original_max_position_embeddings"], 512);
    EXPECT_EQ(rs["factor"], 4.0);
    EXPECT_EQ(rs["attention_factor"], 1.125);
    EXPECT_EQ(rs["long_factor"].get<std::vector<double>>(), f.sets.back().factors);
    EXPECT_EQ(rs["short_factor"].get<std::vector<double>>(), f.sets.front().factors);
    const RopeScaling back = rope_from_hf_config(nlohmann::json::parse(out.dump()));
    EXPECT_EQ(back.method, RopeMethod::kLongrope);
    EXPECT_EQ(back.orig_ctx, 512);
    ASSERT_FALSE(back.sets.empty());
    EXPECT_EQ(back.sets.back().factors, f.sets.back().factors);
    EXPECT_EQ(back.sets.front().factors, f.sets.front().factors);
    EXPECT_EQ(back.attn_factor.value_or(0), 1.125);
    EXPECT_FALSE(rs.contains("n_hat"));
  }
  // Start tokens travel as rope_scaling.n_hat (longrope reads it back; transformers ignores it).
  const nlohmann::json with_hat = export_hf_config(cfg, test_factors(true, 4));
  EXPECT_EQ(with_hat["rope_scaling"]["n_hat"], 4);
  EXPECT_EQ(rope_from_hf_config(with_hat).n_hat, 4);
  // The config of another model: other rotary pairs, another trained context.
  nlohmann::json other = cfg;
  other["num_attention_heads"] = 4;  // head_dim 16: 8 pairs for 4 factors
  test::expect_error([&] { export_hf_config(other, test_factors(false)); },
                     {"8 rotary pairs", "4 factors"});
  other = cfg;
  other["head_dim"] = 8;
  other["partial_rotary_factor"] = 0.5;  // 2 pairs
  test::expect_error([&] { export_hf_config(other, test_factors(false)); },
                     {"2 rotary pairs", "4 factors"});
  other = cfg;
  other["max_position_embeddings"] = 8192;
  test::expect_error([&] { export_hf_config(other, test_factors(false)); },
                     {"trained at 8192 tokens", "extends 512"});
  // Another rotary base than the one the factors were searched on (their provenance's rope_base);
  // rope_theta absent reads as 10000, as transformers reads it.
  other = cfg;
  other["rope_theta"] = 100000.0;
  test::expect_error([&] { export_hf_config(other, test_factors(false), 10000.0); },
                     {"rope_theta 100000", "rope base 10000"});
  EXPECT_NO_THROW(export_hf_config(other, test_factors(false), 100000.0));
  other.erase("rope_theta");
  EXPECT_NO_THROW(export_hf_config(other, test_factors(false), 10000.0));
  test::expect_error([&] { export_hf_config(other, test_factors(false), 500000.0); },
                     {"rope_theta 10000"});
  // An exported config again (longrope: its original context counts, not its new maximum).
  EXPECT_NO_THROW(export_hf_config(export_hf_config(cfg, test_factors(false)), test_factors(true)));
}

TEST(ExportHf, CliWritesConfig) {
  const fs::path d = temp_dir("hf");
  const std::string fpath = (d / "f.json").string();
  write_factors_file(fpath, test_factors(false));
  std::ofstream((d / "config.json").string())
      << R"({"hidden_size": 64, "num_attention_heads": 8, "max_position_embeddings": 512})";
  std::string log;
  const std::string cli = "'" + test::cli_path().string() + "' export --factors '" + fpath + "' ";
  ASSERT_EQ(test::run_command(cli + "--hf-config '" + (d / "config.json").string() + "' -o '" +
                                  (d / "out.json").string() + "'",
                              &log),
            0)
      << log;
  const auto out = nlohmann::json::parse(slurp((d / "out.json").string()));
  EXPECT_EQ(out["max_position_embeddings"], 2048);
  EXPECT_EQ(out["rope_scaling"]["rope_type"], "longrope");
  // Neither or both of -m / --hf-config: one clear error.
  EXPECT_NE(test::run_command(cli + "-o '" + (d / "x").string() + "'", &log), 0);
  EXPECT_NE(log.find("exactly one of"), std::string::npos) << log;
  // The output may not be an input (it would be overwritten) nor a device; an unwritable place
  // fails and leaves nothing behind.
  const std::string cfg = (d / "config.json").string();
  const std::string before = slurp(cfg);
  EXPECT_EQ(test::run_command(cli + "--hf-config '" + cfg + "' -o '" + cfg + "'", &log), 2);
  EXPECT_NE(log.find("is the input"), std::string::npos) << log;
  EXPECT_EQ(slurp(cfg), before);
  EXPECT_NE(test::run_command(cli + "--hf-config '" + cfg + "' -o /dev/null", &log), 0);
  EXPECT_NE(log.find("not a regular file"), std::string::npos) << log;
  EXPECT_NE(test::run_command(cli + "--hf-config '" + cfg + "' -o /nonexistent/d/o.json", &log), 0);
  EXPECT_NE(log.find("cannot write /nonexistent/d/o.json"), std::string::npos) << log;
  fs::remove_all(d);
}

}  // namespace
}  // namespace longrope
