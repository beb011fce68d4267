// Generation past the trained context with each RoPE method: a prompt of PROMPT tokens (taken from
// TEXT) and NEW greedy tokens, so that generation crosses L_orig when PROMPT < L_orig < PROMPT+NEW.
// Reports prompt and decode speed, the RoPE switches and what they cost, per method and, for
// dynamic NTK, per switch policy (recompute re-runs the cache at every token past L_orig).
// Usage: bench_generate MODEL TEXT PROMPT NEW [THREADS] [RECOMPUTE_NEW]
//   RECOMPUTE_NEW caps the tokens generated with dynamic + recompute (default NEW): it costs one
//   prefill per token.
#include <fmt/core.h>
#include <omp.h>

#include <cstdlib>

#include "longrope/context.h"
#include "longrope/error.h"
#include "longrope/kernels.h"
#include "longrope/model.h"
#include "longrope/perplexity.h"
#include "longrope/sampling.h"

using namespace longrope;

int main(int argc, char** argv) {
  // The BLAS kernels the CLI runs (longrope/kernels.h).
  longrope::kernels::restart_with_blas_repair(argv);
  if (argc < 5) {
    fmt::print(stderr, "usage: {} MODEL TEXT PROMPT NEW [THREADS] [RECOMPUTE_NEW]\n", argv[0]);
    return 2;
  }
  try {
    auto model = Model::load(argv[1]);
    const HParams& hp = model->hp();
    const int64_t prompt = std::atoll(argv[3]), n_new = std::atoll(argv[4]);
    const int threads = argc > 5 ? std::atoi(argv[5]) : 0;
    const int64_t recompute_new = argc > 6 ? std::atoll(argv[6]) : n_new;
    std::vector<int32_t> ids = model->tokenizer().encode(read_text_file(argv[2]));
    if (int64_t(ids.size()) < prompt) throw Error("text too short for the prompt");
    ids.resize(size_t(prompt));
    const double s = double(prompt + n_new) / double(hp.n_ctx_train);
    auto rule = [&](RopeMethod m) {
      RopeScaling r;
      r.method = m;
      r.factor = s > 1 ? s : 1.0;
      return r;
    };
    struct Row {
      std::string name;
      RopeScaling scaling;
      SwitchPolicy policy;
      int64_t n;
    };
    const std::vector<Row> rows = {
        {"none", {}, SwitchPolicy::kAuto, n_new},
        {"linear", rule(RopeMethod::kLinear), SwitchPolicy::kAuto, n_new},
        {"ntk", rule(RopeMethod::kNtk), SwitchPolicy::kAuto, n_new},
        {"yarn", rule(RopeMethod::kYarn), SwitchPolicy::kAuto, n_new},
        {"dynamic, --switch auto (new-tokens)", rule(RopeMethod::kDynamic), SwitchPolicy::kAuto,
         n_new},
        {"dynamic, --switch rerotate", rule(RopeMethod::kDynamic), SwitchPolicy::kRerotate, n_new},
        {"dynamic, --switch recompute", rule(RopeMethod::kDynamic), SwitchPolicy::kRecompute,
         recompute_new},
    };
    fmt::print("{}: prompt {} tokens, trained context {}, rule factor s = {:.3f}, {} threads\n\n",
               argv[1], prompt, hp.n_ctx_train, s, threads > 0 ? threads : omp_get_max_threads());
    fmt::print(
        "| method | prompt tok/s | new tokens | decode tok/s | switches | positions redone | "
        "switch s |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for (const Row& r : rows) {
      Context ctx(model,
                  {.n_ctx = prompt + r.n + 1, .n_threads = threads, .switch_policy = r.policy},
                  r.scaling);
      double t0 = omp_get_wtime();
      std::vector<float> logits = ctx.decode(ids);
      const double t_prompt = omp_get_wtime() - t0;
      t0 = omp_get_wtime();
      for (int64_t i = 0; i < r.n; ++i) {
        const int32_t next = argmax(logits);
        logits = ctx.decode(std::span<const int32_t>(&next, 1));
      }
      const double t_gen = omp_get_wtime() - t0;
      fmt::print("| {} | {:.1f} | {} | {:.2f} | {} | {} | {:.2f} |\n", r.name,
                 double(prompt) / t_prompt, r.n, double(r.n) / t_gen, ctx.switch_stats().switches,
                 ctx.switch_stats().positions, ctx.switch_stats().seconds);
      std::fflush(stdout);
    }
  } catch (const Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
