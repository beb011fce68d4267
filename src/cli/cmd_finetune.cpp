// longrope finetune: full fine-tuning at an extended length with a RoPE scaling (docs/finetune.md).
#include <fmt/core.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/rope_flags.h"
#include "longrope/error.h"
#include "longrope/finetune.h"
#include "longrope/interrupt.h"

namespace longrope::cli {

namespace {

struct FinetuneArgs {
  std::string model, tokenizer;
  FinetuneConfig cfg;
  std::string decay = "cosine";
  bool no_checkpoint = false;
  std::string compute = "auto";
  bool json = false;
  bool progress = true;
  RopeFlags rope;
};

std::string gib(size_t bytes) {
  return fmt::format("{:.2f} GiB", double(bytes) / (1u << 30));
}

}  // namespace

Runner register_finetune(CLI::App& app) {
  auto a = std::make_shared<FinetuneArgs>();
  FinetuneConfig& c = a->cfg;
  CLI::App* cmd = app.add_subcommand(
      "finetune",
      "Full fine-tuning of a Llama-architecture model at length CTX with a RoPE scaling "
      "(AdamW, FP32 master weights; docs/finetune.md)");
  add_model_flags(cmd, a->model, a->tokenizer,
                  "model: a GGUF file, a llama2.c checkpoint (with --tokenizer) or an HF model "
                  "folder (the last two with --hf-dir only)");
  add_texts_option(cmd, c.texts, "training text file(s), comma separated (UTF-8)");
  add_ctx_option(cmd, c.ctx, "tokens per training sequence (BOS included)")->required();
  cmd->add_option("--steps", c.steps, "optimizer steps")
      ->capture_default_str()
      ->check(in_range(int64_t(1), int64_t(1) << 40));
  cmd->add_option("--batch", c.batch, "sequences per step (gradient accumulation)")
      ->capture_default_str()
      ->check(in_range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--lr", c.lr, "peak learning rate")->capture_default_str();
  cmd->add_option("--min-lr", c.min_lr, "final learning rate of the decay (default lr/10)");
  cmd->add_option("--warmup", c.warmup, "linear warm-up steps (default steps/10)")
      ->check(in_range(int64_t(0), int64_t(1) << 40));
  cmd->add_option("--decay", a->decay, "learning-rate decay after warm-up")
      ->capture_default_str()
      ->check(CLI::IsMember({"constant", "linear", "cosine"}));
  cmd->add_option("--weight-decay", c.adam.weight_decay, "AdamW weight decay (matrices only)")
      ->capture_default_str()
      ->check(in_range(0.0, 1.0));
  cmd->add_option("--beta1", c.adam.beta1, "AdamW beta1")
      ->capture_default_str()
      ->check(in_range(0.0, 0.999999));
  cmd->add_option("--beta2", c.adam.beta2, "AdamW beta2")
      ->capture_default_str()
      ->check(in_range(0.0, 0.999999));
  cmd->add_option("--clip", c.clip, "clip the global gradient norm to this (0: off)")
      ->capture_default_str()
      ->check(in_range(0.0, 1e30));
  cmd->add_option("--seed", c.seed, "seed of the sequences drawn")->capture_default_str();
  cmd->add_option("--short-share", c.short_share,
                  "share of sequences at --short-ctx with the short factors or the model's own "
                  "RoPE (mixed context-window training)")
      ->capture_default_str()
      ->check(in_range(0.0, 0.999));
  cmd->add_option("--short-ctx", c.short_ctx,
                  "length of the short sequences (default: the original context)")
      ->check(in_range(int64_t(2), int64_t(1) << 24));
  cmd->add_flag("--no-grad-checkpoint", a->no_checkpoint,
                "keep every layer's activations instead of recomputing them (more memory, "
                "about 25% less time)");
  cmd->add_option("--compute", a->compute,
                  "arithmetic of the linear layers and LM head: bf16 (bf16 products, FP32 sums; "
                  "needs AVX512_BF16; attention, norms and the loss stay FP32), f32, or auto = "
                  "bf16 where the CPU has it")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "f32", "bf16"}));
  cmd->add_option("-o,--output", c.output,
                  "GGUF to write: a copy of the model's GGUF with the trained weights and scaling");
  cmd->add_option("--hf-dir", c.hf_dir,
                  "HF model folder to write (safetensors, config.json with the scaling, tokenizer; "
                  "any input format)");
  cmd->add_option("--out-type", c.out_type, "weight type of the output")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  cmd->add_option("--state", c.state_path, "training state file (default OUTPUT.train)");
  cmd->add_option("--save-every", c.save_every,
                  "steps between training-state saves (default: every 10 minutes)")
      ->check(in_range(int64_t(0), int64_t(1) << 40));
  cmd->add_flag("--resume", c.resume, "continue from the training state");
  add_overwrite_flag(cmd, c.overwrite,
                     "start again over an existing training state (without it, or --resume, an "
                     "earlier run's state is never replaced)");
  cmd->add_flag("--json", a->json, "print one JSON summary on stdout");
  add_no_progress_flag(cmd, a->progress);
  add_threads_option(cmd, c.n_threads);
  add_rope_flags(cmd, a->rope);
  return [a]() {
    FinetuneConfig& c = a->cfg;
    c.model_path = a->model;
    c.other_inputs = {a->rope.factors_path, a->tokenizer};
    c.decay = train::parse_decay(a->decay);
    c.checkpoint_activations = !a->no_checkpoint;
    c.compute = kernels::compute_of_flag(a->compute);
    c.n_threads = resolve_threads(c.n_threads);
    auto model = load_model_verbose(a->model, a->tokenizer, c.n_threads, c.compute);
    c.rope = resolve_rope_for_length(a->rope, *model, c.ctx);
    c.rope_label = a->rope.factors_path.empty() ? c.rope.describe() : a->rope.factors_path;
    fmt::print(stderr, "finetune: {} steps x {} sequence(s) of {} tokens, {} products, rope: {}\n",
               c.steps, c.batch, c.ctx, kernels::compute_name(c.compute), c.rope.describe());
    // Made before the run so that the first step's time counts in the ETA and its line shows.
    Progress bar("finetune", c.steps, a->progress, "steps");
    bool first = true;
    const StopOnSignal stop_on_signal;  // Ctrl-C: save the training state, then exit 130
    const FinetuneResult r = run_finetune(*model, c, [&](const FinetuneStep& s) {
      if (first) bar.resumed_at(s.step - 1);
      first = false;
      bar.update(s.step, fmt::format("loss {:.4f} lr {:.2e} |g| {:.3f} {:.0f} tok/s", s.loss, s.lr,
                                     s.grad_norm, double(s.tokens) / s.seconds));
    });
    bar.finish();
    if (a->json) {
      fmt::print("{}\n", nlohmann::json{{"output", c.output},
                                        {"hf_dir", c.hf_dir},
                                        {"log", r.log_path},
                                        {"steps", r.steps_done},
                                        {"resumed_from", r.resumed_from},
                                        {"first_loss", r.first_loss},
                                        {"last_loss", r.last_loss},
                                        {"seconds", r.seconds},
                                        {"tokens_per_second", r.tokens_per_second},
                                        {"workspace_bytes", r.workspace_bytes},
                                        {"state_bytes", r.state_bytes}}
                             .dump());
    } else {
      if (r.steps_done == r.resumed_from)
        fmt::print("all {} steps were done already (loss {:.4f} -> {:.4f}); nothing trained\n",
                   r.steps_done, r.first_loss, r.last_loss);
      else
        fmt::print(
            "{} steps{}: loss {:.4f} -> {:.4f}; {:.1f}s, {:.1f} tokens/s; memory: weights, "
            "gradient and moments {}, activations {}\n",
            r.steps_done,
            r.resumed_from ? fmt::format(" (resumed at step {})", r.resumed_from) : "",
            r.first_loss, r.last_loss, r.seconds, r.tokens_per_second, gib(r.state_bytes),
            gib(r.workspace_bytes));
      fmt::print("wrote {} (log {}, loss plot {})\n",
                 c.output.empty()   ? c.hf_dir
                 : c.hf_dir.empty() ? c.output
                                    : c.output + " and " + c.hf_dir,
                 r.log_path, r.plot_png.empty() ? r.plot_svg : r.plot_svg + ", " + r.plot_png);
    }
    return 0;
  };
}

}  // namespace longrope::cli
