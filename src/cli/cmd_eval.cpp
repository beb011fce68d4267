// longrope eval: perplexity of several RoPE methods over several lengths, as tables and a plot.
#include <fmt/core.h>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "longrope/error.h"
#include "longrope/eval.h"

namespace longrope::cli {

namespace {
struct EvalArgs {
  SweepCommand c;  // label: the command name (add_sweep_flags)
  std::string lengths;
  std::vector<std::string> texts;
  std::vector<std::string> methods;
  int64_t docs = 1;
  ScaleFlags scale;
  bool kl = false;
  std::string fitness = "ppl";
  std::string convention = "longrope";
  int needles = 4;
  uint64_t needle_seed = 1234;
  double needle_weight = 0.1;
};

}  // namespace

Runner register_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand(
      "eval",
      "Perplexity of several RoPE methods at several lengths (K windows per text; with several "
      "texts ppl = exp(mean NLL over all scored tokens)); writes results.{md,csv,json} and "
      "ppl.{png,svg} to -O DIR");
  add_sweep_flags(cmd, a->c, "output directory (results.*, ppl.png, ppl.svg)");
  add_texts_option(cmd, a->texts, "text file(s), comma separated (UTF-8)");
  add_lengths_option(cmd, a->lengths, "window lengths, e.g. 512,1024,2k,4k")->required();
  add_methods_option(cmd, a->methods, "none,linear,ntk,dynamic,yarn");
  cmd->add_option("--docs", a->docs, "windows per text (K)")
      ->capture_default_str()
      ->check(in_range(int64_t(1), int64_t(1) << 20));
  add_scale_flags(cmd, a->scale);
  cmd->add_option("--fitness", a->fitness,
                  "ppl: every token; needle: the answers of needle windows only; mix: needle "
                  "windows scored whole, exp((1-w) mean NLL + w mean answer NLL) (as search "
                  "--fitness)")
      ->capture_default_str()
      ->check(CLI::IsMember({"ppl", "needle", "mix"}));
  cmd->add_option("--needle-weight", a->needle_weight,
                  "weight w of the answers in --fitness mix (0 < w < 1)")
      ->capture_default_str();
  cmd->add_option("--needles", a->needles, "key facts per needle window")
      ->capture_default_str()
      ->check(in_range(1, 8));
  cmd->add_option("--needle-seed", a->needle_seed, "seed of the needles' numbers and depths")
      ->capture_default_str();
  cmd->add_flag("--kl-divergence", a->kl,
                "also compare each method's next-token distributions with the unscaled model's "
                "at lengths up to the trained context: mean KL divergence, its 99th percentile and "
                "the share of positions with the same top token (tables in results.md, kl.csv)");
  add_convention_flag(cmd, a->convention);
  return [a]() {
    begin_sweep(a->c);
    EvalConfig cfg;
    cfg.model_path = a->c.model;
    cfg.text_paths = a->texts;
    cfg.lengths = lengths_flag("eval", a->lengths);
    cfg.methods = methods_flag("eval", a->methods, "none,linear,ntk,dynamic,yarn");
    cfg.docs = a->docs;
    cfg.scale = scale_options(a->scale);
    cfg.out_dir = a->c.out_dir;
    cfg.resume = a->c.resume;
    cfg.overwrite = a->c.overwrite;
    cfg.fitness = a->fitness;
    cfg.needles = a->needles;
    cfg.needle_seed = a->needle_seed;
    cfg.needle_weight = a->needle_weight;
    cfg.kl_divergence = a->kl;
    cfg.convention = parse_window_convention(a->convention);
    cfg.n_threads = a->c.threads;
    cfg.compute = a->c.compute_mode;
    a->c.json_head = {{"model", a->c.model}, {"docs", a->docs}};
    return run_sweep_command(
        a->c, [&](const Model& m) { return plan_eval(m, cfg); },
        [&](const EvalRun& r, const Model& m) { return write_eval_outputs(r, m, cfg); });
  };
}

}  // namespace longrope::cli
