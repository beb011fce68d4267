// Perplexity throughput, per-phase GFLOP/s and peak RSS for one context length.
// Usage: bench_perplexity MODEL TEXT CTX [THREADS] [f32|bf16]  -> one JSON line on stdout.
// bench/run_perplexity_bench.sh runs it once per length (peak RSS is per process) and prints a
// table.
#include <fmt/core.h>
#include <omp.h>
#include <sys/resource.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "longrope/context.h"
#include "longrope/error.h"
#include "longrope/kernels.h"
#include "longrope/model.h"
#include "longrope/perplexity.h"

int main(int argc, char** argv) {
  // The BLAS kernels the CLI runs (longrope/kernels.h).
  longrope::kernels::restart_with_blas_repair(argv);
  if (argc < 4) {
    fmt::print(stderr, "usage: {} MODEL TEXT CTX [THREADS] [f32|bf16]\n", argv[0]);
    return 2;
  }
  try {
    const int64_t ctx = std::atoll(argv[3]);
    const int threads = argc > 4 ? std::atoi(argv[4]) : 0;
    longrope::kernels::Compute compute = longrope::kernels::best_compute();
    if (argc > 5) compute = longrope::kernels::parse_compute(argv[5]);
    double t0 = omp_get_wtime();
    auto model = longrope::Model::load(argv[1], {.tokenizer_path = "", .n_threads = threads});
    const double load_s = omp_get_wtime() - t0;
    std::ifstream f(argv[2], std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str();
    // Only as much text as one window needs (about 6 bytes per token is plenty).
    const auto tokens = model->tokenizer().encode(
        std::string_view(text).substr(0, std::min<size_t>(text.size(), size_t(ctx) * 8)));
    const auto windows = longrope::make_windows(tokens, model->tokenizer().bos(), ctx, 1);
    t0 = omp_get_wtime();
    const auto nll = longrope::score_window(
        *model, windows[0], longrope::RopeScaling{},
        {.n_threads = threads, .compute = compute, .positions = {}, .on_layer = {}});
    const double secs = omp_get_wtime() - t0;
    const auto& st = longrope::last_phase_stats();
    double sum = 0;
    for (double x : nll) sum += x;
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    nlohmann::json j = {{"ctx", ctx},
                        {"threads", omp_get_max_threads()},
                        {"compute", longrope::kernels::compute_name(compute)},
                        {"load_seconds", load_s},
                        {"ppl", std::exp(sum / double(nll.size()))},
                        {"seconds", secs},
                        {"tokens_per_second", double(ctx) / secs},
                        {"matmul_seconds", st.matmul_seconds},
                        {"matmul_gflops", st.matmul_flops / st.matmul_seconds / 1e9},
                        {"attention_seconds", st.attention_seconds},
                        {"attention_gflops", st.attention_flops / st.attention_seconds / 1e9},
                        {"lm_head_seconds", st.lm_head_seconds},
                        {"lm_head_gflops", st.lm_head_flops / st.lm_head_seconds / 1e9},
                        {"other_seconds", st.other_seconds},
                        {"weights_mb", double(model->weight_bytes()) / 1048576.0},
                        {"peak_rss_mb", double(ru.ru_maxrss) / 1024.0}};
    fmt::print("{}\n", j.dump());
  } catch (const longrope::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
