// longrope perplexity: windowed long-document perplexity of a model under any RoPE scaling.
#include <fmt/core.h>
#include <omp.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/rope_flags.h"
#include "longrope/error.h"
#include "longrope/perplexity.h"

namespace longrope::cli {

namespace {
struct PerplexityArgs {
  std::string model, tokenizer, text;
  int64_t ctx = 0;
  int64_t docs = 1;
  int threads = 0;
  std::string compute = "auto";
  std::string convention = "longrope";
  bool json = false;
  bool progress = true;
  RopeFlags rope;
};
}  // namespace

Runner register_perplexity(CLI::App& app) {
  auto args = std::make_shared<PerplexityArgs>();
  CLI::App* cmd = app.add_subcommand(
      "perplexity",
      "Perplexity on long text: window k = BOS + text tokens [k*(CTX-1), (k+1)*(CTX-1)), all CTX-1 "
      "text tokens scored, ppl = exp(mean NLL) (--convention llama.cpp: as llama-perplexity)");
  add_model_flags(cmd, args->model, args->tokenizer);
  cmd->add_option("-f,--file", args->text, "text file (UTF-8)")->required();
  add_ctx_option(cmd, args->ctx, "window length in tokens, BOS included")->required();
  cmd->add_option("--docs", args->docs, "number of windows K")
      ->capture_default_str()
      ->check(in_range(int64_t(1), int64_t(1) << 20));
  add_convention_flag(cmd, args->convention);
  add_threads_option(cmd, args->threads);
  add_compute_flag(cmd, args->compute);
  cmd->add_flag("--json", args->json, "print one JSON object instead of text");
  add_no_progress_flag(cmd, args->progress);
  add_rope_flags(cmd, args->rope);
  return [args]() {
    const kernels::Compute compute = kernels::compute_of_flag(args->compute);
    auto model = load_model_verbose(args->model, args->tokenizer, args->threads, compute);
    const RopeScaling scaling = resolve_rope_for_length(args->rope, *model, args->ctx);
    const WindowConvention convention = parse_window_convention(args->convention);
    const std::string text = text_for_convention(read_text_file(args->text), convention);
    const double t0 = omp_get_wtime();
    const std::vector<int32_t> tokens = model->tokenizer().encode(text);
    fmt::print(stderr, "tokenized {} bytes into {} tokens in {:.2f}s; rope: {}\n", text.size(),
               tokens.size(), omp_get_wtime() - t0, scaling.describe());
    // Counted in layers, so that one long window shows progress (and an ETA) as it goes.
    const int n_layer = model->hp().n_layer;
    Progress bar("perplexity", args->docs * n_layer, args->progress);
    std::string shown = fmt::format("| window 1 of {}", args->docs);
    const PerplexityResult r = perplexity(
        *model, tokens, args->ctx, args->docs, scaling, args->threads,
        [&](int64_t done, int64_t docs, double ppl) {
          shown = fmt::format("| ppl {:.4f} after {} of {} window(s)", ppl, done, docs);
          bar.update(done * n_layer, shown);
        },
        [&](double windows) { bar.update(std::llround(windows * n_layer), shown); }, convention,
        compute);
    bar.finish();
    if (args->json) {
      nlohmann::json j = {{"ppl", r.ppl},
                          {"mean_nll", r.mean_nll},
                          {"tokens", r.tokens},
                          {"seconds", r.seconds},
                          {"tokens_per_second", r.tokens_per_second},
                          {"ctx", r.ctx},
                          {"docs", r.docs},
                          {"convention", args->convention},
                          {"window_ppl", r.window_ppl},
                          {"model", args->model},
                          {"text", args->text},
                          {"rope", scaling.describe()}};
      fmt::print("{}\n", j.dump());
    } else {
      fmt::print(
          "ppl = {:.4f}  ({} tokens scored in {} window(s) of {}{}, {:.2f}s, {:.1f} tok/s, rope "
          "{})\n",
          r.ppl, r.tokens, r.docs, r.ctx, "; " + window_convention_description(convention),
          r.seconds, r.tokens_per_second, scaling.describe());
    }
    return 0;
  };
}

}  // namespace longrope::cli
