// The output guard: search and finetune never write over one of their inputs (through any path,
// symbolic or hard link) nor over an earlier run's checkpoint or training state without --resume
// or --overwrite; each refusal is one line, exit 2, before any work.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "longrope/atomic_file.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;

TEST(OutputGuard, SameFileThroughAnyPath) {
  const fs::path d = test::fresh_temp_dir("guard_lib");
  const test::RemoveOnExit clean{d};
  std::ofstream(d / "in.txt") << "text";
  fs::create_hard_link(d / "in.txt", d / "hard.txt");
  fs::create_symlink(d / "in.txt", d / "sym.txt");
  for (const char* out : {"in.txt", "hard.txt", "sym.txt", "./in.txt"}) {
    const std::string o = (d / out).string();
    test::expect_error(
        [&] {
          refuse_output_over_inputs("cmd", o, {"", (d / "in.txt").string()});
        },
        {"cmd: the output", "is the input", "nothing was written"});
  }
  EXPECT_THROW(
      refuse_output_over_inputs("cmd", (d / "hard.txt").string(), {(d / "in.txt").string()}),
      OutputRefused);
  refuse_output_over_inputs("cmd", (d / "new.txt").string(), {(d / "in.txt").string()});
  refuse_existing_state("cmd", (d / "none.ckpt").string(), false, false);
  EXPECT_THROW(refuse_existing_state("cmd", (d / "in.txt").string(), false, false), OutputRefused);
  refuse_existing_state("cmd", (d / "in.txt").string(), true, false);
  refuse_existing_state("cmd", (d / "in.txt").string(), false, true);
}

// The commands: exit 2 with one line, and the file they were pointed at is untouched.
TEST(OutputGuard, SearchAndFinetuneRefuseBeforeAnyWork) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  const fs::path d = test::fresh_temp_dir("guard_cli");
  const test::RemoveOnExit clean{d};
  const fs::path model = d / "m.gguf", text = d / "t.txt";
  fs::copy_file(test::stories_gguf(), model);
  fs::copy_file(test::shared_text("pride_and_prejudice.txt"), text);
  fs::create_hard_link(text, d / "t-link.txt");
  const std::string model_bytes = test::slurp(model), text_bytes = test::slurp(text);
  const std::string cli = test::cli_path().string();
  const std::string search = cli + " search -m " + model.string() + " -f " + text.string() +
                             " -c 1024 --population 4 --iterations 1 -t 1 --no-progress";
  const std::string finetune = cli + " finetune -m " + model.string() + " -f " + text.string() +
                               " -c 256 --steps 1 -t 1 --no-progress";
  std::string out;
  for (const std::string& cmd :
       {search + " -o " + model.string(), search + " -o " + (d / "t-link.txt").string(),
        finetune + " -o " + model.string(), finetune + " -o " + text.string()}) {
    EXPECT_EQ(test::run_command(cmd, &out), 2) << cmd << "\n" << out;
    EXPECT_NE(out.find("is the input"), std::string::npos) << out;
  }
  EXPECT_EQ(test::slurp(model), model_bytes);
  EXPECT_EQ(test::slurp(text), text_bytes);

  // An earlier run's checkpoint: kept without --resume or --overwrite.
  const std::string f = (d / "f.json").string();
  ASSERT_EQ(test::run_command(search + " -o " + f, &out), 0) << out;
  const std::string ckpt = test::slurp(f + ".ckpt.json");
  EXPECT_EQ(test::run_command(search + " --seed 9 -o " + f, &out), 2) << out;
  EXPECT_NE(out.find("holds an earlier run's progress"), std::string::npos) << out;
  EXPECT_EQ(test::slurp(f + ".ckpt.json"), ckpt);
  EXPECT_EQ(test::run_command(search + " --seed 9 --overwrite -o " + f, &out), 0) << out;
  EXPECT_NE(test::slurp(f + ".ckpt.json"), ckpt);

  // A training state likewise.
  const std::string g = (d / "ft.gguf").string();
  ASSERT_EQ(test::run_command(finetune + " -o " + g, &out), 0) << out;
  ASSERT_TRUE(fs::exists(g + ".train"));
  const std::string state = test::slurp(g + ".train");
  EXPECT_EQ(test::run_command(finetune + " --lr 2e-4 -o " + g, &out), 2) << out;
  EXPECT_NE(out.find("--overwrite starts again"), std::string::npos) << out;
  EXPECT_EQ(test::slurp(g + ".train"), state);
  EXPECT_EQ(test::run_command(finetune + " --lr 2e-4 --overwrite -o " + g, &out), 0) << out;
}

// eval and passkey: an output directory that holds another run's results is refused (exit 2,
// results untouched) unless the run resumes them or overwrites them.
TEST(OutputGuard, EvalAndPasskeyKeepAnotherRunsResults) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  LONGROPE_REQUIRE_FILE(test::shared_text("pride_and_prejudice.txt"));
  const fs::path d = test::fresh_temp_dir("guard_sweep");
  const test::RemoveOnExit clean{d};
  const std::string cli = test::cli_path().string();
  const std::string common = " -m " + test::stories_gguf().string() + " -t 1 --no-progress -O ";
  const std::string eval = cli + " eval -f " +
                           test::shared_text("pride_and_prejudice.txt").string() +
                           " --lengths 256" + common;
  const std::string passkey = cli + " passkey --lengths 256 --trials 1" + common;
  std::string out;
  for (const std::string& run : {eval, passkey}) {
    const fs::path dir = d / (run == eval ? "eval" : "passkey");
    ASSERT_EQ(test::run_command(run + dir.string() + " --methods none", &out), 0) << out;
    const std::string results = test::slurp(dir / "results.json");
    const std::string other = run + dir.string() + " --methods none,ntk";
    EXPECT_EQ(test::run_command(other, &out), 2) << out;
    EXPECT_NE(out.find("holds an earlier run's progress"), std::string::npos) << out;
    EXPECT_EQ(out.find("loaded "), std::string::npos) << "refused after loading the model:\n"
                                                      << out;
    EXPECT_EQ(test::slurp(dir / "results.json"), results);
    EXPECT_EQ(test::run_command(other + " --resume", &out), 0) << out;  // keeps the none cell
    // ntk at s = 1 is the plain model: passkey copies its cell from none's (docs/evaluation.md).
    EXPECT_NE(out.find(run == eval ? "1 cell(s) computed, 1 reused"
                                   : "0 cell(s) computed, 1 copied from a method with the same "
                                     "RoPE tables, 1 reused"),
              std::string::npos)
        << out;
    EXPECT_EQ(test::run_command(run + dir.string() + " --methods none --overwrite", &out), 0)
        << out;
    EXPECT_NE(out.find("1 cell(s) computed, 0 reused"), std::string::npos) << out;
  }
}

}  // namespace
}  // namespace longrope
