// The model's own RoPE is the base: with a Llama-3-style GGUF (stories260K plus a synthetic
// rope_freqs.weight), searched factors and rules apply on top of the model's frequency divisors
// in eval and search, lambda = 1 is the trained model, and export folds the divisors in.
#include <fmt/core.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/eval.h"
#include "longrope/export.h"
#include "longrope/gguf.h"
#include "longrope/model.h"
#include "longrope/perplexity.h"
#include "longrope/rope.h"
#include "longrope/search_run.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;

const std::vector<double> kOwn = {1.0, 1.0, 2.0, 4.0};  // the model's divisors (F32-exact)

std::string with_rope_freqs(const fs::path& dir) {
  auto src = GgufFile::open(test::stories_gguf().string());
  std::vector<uint8_t> bytes(4 * kOwn.size());
  for (size_t j = 0; j < kOwn.size(); ++j) {
    const float x = static_cast<float>(kOwn[j]);
    std::memcpy(bytes.data() + 4 * j, &x, 4);
  }
  GgufWriter w;
  w.copy_from(src);
  w.add_tensor("rope_freqs.weight", 0, {int64_t(kOwn.size())}, std::move(bytes));
  const std::string out = (dir / "rf.gguf").string();
  w.write(out);
  return out;
}

RopeScaling longrope_of(std::vector<double> f, int64_t n_hat = 0) {
  RopeScaling s;
  s.method = RopeMethod::kLongrope;
  s.orig_ctx = 512;
  s.target_ctx = 2048;
  s.attn_factor = 1.125;
  s.n_hat = n_hat;
  s.sets.push_back(FactorSet{std::move(f), 0});
  return s;
}

TEST(RopeFreqs, FactorsRulesSearchAndExportComposeWithTheModelsOwn) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("moby-dick.txt"));
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  const fs::path d = test::fresh_temp_dir("ropefreqs");
  const std::string rf_path = with_rope_freqs(d);
  auto rf = Model::load(rf_path);
  auto plain = Model::load(test::stories_gguf().string());
  ASSERT_EQ(rf->default_rope().freq_factors, kOwn);
  const auto toks = plain->tokenizer().encode(
      normalize_newlines(read_text_file(test::shared_text("moby-dick.txt").string())));
  auto ppl = [&](const Model& m, const RopeScaling& s, int64_t ctx) {
    return perplexity(m, toks, ctx, 1, s, 1).ppl;
  };

  // --factors F on the rope_freqs model = the plain model with factors lambda * own.
  const std::vector<double> lam = {1.0, 1.5, 2.0, 3.0};
  const std::string f = (d / "f.json").string();
  write_factors_file(f, longrope_of(lam));
  RopeOptions o;
  o.factors_path = f;
  const RopeScaling composed = resolve_rope(o, rf->default_rope(), rf->hp().n_rot);
  std::vector<double> folded(lam.size());
  for (size_t j = 0; j < lam.size(); ++j) folded[j] = lam[j] * kOwn[j];
  const double want = ppl(*plain, longrope_of(folded), 2048);
  EXPECT_EQ(ppl(*rf, composed, 2048), want);
  // eval's LABEL=FILE methods compose alike.
  const EvalMethod em = parse_eval_methods({"f=" + f}, *rf)[0];
  EXPECT_EQ(ppl(*rf, eval_scaling(em, *rf, 2048, {}), 2048), want);
  // lambda = 1 (attention factor 1) is the trained model, not the raw base frequencies.
  RopeScaling ones = longrope_of({1, 1, 1, 1});
  ones.attn_factor = 1.0;
  write_factors_file(f, ones);
  const double trained = ppl(*rf, rf->default_rope(), 512);
  EXPECT_EQ(ppl(*rf, resolve_rope(o, rf->default_rope(), rf->hp().n_rot), 512), trained);
  EXPECT_NE(trained, ppl(*plain, RopeScaling{}, 512));
  // A rule keeps the divisors too.
  RopeOptions yarn;
  yarn.method = "yarn";
  yarn.factor = 4;
  EXPECT_EQ(resolve_rope(yarn, rf->default_rope(), rf->hp().n_rot).freq_factors, kOwn);

  // Search: the fitness it records is that of its factors file evaluated on the same model.
  SearchRunConfig c;
  c.model_path = rf_path;
  c.texts = {test::shared_text("pride_and_prejudice.txt").string()};
  c.target_ctx = 1024;
  c.docs = 1;
  c.settings.population = 4;
  c.settings.parents = 2;
  c.settings.mutations = 1;
  c.settings.crossovers = 1;
  c.settings.iterations = 1;
  c.settings.seed = 3;
  c.n_threads = 1;
  c.output = (d / "s.json").string();
  const SearchRunResult r = SearchRun(rf, c).run();
  o.factors_path = c.output;
  const auto pride = plain->tokenizer().encode(
      normalize_newlines(read_text_file(test::shared_text("pride_and_prejudice.txt").string())));
  EXPECT_EQ(
      perplexity(*rf, pride, 1024, 1, resolve_rope(o, rf->default_rope(), rf->hp().n_rot), 1).ppl,
      r.best_ppl);

  // Export folds the divisors: the exported model alone scores as rf with --factors.
  write_factors_file(f, longrope_of(lam));
  const std::string out = (d / "x.gguf").string();
  export_gguf(rf_path, read_factors_file(f), out);
  auto x = Model::load(out);
  EXPECT_EQ(ppl(*x, x->default_rope(), 2048), want);
  // Start tokens cannot keep the model's rotation in a folded file: refused.
  write_factors_file(f, longrope_of(lam, 4));
  test::expect_error([&] { export_gguf(rf_path, read_factors_file(f), out); }, "--n-hat-candidates 0");

  // HF: a llama3 rope_scaling is folded the same way.
  const nlohmann::json cfg = {{"hidden_size", 64},
                              {"num_attention_heads", 8},
                              {"max_position_embeddings", 512},
                              {"rope_theta", 10000.0},
                              {"rope_scaling",
                               {{"rope_type", "llama3"},
                                {"factor", 8.0},
                                {"low_freq_factor", 1.0},
                                {"high_freq_factor", 4.0},
                                {"original_max_position_embeddings", 64}}}};
  const RopeScaling own = rope_from_hf_config(cfg);
  const RopeTables t_own = own.tables(512, 8, 10000.0, 512);
  const RopeScaling exported =
      rope_from_hf_config(export_hf_config(cfg, longrope_of(lam)), "exported");
  const RopeTables t_x = exported.tables(2048, 8, 10000.0, 512);
  for (size_t j = 0; j < lam.size(); ++j)
    EXPECT_NEAR(t_x.inv_freq[j], t_own.inv_freq[j] / lam[j], 1e-12 * t_own.inv_freq[j]) << j;
  fs::remove_all(d);
}

}  // namespace
}  // namespace longrope
