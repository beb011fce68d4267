// The CLI as a user runs it: perplexity JSON, generation, and one-line errors.
#include <gtest/gtest.h>

#include <algorithm>
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

// A prompt from a file, not echoed, with the warning once the context passes what the scaling was
// made for (yarn s = 1.1 over 512 = 563 tokens; the prompt alone is 699).
TEST(CliEngine, GeneratePromptFileNoEchoAndLengthWarning) {
  LONGROPE_REQUIRE_FILE(stories());
  LONGROPE_REQUIRE_FILE(moby());
  const std::string text = longrope::test::slurp(moby()).substr(100, 1200);
  const auto prompt = std::filesystem::temp_directory_path() / "longrope_prompt.txt";
  { std::ofstream(prompt) << text; }
  const std::string base = cli_path().string() + " generate -m " + stories() + " -f " +
                           prompt.string() + " -n 20 --temp 0 -c 800";
  std::string out, err;
  // run_command adds 2>&1 at the end: each redirection here sits in its own subshell.
  ASSERT_EQ(run_command("(" + base + " --no-echo --rope yarn --rope-factor 1.1 2>/dev/null)", &out),
            0)
      << out;
  EXPECT_EQ(out.find(text.substr(0, 40)), std::string::npos) << out;  // not echoed
  EXPECT_GT(out.size(), 20u) << out;
  ASSERT_EQ(run_command("(" + base + " --rope yarn --rope-factor 1.1 2>&1 >/dev/null)", &err), 0)
      << err;
  EXPECT_NE(err.find("warning: the context (699 tokens) passes the 563 tokens that the RoPE "
                     "scaling (yarn s=1.1"),
            std::string::npos)
      << err;
  ASSERT_EQ(run_command("(" + base + " 2>/dev/null)", &out), 0) << out;
  EXPECT_EQ(out.rfind(text, 0), 0u) << out.substr(0, 200);  // echoed by default
  // Within what the scaling was made for: no warning.
  ASSERT_EQ(run_command("(" + base + " --rope yarn --rope-factor 2 2>&1 >/dev/null)", &err), 0)
      << err;
  EXPECT_EQ(err.find("warning"), std::string::npos) << err;
  std::filesystem::remove(prompt);
}

TEST(CliEngine, BadInputsGiveOneClearLineAndNonZeroExit) {
  LONGROPE_REQUIRE_FILE(stories());
  struct Case {
    std::string args, expect;
    int rc = 1;  // 2: a usage error (flags), 1: a failure
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
           Case{"perplexity -m " + stories() + " -f " + moby() + " -c 0", "--ctx", 2},
           Case{"generate -m " + stories() + " -n 600", "exceed the context size 512"},
           Case{"perplexity -m " + stories() + " -f " + moby() + " -t 100000",
                "--threads: 100000 is not in [0, 1024]", 2},
           Case{"eval -m " + stories() + " -f " + moby() + " --lengths 256 -t -3",
                "-3 is not in [0, 1024]", 2},
           Case{"generate -m " + stories() + " --temp -1", "--temp: -1 is not in [0, 100]", 2},
           Case{"generate -m " + stories() + " --top-k -5", "--top-k", 2},
           Case{"generate -m " + stories() + " --top-p 7", "--top-p: 7 is not in [1e-06, 1]", 2},
           Case{"generate -m " + stories() + " -c -4", "--ctx", 2},
           Case{"generate -m " + stories() + " --switch bogus", "bogus not in", 2},
           Case{"generate -m " + stories() + " -p hi -f " + moby(), "--prompt excludes --file", 2},
           Case{"generate -m " + stories() + " -f /nonexistent.txt", "cannot open text file"},
           Case{"generate -m " + stories() + " --rope yarn",
                "--rope yarn without --rope-factor at length 512: the default factor"},
           Case{"perplexity -m " + stories() + " -f " + shared_dir().string() + " -c 512",
                "is a directory (expected a text file)"},
           Case{
               "perplexity -m " + stories() + " -f " + moby() + " -c 1024 --factors " +
                   (longrope::test::source_dir() / "docs" / "factors" / "smollm2-135m-16k-ppl.json")
                       .string(),
               "smollm2-135m-16k-ppl.json does not fit this model: rope longrope: set 0"},
           Case{"perplexity -m " + stories() + " --tokenizer " + stories() + " -f " + moby() +
                    " -c 512",
                "was given for a GGUF model, which carries its own"},
           Case{"export -m " + (shared_dir() / "models" / "stories260K.bin").string() +
                    " --factors " +
                    (longrope::test::source_dir() / "docs" / "factors" / "stories260k-4096.json")
                        .string() +
                    " -o /tmp/longrope_x.gguf",
                "stories260K.bin is not a GGUF file"},
           Case{"perplexity -m " + stories() + " -f " + moby() + " -c 512 --bogus-flag",
                "--bogus-flag", 2},
       }) {
    std::string out;
    // The error line without the status lines (loaded ..., tokenized ...) printed before it.
    run_command(
        cli_path().string() + " " + c.args + " 2>&1 | grep -v -e '^loaded ' -e '^tokenized '",
        &out);
    std::string status;
    run_command(cli_path().string() + " " + c.args + " >/dev/null 2>&1; echo $?", &status);
    EXPECT_EQ(std::stoi(status), c.rc) << c.args << "\n" << out;
    EXPECT_EQ(out.rfind("error: ", 0), 0u) << c.args << "\n" << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << c.args << "\n" << out;
    EXPECT_NE(out.find(c.expect), std::string::npos) << c.args << "\n" << out;
    EXPECT_EQ(out.find("terminate called"), std::string::npos) << out;
  }
}
