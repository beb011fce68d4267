// --deploy: a factors file as llama.cpp, transformers and vLLM run it (which set, no start tokens,
// which attention factor), in eval, search and export.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "longrope/eval.h"
#include "longrope/model.h"
#include "longrope/perplexity.h"
#include "longrope/rope.h"
#include "longrope/search_run.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;

// Two sets (the short one with its own attention factor), start tokens, L_orig 512, target 2048.
RopeScaling two_sets() {
  RopeScaling s;
  s.method = RopeMethod::kLongrope;
  s.orig_ctx = 512;
  s.target_ctx = 2048;
  s.attn_factor = 1.125;
  s.n_hat = 8;
  s.sets = {FactorSet{{1.0, 1.0, 1.25, 1.5}, 512, 1.0}, FactorSet{{1.0, 1.5, 2.25, 3.5}, 0}};
  return s;
}

TEST(Deploy, WhichSetStartTokensAndAttentionFactor) {
  const RopeScaling s = two_sets();
  const std::vector<double> shrt = s.sets[0].factors, lng = s.sets[1].factors;
  const double vllm = std::sqrt(1.0 + std::log(4.0) / std::log(512.0));
  EXPECT_DOUBLE_EQ(vllm_attn_factor(2048, 512), vllm);
  EXPECT_EQ(vllm_attn_factor(512, 512), 1.0);
  struct Case {
    DeployTarget t;
    int64_t seq, ctx;
    std::vector<double> set;
    double attn;
  };
  for (const Case& c : {
           Case{DeployTarget::kLlamaCpp, 256, 0, lng, 1.125},     // n_ctx = the file's 2048
           Case{DeployTarget::kLlamaCpp, 256, 512, shrt, 1.125},  // -c 512: the short set
           Case{DeployTarget::kLlamaCpp, 1024, 1024, lng, 1.125},
           Case{DeployTarget::kTransformers, 256, 0, shrt, 1.125},  // by the sequence
           Case{DeployTarget::kTransformers, 1024, 0, lng, 1.125},
           Case{DeployTarget::kVllm, 256, 0, lng, vllm},  // max_model_len = 2048
           Case{DeployTarget::kVllm, 256, 512, shrt, vllm},
       }) {
    const RopeScaling d = deployed_scaling(s, c.t, c.seq, c.ctx, 512);
    SCOPED_TRACE(std::string(deploy_target_name(c.t)) + " " + std::to_string(c.seq));
    EXPECT_EQ(d.n_hat, 0);
    ASSERT_EQ(d.sets.size(), 1u);
    EXPECT_EQ(d.sets[0].factors, c.set);
    const RopeTables t = d.tables(c.seq, 8, 10000.0, 512);
    EXPECT_DOUBLE_EQ(t.attn_factor, c.attn);
    EXPECT_EQ(t.n_hat, 0);
  }
  // longrope, and rule-based methods, run as they are.
  EXPECT_EQ(deployed_scaling(s, DeployTarget::kLongrope, 256, 0, 512), s);
  RopeScaling yarn;
  yarn.method = RopeMethod::kYarn;
  yarn.factor = 4;
  EXPECT_EQ(deployed_scaling(yarn, DeployTarget::kLlamaCpp, 256, 0, 512), yarn);
  // Three sets: no runtime holds them.
  RopeScaling three = s;
  three.sets.insert(three.sets.begin(), FactorSet{{1.0, 1.0, 1.0, 1.0}, 256});
  test::expect_error([&] { deployed_scaling(three, DeployTarget::kVllm, 256, 0, 512); },
                     {"vllm holds at most two factor sets", "3"});

  // The differences each runtime would make, and none for a set made for it.
  const auto d = deploy_differences(s, DeployTarget::kLlamaCpp, 512);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_NE(d[0].find("start tokens"), std::string::npos) << d[0];
  EXPECT_NE(d[1].find("one set for every length"), std::string::npos) << d[1];
  EXPECT_NE(d[2].find("short set's attention factor 1:"), std::string::npos) << d[2];
  EXPECT_EQ(deploy_differences(s, DeployTarget::kTransformers, 512).size(), 2u);
  EXPECT_TRUE(deploy_differences(s, DeployTarget::kLongrope, 512).empty());
  RopeScaling clean = s;
  clean.n_hat = 0;
  clean.sets = {clean.sets[1]};
  EXPECT_TRUE(deploy_differences(clean, DeployTarget::kLlamaCpp, 512).empty());
  EXPECT_TRUE(deploy_differences(clean, DeployTarget::kTransformers, 512).empty());
  const auto v = deploy_differences(clean, DeployTarget::kVllm, 512);  // 1.125 is not vLLM's
  ASSERT_EQ(v.size(), 1u);
  EXPECT_NE(v[0].find("vLLM computes"), std::string::npos) << v[0];
  clean.attn_factor.reset();  // the sqrt-log rule: vLLM's value
  EXPECT_TRUE(deploy_differences(clean, DeployTarget::kVllm, 512).empty());
  EXPECT_EQ(parse_deploy_target("llama.cpp"), DeployTarget::kLlamaCpp);
  test::expect_error([] { parse_deploy_target("ollama"); }, {"ollama", "llama.cpp"});
}

// eval --deploy llama.cpp scores the file as llama.cpp runs it: the long set, no start tokens,
// the file's attention factor, at every length; the cells are kept apart from longrope's.
TEST(Deploy, EvalScoresTheFileAsTheRuntimeRunsIt) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("moby-dick.txt"));
  auto model = Model::load(test::stories_gguf().string());
  const fs::path d = test::fresh_temp_dir("deploy_eval");
  const std::string f = (d / "f.json").string();
  write_factors_file(f, two_sets());
  EvalConfig cfg;
  cfg.model_path = test::stories_gguf().string();
  cfg.text_paths = {test::shared_text("moby-dick.txt").string()};
  cfg.lengths = {256, 1024};
  cfg.methods = {"s=" + f};
  cfg.n_threads = 1;
  cfg.out_dir = (d / "ev").string();
  const EvalRun longrope = run_eval(*model, cfg);
  cfg.scale.deploy = DeployTarget::kLlamaCpp;
  cfg.resume = true;
  const EvalRun llama = run_eval(*model, cfg);
  EXPECT_EQ(llama.computed, 2);  // not the longrope cells
  const auto toks = model->tokenizer().encode(
      normalize_newlines(read_text_file(test::shared_text("moby-dick.txt").string())));
  RopeScaling one = two_sets();
  one.n_hat = 0;
  one.sets = {FactorSet{one.sets[1].factors, 0}};
  for (size_t i = 0; i < 2; ++i) {
    const int64_t len = llama.cells[i]["length"];
    EXPECT_EQ(llama.cells[i]["ppl"].get<double>(), perplexity(*model, toks, len, 1, one, 1).ppl)
        << len;
    EXPECT_EQ(longrope.cells[i]["ppl"].get<double>(),
              perplexity(*model, toks, len, 1, two_sets(), 1).ppl)
        << len;
    EXPECT_NE(llama.cells[i]["ppl"], longrope.cells[i]["ppl"]) << len;
    EXPECT_EQ(llama.cells[i]["key"]["deploy"], "llama.cpp");
  }
  fs::remove_all(d);
}

// search --deploy keeps to what the runtime can express; flags asking for more are errors.
TEST(Deploy, SearchKeepsToTheRuntime) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  auto model = Model::load(test::stories_gguf().string());
  const fs::path d = test::fresh_temp_dir("deploy_search");
  SearchRunConfig c;
  c.model_path = test::stories_gguf().string();
  c.texts = {test::shared_text("pride_and_prejudice.txt").string()};
  c.target_ctx = 1024;
  c.settings.population = 6;
  c.settings.parents = 3;
  c.settings.mutations = 2;
  c.settings.crossovers = 1;
  c.settings.iterations = 1;
  c.settings.seed = 3;
  c.short_ctx = 512;
  c.n_threads = 1;
  c.deploy = DeployTarget::kVllm;
  c.output = (d / "v.json").string();
  const SearchRunResult r = SearchRun(model, c).run();
  EXPECT_EQ(r.scaling.n_hat, 0);
  ASSERT_EQ(r.scaling.sets.size(), 2u);
  EXPECT_FALSE(r.scaling.sets[0].attn_factor.has_value());  // the long set's, as vLLM runs it
  EXPECT_DOUBLE_EQ(*r.scaling.attn_factor, vllm_attn_factor(1024, 512));
  // The one thing left: vLLM runs the short set only when max_model_len <= 512.
  const auto diff = deploy_differences(r.scaling, DeployTarget::kVllm, 512);
  ASSERT_EQ(diff.size(), 1u);
  EXPECT_NE(diff[0].find("one set for every length"), std::string::npos) << diff[0];
  nlohmann::json prov;
  read_factors_file(c.output, &prov);
  EXPECT_EQ(prov["deploy"], "vllm");

  c.deploy = DeployTarget::kLlamaCpp;
  c.output = (d / "l.json").string();
  c.n_hat = {0, 4};
  test::expect_error([&] { SearchRun(model, c).run(); }, {"llama.cpp has no start tokens", "4"});
  c.n_hat.clear();
  c.short_ctx = 600;
  test::expect_error([&] { SearchRun(model, c).run(); }, {"--short-ctx 600", "512"});
  c.short_ctx.reset();
  c.deploy = DeployTarget::kVllm;
  c.attn_candidates = {1.0, 1.1};
  test::expect_error([&] { SearchRun(model, c).run(); }, {"vllm computes the attention factor"});
  fs::remove_all(d);
}

TEST(Deploy, ExportRefusesWhatTheRuntimeCannotRun) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  const fs::path d = test::fresh_temp_dir("deploy_export");
  const std::string f = (d / "f.json").string(), clean = (d / "c.json").string();
  write_factors_file(f, two_sets());
  RopeScaling c = two_sets();
  c.n_hat = 0;
  c.sets = {c.sets[1]};
  write_factors_file(clean, c);
  const std::string cli = test::cli_path().string() + " export -m " +
                          test::stories_gguf().string() + " -o " + (d / "m.gguf").string();
  std::string out;
  EXPECT_EQ(test::run_command(cli + " --deploy llama.cpp --factors " + f, &out), 1) << out;
  EXPECT_NE(out.find("llama.cpp cannot run"), std::string::npos) << out;
  EXPECT_NE(out.find("start tokens"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(d / "m.gguf"));
  EXPECT_EQ(test::run_command(cli + " --deploy vllm --factors " + clean, &out), 2) << out;
  EXPECT_EQ(test::run_command(cli + " --deploy llama.cpp --factors " + clean, &out), 0) << out;
  EXPECT_TRUE(fs::exists(d / "m.gguf"));
  fs::remove_all(d);
}

}  // namespace
}  // namespace longrope
