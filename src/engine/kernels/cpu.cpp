// Run-time CPU feature detection and the default compute path.
#include <atomic>

#include "longrope/error.h"
#include "longrope/kernels.h"

namespace longrope::kernels {

#if defined(__x86_64__) || defined(__i386__)
bool cpu_has_avx512() {
  static const bool v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return v;
}
bool cpu_has_avx512_vnni() {
  static const bool v = cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
  return v;
}
bool cpu_has_avx512_bf16() {
  static const bool v = cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
  return v;
}
#else
bool cpu_has_avx512() {
  return false;
}
bool cpu_has_avx512_vnni() {
  return false;
}
bool cpu_has_avx512_bf16() {
  return false;
}
#endif

namespace {
// -1: not set (detect); else the Compute value.
std::atomic<int> g_default_compute{-1};
}  // namespace

Compute default_compute() {
  const int v = g_default_compute.load(std::memory_order_relaxed);
  if (v >= 0) return static_cast<Compute>(v);
  return cpu_has_avx512_bf16() ? Compute::kBF16 : Compute::kF32;
}

void require_compute(Compute c) {
  if (c == Compute::kBF16 && !cpu_has_avx512_bf16())
    throw Error("bf16 compute needs a CPU with AVX512_BF16, which this one lacks (use f32)");
}

Compute parse_compute(const std::string& name) {
  if (name == "f32") return Compute::kF32;
  if (name == "bf16") return Compute::kBF16;
  throw Error("compute must be f32 or bf16, got '" + name + "'");
}

void set_default_compute(Compute c) {
  require_compute(c);
  g_default_compute.store(static_cast<int>(c), std::memory_order_relaxed);
}

const char* compute_name(Compute c) {
  return c == Compute::kBF16 ? "bf16" : "f32";
}

}  // namespace longrope::kernels
