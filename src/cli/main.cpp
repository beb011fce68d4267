// longrope: extend the context window of RoPE language models.
#include <fmt/core.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "longrope/error.h"

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
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  for (auto& [sub, runner] : cmds)
    if (sub->parsed()) return runner();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const longrope::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "error: out of memory (try a smaller context)\n");
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (...) {
    fmt::print(stderr, "error: unknown failure\n");
    return 1;
  }
}
