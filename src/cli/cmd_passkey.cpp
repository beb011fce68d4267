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
  SweepCommand c;  // label: the command name (add_sweep_flags)
  std::string lengths, depths;
  std::vector<std::string> methods;
  int64_t trials = 20;
  uint64_t seed = 1234;
  ScaleFlags scale;
  int max_new = 10;
  bool chat = false;
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
  add_sweep_flags(cmd, a->c, "output directory (results.*, accuracy and depth plots)");
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
  return [a]() {
    begin_sweep(a->c);
    PasskeyConfig cfg;
    cfg.model_path = a->c.model;
    cfg.lengths = lengths_flag("passkey", a->lengths);
    cfg.methods = methods_flag("passkey", a->methods);
    cfg.trials = a->trials;
    cfg.seed = a->seed;
    as_usage_error("passkey", [&] { cfg.depths = parse_depths(a->depths); });
    cfg.chat = a->chat;
    cfg.max_new = a->max_new;
    cfg.scale = scale_options(a->scale);
    cfg.out_dir = a->c.out_dir;
    cfg.resume = a->c.resume;
    cfg.overwrite = a->c.overwrite;
    cfg.n_threads = a->c.threads;
    cfg.compute = a->c.compute_mode;
    a->c.json_head = {{"model", a->c.model}, {"trials", a->trials}};
    return run_sweep_command(
        a->c, [&](const Model& m) { return plan_passkey(m, cfg); },
        [&](const EvalRun& r, const Model& m) { return write_passkey_outputs(r, m, cfg); });
  };
}

}  // namespace longrope::cli
