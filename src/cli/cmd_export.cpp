// longrope export: searched LongRoPE factors into a GGUF model or an HF config.json.
#include <fmt/core.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "longrope/atomic_file.h"
#include "longrope/error.h"
#include "longrope/export.h"

namespace longrope::cli {

namespace {
struct ExportArgs {
  std::string model, factors, hf_config, output;
};
}  // namespace

Runner register_export(CLI::App& app) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* cmd = app.add_subcommand(
      "export",
      "Write LongRoPE factors into a GGUF model (-m) or a Hugging Face config.json (--hf-config)");
  cmd->add_option("-m,--model", a->model, "GGUF model to copy with the factors");
  cmd->add_option("--hf-config", a->hf_config, "HF config.json to rewrite with the factors");
  cmd->add_option("--factors", a->factors, "factors file (longrope search output)")->required();
  cmd->add_option("-o,--output", a->output, "output GGUF or JSON")->required();
  return [a]() {
    if (a->model.empty() == a->hf_config.empty())
      throw Error("export: give exactly one of -m MODEL.gguf or --hf-config CONFIG.json");
    for (const std::string& in : {a->model, a->hf_config, a->factors}) {
      std::error_code ec;
      if (!in.empty() && std::filesystem::equivalent(in, a->output, ec))
        throw Error(fmt::format("export: the output {} is the input {} (expected a new file)",
                                a->output, in));
    }
    check_writable(a->output);
    const RopeScaling f = read_factors_file(a->factors);
    for (const std::string& w : export_warnings(f, !a->model.empty()))
      fmt::print(stderr, "warning: {}\n", w);
    if (!a->model.empty()) {
      export_gguf(a->model, f, a->output);
      fmt::print("wrote {} ({} factor set(s), context {})\n", a->output, f.sets.size(),
                 f.target_ctx);
    } else {
      nlohmann::json cfg;
      try {
        std::ifstream in(a->hf_config);
        if (!in) throw Error(fmt::format("{}: cannot open", a->hf_config));
        cfg = nlohmann::json::parse(in);
      } catch (const nlohmann::json::exception& e) {
        throw Error(fmt::format("{}: not valid JSON ({})", a->hf_config, e.what()));
      }
      const nlohmann::json out = export_hf_config(cfg, f);
      write_file_atomically(a->output, out.dump(2) + "\n");
      fmt::print("wrote {} (max_position_embeddings {})\n", a->output, f.target_ctx);
    }
    return 0;
  };
}

}  // namespace longrope::cli
