// The default real model, SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI, installed by
// scripts/setup.sh).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "longrope/context.h"
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

TEST(EngineSmolLM, ChatAnswerIsCoherent) {
  LONGROPE_REQUIRE_FILE(test::smollm_path());
  auto m = smollm();
  const Tokenizer& tok = m->tokenizer();
  const auto ids = tok.encode(
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
      "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
      "<|im_start|>assistant\n",
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
