// bf16 GEMM through oneDNN's matmul primitive: C[M,N] = beta*C + A[M,K] * B[N,K]^T with bf16 A
// and B (plain row-major, B read as the transposed weights view) and FP32 C. oneDNN picks its
// kernel at run time: AMX tiles where the CPU has them, AVX512_BF16 otherwise. Primitives are
// created per shape and kept in oneDNN's primitive cache; the OpenMP runtime is shared with ours.
#include "engine/kernels/bf16_internal.h"

#ifdef LONGROPE_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace longrope::kernels::bf16_detail {

#ifdef LONGROPE_HAVE_ONEDNN

namespace {
dnnl::engine& cpu_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
}  // namespace

bool have_onednn() {
  return cpu_has_avx512_bf16();
}

void onednn_cap_isa_below_amx() {
  // Fails (returns an error status) only after oneDNN's first use; the caller runs before it.
  (void)dnnl::set_max_cpu_isa(dnnl::cpu_isa::avx512_core_bf16);
}

bool gemm_bf16_onednn(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                      const uint16_t* B, int64_t ldb, float* C, int64_t ldc, float beta) {
  if (!cpu_has_avx512_bf16() || M <= 0 || N <= 0 || K <= 0) return false;
  using dt = dnnl::memory::data_type;
  using md = dnnl::memory::desc;
  const md a_md({M, K}, dt::bf16, {lda, 1});
  const md b_md({K, N}, dt::bf16, {1, ldb});  // B[N][K] row-major seen as the K x N weights
  const md c_md({M, N}, dt::f32, {ldc, 1});
  dnnl::primitive_attr attr;
  if (beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(beta);
    attr.set_post_ops(po);
  }
  try {
    const dnnl::matmul::desc desc(a_md, b_md, c_md);  // oneDNN 2.x API
    const dnnl::matmul::primitive_desc pd(desc, attr, cpu_engine());
    const dnnl::matmul prim(pd);
    dnnl::memory am(a_md, cpu_engine(), const_cast<uint16_t*>(A));
    dnnl::memory bm(b_md, cpu_engine(), const_cast<uint16_t*>(B));
    dnnl::memory cm(c_md, cpu_engine(), C);
    dnnl::stream st(cpu_engine());
    prim.execute(st, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    st.wait();
  } catch (const dnnl::error& e) {
    throw Error(std::string("oneDNN bf16 matmul ") + std::to_string(M) + "x" + std::to_string(N) +
                "x" + std::to_string(K) + " failed: " + e.what());
  }
  return true;
}

#else

bool have_onednn() {
  return false;
}

void onednn_cap_isa_below_amx() {}

bool gemm_bf16_onednn(int64_t, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*, int64_t,
                      float*, int64_t, float) {
  return false;
}

#endif

}  // namespace longrope::kernels::bf16_detail
