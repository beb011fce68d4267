// Run-time CPU feature detection and the default compute path.
#include <atomic>

#include "longrope/error.h"
#include "longrope/kernels.h"

namespace longrope::kernels {

bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return v;
#else
  return false;
#endif
}

bool cpu_has_avx512_vnni() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool v = cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
  return v;
#else
  return false;
#endif
}

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool v = cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
  return v;
#else
  return false;
#endif
}

namespace {
// -1: not set (detect); else the Compute value.
std::atomic<int> g_default_compute{-1};
}  // namespace

Compute default_compute() {
  const int v = g_default_compute.load(std::memory_order_relaxed);
  if (v >= 0) return static_cast<Compute>(v);
  return cpu_has_avx512_bf16() ? Compute::kBF16 : Compute::kF32;
}

void set_default_compute(Compute c) {
  if (c == Compute::kBF16 && !cpu_has_avx512_bf16())
    throw Error("bf16 compute needs a CPU with AVX512_BF16, which this one lacks (use f32)");
  g_default_compute.store(static_cast<int>(c), std::memory_order_relaxed);
}

const char* compute_name(Compute c) {
  return c == Compute::kBF16 ? "bf16" : "f32";
}

}  // namespace longrope::kernels
