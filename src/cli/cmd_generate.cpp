// longrope generate: text generation with a KV cache under any RoPE scaling.
#include <fmt/core.h>
#include <omp.h>

#include <cmath>
#include <cstdio>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/rope_flags.h"
#include "longrope/context.h"
#include "longrope/error.h"
#include "longrope/perplexity.h"
#include "longrope/sampling.h"
#include "longrope/tokenizer.h"

namespace longrope::cli {

namespace {
struct GenerateArgs {
  std::string model, tokenizer, prompt, prompt_file, system;
  int64_t n_predict = 128;
  int64_t ctx = 0;
  float temp = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  uint64_t seed = 42;
  int threads = 0;
  std::string compute = "auto";
  bool chat = false;
  bool ignore_eos = false;
  bool echo = true;
  bool progress = true;
  std::string policy = "auto";
  RopeFlags rope;
};

}  // namespace

Runner register_generate(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt");
  add_model_flags(cmd, args->model, args->tokenizer);
  auto* prompt =
      cmd->add_option("-p,--prompt", args->prompt, "prompt text (default: empty, start from BOS)");
  cmd->add_option("-f,--file", args->prompt_file, "read the prompt from this text file")
      ->excludes(prompt);
  cmd->add_option("-n,--n-predict", args->n_predict, "tokens to generate")
      ->capture_default_str()
      ->check(in_range(int64_t(0), int64_t(1) << 24));
  add_ctx_option(cmd, args->ctx, "context size (default: the model's trained context)", 1);
  cmd->add_option("--temp", args->temp, "temperature; 0 = greedy")
      ->capture_default_str()
      ->check(in_range(0.0, 100.0));
  cmd->add_option("--top-k", args->top_k, "top-k sampling (0 = off)")
      ->capture_default_str()
      ->check(in_range(0, 1 << 20));
  cmd->add_option("--top-p", args->top_p, "top-p sampling, in (0, 1] (1 = off)")
      ->capture_default_str()
      ->check(in_range(1e-6, 1.0));
  cmd->add_option("--seed", args->seed, "random seed")->capture_default_str();
  add_threads_option(cmd, args->threads);
  add_compute_flag(cmd, args->compute);
  cmd->add_flag("--chat", args->chat, "wrap the prompt in the model's chat format (ChatML)");
  cmd->add_option("--system", args->system, "system prompt for --chat");
  cmd->add_flag("--ignore-eos", args->ignore_eos, "keep generating after end-of-sequence");
  add_off_flag(cmd, "--no-echo", args->echo, "do not print the prompt before the generated text");
  add_no_progress_flag(cmd, args->progress);
  cmd->add_option(
         "--switch", args->policy,
         "when the RoPE tables change with the length: 'auto' (default) = 'new-tokens' for "
         "dynamic NTK (as transformers: new tokens use the frequencies of the new length, cached "
         "keys stay as written) and 'recompute' otherwise (a LongRoPE short -> long switch: the "
         "cache is run again, exact); 'rerotate' (cached keys re-rotated, cheap, approximate); "
         "'keep' (the first tables stay, as llama.cpp)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "recompute", "rerotate", "keep", "new-tokens"}));
  add_rope_flags(cmd, args->rope);
  return [args]() {
    const kernels::Compute compute = kernels::compute_of_flag(args->compute);
    auto model = load_model_verbose(args->model, args->tokenizer, args->threads, compute);
    const Tokenizer& tok = model->tokenizer();
    if (!args->prompt_file.empty()) args->prompt = read_text_file(args->prompt_file);
    std::vector<int32_t> ids;
    if (tok.add_bos() && tok.bos() >= 0) ids.push_back(tok.bos());
    if (args->chat) {
      const std::string& tmpl = tok.spec().chat_template;
      if (tmpl.find("<|im_start|>") == std::string::npos)
        throw Error(args->model +
                    ": --chat supports ChatML models (<|im_start|>), and this "
                    "model's chat template is not ChatML");
      const auto p = tok.encode(chat_prompt(args->system, tmpl).wrap(args->prompt), true);
      ids.insert(ids.end(), p.begin(), p.end());
    } else {
      const auto p = tok.encode(args->prompt);
      ids.insert(ids.end(), p.begin(), p.end());
    }
    if (ids.empty()) ids.push_back(tok.bos() >= 0 ? tok.bos() : 0);
    ContextParams cp;
    cp.n_ctx = args->ctx > 0 ? args->ctx : model->hp().n_ctx_train;
    cp.n_threads = args->threads;
    cp.compute = compute;
    for (SwitchPolicy p : {SwitchPolicy::kAuto, SwitchPolicy::kRecompute, SwitchPolicy::kRerotate,
                           SwitchPolicy::kKeep, SwitchPolicy::kNewTokens})
      if (args->policy == switch_policy_name(p)) cp.switch_policy = p;
    if (int64_t(ids.size()) + args->n_predict > cp.n_ctx)
      throw Error("prompt (" + std::to_string(ids.size()) + " tokens) + " +
                  std::to_string(args->n_predict) + " new tokens exceed the context size " +
                  std::to_string(cp.n_ctx) + " (raise -c)");
    const RopeScaling scaling = resolve_rope_for_length(args->rope, *model, cp.n_ctx);
    Context ctx(model, cp, scaling);
    // Past the length the scaling was made for the output may degrade without any other sign.
    const int64_t made_for = rope_made_for_length(scaling, model->hp().n_ctx_train);
    bool warned = false;
    auto warn_length = [&](int64_t len) {
      if (warned || made_for <= 0 || len <= made_for) return;
      warned = true;
      fmt::print(stderr,
                 "\nwarning: the context ({} tokens) passes the {} tokens that the RoPE scaling "
                 "({}) was made for; the output may degrade\n",
                 len, made_for, scaling.describe());
    };
    warn_length(int64_t(ids.size()));
    SamplerParams sp;
    sp.temperature = args->temp;
    sp.top_k = args->top_k;
    sp.top_p = args->top_p;
    sp.seed = args->seed;
    Sampler sampler(sp);

    if (!args->chat && args->echo) fmt::print("{}", args->prompt);
    std::fflush(stdout);
    const double t0 = omp_get_wtime();
    std::vector<float> logits;
    {
      // Progress per layer (a 15k-token prompt takes over a minute on 2 cores).
      Progress bar(fmt::format("prompt ({} tokens)", ids.size()), model->hp().n_layer,
                   args->progress && ids.size() >= 1024, "layers");
      logits =
          ctx.decode(ids, [&](double f) { bar.update(std::llround(f * model->hp().n_layer)); });
      bar.finish();
    }
    const double t_prompt = omp_get_wtime() - t0;
    int64_t generated = 0;
    const double t1 = omp_get_wtime();
    // Printed text = decode(prompt + generated) minus decode(prompt): the tokenizer handles
    // leading spaces and pieces that split a UTF-8 character; only new bytes are written.
    std::vector<int32_t> all(ids.begin() + ((tok.add_bos() && tok.bos() >= 0) ? 1 : 0), ids.end());
    const size_t base = tok.decode(all).size();
    size_t printed = base;
    for (; generated < args->n_predict; ++generated) {
      const int32_t next = sampler.sample(logits);
      if (!args->ignore_eos && (next == tok.eos() || next == tok.eot())) break;
      all.push_back(next);
      const std::string text = tok.decode(all);
      if (text.size() > printed) {
        std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
        printed = text.size();
        std::fflush(stdout);
      }
      if (generated + 1 < args->n_predict) {
        logits = ctx.decode(std::span<const int32_t>(&next, 1));
        warn_length(ctx.n_past());
      }
    }
    const double t_gen = omp_get_wtime() - t1;
    fmt::print("\n");
    std::fflush(stdout);  // the text before the statistics when both go to one file
    fmt::print(stderr,
               "prompt: {} tokens in {:.2f}s ({:.1f} tok/s); generated {} tokens in {:.2f}s "
               "({:.1f} tok/s); rope {}\n",
               ids.size(), t_prompt, double(ids.size()) / t_prompt, generated, t_gen,
               generated > 0 ? double(generated) / t_gen : 0.0, scaling.describe());
    if (ctx.switch_stats().switches > 0)
      fmt::print(stderr, "rope switches: {} ({} cached positions {} in {:.4f}s; --switch {})\n",
                 ctx.switch_stats().switches, ctx.switch_stats().positions,
                 cp.switch_policy == SwitchPolicy::kRerotate ? "re-rotated" : "recomputed",
                 ctx.switch_stats().seconds, args->policy);
    return 0;
  };
}

}  // namespace longrope::cli
