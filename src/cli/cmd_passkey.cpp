// longrope passkey: passkey retrieval accuracy of several RoPE methods at several lengths.
#include <fmt/core.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "longrope/error.h"
#include "longrope/passkey.h"

namespace longrope::cli {

namespace {
struct PasskeyArgs {
  std::string model, tokenizer, lengths, out, depths;
  std::vector<std::string> methods;
  int64_t trials = 20;
  uint64_t seed = 1234;
  ScaleFlags scale;
  int threads = 0;
  std::string compute = "auto";
  int max_new = 10;
  bool chat = false, json = false, resume = false, overwrite = false, progress = true;
};

std::vector<double> parse_depths(const std::string& s) {
  std::vector<double> out;
  std::stringstream ss(s);
  std::string p;
  while (std::getline(ss, p, ',')) {
    if (p.empty()) continue;
    size_t used = 0;
    const double d = number_prefix(p, &used);
    if (used != p.size() || !(d >= 0 && d <= 1))
      throw Error(fmt::format("bad depth '{}' in --depths (expected numbers in [0, 1])", p));
    out.push_back(d);
  }
  return out;
}
}  // namespace

Runner register_passkey(CLI::App& app) {
  auto a = std::make_shared<PasskeyArgs>();
  CLI::App* cmd = app.add_subcommand(
      "passkey",
      "Passkey retrieval: a random number (1..50000) hidden at a random depth of filler text, "
      "greedy decoding of up to 10 tokens after the question; accuracy per method and length with "
      "its 95% Wilson interval; writes results.{md,csv,json} and accuracy.{png,svg} to -O DIR");
  add_model_flags(cmd, a->model, a->tokenizer);
  add_lengths_option(cmd, a->lengths, "prompt lengths in tokens, e.g. 1k,2k,4k")->required();
  add_methods_option(cmd, a->methods);
  cmd->add_option("--trials", a->trials, "trials per method and length")
      ->capture_default_str()
      ->check(in_range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--seed", a->seed, "seed of keys and depths")->capture_default_str();
  cmd->add_option("--depths", a->depths,
                  "comma-separated depths in [0,1], used in turn (default: random per trial)");
  cmd->add_flag("--chat", a->chat, "wrap the prompt in the ChatML template");
  cmd->add_option("-n,--n-predict", a->max_new, "new tokens to generate for the answer")
      ->capture_default_str()
      ->check(in_range(1, 1000));
  add_scale_flags(cmd, a->scale);
  add_out_dir_option(cmd, a->out, "output directory (results.*, accuracy and depth plots)");
  add_threads_option(cmd, a->threads);
  add_compute_flag(cmd, a->compute);
  cmd->add_flag("--json", a->json, "print the results as JSON instead of a Markdown table");
  cmd->add_flag("--resume", a->resume, "reuse finished cells of DIR/results.json");
  add_overwrite_flag(cmd, a->overwrite, "replace the results of another run in -O DIR");
  add_no_progress_flag(cmd, a->progress);
  return [a]() {
    check_resume_has_out_dir("passkey", a->resume, a->out);
    PasskeyConfig cfg;
    cfg.model_path = a->model;
    as_usage_error("passkey", [&] { cfg.lengths = parse_lengths(a->lengths); });
    cfg.methods = a->methods.empty() ? std::vector<std::string>{"none"} : a->methods;
    as_usage_error("passkey", [&] { parse_method_specs(cfg.methods); });
    cfg.trials = a->trials;
    cfg.seed = a->seed;
    as_usage_error("passkey", [&] { cfg.depths = parse_depths(a->depths); });
    cfg.chat = a->chat;
    cfg.max_new = a->max_new;
    cfg.scale = scale_options(a->scale);
    cfg.out_dir = a->out;
    cfg.resume = a->resume;
    cfg.overwrite = a->overwrite;
    cfg.n_threads = resolve_threads(a->threads);
    const SweepCommand c{.label = "passkey",
                         .progress = a->progress,
                         .json = a->json,
                         .out_dir = a->out,
                         .resume = a->resume,
                         .overwrite = a->overwrite,
                         .json_head = {{"model", a->model}, {"trials", a->trials}},
                         .model = a->model,
                         .tokenizer = a->tokenizer,
                         .compute = a->compute,
                         .threads = cfg.n_threads};
    return run_sweep_command(
        c, [&](const Model& m) { return plan_passkey(m, cfg); },
        [&](const EvalRun& r, const Model& m) { return write_passkey_outputs(r, m, cfg); });
  };
}

}  // namespace longrope::cli
