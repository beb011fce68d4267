// longrope export: searched LongRoPE factors into a GGUF model or an HF config.json.
#include <fmt/core.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/commands.h"
#include "cli/common.h"
#include "longrope/atomic_file.h"
#include "longrope/error.h"
#include "longrope/export.h"

namespace longrope::cli {

namespace {
struct ExportArgs {
  std::string model, tokenizer, factors, hf_config, output, hf_dir, hf_dtype = "f32";
  std::string deploy = "longrope";  // longrope: write every key, warn about what runtimes do
};

// With --deploy: the runtime must run the set as it was searched (one line naming the first
// difference otherwise), and the output must be its format. Else the differences as warnings.
void check_deployment(const ExportArgs& a, const RopeScaling& f, bool gguf) {
  const DeployTarget t = parse_deploy_target(a.deploy);
  if (t == DeployTarget::kLongrope) {
    const auto w = export_warnings(f, gguf);
    for (const std::string& line : w) fmt::print(stderr, "warning: {}\n", line);
    if (!w.empty())
      fmt::print(stderr,
                 "note: the file keeps longrope's own keys, with which longrope runs it "
                 "as searched\n");
    return;
  }
  if (t == DeployTarget::kLlamaCpp && !gguf)
    throw UsageError("export", "--deploy llama.cpp writes a GGUF (expected -m MODEL.gguf -o OUT)");
  if ((t == DeployTarget::kTransformers || t == DeployTarget::kVllm) && gguf)
    throw UsageError("export", fmt::format("--deploy {} writes an HF config (expected --hf-config "
                                           "or --hf-dir)",
                                           a.deploy));
  const auto diff = deploy_differences(f, t, f.orig_ctx);
  if (!diff.empty())
    throw Error(
        fmt::format("export: {} cannot run {} as searched: {} (expected factors searched "
                    "with --deploy {}, or export without --deploy)",
                    a.deploy, a.factors, diff.front(), a.deploy));
}
}  // namespace

Runner register_export(CLI::App& app) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* cmd = app.add_subcommand(
      "export",
      "Write LongRoPE factors into a GGUF model (-m, -o), a Hugging Face config.json "
      "(--hf-config, -o) or a Hugging Face model folder (-m, --hf-dir)");
  add_model_flags(cmd, a->model, a->tokenizer,
                  "model to copy with the factors: a GGUF file (-o), or any model (--hf-dir; a "
                  "llama2.c checkpoint with --tokenizer)",
                  false);
  cmd->add_option("--hf-config", a->hf_config, "HF config.json to rewrite with the factors");
  cmd->add_option("--hf-dir", a->hf_dir,
                  "write -m as an HF model folder here (config.json with the factors as "
                  "rope_scaling, model.safetensors, tokenizer.json); --factors optional");
  cmd->add_option("--hf-dtype", a->hf_dtype,
                  "with --hf-dir: what quantized weights become (F32/F16/BF16 ones are copied)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->default_str("f32");
  cmd->add_option("--factors", a->factors,
                  "factors file (longrope search output); required except with --hf-dir");
  cmd->add_option("-o,--output", a->output, "output GGUF or JSON (not with --hf-dir)");
  add_deploy_flag(cmd, a->deploy,
                  "llama.cpp (GGUF), transformers or vllm (HF): refuse factors that this runtime "
                  "would run otherwise than searched (start tokens, a short set switched "
                  "elsewhere or with its own attention factor, vllm's attention factor); "
                  "longrope: write every key and warn about what other runtimes would change");
  return [a]() {
    const bool to_dir = !a->hf_dir.empty();
    if (to_dir) {
      if (a->model.empty() || !a->hf_config.empty() || !a->output.empty())
        throw UsageError("export",
                         "--hf-dir writes the model given with -m (expected -m MODEL "
                         "--hf-dir DIR, without --hf-config or -o)");
    } else {
      if (a->model.empty() == a->hf_config.empty())
        throw UsageError("export", "give exactly one of -m MODEL.gguf or --hf-config CONFIG.json");
      if (a->output.empty()) throw UsageError("export", "-o/--output is required");
      if (a->factors.empty()) throw UsageError("export", "--factors is required");
      if (!a->tokenizer.empty())
        throw UsageError("export", "--tokenizer is for a llama2.c -m with --hf-dir");
    }
    const std::string out = to_dir ? a->hf_dir : a->output;
    refuse_output_over_inputs("export", out, {a->model, a->hf_config, a->factors, a->tokenizer});
    if (to_dir) {
      std::error_code ec;
      if (std::filesystem::exists(a->hf_dir, ec) && !std::filesystem::is_directory(a->hf_dir, ec))
        throw Error(
            fmt::format("export: {} exists and is not a folder (expected a folder for "
                        "--hf-dir)",
                        a->hf_dir));
      std::filesystem::create_directories(a->hf_dir, ec);
      for (const char* f :
           {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})
        check_writable((std::filesystem::path(a->hf_dir) / f).string());
      std::optional<RopeScaling> f;
      if (!a->factors.empty()) {
        f = read_factors_file(a->factors);
        check_deployment(*a, *f, false);
      }
      export_hf_folder(a->model, a->tokenizer, f ? &*f : nullptr, a->hf_dir, a->hf_dtype);
      fmt::print("wrote {} (config.json, model.safetensors, tokenizer.json{})\n", a->hf_dir,
                 f ? fmt::format("; longrope rope_scaling, context {}", f->target_ctx) : "");
      return 0;
    }
    check_writable(a->output);
    nlohmann::json provenance;
    const RopeScaling f = read_factors_file(a->factors, &provenance);
    check_deployment(*a, f, !a->model.empty());
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
      // Files searched since the provenance names the model's rope base carry it.
      std::optional<double> base;
      if (provenance.is_object() && provenance.contains("rope_base") &&
          provenance["rope_base"].is_number())
        base = provenance["rope_base"].get<double>();
      const nlohmann::json out = export_hf_config(cfg, f, base);
      write_file_atomically(a->output, out.dump(2) + "\n");
      fmt::print("wrote {} (max_position_embeddings {})\n", a->output, f.target_ctx);
    }
    return 0;
  };
}

}  // namespace longrope::cli
