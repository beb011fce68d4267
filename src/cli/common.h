// Helpers shared by the subcommands: model loading with a status line, text files, progress.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/flags.h"
#include "longrope/error.h"
#include "longrope/eval.h"
#include "longrope/kernels.h"
#include "longrope/model.h"
#include "longrope/progress.h"

namespace longrope::cli {

// Loads a model, printing what was loaded (and how long it took, and the compute the command
// runs with) on stderr.
std::shared_ptr<const Model> load_model_verbose(const std::string& path,
                                                const std::string& tokenizer_path, int threads,
                                                kernels::Compute compute);

// The -t value a rank uses: the given one, or under MPI (when 0) the cores of this process shared
// among the ranks on its host. Warns on rank 0 when it runs more threads than it has cores (an
// mpirun that binds each rank to one core).
int resolve_threads(int threads);

// Seconds on a monotonic clock.
double wall_seconds();

// The number at the start of text (std::stod's syntax) and, in *used, how many characters it
// took; 0 characters (and NaN) when text does not start with one.
double number_prefix(const std::string& text, size_t* used);

// A command that spreads its work over MPI ranks (search, eval, passkey). Every rank runs
// prepare(), which loads and checks everything and returns the fingerprints every rank must
// share; the ranks are compared before any work (dist::check_same_inputs). Then rank 0 runs
// lead() and the other ranks serve() until rank 0 is done. Without MPI: prepare() then lead().
int run_distributed(const std::function<nlohmann::json()>& prepare,
                    const std::function<int()>& lead, const std::function<void()>& serve);

// The part of `eval` and `passkey` after the flags, on every MPI rank (run_distributed): loads
// the model, builds the sweep plan (plan returns it), then rank 0 runs it under a progress bar,
// writes its outputs (write returns the Markdown table), reports on stderr and prints the table,
// or with --json the object json_head plus the cells; the other ranks compute cells. Returns the
// exit code.
struct SweepCommand {
  std::string label;                               // progress bar label
  bool progress = true;                            // show the bar
  bool json = false;                               // print JSON instead of the table
  std::string out_dir;                             // "" = nothing written
  bool resume = false;                             // reuse finished cells of out_dir/results.json
  bool overwrite = false;                          // replace out_dir's results of another run
  nlohmann::json json_head;                        // fields printed before "cells" with --json
  std::string model, tokenizer, compute = "auto";  // -m, --tokenizer, --compute
  int threads = 0;                                 // after resolve_threads
  kernels::Compute compute_mode = kernels::Compute::kF32;  // --compute, after begin_sweep
};
// The flags every sweep command takes, into c (whose label becomes the command's name):
// -m/--tokenizer, -O/--out-dir (out_help says what goes there), -t, --compute, --json, --resume,
// --overwrite, --no-progress.
void add_sweep_flags(CLI::App* cmd, SweepCommand& c, const std::string& out_help);
// After parsing: --resume needs -O (a UsageError of c.label otherwise); -O DIR holding another
// run's results is refused (OutputRefused) unless --resume or --overwrite; c.threads resolved
// (resolve_threads) and c.compute_mode set from --compute (kernels::compute_of_flag).
void begin_sweep(SweepCommand& c);
int run_sweep_command(const SweepCommand& c, const std::function<SweepPlan(const Model&)>& plan,
                      const std::function<std::string(const EvalRun&, const Model&)>& write);

}  // namespace longrope::cli
