// Kernel micro-benchmarks (Google Benchmark): GEMM shapes of the forward pass and attention.
// Run: build/release/bench/bench_kernels  (GFLOP/s shown as "FLOPS" counters)
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "longrope/kernels.h"

namespace {

std::vector<float> random_vec(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

void BM_gemm_nt(benchmark::State& st) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  auto A = random_vec(M * K, 1), B = random_vec(N * K, 2);
  std::vector<float> C(M * N);
  for (auto _ : st) {
    longrope::kernels::gemm_nt(M, N, K, A.data(), K, B.data(), K, C.data(), N, 0.0f);
    benchmark::DoNotOptimize(C.data());
  }
  st.counters["FLOPS"] =
      benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate);
}
// SmolLM2-135M shapes at 2048 tokens: q/o (576x576), k/v (192x576), gate/up (1536x576), down.
BENCHMARK(BM_gemm_nt)
    ->Args({2048, 576, 576})
    ->Args({2048, 192, 576})
    ->Args({2048, 1536, 576})
    ->Args({2048, 576, 1536})
    ->Args({64, 49152, 576})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_attention(benchmark::State& st) {
  const int64_t n = st.range(0);
  const int H = 9, KV = 3, hd = 64;
  auto q = random_vec(n * H * hd, 3), k = random_vec(KV * n * hd, 4),
       v = random_vec(KV * n * hd, 5);
  std::vector<float> out(n * H * hd);
  longrope::kernels::AttentionArgs a{q.data(), H * hd, k.data(), v.data(), n,  out.data(), H * hd,
                                     n,        0,      H,        KV,       hd, 0.125f};
  for (auto _ : st) {
    longrope::kernels::attention(a);
    benchmark::DoNotOptimize(out.data());
  }
  st.counters["FLOPS"] = benchmark::Counter(4.0 * hd * H * 0.5 * double(n) * double(n + 1),
                                            benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_attention)
    ->Arg(512)
    ->Arg(2048)
    ->Arg(8192)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
