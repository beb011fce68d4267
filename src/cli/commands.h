// Subcommands of the longrope CLI. Each file src/cli/cmd_*.cpp registers one.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace longrope::cli {

// Registers a subcommand on app; the returned callback runs it (after parsing) and returns the exit
// code.
using Runner = std::function<int()>;
Runner register_perplexity(CLI::App& app);
Runner register_generate(CLI::App& app);
Runner register_rope(CLI::App& app);
Runner register_search(CLI::App& app);
Runner register_export(CLI::App& app);
Runner register_eval(CLI::App& app);
Runner register_passkey(CLI::App& app);
Runner register_ruler(CLI::App& app);
Runner register_finetune(CLI::App& app);

}  // namespace longrope::cli
