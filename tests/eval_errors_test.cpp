// longrope eval / passkey: bad input fails with one line before any work.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "longrope/error.h"
#include "longrope/eval.h"
#include "test_paths.h"

namespace {

using longrope::test::cli_path;
using longrope::test::run_command;
using longrope::test::shared_dir;

std::string stories() {
  return (shared_dir() / "models" / "stories260K.gguf").string();
}
std::string pride() {
  return (shared_dir() / "data" / "pride_and_prejudice.txt").string();
}

std::string small_text() {
  const auto p = std::filesystem::temp_directory_path() / "longrope_eval_small_text.txt";
  std::ofstream(p) << "Once upon a time there was a cat. It was happy.\n";
  return p.string();
}

// Runs the CLI expecting failure; returns its output.
std::string fails(const std::string& args) {
  std::string out;
  const int rc = run_command(cli_path().string() + " " + args, &out);
  EXPECT_NE(rc, 0) << args << "\n" << out;
  return out;
}

TEST(EvalErrors, CliRejectsBadInputWithOneLine) {
  LONGROPE_REQUIRE_FILE(stories());
  LONGROPE_REQUIRE_FILE(pride());
  const std::string eval = "eval -m " + stories() + " -f " + pride() + " -t 1 --docs 1 ";
  struct Case {
    std::string args, expect;
  };
  const Case cases[] = {
      {eval + "--lengths 256 --methods none,bogus", "unknown method 'bogus'"},
      {eval + "--lengths 256 --methods longrope=/nonexistent/f.json", "cannot read factors file"},
      {eval + "--lengths 256 --methods s=/nonexistent/f.json", "cannot read factors file"},
      {eval + "--lengths 256,1099511627776 --methods none", "available"},
      {eval + "--lengths 256,abc --methods none", "bad length 'abc'"},
      {eval + "--lengths 256 --methods none,none", "used twice"},
      {"eval -m " + stories() + " -f " + small_text() + " -t 1 --lengths 256 --docs 2",
       "too little"},
      {"passkey -m " + stories() + " --lengths 256 --methods nope", "unknown method 'nope'"},
      {"passkey -m " + stories() + " --lengths 1099511627776", "available"},
      {"passkey -m " + stories() + " --lengths 8", "too short"},
      {"passkey -m " + stories() + " --lengths 256 --depths 2", "bad depth"},
  };
  for (const Case& c : cases) {
    const std::string out = fails(c.args);
    EXPECT_NE(out.find("error: "), std::string::npos) << c.args << "\n" << out;
    EXPECT_NE(out.find(c.expect), std::string::npos) << c.args << "\n" << out;
    // One error line; nothing computed.
    size_t errors = 0;
    for (size_t p = out.find("error"); p != std::string::npos; p = out.find("error", p + 1))
      ++errors;
    EXPECT_EQ(errors, 1u) << out;
    EXPECT_EQ(out.find("cell(s) computed"), std::string::npos) << out;
  }
}

TEST(EvalErrors, MemoryEstimateGrowsWithLength) {
  longrope::HParams hp;
  hp.n_layer = 30;
  hp.n_embd = 576;
  hp.n_head = 9;
  hp.n_head_kv = 3;
  hp.head_dim = 64;
  hp.n_ff = 1536;
  hp.n_vocab = 49152;
  const int64_t a = longrope::estimate_run_bytes(hp, 4096, 1);
  const int64_t b = longrope::estimate_run_bytes(hp, 8192, 1);
  EXPECT_GT(b, a);
  EXPECT_GT(b - a, 4096 * 2 * 30 * 192 * 4);  // at least the KV cache of the extra tokens
  EXPECT_THROW(longrope::check_memory_for_length(hp, int64_t(1) << 36, 1), longrope::Error);
  EXPECT_NO_THROW(longrope::check_memory_for_length(hp, 1024, 1));
}

}  // namespace
