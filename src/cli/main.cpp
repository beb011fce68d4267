// longrope: extend the context window of RoPE language models.
#include <fmt/core.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>

#include "cli/commands.h"
#include "cli/common.h"
#include "longrope/atomic_file.h"
#include "longrope/dist.h"
#include "longrope/error.h"
#include "longrope/interrupt.h"
#include "longrope/kernels.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"longrope: run, score and extend the context window of RoPE language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "longrope 0.1.0");
  std::vector<std::pair<CLI::App*, longrope::cli::Runner>> cmds;
  auto add = [&](longrope::cli::Runner (*reg)(CLI::App&)) {
    const size_t before = app.get_subcommands({}).size();
    longrope::cli::Runner r = reg(app);
    cmds.emplace_back(app.get_subcommands({})[before], std::move(r));
  };
  add(&longrope::cli::register_perplexity);
  add(&longrope::cli::register_generate);
  add(&longrope::cli::register_rope);
  add(&longrope::cli::register_search);
  add(&longrope::cli::register_export);
  add(&longrope::cli::register_eval);
  add(&longrope::cli::register_passkey);
  add(&longrope::cli::register_ruler);
  add(&longrope::cli::register_finetune);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    // A usage error: one line with the error: prefix of the tool's other errors, exit code 2.
    if (!longrope::dist::is_root()) return 2;  // every rank parsed the same flags
    std::string cmd;
    for (const CLI::App* sub : app.get_subcommands())
      if (sub->parsed()) cmd = " " + sub->get_name();
    std::string what = e.what();
    while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
    for (char& ch : what)
      if (ch == '\n') ch = ' ';
    fmt::print(stderr, "error: {} (see longrope{} --help)\n", what, cmd);
    return 2;
  }
  // An unknown or unsupported LONGROPE_CPU fails here, with its one-line error, before any work.
  (void)longrope::kernels::cpu_variant();
  for (auto& [sub, runner] : cmds) {
    if (!sub->parsed()) continue;
    const std::string name = sub->get_name();
    if (longrope::dist::world().size > 1 && name != "search" && name != "eval" &&
        name != "passkey" && name != "ruler") {
      if (!longrope::dist::is_root()) throw longrope::dist::Stopped();
      throw longrope::Error(
          fmt::format("{} runs in one process (only search, eval, passkey and ruler spread over "
                      "MPI ranks); run it without mpirun",
                      name));
    }
    return runner();
  }
  return 0;
}

// Runs the command; prints one error line on failure (under MPI: rank 0 reports, and tells the
// other ranks to stop).
int run_reporting(int argc, char** argv) {
  namespace dist = longrope::dist;
  std::string what;
  try {
    return run(argc, argv);
  } catch (const dist::Stopped&) {
    return 1;  // rank 0 reports
  } catch (const longrope::Interrupted& e) {
    fmt::print(stderr, "{}\n", e.what());
    try {
      dist::stop_workers(false);
    } catch (...) {
    }
    return 130;
  } catch (const longrope::cli::UsageError& e) {
    if (dist::is_root())
      fmt::print(stderr, "error: {} (see longrope {} --help)\n", e.what(), e.cmd);
    return 2;
  } catch (const longrope::OutputRefused& e) {
    if (dist::is_root()) fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  } catch (const longrope::Error& e) {
    what = e.what();
  } catch (const std::bad_alloc&) {
    what = "out of memory (try a smaller context)";
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "unknown failure";
  }
  const dist::World& w = dist::world();
  if (w.size > 1 && w.rank != 0) {
    if (!dist::inputs_checked()) return 1;  // the flags failed alike on rank 0, which reports
    // A failure outside a task (those travel to rank 0): rank 0 may be waiting on this rank.
    fmt::print(stderr, "error: {}: {}\n", dist::rank_name(w.rank), what);
    dist::abort(1);
  } else {
    fmt::print(stderr, "error: {}\n", what);
    try {
      dist::stop_workers(false);
    } catch (...) {
    }
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Before MPI or any work: the BLAS kernels this CPU can run (longrope/kernels.h).
  longrope::kernels::restart_with_blas_repair(argv);
  longrope::dist::init(&argc, &argv);
  const int rc = run_reporting(argc, argv);
  longrope::dist::finalize();
  return rc;
}
