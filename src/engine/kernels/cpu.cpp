// Run-time CPU feature detection, the CPU variant in effect (LONGROPE_CPU, tests' caps) and the
// default compute path.
#include <cblas.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "engine/kernels/bf16_internal.h"
#include "longrope/error.h"
#include "longrope/kernels.h"

namespace longrope::kernels {

namespace {

constexpr CpuVariant kAllVariants[] = {CpuVariant::kPortable, CpuVariant::kAvx512,
                                       CpuVariant::kAvx512Bf16, CpuVariant::kAmx};

// What the hardware has, detected once.
struct Hardware {
  bool avx2_fma = false, avx512 = false, vnni = false, bf16 = false, amx = false;
};

const Hardware& hardware() {
  static const Hardware hw = [] {
    Hardware h;
#if defined(__x86_64__) || defined(__i386__)
    h.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    h.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    h.vnni = h.avx512 && __builtin_cpu_supports("avx512vnni");
    h.bf16 = h.avx512 && __builtin_cpu_supports("avx512bf16");
#ifdef LONGROPE_HAVE_ONEDNN
    // The AMX path is oneDNN's; libgcc reports AMX only when the OS enables the tile state.
    h.amx = h.bf16 && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
            __builtin_cpu_supports("amx-int8");
#endif
#endif
    return h;
  }();
  return hw;
}

std::string supported_list() {
  std::string s;
  for (CpuVariant v : cpu_variants_supported())
    s += std::string(s.empty() ? "" : ", ") + cpu_variant_name(v);
  return s;
}

// LONGROPE_CPU, read once: the variant, or the error every call reports.
struct EnvChoice {
  CpuVariant variant = CpuVariant::kPortable;
  std::string error;
};

const EnvChoice& env_choice() {
  static const EnvChoice choice = [] {
    EnvChoice c;
    c.variant = cpu_best_variant();
    const char* env = std::getenv("LONGROPE_CPU");
    const std::string value = env ? env : "";
    if (value.empty() || value == "auto") return c;
    bool known = false;
    for (CpuVariant v : kAllVariants) {
      if (value == cpu_variant_name(v)) {
        c.variant = v;
        known = true;
      }
    }
    if (!known) {
      c.error = "LONGROPE_CPU=" + value +
                " is not a CPU variant (portable, avx512, avx512_bf16, amx or auto); this CPU "
                "supports " +
                supported_list();
    } else if (c.variant > cpu_best_variant()) {
      c.error =
          "LONGROPE_CPU=" + value + " is above what this CPU supports (" + supported_list() + ")";
    } else if (c.variant < CpuVariant::kAmx && hardware().amx) {
      // Keep AMX out of oneDNN too (its own kernels pick their ISA); before any oneDNN call.
      bf16_detail::onednn_cap_isa_below_amx();
    }
    return c;
  }();
  return choice;
}

// -1: no test cap; else a CpuVariant.
std::atomic<int> g_test_variant{-1};

}  // namespace

CpuVariant cpu_best_variant() {
  const Hardware& h = hardware();
  if (h.amx) return CpuVariant::kAmx;
  if (h.bf16) return CpuVariant::kAvx512Bf16;
  if (h.avx512) return CpuVariant::kAvx512;
  return CpuVariant::kPortable;
}

std::vector<CpuVariant> cpu_variants_supported() {
  std::vector<CpuVariant> out;
  for (CpuVariant v : kAllVariants)
    if (v <= cpu_best_variant()) out.push_back(v);
  return out;
}

const char* cpu_variant_name(CpuVariant v) {
  switch (v) {
    case CpuVariant::kPortable:
      return "portable";
    case CpuVariant::kAvx512:
      return "avx512";
    case CpuVariant::kAvx512Bf16:
      return "avx512_bf16";
    case CpuVariant::kAmx:
      return "amx";
  }
  return "?";
}

CpuVariant parse_cpu_variant(const std::string& name) {
  for (CpuVariant v : kAllVariants)
    if (name == cpu_variant_name(v)) return v;
  throw Error("'" + name + "' is not a CPU variant (portable, avx512, avx512_bf16 or amx)");
}

CpuVariant cpu_variant() {
  const int t = g_test_variant.load(std::memory_order_relaxed);
  if (t >= 0) return static_cast<CpuVariant>(t);
  const EnvChoice& c = env_choice();
  if (!c.error.empty()) throw Error(c.error);
  return c.variant;
}

std::string cpu_variant_missing(CpuVariant needed) {
  const CpuVariant now = cpu_variant();
  if (now >= needed) return "";
  static const char* const kFeature[] = {"", "AVX-512", "AVX512_BF16", "AMX"};
  const char* feature = kFeature[static_cast<int>(needed)];
  if (cpu_best_variant() < needed)
    return std::string("this CPU lacks ") + feature + " (it supports " + supported_list() + ")";
  const int t = g_test_variant.load(std::memory_order_relaxed);
  const char* env = std::getenv("LONGROPE_CPU");
  const std::string source =
      t >= 0 ? "set by a test" : std::string("LONGROPE_CPU=") + (env ? env : "");
  return std::string("the CPU variant in effect, ") + cpu_variant_name(now) + " (" + source +
         "), leaves out " + feature;
}

CpuVariantForTesting::CpuVariantForTesting(CpuVariant v) {
  if (v > cpu_best_variant())
    throw Error(std::string("CPU variant ") + cpu_variant_name(v) +
                " is above what this CPU supports (" + supported_list() + ")");
  previous_ = g_test_variant.exchange(static_cast<int>(v), std::memory_order_relaxed);
}

CpuVariantForTesting::~CpuVariantForTesting() {
  g_test_variant.store(previous_, std::memory_order_relaxed);
}

bool cpu_has_avx512() {
  return cpu_variant() >= CpuVariant::kAvx512;
}
bool cpu_has_avx512_vnni() {
  return cpu_variant() >= CpuVariant::kAvx512 && hardware().vnni;
}
bool cpu_has_avx512_bf16() {
  return cpu_variant() >= CpuVariant::kAvx512Bf16;
}
bool cpu_has_amx() {
  return cpu_variant() >= CpuVariant::kAmx;
}
bool cpu_has_avx2_fma() {
  return hardware().avx2_fma;
}

bool bf16_outruns_f32(bool amx, bool avx512_bf16, bool amd) {
  return amx || (avx512_bf16 && amd);
}

Compute best_compute() {
  return bf16_outruns_f32(cpu_has_amx(), cpu_has_avx512_bf16(), __builtin_cpu_is("amd"))
             ? Compute::kBF16
             : Compute::kF32;
}

void require_compute(Compute c) {
  if (c == Compute::kBF16 && !cpu_has_avx512_bf16()) {
    if (cpu_best_variant() >= CpuVariant::kAvx512Bf16)
      throw Error("bf16 compute needs AVX512_BF16: " +
                  cpu_variant_missing(CpuVariant::kAvx512Bf16) + " (use f32)");
    throw Error("bf16 compute needs a CPU with AVX512_BF16, which this one lacks (use f32)");
  }
}

Compute parse_compute(const std::string& name) {
  if (name == "f32") return Compute::kF32;
  if (name == "bf16") return Compute::kBF16;
  throw Error("compute must be f32 or bf16, got '" + name + "'");
}

Compute compute_of_flag(const std::string& value) {
  if (value == "auto") return best_compute();
  const Compute c = parse_compute(value);
  require_compute(c);
  return c;
}

const char* compute_name(Compute c) {
  return c == Compute::kBF16 ? "bf16" : "f32";
}

std::string blas_core_name() {
  const char* name = openblas_get_corename();
  return name ? name : "";
}

std::string blas_coretype_for(const std::string& core, bool avx2_fma, bool avx512) {
  if (core != "Prescott" && core != "prescott") return "";
  if (avx512) return "SkylakeX";
  if (avx2_fma) return "Haswell";
  return "";
}

std::string blas_coretype_repair() {
  const Hardware& h = hardware();
  return blas_coretype_for(blas_core_name(), h.avx2_fma, h.avx512);
}

void restart_with_blas_repair(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
  const std::string core = blas_coretype_repair();
  if (core.empty()) return;
  if (setenv("OPENBLAS_CORETYPE", core.c_str(), 1) != 0) return;
  setenv("LONGROPE_BLAS_REPAIRED_FROM", blas_core_name().c_str(), 1);  // for tests and reports
  execv("/proc/self/exe", argv);
}

}  // namespace longrope::kernels
