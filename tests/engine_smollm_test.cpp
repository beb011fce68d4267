// The default real model, SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI, installed by
// scripts/setup.sh).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "longrope/context.h"
#include "longrope/kernels.h"
#include "longrope/model.h"
#include "longrope/perplexity.h"
#include "longrope/sampling.h"
#include "test_paths.h"

using namespace longrope;

namespace {
std::shared_ptr<const Model> smollm() {
  static std::shared_ptr<const Model> m = Model::load(test::smollm_path().string());
  return m;
}
}  // namespace

// The answer starts "The capital of France is": greedy decoding must go on with Paris. Left to
// choose its first token, the model is at a near-tie ("The" 25.33 against "L" 25.24 in exact
// arithmetic), which the int8 activations of gemv_w's VNNI path (FP32 compute on an AVX512_VNNI
// CPU without AVX512_BF16, or --compute f32) flip to a French answer without "Paris"; after the
// prefix, " Paris" leads by 4.6 logits on every path, far above their differences (< 0.15).
TEST(EngineSmolLM, ChatAnswerIsCoherent) {
  LONGROPE_REQUIRE_FILE(test::smollm_path());
  auto m = smollm();
  const Tokenizer& tok = m->tokenizer();
  const auto ids = tok.encode(
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
      "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
      "<|im_start|>assistant\nThe capital of France is",
      true);
  Context ctx(m, {.n_ctx = 512, .n_threads = 0});
  auto logits = ctx.decode(ids);
  std::vector<int32_t> out;
  for (int i = 0; i < 24; ++i) {
    const int32_t t = argmax(logits);
    if (t == tok.eot() || t == tok.eos()) break;
    out.push_back(t);
    logits = ctx.decode(std::span<const int32_t>(&t, 1));
  }
  const std::string answer = tok.decode(out);
  EXPECT_NE(answer.find("Paris"), std::string::npos) << answer;
}

// ctx 2048 on a shared novel: sane (a 135M model on 19th-century prose) and bit-identical
// between runs.
TEST(EngineSmolLM, PerplexityAt2048IsSaneAndDeterministic) {
  LONGROPE_REQUIRE_FILE(test::smollm_path());
  const auto text = test::shared_dir() / "data" / "pride_and_prejudice.txt";
  LONGROPE_REQUIRE_FILE(text);
  auto m = smollm();
  std::ifstream f(text, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  const auto ids = m->tokenizer().encode(ss.str().substr(0, 40000));
  const auto a = perplexity(*m, ids, 2048, 1, RopeScaling{});
  const auto b = perplexity(*m, ids, 2048, 1, RopeScaling{});
  EXPECT_EQ(a.ppl, b.ppl);
  EXPECT_EQ(a.tokens, 2047);
  EXPECT_GT(a.ppl, 5.0);
  EXPECT_LT(a.ppl, 40.0);
}

// Per-token NLLs of a 512-token window of Moby-Dick against an independent reference: the float64
// numpy forward pass of ../shared/tools/ref_llama.py on weights dequantized by the `gguf` package
// (scripts/ref_gguf_nll.py). Same token ids on both sides, so this checks the model (dequantized
// weights, RMSNorm, RoPE base 100000 plain and with YaRN, grouped-query attention, SwiGLU, tied LM
// head, log-softmax), not the tokenizer.
TEST(EngineSmolLM, NllMatchesAnIndependentReference) {
  LONGROPE_REQUIRE_FILE(test::smollm_path());
  const auto text = test::shared_dir() / "data" / "moby-dick.txt";
  const auto tools = test::shared_dir() / "tools";
  LONGROPE_REQUIRE_FILE(text);
  LONGROPE_REQUIRE_FILE(tools / "ref_llama.py");
  std::string log;
  if (test::run_command("python3 -c 'import gguf, numpy'", &log) != 0)
    LONGROPE_SKIP_OR_FAIL("python3 with gguf and numpy is needed (scripts/setup.sh): " + log);
  auto m = smollm();
  std::vector<int32_t> ids = m->tokenizer().encode(test::slurp(text).substr(0, 8000));
  ASSERT_GE(ids.size(), 511u);
  ids.resize(511);
  ids.insert(ids.begin(), m->tokenizer().bos());
  RopeScaling yarn;
  yarn.method = RopeMethod::kYarn;
  yarn.factor = 4.0;
  yarn.orig_ctx = 8192;
  const std::vector<RopeScaling> scalings = {RopeScaling{}, yarn};
  const auto dir = test::fresh_temp_dir("smollm_ref");
  {
    std::ofstream(dir / "ids.json") << nlohmann::json(ids).dump();
    std::ofstream(dir / "scalings.json")
        << R"([{"method": "none"}, {"method": "yarn", "factor": 4.0}])";
  }
  const std::string cmd = "python3 '" +
                          (test::source_dir() / "scripts" / "ref_gguf_nll.py").string() + "' '" +
                          test::smollm_path().string() + "' '" + (dir / "ids.json").string() +
                          "' '" + (dir / "scalings.json").string() + "' '" +
                          (dir / "ref.json").string() + "' '" + tools.string() + "'";
  ASSERT_EQ(test::run_command(cmd, &log), 0) << log;
  const auto ref = nlohmann::json::parse(test::slurp(dir / "ref.json"))["nll"];
  std::filesystem::remove_all(dir);
  ASSERT_EQ(ref.size(), scalings.size());
  for (const kernels::Compute mode : {kernels::Compute::kF32, kernels::Compute::kBF16}) {
    if (mode == kernels::Compute::kBF16 && !kernels::cpu_has_avx512_bf16()) {
      std::printf("bf16 compute not checked: %s\n",
                  kernels::cpu_variant_missing(kernels::CpuVariant::kAvx512Bf16).c_str());
      continue;
    }
    const bool f32 = mode == kernels::Compute::kF32;
    for (size_t s = 0; s < scalings.size(); ++s) {
      ScoreOptions opts;
      opts.compute = mode;
      const std::vector<double> got = score_window(*m, ids, scalings[s], opts);
      const auto want = ref[s].get<std::vector<double>>();
      ASSERT_EQ(got.size(), want.size());
      double worst = 0, sum_got = 0, sum_want = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        worst = std::max(worst, std::fabs(got[i] - want[i]));
        sum_got += got[i];
        sum_want += want[i];
      }
      const double ppl_got = std::exp(sum_got / double(got.size()));
      const double ppl_want = std::exp(sum_want / double(want.size()));
      const double ppl_rel = std::fabs(ppl_got - ppl_want) / ppl_want;
      std::printf(
          "SmolLM2 vs reference (%s, %s): ppl %.6f vs %.6f (rel %.2g), worst token NLL %.2g\n",
          f32 ? "f32" : "bf16", scalings[s].describe().c_str(), ppl_got, ppl_want, ppl_rel, worst);
      // Measured: f32 ppl 7e-7 relative, worst token 3e-5 (float32 against float64);
      // bf16 ppl 5.4e-4 relative, worst token 0.2 (bf16 products). Margins about 5x.
      EXPECT_LT(worst, f32 ? 2e-4 : 1.0);
      EXPECT_LT(ppl_rel, f32 ? 5e-6 : 3e-3);
    }
  }
}
