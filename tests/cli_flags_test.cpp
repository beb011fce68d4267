// The CLI's one flag vocabulary (src/cli/flags.h): one name per meaning in every command, the old
// spellings as hidden aliases with a deprecation line, parse errors with exit code 2, help
// without library leftovers.
#include <fmt/core.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "longrope/fingerprint.h"
#include "longrope/model.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;

std::string cli() {
  return fmt::format("'{}' ", test::cli_path().string());
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

const std::vector<std::string> kCommands = {"perplexity", "generate", "rope",  "search",  "export",
                                            "eval",       "passkey",  "ruler", "finetune"};

TEST(CliFlags, HelpOfEveryCommandHasNoLibraryLeftoversAndOneStyle) {
  for (const std::string& c : kCommands) {
    std::string out;
    ASSERT_EQ(test::run_command(cli() + c + " --help", &out), 0) << c << ":\n" << out;
    EXPECT_FALSE(has(out, "{false}")) << c << ":\n" << out;
    EXPECT_FALSE(has(out, "{true}")) << c << ":\n" << out;
    // Old spellings are hidden aliases: not shown.
    for (const char* old : {"--target-ctx", "--seq-len"}) {
      EXPECT_FALSE(has(out, old)) << c;
    }
    // A model flag, where there is one, is the same everywhere.
    if (has(out, "--model")) {
      EXPECT_TRUE(has(out, "-m,--model MODEL")) << c << ":\n" << out;
    }
    // One name for one length, another for a list of lengths, and one kind of thing per -o.
    if (has(out, "--ctx")) {
      EXPECT_TRUE(has(out, "-c,--ctx N")) << c << ":\n" << out;
    }
    if (has(out, "--out-dir")) {
      EXPECT_FALSE(has(out, "-o,--output")) << c << ":\n" << out;
    }
  }
}

TEST(CliFlags, ContextLengthIsDashCInEveryCommandThatTakesOne) {
  for (const char* c : {"perplexity", "generate", "rope", "search", "finetune"}) {
    std::string out;
    ASSERT_EQ(test::run_command(cli() + c + " --help", &out), 0) << out;
    EXPECT_TRUE(has(out, "-c,--ctx N")) << c << ":\n" << out;
  }
  for (const char* c : {"eval", "passkey", "ruler"}) {
    std::string out;
    ASSERT_EQ(test::run_command(cli() + c + " --help", &out), 0) << out;
    EXPECT_TRUE(has(out, "--lengths LIST")) << c << ":\n" << out;
    EXPECT_TRUE(has(out, "-O,--out-dir DIR")) << c << ":\n" << out;
  }
}

TEST(CliFlags, OldSpellingsStillWorkWithADeprecationLine) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  const fs::path d = test::fresh_temp_dir("cli_flags_alias");
  const test::RemoveOnExit clean{d};
  const std::string text = test::shared_text("moby-dick.txt").string();
  const std::string search = cli() + "search -m '" + test::stories_gguf().string() + "' -f '" +
                             text + "' --population 2 --iterations 0 -t 1 --no-progress ";
  std::string now, old;
  ASSERT_EQ(
      test::run_command(
          search + "-c 1024 --n-hat-candidates 0,2 -o '" + (d / "new.json").string() + "'", &now),
      0)
      << now;
  ASSERT_EQ(
      test::run_command(
          search + "--target-ctx 1024 --n-hat 0,2 -o '" + (d / "old.json").string() + "'", &old),
      0)
      << old;
  EXPECT_FALSE(has(now, "deprecated")) << now;
  EXPECT_TRUE(has(old, "warning: search --target-ctx is deprecated; use -c/--ctx")) << old;
  EXPECT_TRUE(has(old, "warning: search --n-hat is deprecated; use --n-hat-candidates")) << old;
  // The same search either way: the same factors file (but for the date it was written).
  auto factors = [](const fs::path& p) {
    nlohmann::json j = nlohmann::json::parse(test::slurp(p));
    j["provenance"].erase("date");
    return j;
  };
  EXPECT_EQ(factors(d / "new.json"), factors(d / "old.json"));

  std::string out;
  ASSERT_EQ(test::run_command(cli() + "eval -m '" + test::stories_gguf().string() + "' -f '" +
                                  text + "' --lengths 256 --methods none -t 1 --no-progress -o '" +
                                  (d / "ev").string() + "'",
                              &out),
            0)
      << out;
  EXPECT_TRUE(has(out, "warning: eval -o/--output is deprecated; use -O/--out-dir")) << out;
  EXPECT_TRUE(fs::exists(d / "ev" / "results.json"));

  ASSERT_EQ(test::run_command(cli() + "rope --head-dim 8 --rope none --seq-len 100", &out), 0)
      << out;
  EXPECT_TRUE(has(out, "warning: rope --seq-len is deprecated; use -c/--ctx")) << out;
  EXPECT_TRUE(has(out, "seq_len 100")) << out;
}

TEST(CliFlags, EveryParseErrorExitsTwoWithOneLine) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  const std::string m = " -m '" + test::stories_gguf().string() + "'";
  const std::string f = " -f '" + test::shared_text("moby-dick.txt").string() + "'";
  struct Case {
    std::string args, want;
  };
  const std::vector<Case> cases = {
      {"search" + m + f + " -t 1", "-c/--ctx is required"},
      {"search" + m + f + " -c 1024 --critical-dim x", "--critical-dim x"},
      {"search" + m + f + " -c 1", "-c"},
      {"eval" + m + f + " --lengths 256 --resume", "--resume needs -O DIR"},
      {"passkey" + m + " --lengths 256 --resume", "--resume needs -O DIR"},
      {"eval" + m + f + " --lengths 2x", "2x"},
      {"eval" + m + f + " --lengths 256 --methods bogus", "bogus"},
      {"passkey" + m + " --lengths 256 --depths 2", "--depths"},
      {"perplexity" + m + f + " -c 0", "--ctx"},
      {"generate" + m + " --temp -1", "--temp"},
  };
  for (const Case& c : cases) {
    std::string out;
    EXPECT_EQ(test::run_command(cli() + c.args, &out), 2) << c.args << ":\n" << out;
    EXPECT_TRUE(has(out, c.want)) << c.args << ":\n" << out;
    EXPECT_TRUE(has(out, "error: ")) << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << c.args << ":\n" << out;
  }
}

TEST(CliFlags, EvalWithoutOutDirSaysNothingWasWritten) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  std::string out;
  ASSERT_EQ(test::run_command(cli() + "eval -m '" + test::stories_gguf().string() + "' -f '" +
                                  test::shared_text("moby-dick.txt").string() +
                                  "' --lengths 256 --methods none -t 1 --no-progress",
                              &out),
            0)
      << out;
  EXPECT_TRUE(has(out, "nothing written (-O DIR keeps the results")) << out;
}

// One fingerprint per thing: a search's factors file, eval's and passkey's results name the same
// model (and eval the same text) with the same fingerprint and key names.
TEST(CliFingerprints, SearchEvalAndPasskeyNameTheModelAndTextAlike) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  const fs::path d = test::fresh_temp_dir("cli_fingerprints");
  const test::RemoveOnExit clean{d};
  const std::string m = " -m '" + test::stories_gguf().string() + "'";
  const std::string f = " -f '" + test::shared_text("moby-dick.txt").string() + "'";
  std::string out;
  ASSERT_EQ(test::run_command(cli() + "search" + m + f +
                                  " -c 1024 --population 2 --iterations 0 -t 1 --no-progress -o '" +
                                  (d / "f.json").string() + "'",
                              &out),
            0)
      << out;
  ASSERT_EQ(test::run_command(cli() + "eval" + m + f +
                                  " --lengths 256 --methods none -t 1 --no-progress -O '" +
                                  (d / "ev").string() + "'",
                              &out),
            0)
      << out;
  ASSERT_EQ(test::run_command(cli() + "passkey" + m +
                                  " --lengths 256 --trials 1 -t 1 --no-progress -O '" +
                                  (d / "pk").string() + "'",
                              &out),
            0)
      << out;
  const nlohmann::json prov = nlohmann::json::parse(test::slurp(d / "f.json"))["provenance"];
  const nlohmann::json ev = nlohmann::json::parse(test::slurp(d / "ev" / "results.json"));
  const nlohmann::json pk = nlohmann::json::parse(test::slurp(d / "pk" / "results.json"));
  const nlohmann::json& ek = ev["cells"][0]["key"];
  const nlohmann::json& pkk = pk["cells"][0]["key"];
  ASSERT_TRUE(prov.contains("model_fingerprint")) << prov.dump();
  EXPECT_EQ(prov["model_fingerprint"], ek["model_fingerprint"]);
  EXPECT_EQ(prov["model_fingerprint"], pkk["model_fingerprint"]);
  ASSERT_TRUE(prov.contains("texts_fingerprint")) << prov.dump();
  EXPECT_EQ(prov["texts_fingerprint"], ek["texts_fingerprint"]);
  // The checkpoint names the model by the same fingerprint.
  const nlohmann::json ck = nlohmann::json::parse(test::slurp(d / "f.json.ckpt.json"));
  EXPECT_EQ(ck["fingerprint"]["model"], prov["model_fingerprint"]);
}

// A search checkpoint written before the one model fingerprint names the model by its legacy
// fingerprint: --resume still takes it; another model's is refused.
TEST(CliFingerprints, CheckpointWithTheLegacyModelFingerprintStillResumes) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  const fs::path d = test::fresh_temp_dir("cli_legacy_fp");
  const test::RemoveOnExit clean{d};
  const std::string search = cli() + "search -m '" + test::stories_gguf().string() + "' -f '" +
                             test::shared_text("moby-dick.txt").string() +
                             "' -c 1024 --population 2 -t 1 --no-progress -o '" +
                             (d / "f.json").string() + "'";
  std::string out;
  ASSERT_EQ(test::run_command(search + " --iterations 0", &out), 0) << out;
  const fs::path ck = d / "f.json.ckpt.json";
  nlohmann::json j = nlohmann::json::parse(test::slurp(ck));
  const std::shared_ptr<const Model> model = Model::load(test::stories_gguf().string());
  ASSERT_NE(legacy_model_fingerprint(*model), model_fingerprint(*model));
  j["fingerprint"]["model"] = legacy_model_fingerprint(*model);
  std::ofstream(ck) << j.dump();
  EXPECT_EQ(test::run_command(search + " --iterations 1 --resume", &out), 0) << out;
  j["fingerprint"]["model"] = "0123456789abcdef";
  std::ofstream(ck) << j.dump();
  EXPECT_NE(test::run_command(search + " --iterations 1 --resume", &out), 0) << out;
  EXPECT_TRUE(has(out, "checkpoint is for another model")) << out;
}

}  // namespace
}  // namespace longrope
