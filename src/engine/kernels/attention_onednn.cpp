// Causal grouped-query attention for long prefill with the two products of each tile on oneDNN
// matmuls (AMX tiles), FP32 online softmax in between. A work item is a block of up to kBq
// queries of all the heads of one kv head (group * rows rows, about kMaxRows, sharing each K and V
// block):
//   Qs = bf16(Q * scale * log2(e)) once per item;
//   per key block of up to kBk keys: S = Qs K^T (bf16 in, FP32 out), row maxima and the lazy
//   rescaling of O (as in attention_bf16.cpp), P = bf16(2^(S - m)) with the causal mask applied
//   on the diagonal block only, O += P V (oneDNN sum post-op); finally out = O / l.
// Shapes are padded to few sizes (each head's rows to multiples of 16, keys to multiples of kGran)
// and each thread keeps its created primitives by shape. Key rows past the written cache
// (p0 + n) are never read: a block that would need them is copied into zero-padded scratch.
// Items run longest first, each computed by one thread in a fixed order; oneDNN runs
// single-threaded inside the parallel region. Results do not depend on the thread count.
#include "engine/kernels/bf16_internal.h"  // first: it includes immintrin.h

#ifdef LONGROPE_HAVE_ONEDNN
#include <omp.h>

#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <vector>
#endif

namespace longrope::kernels::bf16_detail {

#ifdef LONGROPE_HAVE_ONEDNN

namespace {

constexpr int64_t kBq = 128;       // queries per work item, at most
constexpr int64_t kMaxRows = 384;  // rows (query, head) per work item, about
constexpr int64_t kBk = 256;       // keys per block
constexpr int64_t kGran = 32;      // key counts are padded to multiples of this
// Inputs of at least kMinN queries, or of kMinShort to kMinN queries with at least kMinPairs
// (queries x keys) and two kv heads, take this path; other ones attention_bf16's own kernel
// (measured crossovers, 2 threads, SmolLM2 shape: n 4 at p0 8000; between 16 and 64 at p0 0).
constexpr int64_t kMinN = 128;
constexpr int64_t kMinShort = 16;
constexpr int64_t kMinPairs = 8192;
constexpr float kLazy = 8.0f;  // see attention_bf16.cpp (softmax_tile)
constexpr float kNegInf = -__builtin_inff();

dnnl::engine& cpu_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// Whether oneDNN runs AMX here (the OS granted the tile state); asked only once cpu_has_amx()
// says the variant in effect allows AMX, so LONGROPE_CPU is read before oneDNN's first use.
bool onednn_has_amx() {
  // ISA values are bit sets: AMX when all of avx512_core_amx's bits are present.
  const unsigned want = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_amx);
  static const bool amx = (static_cast<unsigned>(dnnl::get_effective_cpu_isa()) & want) == want;
  return amx;
}

struct Prim {
  dnnl::matmul mm;
  dnnl::memory a, b, c;
};

// Created primitives of one thread, keyed by (product, rows, keys, head_dim).
struct PrimCache {
  dnnl::stream st{cpu_engine()};
  std::map<int64_t, Prim> prims;
};

PrimCache& thread_cache() {
  thread_local PrimCache cache;
  return cache;
}

// pv = false: S[M x N] = Qs[M x hd] * Kb^T (Kb: N rows of hd). pv = true: O[M x hd] += P[M x N] *
// Vb (Vb: N rows of hd).
Prim& get_prim(PrimCache& pc, bool pv, int64_t M, int64_t N, int64_t hd) {
  const int64_t key = ((M * 4096 + N) * 1024 + hd) * 2 + (pv ? 1 : 0);
  auto it = pc.prims.find(key);
  if (it != pc.prims.end()) return it->second;
  using dt = dnnl::memory::data_type;
  using md = dnnl::memory::desc;
  dnnl::primitive_attr attr;
  md a_md, b_md, c_md;
  if (!pv) {
    a_md = md({M, hd}, dt::bf16, {hd, 1});
    b_md = md({hd, N}, dt::bf16, {1, hd});
    c_md = md({M, N}, dt::f32, {N, 1});
  } else {
    a_md = md({M, N}, dt::bf16, {N, 1});
    b_md = md({N, hd}, dt::bf16, {hd, 1});
    c_md = md({M, hd}, dt::f32, {hd, 1});
    dnnl::post_ops po;
    po.append_sum(1.0f);
    attr.set_post_ops(po);
  }
  try {
    const dnnl::matmul::desc desc(a_md, b_md, c_md);  // oneDNN 2.x API
    const dnnl::matmul::primitive_desc pd(desc, attr, cpu_engine());
    Prim p{dnnl::matmul(pd), dnnl::memory(a_md, cpu_engine(), nullptr),
           dnnl::memory(b_md, cpu_engine(), nullptr), dnnl::memory(c_md, cpu_engine(), nullptr)};
    return pc.prims.emplace(key, std::move(p)).first->second;
  } catch (const dnnl::error& e) {
    throw Error(std::string("attention_bf16: oneDNN matmul ") + std::to_string(M) + "x" +
                std::to_string(N) + "x" + std::to_string(hd) + " failed: " + e.what());
  }
}

// Runs one product (see get_prim) on the calling thread.
void product(bool pv, int64_t M, int64_t N, int64_t hd, const uint16_t* A, const uint16_t* B,
             float* C) {
  PrimCache& pc = thread_cache();
  Prim& p = get_prim(pc, pv, M, N, hd);
  p.a.set_data_handle(const_cast<uint16_t*>(A));
  p.b.set_data_handle(const_cast<uint16_t*>(B));
  p.c.set_data_handle(C);
  p.mm.execute(pc.st, {{DNNL_ARG_SRC, p.a}, {DNNL_ARG_WEIGHTS, p.b}, {DNNL_ARG_DST, p.c}});
  pc.st.wait();
}

struct ItemScratch {
  uint16_t* qs;  // [kBq][hd]
  float* o;      // [kBq][hd]
  float* s;      // [kBq][kBk]
  uint16_t* p;   // [kBq][kBk]
  uint16_t* kp;  // [kBk][hd]: padded K block
  uint16_t* vp;  // [kBk][hd]: padded V block
  float* m;      // [kBq]
  float* l;      // [kBq]
};

// Online softmax over one block of bk keys (bkp columns of S and P) for the M rows: segments of
// mp rows (one per head), of which the first `rows` are queries (the others are padding: zero
// probabilities). vis0: keys of the block visible to query 0; query r sees min(bk, vis0 + r).
LONGROPE_BF16_TARGET void softmax_block(const ItemScratch& sc, int64_t rows, int64_t mp, int64_t M,
                                        int hd, int64_t bk, int64_t bkp, int64_t vis0) {
  for (int64_t r = 0; r < M; ++r) {
    const float* s = sc.s + r * bkp;
    uint16_t* p = sc.p + r * bkp;
    const int64_t rq = r % mp;  // query of the row within its head's segment
    const int64_t vis = rq < rows ? imax(0, imin(bk, vis0 + rq)) : 0;
    if (vis == 0) {
      for (int64_t j = 0; j < bkp; j += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), _mm256_setzero_si256());
      continue;
    }
    __m512 mx = _mm512_set1_ps(kNegInf);
    int64_t j = 0;
    for (; j + 16 <= vis; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
    if (j < vis) {
      const __mmask16 k = static_cast<__mmask16>((1u << (vis - j)) - 1u);
      mx = _mm512_mask_max_ps(mx, k, mx, _mm512_maskz_loadu_ps(k, s + j));
    }
    const float tmax = _mm512_reduce_max_ps(mx);
    float mref = sc.m[r];
    if (tmax > mref + kLazy) {
      // First visible keys (mref = -inf): O and l are zero, any factor does.
      const float corr =
          mref == kNegInf ? 0.0f : _mm512_cvtss_f32(exp2_clamped_ps(_mm512_set1_ps(mref - tmax)));
      sc.l[r] *= corr;
      float* o = sc.o + r * hd;
      const __m512 vc = _mm512_set1_ps(corr);
      for (int d = 0; d < hd; d += 16)
        _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), vc));
      sc.m[r] = mref = tmax;
    }
    const __m512 ms = _mm512_set1_ps(mref);
    __m512 sum = _mm512_setzero_ps();
    for (j = 0; j < bkp; j += 16) {
      __m512 e;
      if (j + 16 <= vis) {
        e = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), ms));
      } else if (j < vis) {
        const __mmask16 k = static_cast<__mmask16>((1u << (vis - j)) - 1u);
        e = _mm512_maskz_mov_ps(k, exp2_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), ms)));
      } else {
        e = _mm512_setzero_ps();
      }
      sum = _mm512_add_ps(sum, e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), (__m256i)_mm512_cvtneps_pbh(e));
    }
    sc.l[r] += _mm512_reduce_add_ps(sum);
  }
}

// Rows of Q (scaled, bf16) for queries [q0, q0 + rows) of head h; padding rows up to mp are zero.
LONGROPE_BF16_TARGET void load_q(const AttentionArgsBf16& a, int h, int64_t q0, int64_t rows,
                                 int64_t mp, uint16_t* qs) {
  const int hd = a.head_dim;
  const __m512 vs = _mm512_set1_ps(a.scale * 1.4426950408889634f);
  for (int64_t r = 0; r < mp; ++r) {
    uint16_t* dst = qs + r * hd;
    if (r >= rows) {
      for (int d = 0; d < hd; d += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + d), _mm256_setzero_si256());
      continue;
    }
    const float* q = a.q + (q0 + r) * a.q_stride + int64_t(h) * hd;
    for (int d = 0; d < hd; d += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + d),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(q + d), vs)));
  }
}

// Output rows of queries [q0, q0 + rows) of head h from rows [r0, r0 + rows) of O.
LONGROPE_BF16_TARGET void store_out(const AttentionArgsBf16& a, int h, int64_t q0, int64_t rows,
                                    int64_t r0, const ItemScratch& sc) {
  const int hd = a.head_dim;
  for (int64_t r = 0; r < rows; ++r) {
    float* o = a.out + (q0 + r) * a.out_stride + int64_t(h) * hd;
    const float* src = sc.o + (r0 + r) * hd;
    const __m512 inv = _mm512_set1_ps(1.0f / sc.l[r0 + r]);
    for (int d = 0; d < hd; d += 16)
      _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(src + d), inv));
  }
}

// Work item: queries [q0, q0 + bq) of the heads of kv head kvh (the rows of head kvh*group + g
// are [g*mp, (g+1)*mp)).
void attention_item(const AttentionArgsBf16& a, int kvh, int64_t q0, int64_t bq,
                    const ItemScratch& sc) {
  const int hd = a.head_dim;
  const int group = a.n_head / a.n_head_kv;
  const int64_t rows = imin(bq, a.n - q0);
  const int64_t mp = (rows + 15) / 16 * 16;
  const int64_t M = mp * group;
  const int64_t pos0 = a.p0 + q0;      // position of the first row
  const int64_t k_end = pos0 + rows;   // keys [0, k_end) are visible to some row
  const int64_t written = a.p0 + a.n;  // cache rows that may be read
  const uint16_t* K = a.k + int64_t(kvh) * a.kv_cap * hd;
  const uint16_t* V = a.v + int64_t(kvh) * a.kv_cap * hd;
  for (int g = 0; g < group; ++g) load_q(a, kvh * group + g, q0, rows, mp, sc.qs + g * mp * hd);
  std::memset(sc.o, 0, sizeof(float) * size_t(M * hd));
  for (int64_t r = 0; r < M; ++r) {
    sc.m[r] = kNegInf;
    sc.l[r] = 0.0f;
  }
  for (int64_t k0 = 0; k0 < k_end; k0 += kBk) {
    const int64_t bk = imin(kBk, k_end - k0);
    const int64_t bkp = (bk + kGran - 1) / kGran * kGran;
    const uint16_t* Kb = K + k0 * hd;
    const uint16_t* Vb = V + k0 * hd;
    if (k0 + bkp > written) {
      const size_t used = sizeof(uint16_t) * size_t(bk * hd);
      const size_t pad = sizeof(uint16_t) * size_t((bkp - bk) * hd);
      std::memcpy(sc.kp, Kb, used);
      std::memset(sc.kp + bk * hd, 0, pad);
      std::memcpy(sc.vp, Vb, used);
      std::memset(sc.vp + bk * hd, 0, pad);
      Kb = sc.kp;
      Vb = sc.vp;
    }
    product(false, M, bkp, hd, sc.qs, Kb, sc.s);
    softmax_block(sc, rows, mp, M, hd, bk, bkp, pos0 + 1 - k0);
    product(true, M, bkp, hd, sc.p, Vb, sc.o);
  }
  for (int g = 0; g < group; ++g) store_out(a, kvh * group + g, q0, rows, g * mp, sc);
}

}  // namespace

bool attention_bf16_onednn(const AttentionArgsBf16& a) {
  const bool big = a.n >= kMinN || (a.n >= kMinShort && a.n * (a.p0 + a.n) >= kMinPairs &&
                                    a.n_head_kv >= 2);  // depends on the shape only
  if (!big || a.head_dim % 16 != 0 || a.head_dim < 32 || !cpu_has_amx() || !onednn_has_amx())
    return false;
  // Queries per item: the heads of a kv head share the item (and its K and V blocks), up to
  // about kMaxRows rows in all.
  const int group = a.n_head / a.n_head_kv;
  const int64_t bq = imax(16, imin(kBq, kMaxRows / group / 16 * 16));
  const int64_t n_qb = (a.n + bq - 1) / bq;
  const int64_t items = n_qb * a.n_head_kv;
  const int64_t M = bq * group;  // rows of an item, at most
  const int hd = a.head_dim;
  std::string error;
#pragma omp parallel
  {
    std::vector<uint16_t> bf(size_t(M * hd + M * kBk + 2 * kBk * hd) + 64);
    std::vector<float> fl(size_t(M * hd + M * kBk + 2 * M) + 64);
    ItemScratch sc;
    sc.qs = bf.data();
    sc.p = sc.qs + M * hd;
    sc.kp = sc.p + M * kBk;
    sc.vp = sc.kp + kBk * hd;
    sc.o = fl.data();
    sc.s = sc.o + M * hd;
    sc.m = sc.s + M * kBk;
    sc.l = sc.m + M;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < items; ++t) {
      // Last (longest) query blocks first, for balance under the causal mask.
      const int kvh = static_cast<int>(t % a.n_head_kv);
      const int64_t qb = n_qb - 1 - t / a.n_head_kv;
      try {
        attention_item(a, kvh, qb * bq, bq, sc);
      } catch (const Error& e) {
#pragma omp critical(longrope_attention_onednn)
        if (error.empty()) error = e.what();
      }
    }
  }
  if (!error.empty()) throw Error(error);
  return true;
}

#else

bool attention_bf16_onednn(const AttentionArgsBf16&) {
  return false;
}

#endif

}  // namespace longrope::kernels::bf16_detail
