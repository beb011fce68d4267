// --convention llama.cpp: windows cut and scored as llama-perplexity does (chunks of CTX tokens,
// BOS only where the tokenizer adds one, the second half scored, the text bytes untouched),
// checked against a plain re-implementation of that rule over whole-window NLLs.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "longrope/context.h"
#include "longrope/eval.h"
#include "longrope/perplexity.h"
#include "test_paths.h"

namespace {

using namespace longrope;
namespace fs = std::filesystem;

std::vector<int32_t> text_tokens(const Model& m, WindowConvention c) {
  return m.tokenizer().encode(
      text_for_convention(read_text_file(test::shared_text("moby-dick.txt").string()), c));
}

TEST(EvalConvention, NamesAndText) {
  EXPECT_EQ(parse_window_convention("llama.cpp"), WindowConvention::kLlamaCpp);
  EXPECT_EQ(parse_window_convention("longrope"), WindowConvention::kLongrope);
  EXPECT_STREQ(window_convention_name(WindowConvention::kLlamaCpp), "llama.cpp");
  test::expect_error([] { parse_window_convention("vllm"); }, {"vllm", "longrope or llama.cpp"});
  EXPECT_EQ(text_for_convention("a\r\nb\rc", WindowConvention::kLongrope), "a\nb\nc");
  EXPECT_EQ(text_for_convention("a\r\nb\rc", WindowConvention::kLlamaCpp), "a\r\nb\rc");
}

// The windows: llama.cpp's chunks of the token stream (BOS first when the tokenizer adds one,
// and each chunk's first token replaced by BOS), scoring positions ctx/2 .. ctx-2.
TEST(EvalConvention, LlamaCppWindowsAreChunksOfTheTokenStream) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("moby-dick.txt"));
  auto m = Model::load(test::stories_gguf().string());
  const Tokenizer& tok = m->tokenizer();
  ASSERT_TRUE(tok.add_bos());  // stories260K (SentencePiece) adds BOS
  const auto toks = text_tokens(*m, WindowConvention::kLlamaCpp);
  const int64_t ctx = 100, docs = 3;
  EXPECT_EQ(tokens_needed(WindowConvention::kLlamaCpp, tok, ctx, docs), docs * ctx - 1);
  EXPECT_EQ(tokens_needed(WindowConvention::kLongrope, tok, ctx, docs), docs * (ctx - 1));
  const TextWindows w = cut_windows(WindowConvention::kLlamaCpp, toks, tok, ctx, docs);
  ASSERT_EQ(w.tokens.size(), 3u);
  ASSERT_EQ(w.positions.size(), 3u);
  std::vector<int32_t> stream = {tok.bos()};
  stream.insert(stream.end(), toks.begin(), toks.end());
  for (int64_t k = 0; k < docs; ++k) {
    ASSERT_EQ(int64_t(w.tokens[k].size()), ctx);
    EXPECT_EQ(w.tokens[k][0], tok.bos());
    for (int64_t i = 1; i < ctx; ++i)
      EXPECT_EQ(w.tokens[k][i], stream[k * ctx + i]) << k << " " << i;
    ASSERT_EQ(int64_t(w.positions[k].size()), ctx - ctx / 2 - 1);  // llama.cpp's count per chunk
    EXPECT_EQ(w.positions[k].front(), ctx / 2);
    EXPECT_EQ(w.positions[k].back(), ctx - 2);
  }
  // Too short a text: one line naming the convention.
  test::expect_error(
      [&] {
        cut_windows(WindowConvention::kLlamaCpp, std::span<const int32_t>(toks).first(298), tok,
                    ctx, docs);
      },
      {"298 tokens", "need 299", "llama.cpp convention"});
  // The default convention is make_windows, scoring everything.
  const TextWindows d = cut_windows(WindowConvention::kLongrope, toks, tok, ctx, docs);
  EXPECT_EQ(d.tokens, make_windows(toks, tok.bos(), ctx, docs));
  EXPECT_TRUE(d.positions.empty());
}

// perplexity() under the llama.cpp convention is exp of the mean NLL of the second halves of the
// chunks, taken from whole-window scores (the LM head runs on those rows only: same rows, same
// arithmetic).
TEST(EvalConvention, LlamaCppPerplexityScoresTheSecondHalves) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("moby-dick.txt"));
  auto m = Model::load(test::stories_gguf().string());
  const auto toks = text_tokens(*m, WindowConvention::kLlamaCpp);
  const int64_t ctx = 256, docs = 2;
  const auto r =
      perplexity(*m, toks, ctx, docs, RopeScaling{}, 1, {}, {}, WindowConvention::kLlamaCpp);
  const TextWindows w = cut_windows(WindowConvention::kLlamaCpp, toks, m->tokenizer(), ctx, docs);
  double sum = 0;
  int64_t count = 0;
  ScoreOptions so;
  so.n_threads = 1;
  for (const auto& win : w.tokens) {
    const auto nll = score_window(*m, win, RopeScaling{}, so);
    for (int64_t i = ctx / 2; i < ctx - 1; ++i, ++count) sum += nll[size_t(i)];
  }
  EXPECT_EQ(r.tokens, count);
  EXPECT_EQ(count, docs * (ctx - ctx / 2 - 1));
  EXPECT_NEAR(r.ppl, std::exp(sum / double(count)), 1e-9 * r.ppl);
  // Another number than the default convention's on the same text.
  const auto d =
      perplexity(*m, text_tokens(*m, WindowConvention::kLongrope), ctx, docs, RopeScaling{}, 1);
  EXPECT_EQ(d.tokens, docs * (ctx - 1));
  EXPECT_NE(d.ppl, r.ppl);
}

// eval: the convention is part of each cell's key, takes --fitness ppl only, and the CLI flag
// rejects an unknown value with a usage error.
TEST(EvalConvention, EvalKeysTheConventionAndTheCliChecksIt) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("moby-dick.txt"));
  auto m = Model::load(test::stories_gguf().string());
  const fs::path dir = test::fresh_temp_dir("eval_convention");
  test::RemoveOnExit cleanup{dir};
  EvalConfig cfg;
  cfg.model_path = test::stories_gguf().string();
  cfg.text_paths = {test::shared_text("moby-dick.txt").string()};
  cfg.lengths = {256};
  cfg.methods = {"none"};
  cfg.n_threads = 1;
  cfg.out_dir = dir.string();
  cfg.convention = WindowConvention::kLlamaCpp;
  const EvalRun a = run_eval(*m, cfg);
  ASSERT_EQ(a.cells.size(), 1u);
  EXPECT_EQ(a.cells[0]["key"]["convention"], "llama.cpp");
  EXPECT_EQ(a.cells[0]["tokens"].get<int64_t>(), 256 - 128 - 1);
  cfg.resume = true;  // the default convention's cell is another cell
  cfg.convention = WindowConvention::kLongrope;
  const EvalRun b = run_eval(*m, cfg);
  EXPECT_EQ(b.computed, 1);
  EXPECT_FALSE(b.cells[0]["key"].contains("convention"));
  EXPECT_NE(b.cells[0]["ppl"], a.cells[0]["ppl"]);
  cfg.convention = WindowConvention::kLlamaCpp;
  cfg.fitness = "needle";
  test::expect_error([&] { plan_eval(*m, cfg); }, {"--convention llama.cpp", "--fitness ppl"});

  std::string out;
  EXPECT_EQ(test::run_command(test::cli_path().string() + " perplexity -m " +
                                  test::stories_gguf().string() + " -f " +
                                  test::shared_text("moby-dick.txt").string() +
                                  " -c 256 --convention vllm --no-progress",
                              &out),
            2)
      << out;
  ASSERT_EQ(test::run_command(test::cli_path().string() + " perplexity -m " +
                                  test::stories_gguf().string() + " -f " +
                                  test::shared_text("moby-dick.txt").string() +
                                  " -c 256 --docs 2 --convention llama.cpp --json --no-progress",
                              &out),
            0)
      << out;
  const auto j = nlohmann::json::parse(out.substr(out.find('{')));
  EXPECT_EQ(j["tokens"].get<int64_t>(), 2 * (256 - 128 - 1));
  EXPECT_EQ(j["convention"], "llama.cpp");
}

}  // namespace
