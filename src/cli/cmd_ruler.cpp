// longrope ruler: the RULER long-context benchmark for several RoPE methods at several lengths.
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/flags.h"
#include "longrope/atomic_file.h"
#include "longrope/error.h"
#include "longrope/ruler.h"

namespace longrope::cli {

namespace {
struct RulerArgs {
  SweepCommand c;  // label: the command name (add_sweep_flags)
  std::string lengths, tasks = "all";
  std::vector<std::string> haystack, qa_data;
  std::string words = "/usr/share/dict/words";
  std::string data;
  std::vector<std::string> methods;
  int64_t samples = 20;
  uint64_t seed = 42;
  double threshold = 85.6;
  ScaleFlags scale;
  bool chat = false;
  bool prepare_only = false;
};

// The default essay haystack: the novels of $LONGROPE_SHARED_DIR/data, ../shared/data or
// shared/data (the first folder that has them).
std::vector<std::string> default_haystack() {
  std::vector<std::filesystem::path> dirs;
  if (const char* e = std::getenv("LONGROPE_SHARED_DIR")) dirs.emplace_back(e);
  dirs.emplace_back("../shared");
  dirs.emplace_back("shared");
  for (const auto& d : dirs) {
    std::vector<std::string> files;
    for (const char* n : {"moby-dick.txt", "pride_and_prejudice.txt", "ulysses.txt"})
      if (std::filesystem::is_regular_file(d / "data" / n))
        files.push_back((d / "data" / n).string());
    if (!files.empty()) return files;
  }
  return {};
}

// --qa-data qa_1=SQUAD.json,qa_2=HOTPOT.json (squad= and hotpotqa= name the same).
void parse_qa_data(const std::vector<std::string>& items, RulerConfig& cfg) {
  for (const std::string& item : items) {
    const size_t eq = item.find('=');
    const std::string name = eq == std::string::npos ? "" : item.substr(0, eq);
    const std::string path = eq == std::string::npos ? "" : item.substr(eq + 1);
    if ((name == "qa_1" || name == "squad") && !path.empty())
      cfg.squad_path = path;
    else if ((name == "qa_2" || name == "hotpotqa") && !path.empty())
      cfg.hotpot_path = path;
    else
      throw Error(
          fmt::format("bad --qa-data item '{}' (expected qa_1=SQUAD.json or "
                      "qa_2=HOTPOTQA.json)",
                      item));
  }
}
}  // namespace

Runner register_ruler(CLI::App& app) {
  auto a = std::make_shared<RulerArgs>();
  CLI::App* cmd = app.add_subcommand(
      "ruler",
      "RULER long-context benchmark (retrieval, multi-hop tracing, aggregation, QA): per method, "
      "task and length the score (0-100, RULER's string matching) over --samples prompts with its "
      "95% interval, the mean over tasks and the effective context length; writes results.{md,"
      "csv,json}, summary.csv, score and heat-map plots and RULER's prediction files to -O DIR");
  add_sweep_flags(cmd, a->c,
                  "output directory (results.*, summary.csv, plots, <label>/<length>/pred/)");
  add_lengths_option(cmd, a->lengths,
                     "prompt lengths in tokens (prompt + answer budget), e.g. 4k,8k,16k")
      ->required();
  add_methods_option(cmd, a->methods);
  cmd->add_option(
         "--tasks", a->tasks,
         "all, niah, synthetic (all but QA) or a comma-separated list of niah_single_1/2/3, "
         "niah_multikey_1/2/3, niah_multivalue, niah_multiquery, vt, cwe, fwe, qa_1, qa_2")
      ->capture_default_str();
  cmd->add_option("--samples", a->samples, "samples per task and length")
      ->capture_default_str()
      ->check(in_range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--seed", a->seed, "seed of every random choice (keys, values, depths, words)")
      ->capture_default_str();
  cmd->add_option("--threshold", a->threshold,
                  "effective context length: the longest length scoring above this")
      ->capture_default_str()
      ->check(in_range(0.0, 100.0));
  cmd->add_option("--haystack", a->haystack,
                  "essay haystack text(s), comma-separated (default: the novels of "
                  "$LONGROPE_SHARED_DIR/data, ../shared/data or shared/data)")
      ->delimiter(',');
  cmd->add_option("--words", a->words, "word list for keys and words, one a line")
      ->capture_default_str();
  cmd->add_option("--qa-data", a->qa_data,
                  "qa_1=SQUAD_V2.json,qa_2=HOTPOTQA.json (without: qa_1/qa_2 are not run)")
      ->delimiter(',');
  cmd->add_flag("--chat", a->chat, "wrap the prompts in the ChatML template");
  cmd->add_option(
      "--data", a->data,
      "score prepared prompts instead of generating them: DIR/data/<length>/<task>.jsonl "
      "(--prepare-only's files) or RULER's DIR/<length>/data/<task>/validation.jsonl");
  cmd->add_flag("--prepare-only", a->prepare_only,
                "write RULER's data files (DIR/data/<length>/<task>.jsonl: index, input, outputs, "
                "length, answer_prefix) and stop: no model run, no methods needed");
  add_scale_flags(cmd, a->scale);
  return [a]() {
    if (a->prepare_only) {
      if (a->c.out_dir.empty())
        throw UsageError("ruler", "--prepare-only writes RULER's data files and needs -O DIR");
      if (a->c.resume) throw UsageError("ruler", "--prepare-only does not resume; drop --resume");
      if (!a->data.empty())
        throw UsageError("ruler", "--prepare-only generates prompts; --data reads them: give one");
      const std::string data = a->c.out_dir + "/data";
      if (!a->c.overwrite && std::filesystem::exists(data))
        throw OutputRefused(fmt::format(
            "ruler: {} holds prompts written before; --overwrite replaces them (nothing was "
            "written)",
            data));
    }
    begin_sweep(a->c);
    RulerConfig cfg;
    cfg.model_path = a->c.model;
    cfg.lengths = lengths_flag("ruler", a->lengths);
    cfg.methods = methods_flag("ruler", a->methods);
    as_usage_error("ruler", [&] { cfg.tasks = parse_ruler_tasks(a->tasks); });
    as_usage_error("ruler", [&] { parse_qa_data(a->qa_data, cfg); });
    cfg.samples = a->samples;
    cfg.seed = a->seed;
    cfg.threshold = a->threshold;
    cfg.chat = a->chat;
    cfg.words_path = a->words;
    cfg.data_dir = a->data;
    cfg.haystack_paths = a->haystack.empty() ? default_haystack() : a->haystack;
    cfg.scale = scale_options(a->scale);
    cfg.out_dir = a->c.out_dir;
    cfg.resume = a->c.resume;
    cfg.overwrite = a->c.overwrite;
    cfg.n_threads = a->c.threads;
    cfg.compute = a->c.compute_mode;
    std::shared_ptr<const RulerPrompts> prompts;
    if (a->prepare_only) {
      const auto model =
          load_model_verbose(a->c.model, a->c.tokenizer, a->c.threads, a->c.compute_mode);
      plan_ruler(*model, cfg, &prompts);
      fmt::print("{}", write_ruler_data(*prompts, cfg));
      return 0;
    }
    a->c.json_head = {{"model", a->c.model}, {"samples", a->samples}};
    return run_sweep_command(
        a->c, [&](const Model& m) { return plan_ruler(m, cfg, &prompts); },
        [&](const EvalRun& r, const Model& m) { return write_ruler_outputs(r, m, cfg, *prompts); });
  };
}

}  // namespace longrope::cli
