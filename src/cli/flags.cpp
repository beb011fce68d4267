#include "cli/flags.h"

#include <fmt/core.h>

#include <string>

#include "longrope/dist.h"
#include "longrope/rope.h"

namespace longrope::cli {

void add_model_flags(CLI::App* cmd, std::string& model, std::string& tokenizer,
                     const std::string& model_help, bool required) {
  cmd->add_option("-m,--model", model,
                  model_help.empty() ? "model: GGUF file, llama2.c checkpoint or HF model folder"
                                     : model_help)
      ->type_name("MODEL")
      ->required(required);
  cmd->add_option("--tokenizer", tokenizer, "tokenizer.bin for llama2.c checkpoints");
}

void check_resume_has_out_dir(const std::string& cmd, bool resume, const std::string& out_dir) {
  if (resume && out_dir.empty())
    throw UsageError(cmd, "--resume needs -O DIR (the directory whose results.json it continues)");
}

void add_texts_option(CLI::App* cmd, std::vector<std::string>& texts, const std::string& help) {
  cmd->add_option("-f,--file", texts, help)->type_name("TEXT")->required()->delimiter(',');
}

CLI::Option* add_ctx_option(CLI::App* cmd, int64_t& ctx, const std::string& help, int64_t min_ctx) {
  return cmd->add_option("-c,--ctx", ctx, help)
      ->type_name("N")
      ->check(in_range(double(min_ctx), double(kMaxContext)));
}

CLI::Option* add_lengths_option(CLI::App* cmd, std::string& lengths, const std::string& help) {
  return cmd->add_option("--lengths", lengths, help)->type_name("LIST");
}

CLI::Option* add_orig_ctx_option(CLI::App* cmd, std::function<void(int64_t)> set,
                                 const std::string& help) {
  return cmd->add_option_function<int64_t>("--orig-ctx", std::move(set), help)
      ->type_name("N")
      ->check(in_range(1, double(kMaxContext)));
}

void add_methods_option(CLI::App* cmd, std::vector<std::string>& methods,
                        const std::string& default_list) {
  cmd->add_option("--methods", methods,
                  "comma-separated: none, linear, ntk, dynamic, yarn, llama3, "
                  "longrope=FACTORS.json, LABEL=FACTORS.json, LABEL=METHOD")
      ->type_name("LIST")
      ->default_str(default_list)
      ->delimiter('\0');
}

std::vector<std::string> methods_flag(const std::string& cmd, const std::vector<std::string>& given,
                                      const std::string& default_list) {
  std::vector<std::string> m = given.empty() ? std::vector<std::string>{default_list} : given;
  as_usage_error(cmd, [&] { parse_method_specs(m); });
  return m;
}

std::vector<int64_t> lengths_flag(const std::string& cmd, const std::string& given) {
  std::vector<int64_t> l;
  as_usage_error(cmd, [&] { l = parse_lengths(given); });
  return l;
}

void add_out_dir_option(CLI::App* cmd, std::string& dir, const std::string& help) {
  cmd->add_option("-O,--out-dir", dir, help)->type_name("DIR");
  add_deprecated_alias(cmd, "-o,--output", "-O/--out-dir", dir);
}

namespace {
// "-o,--output" as help text writes it: "-o/--output".
std::string slashed(std::string names) {
  for (char& ch : names)
    if (ch == ',') ch = '/';
  return names;
}
}  // namespace

void warn_deprecated(const CLI::App* cmd, const std::string& old_name,
                     const std::string& new_name) {
  if (!dist::is_root()) return;
  fmt::print(stderr,
             "warning: {} {} is deprecated; use {} (the old spelling goes in the next release)\n",
             cmd->get_name(), slashed(old_name), new_name);
}

CLI::Validator in_range(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(s, v)) return fmt::format("{} is not a number", s);
        if (!(v >= lo && v <= hi)) return fmt::format("{} is not in [{}, {}]", s, lo, hi);
        return {};
      },
      fmt::format("in [{}, {}]", lo, hi));
}

void add_off_flag(CLI::App* cmd, const std::string& name, bool& on, const std::string& help) {
  cmd->add_flag_callback(
      name, [&on] { on = false; }, help);
}

void add_no_progress_flag(CLI::App* cmd, bool& progress) {
  add_off_flag(cmd, "--no-progress", progress, "no progress bar");
}

void add_threads_option(CLI::App* cmd, int& threads) {
  cmd->add_option("-t,--threads", threads,
                  "threads per process (default 0: all cores, shared among the MPI ranks of a "
                  "host)")
      ->check(in_range(0, 1024));
}

void add_compute_flag(CLI::App* cmd, std::string& value) {
  cmd->add_option("--compute", value,
                  "arithmetic of prompt processing and attention: bf16 (bf16 products, FP32 "
                  "sums; needs AVX512_BF16), f32, or auto = bf16 where it outruns f32 (AMX, or "
                  "AVX512_BF16 on AMD), else f32")
      ->default_str("auto")
      ->check(CLI::IsMember({"auto", "f32", "bf16"}));
}

void add_overwrite_flag(CLI::App* cmd, bool& overwrite, const std::string& help) {
  cmd->add_flag("--overwrite", overwrite, help);
}

void add_convention_flag(CLI::App* cmd, std::string& value) {
  cmd->add_option("--convention", value,
                  "how windows are cut and which tokens are scored: " +
                      window_convention_description(WindowConvention::kLongrope) + "; " +
                      window_convention_description(WindowConvention::kLlamaCpp) +
                      " (as llama-perplexity)")
      ->default_str("longrope")
      ->check(CLI::IsMember({"longrope", "llama.cpp"}));
}

void add_deploy_flag(CLI::App* cmd, std::string& value, const std::string& help) {
  cmd->add_option("--deploy", value, help)
      ->default_str("longrope")
      ->check(CLI::IsMember({"longrope", "llama.cpp", "transformers", "vllm"}));
}

void add_scale_flags(CLI::App* cmd, ScaleFlags& f) {
  add_orig_ctx_option(
      cmd, [&f](int64_t v) { f.orig_ctx = v; },
      "original context L_orig for rule-based methods (default: the model's)");
  cmd->add_option("--rope-factor", f.rope_factor,
                  "fixed scale s for rule-based methods (default: max(1, length / L_orig))")
      ->check(in_range(1.0, 1e6));
  add_deploy_flag(cmd, f.deploy,
                  "where factors files will run, scored as that runtime runs them: longrope (sets "
                  "by length, start tokens n_hat), llama.cpp and vllm (one set chosen by the "
                  "context size, no start tokens; vllm computes the attention factor), "
                  "transformers (sets by length, no start tokens)");
  cmd->add_option("--deploy-ctx", f.deploy_ctx,
                  "the runtime's context size with --deploy llama.cpp|vllm (n_ctx, max_model_len; "
                  "default: each factors file's target context)")
      ->check(in_range(1, double(kMaxContext)));
}

ScaleOptions scale_options(const ScaleFlags& f) {
  ScaleOptions so;
  if (f.orig_ctx > 0) so.orig_ctx = f.orig_ctx;
  if (f.rope_factor > 0) so.rope_factor = f.rope_factor;
  so.deploy = parse_deploy_target(f.deploy);
  so.deploy_ctx = f.deploy_ctx;
  return so;
}

}  // namespace longrope::cli
