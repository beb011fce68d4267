// The CPU kernels: every numeric routine of the CPU backend (longrope/backend.h, CpuBackend), which
// is how the engine reaches them; training (src/train) calls some of them directly.
// Each optimised kernel has a plain scalar reference (`*_scalar`) that tests compare it against.
// All matrices are row-major FP32.
#pragma once
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "longrope/quant.h"

namespace longrope::kernels {

// ---- CPU variants. The kernels pick their paths at run time by CPU feature (the AVX-512 kernels
// are compiled with function target attributes, so a portable build runs everywhere). A variant
// caps what the cpu_has_* functions report, so one machine can run every path at or below the
// best it has (docs/design.md, "CPU variants and the conformance suite"). From lowest:
//   kPortable    no AVX-512 kernels: what an AVX2 CPU (AMD Zen 3) runs; f32 compute only
//   kAvx512      the AVX-512 kernels (and the AVX512_VNNI ones where the CPU has VNNI)
//   kAvx512Bf16  + AVX512_BF16: bf16 compute, oneDNN without AMX (AMD Zen 4)
//   kAmx         + AMX tiles through oneDNN (Intel Xeon since Sapphire Rapids; a oneDNN build)
enum class CpuVariant { kPortable, kAvx512, kAvx512Bf16, kAmx };
// The variant in effect: a test's CpuVariantForTesting if one is alive, else $LONGROPE_CPU
// (portable, avx512, avx512_bf16, amx; unset, empty or "auto": cpu_best_variant()), read at the
// first call. Throws Error (at every call) naming the variable when its value is unknown or above
// what this CPU supports. With LONGROPE_CPU below amx on an AMX CPU, oneDNN is capped as well.
CpuVariant cpu_variant();
CpuVariant cpu_best_variant();                     // the best this CPU (and build) can run
std::vector<CpuVariant> cpu_variants_supported();  // kPortable .. cpu_best_variant(), lowest first
const char* cpu_variant_name(CpuVariant v);        // "portable", "avx512", "avx512_bf16", "amx"
// The variant of a name as LONGROPE_CPU takes it ("auto" is not one); throws Error otherwise.
CpuVariant parse_cpu_variant(const std::string& name);
// Why a path that needs variant `needed` does not run here, in words ("this CPU lacks AVX512_BF16
// (it supports portable, avx512)", "the CPU variant in effect, avx512 (LONGROPE_CPU=avx512),
// leaves out AVX512_BF16"); empty when cpu_variant() >= needed.
std::string cpu_variant_missing(CpuVariant needed);
// Caps the variant of this process while alive, over $LONGROPE_CPU (tests: run each path on one
// machine); restores the previous cap when destroyed. Throws Error when v is above
// cpu_best_variant(). Not while kernels run on other threads. It caps the project's dispatch only:
// oneDNN's own choice of AMX inside gemm_bf16_nt cannot change after its first use, so only
// LONGROPE_CPU keeps AMX out of oneDNN.
class CpuVariantForTesting {
 public:
  explicit CpuVariantForTesting(CpuVariant v);
  ~CpuVariantForTesting();
  CpuVariantForTesting(const CpuVariantForTesting&) = delete;
  CpuVariantForTesting& operator=(const CpuVariantForTesting&) = delete;

 private:
  int previous_;
};

// ---- The BLAS library's kernel choice.
// OpenBLAS (the FP32 GEMM behind gemm_nt and training's backward products) picks its kernels at
// load time from the CPU model; releases before 0.3.25 (Debian 12 ships 0.3.21) fall back to
// their SSE3 "Prescott" kernels on Intel models they do not know (OpenBLAS issue 4267), about 4x
// slower than their AVX-512 ones on such a Xeon. The library's own name for the kernels it chose
// ("Prescott", "SkylakeX", "Zen", ...).
std::string blas_core_name();
// The OPENBLAS_CORETYPE that repairs that fallback on a CPU with these features, or "" when
// `core` is not the fallback or the CPU has no AVX2/FMA: "SkylakeX" (AVX-512; also with
// AVX512_BF16, since OpenBLAS 0.3.21's list of names lacks "Cooperlake" and its Cooper Lake
// kernels differ only in sbgemm, which Debian's build leaves out), "Haswell" (AVX2 + FMA).
std::string blas_coretype_for(const std::string& core, bool avx2_fma, bool avx512);
// blas_coretype_for(blas_core_name(), this CPU's own features) (not capped by LONGROPE_CPU: the
// BLAS library reads the CPU itself); "" when nothing is to be done.
std::string blas_coretype_repair();
// Applies blas_coretype_repair(): OpenBLAS reads OPENBLAS_CORETYPE only when it loads, so this
// sets the variable and executes the program again (/proc/self/exe with argv). For the first line
// of a program's main (the CLI's and the benchmarks' that compare with other tools), before MPI,
// threads or any work. Does nothing when OPENBLAS_CORETYPE is set (a user's choice is kept, and
// the new process cannot loop) or nothing is to be done; returns when the exec fails, the library's
// own kernels then run.
// The new process also has LONGROPE_BLAS_REPAIRED_FROM, naming the kernels it replaced.
void restart_with_blas_repair(char** argv);

// CPU features within the variant in effect (each throws cpu_variant()'s Error).
bool cpu_has_avx512();       // AVX512F + BW + VL + DQ (kAvx512 and above)
bool cpu_has_avx512_vnni();  // + AVX512_VNNI (kAvx512 and above, where the CPU has it)
bool cpu_has_avx512_bf16();  // + AVX512_BF16 (kAvx512Bf16 and above)
bool cpu_has_amx();          // AMX-BF16 tiles usable through oneDNN (kAmx)
bool cpu_has_avx2_fma();     // AVX2 + FMA in the hardware (every variant: kPortable runs them)

// Arithmetic of the prefill GEMMs and attention. kBF16: bf16 inputs, FP32 accumulation
// (AVX512_BF16). kF32 is the reference path.
enum class Compute { kF32, kBF16 };
// Whether bf16 arithmetic outruns FP32 on a CPU with these features: with AMX tiles (oneDNN), and
// with AMD's AVX512_BF16 (Zen 4: a vdpbf16ps does twice the FLOPs of an FMA per cycle). Intel's
// vdpbf16ps without AMX does at most what its FMAs do (161 against 340 GFLOP/s measured on a Xeon
// model 207), and the FP32 GEMM and attention outrun the bf16 ones there (docs/design.md).
bool bf16_outruns_f32(bool amx, bool avx512_bf16, bool amd);
// The fastest arithmetic this CPU runs (what ScoreOptions, ContextParams and the run configs
// start with, and what --compute auto picks): kBF16 where bf16_outruns_f32 (the variant in
// effect's features, the CPU's vendor), else kF32. A function of the CPU and LONGROPE_CPU only,
// decided at each call: there is no process-wide setting; a caller that wants another passes it.
Compute best_compute();
// --compute's value: "auto" -> best_compute(), "f32"/"bf16" -> parse_compute, checked with
// require_compute.
Compute compute_of_flag(const std::string& value);
// Throws Error when this CPU (variant) cannot run `c` (bf16 without AVX512_BF16).
void require_compute(Compute c);
// "f32" -> kF32, "bf16" -> kBF16; anything else throws Error.
Compute parse_compute(const std::string& name);
const char* compute_name(Compute c);  // "f32" / "bf16"

// A weight matrix [rows][cols] in its file encoding, never copied: F32, F16, BF16 or GGML blocks
// (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, ...). Row r starts at data + r * row_bytes.
struct WeightView {
  GgmlType type = GgmlType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;
};

// Rows [r0, r0 + n) of W decoded into dst (row stride ld, in elements). Vectorised per type;
// the reference is io's dequantize() row by row. Single-threaded (callers parallelise).
void dequant_rows_f32(const WeightView& W, int64_t r0, int64_t n, float* dst, int64_t ld);
void dequant_rows_bf16(const WeightView& W, int64_t r0, int64_t n, uint16_t* dst, int64_t ld);

// Decode-sized products straight from the blocks: Y[m][W.rows] = beta*Y + X[m][W.cols] * W^T for
// small m (1..8), reading each weight block once for all m vectors. Parallel (OpenMP) over rows
// of W; every output is reduced by one thread in a fixed order, so results do not depend on the
// thread count. With m == 1 on Q4_0, Q4_1 or Q8_0 and a CPU with AVX512_VNNI, X is quantized to
// int8 per block of 32 and the products are integer dots (about 1e-3 relative error, as
// llama.cpp); otherwise the weights are decoded to FP32.
void gemv_w(int64_t m, const float* X, int64_t ldx, const WeightView& W, float* Y, int64_t ldy,
            float beta);
void gemv_w_scalar(int64_t m, const float* X, int64_t ldx, const WeightView& W, float* Y,
                   int64_t ldy, float beta);

// FP32 -> bf16 (round to nearest even), vectorised.
void f32_to_bf16(const float* x, uint16_t* y, int64_t n);

// C[M,N] = beta*C + A[M,K] * B[N,K]^T with bf16 A and B and FP32 accumulation (AVX512_BF16;
// callers check cpu_has_avx512_bf16()). Parallel (OpenMP) over blocks of C; deterministic and
// independent of the thread count.
void gemm_bf16_nt(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                  const uint16_t* B, int64_t ldb, float* C, int64_t ldc, float beta);
void gemm_bf16_nt_scalar(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                         const uint16_t* B, int64_t ldb, float* C, int64_t ldc, float beta);

// The projection of the forward pass: C[M, W.rows] = beta*C + A[M, W.cols] * W^T, with W in its
// file encoding. Small M goes to gemv_w; larger M decodes W in panels of rows (FP32 or bf16 by
// `compute`) that feed gemm_nt or gemm_bf16_nt, so no whole-matrix copy ever exists.
void matmul_w(int64_t M, const float* A, int64_t lda, const WeightView& W, float* C, int64_t ldc,
              float beta, Compute compute);

// C[M,N] = beta*C + A[M,K] * B[N,K]^T  (B is a weight matrix stored [out][in]).
void gemm_nt(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
             int64_t ldb, float* C, int64_t ldc, float beta);
void gemm_nt_scalar(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                    int64_t ldb, float* C, int64_t ldc, float beta);

// y[i] = x[i] / sqrt(mean(x^2) + eps) * w[i], for each of n rows of length d.
void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t d, float eps);
void rmsnorm_scalar(const float* x, const float* w, float* y, int64_t n, int64_t d, float eps);

// g[i] = silu(g[i]) * u[i]
void swiglu(float* g, const float* u, int64_t n);
void swiglu_scalar(float* g, const float* u, int64_t n);

// Rotates adjacent pairs (x[2j], x[2j+1]) of each head of n rows: row r uses cos/sin row r of the
// tables (n_rot/2 values each, attention factor already folded in). Rows hold n_heads heads of
// head_dim values (stride row_stride); only the first n_rot dims of a head rotate.
void rope_apply(float* x, int64_t n, int64_t row_stride, int n_heads, int head_dim, int n_rot,
                const float* cos_tab, const float* sin_tab);
void rope_apply_scalar(float* x, int64_t n, int64_t row_stride, int n_heads, int head_dim,
                       int n_rot, const float* cos_tab, const float* sin_tab);

// Causal grouped-query attention of n new queries against a key/value cache.
//   q:   n rows, stride q_stride, n_head heads of head_dim each (query i is at position p0 + i)
//   k,v: n_head_kv blocks of kv_cap rows x head_dim (block h holds keys of kv head h by position)
//   out: n rows, stride out_stride, n_head heads of head_dim
// Query i attends to positions [0, p0 + i]. Streams keys in tiles with an online softmax:
// memory is O(tile), never O(n x positions).
// KV is the cache's element type: float, or uint16_t holding bf16 (attention_bf16).
template <class KV>
struct AttentionArgsT {
  const float* q;
  int64_t q_stride;
  const KV* k;
  const KV* v;
  int64_t kv_cap;
  float* out;
  int64_t out_stride;
  int64_t n;
  int64_t p0;
  int n_head;
  int n_head_kv;
  int head_dim;
  float scale;  // usually 1/sqrt(head_dim)
};
// Throws Error naming the kernel and the first broken precondition of the layout above: positive
// heads with n_head a multiple of n_head_kv, head_dim > 0, n >= 0, p0 >= 0, p0 + n <= kv_cap,
// strides that hold every head, a finite scale. Every attention kernel calls it first.
template <class KV>
void check_attention_args(const AttentionArgsT<KV>& a, const char* kernel);

using AttentionArgs = AttentionArgsT<float>;
void attention(const AttentionArgs& a);
void attention_scalar(const AttentionArgs& a);

// The same attention with a bf16 key/value cache (same layout: n_head_kv blocks of kv_cap rows x
// head_dim) and bf16 products with FP32 accumulation and FP32 softmax (AVX512_BF16).
using AttentionArgsBf16 = AttentionArgsT<uint16_t>;
void attention_bf16(const AttentionArgsBf16& a);

// For each of n rows of logits (length vocab): nll[r] = logsumexp(row) - row[target[r]].
void nll_rows(const float* logits, int64_t n, int64_t vocab, const int32_t* target, double* nll);
void nll_rows_scalar(const float* logits, int64_t n, int64_t vocab, const int32_t* target,
                     double* nll);

// Streamed log-sum-exp over vocabulary panels: for n rows of logits of vocabulary ids
// [v0, v0 + width), updates each row's running max m[r], sum s[r] = sum exp(logit - m[r]) and,
// when target[r] falls in the panel, its logit tl[r]. After the last panel
// nll[r] = m[r] + log(s[r]) - tl[r]. Start with m = -inf, s = 0.
void lse_update_rows(const float* logits, int64_t n, int64_t width, int64_t v0,
                     const int32_t* target, float* m, double* s, float* tl);

// Streamed KL divergence between two next-token distributions, P (reference logits a) and Q
// (logits b), over vocabulary panels. Per row: running maxima, sums of exp(a - ma) and
// exp(b - mb), t = sum exp(a - ma) (a - b), the argmax of each and, when the target falls in the
// panel, its logit under Q. Start with KlState{}; after the last panel kl_finish gives
// KL(P || Q) = t/sa - lse(a) + lse(b), Q's NLL of the target and whether both argmaxes agree.
struct KlState {
  float ma = -std::numeric_limits<float>::infinity(), mb = -std::numeric_limits<float>::infinity();
  double sa = 0, sb = 0, t = 0;
  int32_t top_a = -1, top_b = -1;
  float target_b = 0;
};
struct KlRow {
  double kl = 0;   // KL(P || Q), nats
  double nll = 0;  // -log Q(target)
  bool same_top = false;
};
void kl_update_rows(const float* a, const float* b, int64_t n, int64_t width, int64_t v0,
                    const int32_t* target, KlState* st);
KlRow kl_finish(const KlState& st);
// The same from whole rows (length vocab), in double precision: the reference of the tests.
void kl_rows_scalar(const float* a, const float* b, int64_t n, int64_t vocab, const int32_t* target,
                    KlRow* out);

}  // namespace longrope::kernels
