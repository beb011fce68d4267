// `mpirun -np N longrope search|eval|passkey` on stories260K against the single-process run:
// byte-identical outputs for any N, kill-and-resume under mpirun, a failing rank and a rank with
// other files stopping the job with one line.
#include <fmt/core.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "test_paths.h"

extern char** environ;

namespace longrope {
namespace {

namespace fs = std::filesystem;
using test::slurp;

std::string q(const fs::path& p) {
  return fmt::format("'{}'", p.string());
}

// mpirun with the flags CI needs (root in a container, more ranks than cores). Open MPI does not
// free what MPI_Init allocates, partly in components it unloads at exit (frames LeakSanitizer
// cannot name, so no suppression matches them): leak checking is off for the ranks. The same
// library code is leak-checked in one process by every other test; the sanitizer preset still
// checks the ranks for memory errors.
// Shared-memory messages are copied without cross-process reads, which containers without
// ptrace permission refuse (docs/distributed.md, "Containers").
std::string mpirun(int n) {
  return fmt::format(
      "ASAN_OPTIONS=detect_leaks=0 OMPI_MCA_btl_vader_single_copy_mechanism=none {} "
      "--allow-run-as-root --oversubscribe -np {} ",
      LONGROPE_TEST_MPIEXEC, n);
}

#define REQUIRE_MPI()                                                                        \
  do {                                                                                       \
    if (std::string(LONGROPE_TEST_MPIEXEC).empty()) {                                        \
      if (test::in_ci()) FAIL() << "built without MPI (scripts/setup.sh installs Open MPI)"; \
      GTEST_SKIP() << "built without MPI";                                                   \
    }                                                                                        \
  } while (0)

const fs::path kText = "pride_and_prejudice.txt";

std::string search_flags(const fs::path& out, int iterations) {
  return " search -m " + q(test::stories_gguf()) + " -f " + q(test::shared_text(kText.string())) +
         " -c 1024 --docs 1 --population 8 --parents 4 --mutations 3 --crossovers 3"
         " --seed 11 --short-ctx 768 --no-progress -t 1 --iterations " +
         std::to_string(iterations) + " -o " + q(out);
}

int run(const std::string& cmd, std::string* out) {
  return test::run_command("SOURCE_DATE_EPOCH=0 " + cmd, out);
}

void expect_same_files(const fs::path& a, const fs::path& b) {
  for (const char* ext : {"", ".log.json", ".ckpt.json"}) {
    const std::string x = slurp(a.string() + ext), y = slurp(b.string() + ext);
    ASSERT_FALSE(x.empty()) << a << ext;
    EXPECT_EQ(x, y) << a << ext << " vs " << b << ext;
  }
}

TEST(DistMpi, SearchIsTheSameForAnyNumberOfRanks) {
  REQUIRE_MPI();
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text(kText.string()));
  const fs::path d = test::fresh_temp_dir("mpi_same");
  const std::string cli = q(test::cli_path());
  std::string out;
  ASSERT_EQ(run(cli + search_flags(d / "one.json", 3), &out), 0) << out;
  ASSERT_EQ(run(mpirun(3) + cli + search_flags(d / "three.json", 3), &out), 0) << out;
  EXPECT_NE(out.find("3 MPI ranks"), std::string::npos) << out;
  expect_same_files(d / "one.json", d / "three.json");
  // Rank 0 only handing out work: two workers.
  ASSERT_EQ(run(mpirun(3) + cli + search_flags(d / "noroot.json", 3) + " --no-root-eval", &out), 0)
      << out;
  expect_same_files(d / "one.json", d / "noroot.json");
  fs::remove_all(d);
}

// A multi-objective search: the same front (and pick) byte for byte for one and three ranks.
TEST(DistMpi, MultiObjectiveFrontIsTheSameForAnyNumberOfRanks) {
  REQUIRE_MPI();
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text(kText.string()));
  const fs::path d = test::fresh_temp_dir("mpi_front");
  const std::string cli = q(test::cli_path());
  const std::string multi = " --fitness ppl,needle --needles 3 --pick knee";
  std::string out;
  ASSERT_EQ(run(cli + search_flags(d / "one.json", 2) + multi, &out), 0) << out;
  EXPECT_NE(out.find("front:"), std::string::npos) << out;
  ASSERT_EQ(run(mpirun(3) + cli + search_flags(d / "three.json", 2) + multi, &out), 0) << out;
  expect_same_files(d / "one.json", d / "three.json");
  const auto file = nlohmann::json::parse(test::slurp(d / "one.json"));
  EXPECT_GE(file.at("front").size(), 1u);
  fs::remove_all(d);
}

// Starts `cmd` (VAR=value prefixes allowed; through sh and env, exec'd so that the pid is the
// command's).
pid_t spawn(const std::string& cmd) {
  const std::string full = "exec env SOURCE_DATE_EPOCH=0 " + cmd + " >/dev/null 2>&1";
  const char* argv[] = {"/bin/sh", "-c", full.c_str(), nullptr};
  pid_t pid = -1;
  if (posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ) != 0)
    return -1;
  return pid;
}

int iterations_done(const fs::path& ckpt) {
  std::ifstream f(ckpt);
  if (!f) return -1;
  try {
    const auto j = nlohmann::json::parse(f);
    return j.at("long").at("iterations_done").get<int>();
  } catch (const std::exception&) {
    return -2;  // a checkpoint is replaced atomically: never half written
  }
}

TEST(DistMpi, KilledJobResumesWithAnotherNumberOfRanksToTheSameResult) {
  REQUIRE_MPI();
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text(kText.string()));
  const fs::path d = test::fresh_temp_dir("mpi_kill");
  const std::string cli = q(test::cli_path());
  constexpr int kIterations = 40;
  std::string out;
  ASSERT_EQ(run(cli + search_flags(d / "whole.json", kIterations), &out), 0) << out;

  const pid_t pid = spawn(mpirun(3) + cli + search_flags(d / "killed.json", kIterations));
  ASSERT_GT(pid, 0);
  const fs::path ckpt = d / "killed.json.ckpt.json";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  int seen = -1;
  while (std::chrono::steady_clock::now() < deadline) {
    seen = iterations_done(ckpt);
    ASSERT_NE(seen, -2) << "unreadable checkpoint";
    if (seen >= 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(pid, SIGTERM);  // mpirun ends every rank
  int status = 0;
  ::waitpid(pid, &status, 0);
  const int at_kill = iterations_done(ckpt);
  ASSERT_GE(at_kill, 3) << "no checkpoint before the kill";
  ASSERT_LE(at_kill, kIterations) << "the run finished before it could be killed";
  EXPECT_FALSE(fs::exists(d / "killed.json")) << "a factors file from a killed run";

  ASSERT_EQ(run(mpirun(2) + cli + search_flags(d / "killed.json", kIterations) + " --resume", &out),
            0)
      << out;
  expect_same_files(d / "whole.json", d / "killed.json");
  fs::remove_all(d);
}

TEST(DistMpi, FailingRankStopsTheJobWithOneLineAndTheCheckpointResumes) {
  REQUIRE_MPI();
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text(kText.string()));
  const fs::path d = test::fresh_temp_dir("mpi_fail");
  const std::string cli = q(test::cli_path());
  std::string out;
  ASSERT_EQ(run(cli + search_flags(d / "whole.json", 3), &out), 0) << out;
  // Rank 2's fourth candidate throws (the initial population has 8: it falls in iteration 0 or 1).
  ASSERT_NE(run("LONGROPE_FAIL_TASK=2:4 " + mpirun(3) + cli + search_flags(d / "f.json", 3), &out),
            0);
  EXPECT_NE(out.find("error: rank 2 (host "), std::string::npos) << out;
  EXPECT_NE(out.find(") failed on candidate "), std::string::npos) << out;
  EXPECT_NE(out.find("injected failure"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(d / "f.json"));
  ASSERT_EQ(run(mpirun(3) + cli + search_flags(d / "f.json", 3) +
                    (fs::exists(d / "f.json.ckpt.json") ? " --resume" : ""),
                &out),
            0)
      << out;
  expect_same_files(d / "whole.json", d / "f.json");
  fs::remove_all(d);
}

TEST(DistMpi, RankWithOtherFilesStopsTheJobBeforeAnyEvaluation) {
  REQUIRE_MPI();
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text(kText.string()));
  const fs::path d = test::fresh_temp_dir("mpi_other");
  const std::string cli = q(test::cli_path());
  // A copy of the model with one weight byte changed (same shape, same embedding): the model
  // fingerprint samples every tensor, so it tells the two apart.
  std::vector<uint8_t> bytes = test::read_bytes(test::stories_gguf());
  ASSERT_GT(bytes.size(), 100000u);
  bytes[bytes.size() - 5000] ^= 0x01;
  const fs::path other = d / "other.gguf";
  std::ofstream(other, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  std::string flags = search_flags(d / "x.json", 1);
  std::string with_other = flags;
  with_other.replace(with_other.find(q(test::stories_gguf())), q(test::stories_gguf()).size(),
                     q(other));
  std::string out;
  ASSERT_NE(run(mpirun(2) + cli + flags + " : -np 1 " + cli + with_other, &out), 0);
  EXPECT_NE(out.find("error: rank 2 (host "), std::string::npos) << out;
  EXPECT_NE(out.find(") differs from rank 0 (host "), std::string::npos) << out;
  EXPECT_NE(out.find(") in its model: "), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(d / "x.json.ckpt.json")) << "evaluations ran";

  // Another text on rank 1.
  std::string other_text = flags;
  other_text.replace(other_text.find(q(test::shared_text(kText.string()))),
                     q(test::shared_text(kText.string())).size(),
                     q(test::shared_text("moby-dick.txt")));
  ASSERT_NE(run(mpirun(1) + cli + flags + " : -np 1 " + cli + other_text, &out), 0);
  EXPECT_NE(out.find("error: rank 1 (host "), std::string::npos) << out;
  EXPECT_NE(out.find(") in its text: "), std::string::npos) << out;

  // A command that does not spread over ranks says so.
  ASSERT_NE(run(mpirun(2) + cli + " perplexity -m " + q(test::stories_gguf()) + " -f " +
                    q(test::shared_text(kText.string())) + " -c 256",
                &out),
            0);
  EXPECT_NE(out.find("error: perplexity runs in one process"), std::string::npos) << out;
  fs::remove_all(d);
}

TEST(DistMpi, EvalAndPasskeyTablesAreTheSameAsOneProcess) {
  REQUIRE_MPI();
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text(kText.string()));
  const fs::path d = test::fresh_temp_dir("mpi_eval");
  const std::string cli = q(test::cli_path());
  const std::string eval = " eval -m " + q(test::stories_gguf()) + " -f " +
                           q(test::shared_text(kText.string())) +
                           " --lengths 256,512,1k --methods none,linear,yarn --no-progress -t 1";
  const std::string passkey =
      " passkey -m " + q(test::stories_gguf()) +
      " --lengths 256,512 --methods none,yarn --trials 3 --no-progress -t 1";
  std::string one, three;
  for (const auto& [cmd, name] : {std::pair{eval, "eval"}, std::pair{passkey, "passkey"}}) {
    ASSERT_EQ(run(cli + cmd + " -o " + q(d / (std::string(name) + "1")), &one), 0) << one;
    ASSERT_EQ(run(mpirun(3) + cli + cmd + " -o " + q(d / (std::string(name) + "3")), &three), 0)
        << three;
    const std::string t1 = slurp(d / (std::string(name) + "1") / "results.md");
    ASSERT_FALSE(t1.empty());
    EXPECT_EQ(t1, slurp(d / (std::string(name) + "3") / "results.md")) << name;
    EXPECT_EQ(slurp(d / (std::string(name) + "1") / "results.csv"),
              slurp(d / (std::string(name) + "3") / "results.csv"))
        << name;
  }
  fs::remove_all(d);
}

}  // namespace
}  // namespace longrope
