// Training kernels (Google Benchmark): the tiled attention forward and backward and the chunked
// LM-head cross-entropy of src/engine/kernels/train_ops.cpp at SmolLM2-135M shapes.
// Run: build/release/bench/bench_train  (GFLOP/s shown as "FLOPS" counters)
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "longrope/train_ops.h"

namespace {

using longrope::train::AttentionShape;

std::vector<float> random_vec(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Causal attention FLOPs: 4 hd per (query, visible key) pair and head (QK^T and PV).
double attention_flops(const AttentionShape& s) {
  return 4.0 * s.head_dim * s.n_head * 0.5 * double(s.n) * double(s.n + 1);
}

AttentionShape smollm2(int64_t n) {
  return {n, 9, 3, 64, 0.125};
}

void BM_attention_forward(benchmark::State& st) {
  const AttentionShape s = smollm2(st.range(0));
  auto q = random_vec(s.n * 576, 1), k = random_vec(s.n * 192, 2), v = random_vec(s.n * 192, 3);
  std::vector<float> out(s.n * 576), lse(s.n * 9);
  for (auto _ : st) {
    longrope::train::attention_forward(s, q.data(), k.data(), v.data(), out.data(), lse.data());
    benchmark::DoNotOptimize(out.data());
  }
  st.counters["FLOPS"] =
      benchmark::Counter(attention_flops(s), benchmark::Counter::kIsIterationInvariantRate);
}

// The backward pass recomputes the probabilities twice (for dK/dV and for dQ): 5 products of
// the forward's size against 2 in the forward; FLOPS counts the useful 2.5x forward.
void BM_attention_backward(benchmark::State& st) {
  const AttentionShape s = smollm2(st.range(0));
  auto q = random_vec(s.n * 576, 1), k = random_vec(s.n * 192, 2), v = random_vec(s.n * 192, 3);
  auto dout = random_vec(s.n * 576, 4);
  std::vector<float> out(s.n * 576), lse(s.n * 9), dq(s.n * 576), dk(s.n * 192), dv(s.n * 192);
  longrope::train::attention_forward(s, q.data(), k.data(), v.data(), out.data(), lse.data());
  for (auto _ : st) {
    longrope::train::attention_backward(s, q.data(), k.data(), v.data(), out.data(), lse.data(),
                                        dout.data(), dq.data(), dk.data(), dv.data());
    benchmark::DoNotOptimize(dq.data());
  }
  st.counters["FLOPS"] =
      benchmark::Counter(2.5 * attention_flops(s), benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_attention_forward)->Arg(2048)->Arg(8192)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_attention_backward)
    ->Arg(2048)
    ->Arg(8192)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// n rows of 576 through the 49152 x 576 LM head with the loss gradient: 3 GEMMs of 2 n V d FLOPs.
void BM_lm_head_cross_entropy(benchmark::State& st) {
  const int64_t n = st.range(0), d = 576, V = 49152;
  auto h = random_vec(n * d, 1), W = random_vec(V * d, 2, 0.02f);
  std::vector<int32_t> target(n);
  for (int64_t i = 0; i < n; ++i) target[i] = int32_t((i * 7919) % V);
  std::vector<float> dh(n * d), dW(V * d);
  for (auto _ : st) {
    benchmark::DoNotOptimize(longrope::train::lm_head_cross_entropy(
        h.data(), n, d, W.data(), V, target.data(), 1.0f / float(n), dh.data(), dW.data()));
  }
  st.counters["FLOPS"] =
      benchmark::Counter(6.0 * n * V * d, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_lm_head_cross_entropy)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
