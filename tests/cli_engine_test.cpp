// The CLI as a user runs it: perplexity JSON, generation, and one-line errors.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "test_paths.h"

using longrope::test::cli_path;
using longrope::test::run_command;
using longrope::test::shared_dir;

namespace {
std::string stories() {
  return (shared_dir() / "models" / "stories260K.gguf").string();
}
std::string moby() {
  return (shared_dir() / "data" / "moby-dick.txt").string();
}

// Last line of the output that parses as a JSON object.
nlohmann::json last_json(const std::string& out) {
  std::istringstream ss(out);
  std::string line;
  nlohmann::json j;
  while (std::getline(ss, line))
    if (!line.empty() && line[0] == '{') j = nlohmann::json::parse(line);
  return j;
}
}  // namespace

TEST(CliEngine, PerplexityJsonHasTheDocumentedFields) {
  LONGROPE_REQUIRE_FILE(stories());
  LONGROPE_REQUIRE_FILE(moby());
  std::string out;
  const int rc = run_command(cli_path().string() + " perplexity -m " + stories() + " -f " + moby() +
                                 " -c 512 --docs 4 --json",
                             &out);
  ASSERT_EQ(rc, 0) << out;
  const auto j = last_json(out);
  ASSERT_TRUE(j.is_object()) << out;
  for (const char* k : {"ppl", "tokens", "seconds", "ctx", "docs"}) EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["tokens"], 2044);
  EXPECT_EQ(j["ctx"], 512);
  EXPECT_EQ(j["docs"], 4);
  // Golden value from the independent reference: 62.98771689296756.
  EXPECT_NEAR(j["ppl"].get<double>(), 62.9877, 0.63);
}

TEST(CliEngine, GenerateGreedyFromLlama2c) {
  const auto bin = (shared_dir() / "models" / "stories260K.bin").string();
  const auto tok = (shared_dir() / "models" / "tok512.bin").string();
  LONGROPE_REQUIRE_FILE(bin);
  LONGROPE_REQUIRE_FILE(tok);
  std::string out;
  const int rc = run_command(cli_path().string() + " generate -m " + bin + " --tokenizer " + tok +
                                 " -n 40 --temp 0 2>/dev/null",
                             &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\nOnce upon a time, there was a little girl named Lily."), std::string::npos)
      << out;
}

TEST(CliEngine, BadInputsGiveOneClearLineAndNonZeroExit) {
  LONGROPE_REQUIRE_FILE(stories());
  struct Case {
    std::string args, expect;
  };
  const std::string tiny = (std::filesystem::temp_directory_path() / "longrope_tiny.txt").string();
  { std::ofstream(tiny) << "Only a few words."; }
  for (const Case& c : {
           Case{"perplexity -m /nonexistent.gguf -f " + moby() + " -c 512", "/nonexistent.gguf"},
           Case{"perplexity -m " + moby() + " -f " + moby() + " -c 512", moby()},
           Case{"perplexity -m " + stories() + " -f /nonexistent.txt -c 512",
                "cannot open text file"},
           Case{"perplexity -m " + stories() + " -f " + tiny + " -c 512",
                "windows of ctx 512 need 511"},
           Case{"perplexity -m " + stories() + " -f " + moby() + " -c 0", "ctx"},
           Case{"generate -m " + stories() + " -n 600", "exceed the context size 512"},
           Case{"perplexity -m " + stories() + " -f " + moby() + " -t 100000", "not in range"},
           Case{"eval -m " + stories() + " -f " + moby() + " --lengths 256 -t -3", "not in range"},
       }) {
    std::string out;
    const int rc = run_command(cli_path().string() + " " + c.args, &out);
    EXPECT_NE(rc, 0) << c.args;
    EXPECT_NE(out.find(c.expect), std::string::npos) << c.args << "\n" << out;
    EXPECT_EQ(out.find("terminate called"), std::string::npos) << out;
  }
}
