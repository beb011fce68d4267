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

// Runs the CLI expecting failure with exit status `code`; returns its output.
std::string fails(const std::string& args, int code) {
  std::string out;
  const int rc = run_command(cli_path().string() + " " + args, &out);
  EXPECT_EQ(rc, code) << args << "\n" << out;
  return out;
}

TEST(EvalErrors, CliRejectsBadInputWithOneLine) {
  LONGROPE_REQUIRE_FILE(stories());
  LONGROPE_REQUIRE_FILE(pride());
  const std::string eval = "eval -m " + stories() + " -f " + pride() + " -t 1 --docs 1 ";
  struct Case {
    std::string args, expect;
    int code;  // 2: a malformed flag value (usage); 1: a file or an input that does not fit
  };
  const Case cases[] = {
      {eval + "--lengths 256 --methods none,bogus", "unknown method 'bogus'", 2},
      {eval + "--lengths 256 --methods longrope=/nonexistent/f.json", "cannot read factors file",
       1},
      {eval + "--lengths 256 --methods s=/nonexistent/f.json", "cannot read factors file", 1},
      {eval + "--lengths 256,1099511627776 --methods none", "available", 1},
      {eval + "--lengths 256,abc --methods none", "bad length 'abc'", 2},
      {eval + "--lengths 256 --methods none,none", "used twice", 2},
      {"eval -m " + stories() + " -f " + small_text() + " -t 1 --lengths 256 --docs 2",
       "too little", 1},
      {"passkey -m " + stories() + " --lengths 256 --methods nope", "unknown method 'nope'", 2},
      {"passkey -m " + stories() + " --lengths 1099511627776", "available", 1},
      {"passkey -m " + stories() + " --lengths 8", "too short", 1},
      {"passkey -m " + stories() + " --lengths 256 --depths 2", "bad depth", 2},
      {"passkey -m " + stories() + " --lengths 2x --depths 0.5", "bad length", 2},
  };
  for (const Case& c : cases) {
    const std::string out = fails(c.args, c.code);
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

// A text must be UTF-8 text: a binary file, an invalid byte or mostly control characters are one
// line each, naming the file and (for invalid UTF-8) the offset; real text of any script passes.
TEST(EvalErrors, TextMustBeUtf8Text) {
  using longrope::check_text;
  using longrope::test::expect_error;
  check_text("plain ASCII\r\nwith\ttabs\f", "t");
  check_text(
      "\xEF\xBB\xBF"
      "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xE6\x97\xA5\xE6\x9C\xAC",
      "t");
  check_text("a\x01" + std::string(200, 'b'), "t");  // one control character in 202: fine
  expect_error([] { check_text("caf\xE9!", "latin1.txt"); },
               {"latin1.txt", "not UTF-8 text", "0xE9 at offset 3"});
  expect_error([] { check_text("\xC0\xAF", "t"); }, {"0xC0 at offset 0"});          // overlong '/'
  expect_error([] { check_text("ab\xED\xA0\x80", "t"); }, {"0xED at offset 2"});    // surrogate
  expect_error([] { check_text("\xF4\x90\x80\x80", "t"); }, {"0xF4 at offset 0"});  // > U+10FFFF
  expect_error([] { check_text("ok\xE2\x82", "t"); }, {"0xE2 at offset 2"});        // truncated
  expect_error([] { check_text(std::string(50, '\0') + std::string(50, 'a'), "zeros.bin"); },
               {"zeros.bin", "not text", "50 of its 100 characters are control characters"});
  // A model file given as text: one line, exit 1, from every command that reads texts.
  const std::string gguf = (shared_dir() / "models" / "stories260K.gguf").string();
  LONGROPE_REQUIRE_FILE(gguf);
  std::string out;
  EXPECT_EQ(run_command(cli_path().string() + " perplexity -m " + gguf + " -f " + gguf +
                            " -c 64 --no-progress",
                        &out),
            1)
      << out;
  EXPECT_NE(out.find("not UTF-8 text"), std::string::npos) << out;
}
