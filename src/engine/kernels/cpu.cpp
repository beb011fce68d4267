// Run-time CPU feature detection and the default compute path.
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

Compute default_compute() {
  return cpu_has_avx512_bf16() ? Compute::kBF16 : Compute::kF32;
}

const char* compute_name(Compute c) {
  return c == Compute::kBF16 ? "bf16" : "f32";
}

}  // namespace longrope::kernels
