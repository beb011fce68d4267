// bf16 GEMM and attention (AVX512_BF16) against the FP32 kernels (Google Benchmark).
// Run: build/release/bench/bench_bf16 [--benchmark_filter=...]
// Counters: FLOPS (shown as GFLOP/s etc.). The last argument of every benchmark is the number of
// OpenMP threads.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <random>
#include <vector>

#include "longrope/kernels.h"
#include "longrope/quant.h"

namespace {

namespace lk = longrope::kernels;

std::vector<float> random_vec(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = longrope::fp32_to_bf16(x[i]);
  return y;
}

bool skip_without_bf16(benchmark::State& st) {
  if (lk::cpu_has_avx512_bf16()) return false;
  st.SkipWithError("CPU lacks AVX512_BF16");
  return true;
}

// Restores the OpenMP thread count after a benchmark.
struct Threads {
  int saved = omp_get_max_threads();
  explicit Threads(int64_t n) { omp_set_num_threads(int(n)); }
  ~Threads() { omp_set_num_threads(saved); }
};

void BM_gemm_bf16(benchmark::State& st) {
  if (skip_without_bf16(st)) return;
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  Threads th(st.range(3));
  auto A = to_bf16(random_vec(M * K, 1)), B = to_bf16(random_vec(N * K, 2));
  std::vector<float> C(M * N);
  for (auto _ : st) {
    lk::gemm_bf16_nt(M, N, K, A.data(), K, B.data(), K, C.data(), N, 0.0f);
    benchmark::DoNotOptimize(C.data());
  }
  st.counters["FLOPS"] =
      benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_gemm_f32(benchmark::State& st) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  Threads th(st.range(3));
  auto A = random_vec(M * K, 1), B = random_vec(N * K, 2);
  std::vector<float> C(M * N);
  for (auto _ : st) {
    lk::gemm_nt(M, N, K, A.data(), K, B.data(), K, C.data(), N, 0.0f);
    benchmark::DoNotOptimize(C.data());
  }
  st.counters["FLOPS"] =
      benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate);
}

// SmolLM2-135M projections (N x K: q/o 576x576, k/v 192x576, gate/up 1536x576, down 576x1536) at
// 2048 and 8192 tokens; LM head chunks of 256 rows; 7B-model shapes at 4096 tokens.
void gemm_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t th : {1, 2}) {
    for (int64_t M : {2048, 8192}) {
      b->Args({M, 576, 576, th});
      b->Args({M, 192, 576, th});
      b->Args({M, 1536, 576, th});
      b->Args({M, 576, 1536, th});
    }
    b->Args({256, 2048, 576, th});
    b->Args({256, 49152, 576, th});
  }
  b->Args({4096, 4096, 4096, 2});
  b->Args({4096, 11008, 4096, 2});
  b->Args({4096, 4096, 11008, 2});
}
BENCHMARK(BM_gemm_bf16)->Apply(gemm_shapes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemm_f32)->Apply(gemm_shapes)->Unit(benchmark::kMillisecond)->UseRealTime();

// Attention with SmolLM2-135M's shape (9 heads, 3 kv heads, head_dim 64): prefill of n tokens
// from p0 = 0, and decode (n = 1) against 16383 cached keys. FLOPs: 4 * head_dim * n_head per
// (query, visible key) pair.
constexpr int kH = 9, kKV = 3, kHd = 64;

double attention_flops(int64_t n, int64_t p0) {
  double pairs = 0.0;
  for (int64_t i = 0; i < n; ++i) pairs += double(p0 + i + 1);
  return 4.0 * kHd * kH * pairs;
}

void BM_attention_bf16(benchmark::State& st) {
  if (skip_without_bf16(st)) return;
  const int64_t n = st.range(0), p0 = st.range(1), cap = p0 + n;
  Threads th(st.range(2));
  auto q = random_vec(n * kH * kHd, 3);
  auto k = to_bf16(random_vec(kKV * cap * kHd, 4)), v = to_bf16(random_vec(kKV * cap * kHd, 5));
  std::vector<float> out(n * kH * kHd);
  const lk::AttentionArgsBf16 a{q.data(), kH * kHd, k.data(), v.data(), cap, out.data(), kH * kHd,
                                n,        p0,       kH,       kKV,      kHd, 0.125f};
  for (auto _ : st) {
    lk::attention_bf16(a);
    benchmark::DoNotOptimize(out.data());
  }
  st.counters["FLOPS"] =
      benchmark::Counter(attention_flops(n, p0), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_attention_f32(benchmark::State& st) {
  const int64_t n = st.range(0), p0 = st.range(1), cap = p0 + n;
  Threads th(st.range(2));
  auto q = random_vec(n * kH * kHd, 3);
  auto k = random_vec(kKV * cap * kHd, 4), v = random_vec(kKV * cap * kHd, 5);
  std::vector<float> out(n * kH * kHd);
  const lk::AttentionArgs a{q.data(), kH * kHd, k.data(), v.data(), cap, out.data(), kH * kHd,
                            n,        p0,       kH,       kKV,      kHd, 0.125f};
  for (auto _ : st) {
    lk::attention(a);
    benchmark::DoNotOptimize(out.data());
  }
  st.counters["FLOPS"] =
      benchmark::Counter(attention_flops(n, p0), benchmark::Counter::kIsIterationInvariantRate);
}

void attention_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t th : {1, 2}) {
    b->Args({2048, 0, th});
    b->Args({8192, 0, th});
    b->Args({1, 16383, th});
  }
}
BENCHMARK(BM_attention_bf16)->Apply(attention_shapes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_attention_f32)->Apply(attention_shapes)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
