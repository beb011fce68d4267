// Cost of changing the RoPE scaling: (1) between two perplexity runs on a loaded model (only the
// rotary tables are rebuilt), (2) mid-sequence in a Context when a LongRoPE set changes, for the
// exact (recompute) and approximate (rerotate) policies.
// Usage: bench_switch MODEL [CACHE_LEN ...]   (prints a Markdown table)
#include <fmt/core.h>
#include <omp.h>

#include <cstdlib>
#include <numeric>

#include "engine/forward.h"
#include "longrope/context.h"
#include "longrope/error.h"
#include "longrope/model.h"

using namespace longrope;

int main(int argc, char** argv) {
  if (argc < 2) {
    fmt::print(stderr, "usage: {} MODEL [CACHE_LEN ...]\n", argv[0]);
    return 2;
  }
  try {
    auto model = Model::load(argv[1]);
    const HParams& hp = model->hp();
    std::vector<int64_t> lens;
    for (int i = 2; i < argc; ++i) lens.push_back(std::atoll(argv[i]));
    if (lens.empty()) lens = {512, 2048};
    const int half = hp.n_rot / 2;
    std::vector<double> shortf(half, 1.0), longf(half);
    for (int j = 0; j < half; ++j) longf[j] = 1.0 + 3.0 * j / std::max(1, half - 1);

    // (1) Scaling change between runs: tables + per-position cos/sin for a window.
    fmt::print("| what | positions | seconds |\n|---|---:|---:|\n");
    for (int64_t n : {int64_t(8192), int64_t(65536)}) {
      RopeScaling s;
      s.method = RopeMethod::kYarn;
      s.factor = 8;
      std::vector<float> c, si;
      const double t0 = omp_get_wtime();
      const int reps = 10;
      for (int r = 0; r < reps; ++r) {
        s.factor = 8 + r;  // a different scaling every time
        engine::build_rope_cache(s.tables(n, hp.n_rot, hp.rope_base, hp.n_ctx_train), 0, n, c, si);
      }
      fmt::print("| new scaling for a perplexity window (tables + cos/sin) | {} | {:.5f} |\n", n,
                 (omp_get_wtime() - t0) / reps);
    }
    // (2) Mid-sequence switch short -> long at length L.
    for (int64_t L : lens) {
      RopeScaling s;
      s.method = RopeMethod::kLongrope;
      s.orig_ctx = hp.n_ctx_train;
      s.target_ctx = 4 * hp.n_ctx_train;
      s.sets = {FactorSet{shortf, L}, FactorSet{longf, 0}};
      std::vector<int32_t> ids(L + 1);
      for (int64_t i = 0; i < L + 1; ++i) ids[i] = int32_t((i * 7919) % hp.n_vocab);
      for (SwitchPolicy p : {SwitchPolicy::kRerotate, SwitchPolicy::kRecompute}) {
        Context ctx(model, {.n_ctx = L + 1, .n_threads = 0, .switch_policy = p}, s);
        const double t0 = omp_get_wtime();
        ctx.decode(std::span<const int32_t>(ids.data(), L));
        const double prefill = omp_get_wtime() - t0;
        ctx.decode(std::span<const int32_t>(&ids[L], 1));
        fmt::print(
            "| switch at length {} ({}; prefill of the cache took {:.3f} s) | {} | {:.5f} |\n", L,
            p == SwitchPolicy::kRerotate ? "rerotate" : "recompute, exact", prefill,
            ctx.switch_stats().positions, ctx.switch_stats().seconds);
      }
    }
  } catch (const Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
