// The arithmetic peak of each CPU variant's instructions, measured: an FMA loop per vector width
// and a bf16 dot-product loop, on every thread (OpenMP), with enough independent accumulators to
// hide the instructions' latency. The kernels' GFLOP/s in docs/benchmarks.md are set against the
// peak of the variant they ran under:
//   portable     256-bit FMA (vfmadd231ps ymm: 16 FLOP per instruction)
//   avx512       512-bit FMA (vfmadd231ps zmm: 32 FLOP)
//   avx512_bf16  vdpbf16ps zmm (32 bf16 pairs: 64 FLOP)
// Run: build/release/bench/bench_peak  (a variant the CPU lacks reports an error, not a number)
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <omp.h>

#include <cstdint>

#include "longrope/kernels.h"

namespace {

namespace lk = longrope::kernels;

constexpr int64_t kIters = 1 << 22;  // per thread per benchmark iteration
// Independent accumulators per 512-bit loop: more than latency x throughput of either instruction,
// few enough that the compiler keeps them in registers (24 spill to the stack: checked with
// objdump).
constexpr int kAcc512 = 12;

__attribute__((target("avx2,fma"))) float fma256(int64_t iters, float seed) {
  __m256 a[10];
  for (int i = 0; i < 10; ++i) a[i] = _mm256_set1_ps(seed + float(i));
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 10; ++i) a[i] = _mm256_fmadd_ps(a[i], x, y);
  __m256 s = a[0];
  for (int i = 1; i < 10; ++i) s = _mm256_add_ps(s, a[i]);
  return _mm256_cvtss_f32(s);
}

__attribute__((target("avx512f"))) float fma512(int64_t iters, float seed) {
  __m512 a[kAcc512];
  for (int i = 0; i < kAcc512; ++i) a[i] = _mm512_set1_ps(seed + float(i));
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kAcc512; ++i) a[i] = _mm512_fmadd_ps(a[i], x, y);
  __m512 sum = a[0];
  for (int i = 1; i < kAcc512; ++i) sum = _mm512_add_ps(sum, a[i]);  // every chain is live
  alignas(64) float out[16];
  _mm512_store_ps(out, sum);
  return out[0] + out[15];
}

__attribute__((target("avx512f,avx512bf16"))) float dpbf16(int64_t iters, float seed) {
  __m512 a[kAcc512];
  for (int i = 0; i < kAcc512; ++i) a[i] = _mm512_set1_ps(seed + float(i));
  const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80);  // 1.0 in bf16
  const __m512bh y = (__m512bh)_mm512_set1_epi16(0x3380);  // about 6e-8
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kAcc512; ++i) a[i] = _mm512_dpbf16_ps(a[i], x, y);
  __m512 sum = a[0];
  for (int i = 1; i < kAcc512; ++i) sum = _mm512_add_ps(sum, a[i]);  // every chain is live
  alignas(64) float out[16];
  _mm512_store_ps(out, sum);
  return out[0] + out[15];
}

// Runs f on every thread, kIters iterations each; flops per iteration per thread given.
template <class F>
void run(benchmark::State& st, F f, double flops_per_iter) {
  const int threads = omp_get_max_threads();
  float sink = 0;
  for (auto _ : st) {
#pragma omp parallel reduction(+ : sink)
    sink += f(kIters, float(omp_get_thread_num()));
    benchmark::DoNotOptimize(sink);
  }
  st.counters["threads"] = threads;
  st.counters["FLOPS"] = benchmark::Counter(flops_per_iter * double(kIters) * threads,
                                            benchmark::Counter::kIsIterationInvariantRate);
}

// The variant in effect (LONGROPE_CPU caps it) decides which loops may run.
void BM_peak_fma256(benchmark::State& st) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    st.SkipWithError("this CPU lacks AVX2/FMA");
    return;
  }
  run(st, fma256, 10 * 16.0);
}
void BM_peak_fma512(benchmark::State& st) {
  if (!lk::cpu_has_avx512()) {
    st.SkipWithError("the CPU variant in effect has no AVX-512");
    return;
  }
  run(st, fma512, kAcc512 * 32.0);
}
void BM_peak_dpbf16(benchmark::State& st) {
  if (!lk::cpu_has_avx512_bf16()) {
    st.SkipWithError("the CPU variant in effect has no AVX512_BF16");
    return;
  }
  run(st, dpbf16, kAcc512 * 64.0);
}

BENCHMARK(BM_peak_fma256)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_peak_fma512)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_peak_dpbf16)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
