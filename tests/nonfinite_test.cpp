// A model with a NaN weight: every command that computes with it stops with one line naming the
// window, the token and the first layer where non-finite values appear, and a non-zero exit;
// nothing non-finite reaches an output file.
#include <fmt/core.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "longrope/context.h"
#include "longrope/error.h"
#include "longrope/gguf.h"
#include "longrope/model.h"
#include "longrope/perplexity.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;

// stories260K with one NaN in layer 2's query weights (an F32 tensor).
std::string poisoned_model(const fs::path& dir) {
  auto src = GgufFile::open(test::stories_gguf().string());
  const GgufTensorInfo* t = src->find_tensor("blk.2.attn_q.weight");
  EXPECT_NE(t, nullptr);
  EXPECT_EQ(t->type, 0u);  // F32
  std::vector<uint8_t> bytes(t->data, t->data + t->nbytes);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(bytes.data() + 4 * 17, &nan, 4);
  GgufWriter w;
  w.copy_from(src);
  w.add_tensor(t->name, t->type, t->ne, std::move(bytes));
  const std::string out = (dir / "nan.gguf").string();
  w.write(out);
  return out;
}

TEST(NonFinite, NanWeightStopsEveryCommandWithTheLayer) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("moby-dick.txt"));
  const fs::path d = test::fresh_temp_dir("nonfinite");
  const std::string m = poisoned_model(d);
  auto model = Model::load(m);
  const auto toks = model->tokenizer().encode(
      normalize_newlines(read_text_file(test::shared_text("moby-dick.txt").string())));
  test::expect_error([&] { perplexity(*model, toks, 256, 2, RopeScaling{}, 1); },
                     {"window 1 of 2", "non-finite", "layer 2 (of 5)"});
  Context ctx(model, ContextParams{});
  test::expect_error([&] { ctx.decode(std::span<const int32_t>(toks.data(), 8)); },
                     {"logits after 8 token(s) are non-finite", "layer 2 (of 5)"});

  const std::string text = test::shared_text("moby-dick.txt").string();
  struct Cmd {
    std::string args, output;
  };
  const std::vector<Cmd> cmds = {
      {fmt::format("perplexity -m '{}' -f '{}' -c 256 -t 1", m, text), ""},
      {fmt::format("eval -m '{}' -f '{}' --lengths 256 --methods none -t 1 --no-progress -O '{}'",
                   m, text, (d / "ev").string()),
       (d / "ev" / "results.md").string()},
      {fmt::format("search -m '{}' -f '{}' -c 1024 --population 4 --iterations 1 -t 1 "
                   "--no-progress -o '{}'",
                   m, text, (d / "f.json").string()),
       (d / "f.json").string()},
      {fmt::format("generate -m '{}' -p 'Once upon a time' -n 4 -t 1", m), ""},
      {fmt::format("passkey -m '{}' --lengths 256 --trials 1 -t 1 --no-progress -O '{}'", m,
                   (d / "pk").string()),
       (d / "pk" / "results.md").string()}};
  for (const Cmd& c : cmds) {
    std::string out;
    EXPECT_EQ(test::run_command(fmt::format("'{}' {}", test::cli_path().string(), c.args), &out), 1)
        << c.args << "\n"
        << out;
    EXPECT_NE(out.find("error: "), std::string::npos) << out;
    EXPECT_NE(out.find("non-finite"), std::string::npos) << c.args << "\n" << out;
    EXPECT_NE(out.find("layer 2 (of 5)"), std::string::npos) << out;
    if (!c.output.empty()) {
      EXPECT_FALSE(fs::exists(c.output)) << c.output;
    }
  }
  fs::remove_all(d);
}

}  // namespace
}  // namespace longrope
