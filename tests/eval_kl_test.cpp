// eval --kl-divergence: the streamed KL divergence of a window against the unscaled model's,
// checked against whole logits, and the sweep's cells, tables and CLI.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "longrope/context.h"
#include "longrope/eval.h"
#include "longrope/kernels.h"
#include "longrope/perplexity.h"
#include "test_paths.h"

namespace {

using namespace longrope;
namespace fs = std::filesystem;

std::vector<int32_t> pride_tokens(const Model& m) {
  return m.tokenizer().encode(
      normalize_newlines(read_text_file(test::shared_text("pride_and_prejudice.txt").string())));
}

// The KL divergence, NLL and top-token agreement of score_window_kl equal the ones computed in
// double precision from the whole logits of two decodes of the same window.
TEST(EvalKl, WindowKlMatchesWholeLogits) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  std::shared_ptr<const Model> model = Model::load(test::stories_gguf().string());
  const auto toks = pride_tokens(*model);
  const int64_t n = 160;
  std::vector<int32_t> win = {model->tokenizer().bos()};
  win.insert(win.end(), toks.begin(), toks.begin() + n - 1);
  RopeScaling lin;
  lin.method = RopeMethod::kLinear;
  lin.factor = 3.0;
  ScoreOptions so;
  so.n_threads = 1;
  so.compute = kernels::Compute::kF32;
  const auto ref = window_states(*model, win, RopeScaling{}, so);
  const WindowKl got = score_window_kl(*model, win, lin, ref, so);
  const WindowKl same = score_window_kl(*model, win, RopeScaling{}, ref, so);
  ASSERT_EQ(got.kl.size(), size_t(n - 1));

  auto logits = [&](const RopeScaling& s) {
    ContextParams p;
    p.n_threads = 1;
    p.compute = kernels::Compute::kF32;
    Context ctx(model, p, s);
    return ctx.decode_all_logits(std::span<const int32_t>(win.data(), size_t(n - 1)));
  };
  const auto la = logits(RopeScaling{}), lb = logits(lin);
  const int64_t V = model->output().rows;
  std::vector<kernels::KlRow> want(size_t(n - 1));
  std::vector<int32_t> target(win.begin() + 1, win.end());
  kernels::kl_rows_scalar(la.data(), lb.data(), n - 1, V, target.data(), want.data());
  int moved = 0;
  for (int64_t r = 0; r < n - 1; ++r) {
    // Two FP32 forward passes of the same arithmetic in another order: logits agree to ~1e-5.
    EXPECT_NEAR(got.kl[r], want[r].kl, 1e-4 + 1e-3 * want[r].kl) << r;
    EXPECT_NEAR(got.nll[r], want[r].nll, 1e-4) << r;
    EXPECT_EQ(same.kl[r], 0.0) << r;  // the reference itself, bit for bit
    EXPECT_EQ(same.same_top[r], 1) << r;
    moved += want[r].kl > 1e-3;
  }
  EXPECT_GT(moved, (n - 1) / 2);  // s = 3 moves most positions' distributions
  // The NLLs equal score_window's.
  const auto nll = score_window(*model, win, lin, so);
  for (int64_t r = 0; r < n - 1; ++r) EXPECT_NEAR(got.nll[r], nll[r], 1e-5) << r;
}

TEST(EvalKl, SweepReportsKlUpToTheTrainedContext) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  auto model = Model::load(test::stories_gguf().string());
  const fs::path dir = test::fresh_temp_dir("eval_kl");
  EvalConfig cfg;
  cfg.model_path = test::stories_gguf().string();
  cfg.text_paths = {test::shared_text("pride_and_prejudice.txt").string()};
  cfg.lengths = {256, 1024};  // trained context 512
  cfg.methods = {"none,linear,yarn"};
  cfg.scale.rope_factor = 2.0;
  cfg.docs = 2;
  cfg.n_threads = 2;
  cfg.kl_divergence = true;
  cfg.out_dir = dir.string();
  const EvalRun run = run_eval(*model, cfg);
  ASSERT_EQ(run.cells.size(), 6u);
  const auto toks = pride_tokens(*model);
  for (const auto& c : run.cells) {
    const int64_t len = c["length"];
    const std::string label = c["label"];
    // Perplexity as without --kl-divergence.
    const auto r = perplexity(*model, toks, len, 2,
                              eval_scaling(run.methods[label == "none"     ? 0
                                                       : label == "linear" ? 1
                                                                           : 2],
                                           *model, len, cfg.scale),
                              2);
    EXPECT_NEAR(c["ppl"].get<double>(), r.ppl, 1e-5 * r.ppl) << c.dump();
    if (len > 512) {
      EXPECT_FALSE(c.contains("kl_mean")) << c.dump();
      continue;
    }
    ASSERT_TRUE(c.contains("kl_mean")) << c.dump();
    const double mean = c["kl_mean"], p99 = c["kl_p99"], mx = c["kl_max"], top = c["same_top"];
    if (label == "none") {
      EXPECT_EQ(mean, 0.0);
      EXPECT_EQ(top, 1.0);
    } else {
      EXPECT_GT(mean, 1e-3) << label;  // s = 2 moves the distributions
      EXPECT_LT(top, 1.0) << label;
      EXPECT_GT(top, 0.3) << label;
      EXPECT_LE(c["kl_lo"].get<double>(), mean);
      EXPECT_GE(c["kl_hi"].get<double>(), mean);
      EXPECT_GE(p99, mean);
      EXPECT_GE(mx, p99);
    }
  }
  const std::string md = write_eval_outputs(run, *model, cfg);
  EXPECT_NE(md.find("KL divergence from the unscaled model"), std::string::npos) << md;
  EXPECT_NE(md.find("Same top token"), std::string::npos) << md;
  const std::string csv = test::slurp(dir / "kl.csv");
  EXPECT_EQ(csv.substr(0, csv.find('\n')),
            "method,length,ppl,kl_mean,kl_lo,kl_hi,kl_p99,kl_max,same_top");
  EXPECT_NE(csv.find("\nnone,256,"), std::string::npos) << csv;
  EXPECT_EQ(csv.find(",1024,"), std::string::npos) << csv;  // beyond the trained context
  // Cells without KL are never reused for a run with it, and the other way round.
  cfg.resume = true;
  EXPECT_EQ(run_eval(*model, cfg).computed, 0);
  cfg.kl_divergence = false;
  EXPECT_EQ(run_eval(*model, cfg).computed, 6);
  cfg.fitness = "needle";
  cfg.kl_divergence = true;
  test::expect_error([&] { plan_eval(*model, cfg); }, {"--kl-divergence", "--fitness ppl"});
  fs::remove_all(dir);
}

TEST(EvalKl, CliFlag) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  const fs::path dir = test::fresh_temp_dir("eval_kl_cli");
  std::string out;
  ASSERT_EQ(
      test::run_command(test::cli_path().string() + " eval -m " + test::stories_gguf().string() +
                            " -f " + test::shared_text("pride_and_prejudice.txt").string() +
                            " --lengths 256 --methods none,ntk --rope-factor 2 -t 1 "
                            "--kl-divergence --no-progress -O " +
                            dir.string(),
                        &out),
      0)
      << out;
  EXPECT_NE(out.find("99th percentile"), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(dir / "kl.csv"));
  EXPECT_NE(test::slurp(dir / "results.md").find("Same top token"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
