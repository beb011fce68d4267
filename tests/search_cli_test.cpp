// `longrope search` on stories260K with tiny budgets: determinism, resume, errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "longrope/rope.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;
using test::slurp;

fs::path temp_dir(const std::string& tag) {
  return test::fresh_temp_dir("search_" + tag);
}

std::string model_path() {
  return (test::shared_dir() / "models" / "stories260K.gguf").string();
}
std::string text_path() {
  return (test::shared_dir() / "data" / "pride_and_prejudice.txt").string();
}

int search(const std::string& args, std::string* out) {
  const std::string cmd = "SOURCE_DATE_EPOCH=0 '" + test::cli_path().string() + "' search -m '" +
                          model_path() + "' --no-progress -t 1 " + args;
  return test::run_command(cmd, out);
}

const char* kTiny =
    "-c 1024 --docs 1 --population 8 --parents 4 --mutations 2 --crossovers 2 "
    "--seed 5 ";

TEST(SearchCli, SameSeedSameFileAndResumeMatches) {
  LONGROPE_REQUIRE_FILE(model_path());
  LONGROPE_REQUIRE_FILE(text_path());
  const fs::path d = temp_dir("det");
  const std::string base =
      std::string(kTiny) + "-f '" + text_path() + "' --short-ctx 512 --short-lambda-max 1.25 ";
  std::string out;
  ASSERT_EQ(search(base + "--iterations 3 -o '" + (d / "a.json").string() + "'", &out), 0) << out;
  ASSERT_EQ(search(base + "--iterations 3 -o '" + (d / "b.json").string() + "'", &out), 0) << out;
  const std::string a = slurp(d / "a.json");
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, slurp(d / "b.json"));

  // A run stopped after 1 iteration, then resumed to 3, reaches the same file.
  ASSERT_EQ(search(base + "--iterations 1 -o '" + (d / "c.json").string() + "'", &out), 0) << out;
  ASSERT_EQ(search(base + "--iterations 3 --resume -o '" + (d / "c.json").string() + "'", &out), 0)
      << out;
  EXPECT_EQ(a, slurp(d / "c.json"));

  // The factors file: two sets, monotone, within bounds; the log has every iteration.
  nlohmann::json prov;
  const RopeScaling s = read_factors_file((d / "a.json").string(), &prov);
  ASSERT_EQ(s.sets.size(), 2u);
  EXPECT_EQ(s.sets[0].max_len, 512);
  EXPECT_EQ(s.sets[1].max_len, 0);
  EXPECT_EQ(s.target_ctx, 1024);
  EXPECT_EQ(s.orig_ctx, 512);
  for (const auto& set : s.sets) {
    double prev = 1.0;
    for (double x : set.factors) {
      EXPECT_GE(x, prev);
      EXPECT_LE(x, 2.5);  // 1.25 * s
      prev = x;
    }
  }
  EXPECT_EQ(prov["seed"], 5);
  EXPECT_EQ(prov["date"], "1970-01-01T00:00:00Z");
  const auto log = nlohmann::json::parse(slurp(d / "a.json.log.json"));
  ASSERT_EQ(log["phases"].size(), 2u);
  EXPECT_EQ(log["phases"][0]["iterations"].size(), 4u);
  fs::remove_all(d);
}

// A real SIGINT one second into the search proper (after its "search:" line, when the handler is
// in place; a fixed delay from the start failed under ASan on a loaded machine, before the text
// was even tokenized): exit status 130, one line saying what was saved, and --resume finishes it.
// Only the search process is signalled (`timeout` also signals its process group, so the search
// could see a second SIGINT, which quits at once by design).
TEST(SearchCli, SigintSavesAndResumes) {
  LONGROPE_REQUIRE_FILE(model_path());
  LONGROPE_REQUIRE_FILE(text_path());
  const fs::path d = temp_dir("sigint");
  const std::string args =
      "-c 4096 --docs 2 --population 16 --parents 8 --mutations 8 "
      "--crossovers 8 --seed 3 -f '" +
      text_path() + "' -o '" + (d / "s.json").string() + "'";
  const std::string log = "'" + (d / "out.txt").string() + "'";
  const std::string cmd = "SOURCE_DATE_EPOCH=0 '" + test::cli_path().string() + "' search -m '" +
                          model_path() + "' --no-progress -t 1 --iterations 30 " + args + " > " +
                          log + " 2>&1 & pid=$!; for i in $(seq 1200); do grep -q '^search: ' " +
                          log + " && break; sleep 0.1; done; sleep 1; kill -INT $pid; wait $pid; " +
                          "rc=$?; cat " + log + "; exit $rc";
  std::string out;
  EXPECT_EQ(test::run_command(cmd, &out), 130) << out;
  EXPECT_NE(out.find("search interrupted"), std::string::npos) << out;
  EXPECT_NE(out.find("--resume continues"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(d / "s.json"));
  EXPECT_TRUE(fs::exists(d / "s.json.ckpt.json"));
  ASSERT_EQ(search(args + " --iterations 0 --resume", &out), 0) << out;
  EXPECT_TRUE(fs::exists(d / "s.json"));
  fs::remove_all(d);
}

TEST(SearchCli, ClearErrors) {
  LONGROPE_REQUIRE_FILE(model_path());
  LONGROPE_REQUIRE_FILE(text_path());
  const fs::path d = temp_dir("err");
  const std::string f = "-f '" + text_path() + "' -o '" + (d / "x.json").string() + "' ";
  auto expect_error = [&](const std::string& args, const std::string& needle) {
    std::string out;
    EXPECT_NE(search(args, &out), 0) << args;
    EXPECT_NE(out.find(needle), std::string::npos) << args << "\n" << out;
    EXPECT_NE(out.find("error:"), std::string::npos) << out;
  };
  expect_error(f + "-c 512", "not above the original context");
  expect_error(f + "-c 1024 --docs 100000", "too little text");
  expect_error(f + "-c 1024 --n-hat-candidates 0,1024", "n_hat");
  expect_error(f + "-c 1024 --lambda-max 0.5", "lambda-max");
  expect_error(f + "-c 1024 --attn-factor 1 --attn-candidates 0.9,1", "at most one");
  expect_error(f + "-c 1024 --attn-candidates 0.9,-1", "attention factor -1");
  expect_error(f + "-c 1024 --blend 1.5", "--blend");
  expect_error(f + "-c 1024 --seed-blends 1.5", "seed blend 1.5");
  expect_error(f + "-c 1024 --seed-blends 0.5", "at least two seed factor sets");
  // An unwritable output fails before any evaluation.
  expect_error("-f '" + text_path() + "' -o /nonexistent/dir/x.json -c 1024",
               "cannot write /nonexistent/dir/x.json");
  expect_error(f + "-c 1024 --resume", "no checkpoint");
  { std::ofstream(d / "x.json.ckpt.json") << "{ not json"; }
  expect_error(f + "-c 1024 --resume", "corrupt checkpoint");
  // A checkpoint for another target is refused.
  std::string out;
  // (The corrupt checkpoint is an earlier run's file: replaced only with --overwrite.)
  expect_error(std::string(kTiny) + f + "--iterations 0", "holds an earlier run's progress");
  ASSERT_EQ(search(std::string(kTiny) + f + "--iterations 0 --overwrite", &out), 0) << out;
  expect_error(f + "-c 2048 --docs 1 --population 8 --parents 4 --mutations 2 "
                   "--crossovers 2 --seed 5 --resume",
               "checkpoint is for another target_ctx");
  // ... and one written with another blend probability (the operator changes the children).
  expect_error(std::string(kTiny) + f + "--iterations 1 --blend 0.5 --resume",
               "other search settings");
  // ... and one written without seed blends (they change the initial population).
  const std::string seeds = "--seed-factors '" + (d / "x.json").string() + "," +
                            (d / "x.json").string() + "' -o '" + (d / "y.json").string() + "' ";
  ASSERT_EQ(
      search(std::string(kTiny) + "-f '" + text_path() + "' " + seeds + "--iterations 0", &out), 0)
      << out;
  expect_error(std::string(kTiny) + "-f '" + text_path() + "' " + seeds +
                   "--iterations 0 --seed-blends 0.5 --resume",
               "other search settings");
  fs::remove_all(d);
}

// The multi-objective flags and --budget: a bad --fitness list, --pick or --budget is a usage
// error (exit 2, before the model is read), a pick that names a missing seed one line (exit 1).
TEST(SearchCli, MultiObjectiveFlagErrors) {
  LONGROPE_REQUIRE_FILE(model_path());
  LONGROPE_REQUIRE_FILE(text_path());
  const fs::path d = temp_dir("multierr");
  const std::string f =
      std::string(kTiny) + "-f '" + text_path() + "' -o '" + (d / "x.json").string() + "' ";
  auto expect_exit = [&](const std::string& args, int code, const std::string& needle) {
    std::string out;
    EXPECT_EQ(search(args, &out), code) << args << "\n" << out;
    EXPECT_NE(out.find(needle), std::string::npos) << args << "\n" << out;
  };
  expect_exit(f + "--fitness ppl,ppl", 2, "ppl given twice");
  expect_exit(f + "--fitness ppl,nope", 2, "'nope' (expected ppl, needle or mix");
  expect_exit(f + "--fitness ppl,needle --pick mix", 2, "no objective mix");
  expect_exit(f + "--fitness ppl,needle --pick 'ppl:needle'", 2,
              "expected knee, OBJ or OBJ:B<=REF");
  expect_exit(f + "--pick ppl", 2, "needs several objectives");
  expect_exit(f + "--budget 5x", 2, "--budget 5x (expected a positive time such as 90s");
  expect_exit(f + "--budget -3m", 2, "--budget -3m");
  expect_exit(f + "--fitness ppl,needle --needles 2 --pick 'ppl:needle<=nope'", 1,
              "no seed named nope");
  EXPECT_FALSE(fs::exists(d / "x.json"));
  fs::remove_all(d);
}

}  // namespace
}  // namespace longrope
