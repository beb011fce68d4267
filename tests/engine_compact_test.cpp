// Weights kept in their file encoding: no FP32 copy of the model, the projection kernel over
// every encoding and compute path against its reference, the streamed LM head, scored positions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "engine/forward.h"
#include "longrope/context.h"
#include "longrope/kernels.h"
#include "longrope/model.h"
#include "test_paths.h"

using namespace longrope;
using kernels::Compute;

namespace {

using test::rnd;

// C = A W^T in double over W's decoded values (and A, W rounded to bf16 for the bf16 path).
std::vector<double> reference(int64_t M, const std::vector<float>& A, const WeightView& W,
                              Compute c) {
  std::vector<float> w(static_cast<size_t>(W.rows * W.cols));
  for (int64_t r = 0; r < W.rows; ++r)
    dequantize(W.type, W.data + r * W.row_bytes, w.data() + r * W.cols, W.cols);
  auto round = [&](float x) { return c == Compute::kBF16 ? bf16_to_fp32(fp32_to_bf16(x)) : x; };
  std::vector<double> out(static_cast<size_t>(M * W.rows));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < W.rows; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < W.cols; ++k)
        acc += double(round(A[i * W.cols + k])) * double(round(w[j * W.cols + k]));
      out[i * W.rows + j] = acc;
    }
  return out;
}

// Largest |got - want| relative to the largest |want|.
double rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double mx = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    mx = std::max(mx, std::abs(double(got[i]) - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return mx / scale;
}

}  // namespace

TEST(CompactWeights, ModelKeepsWeightsInTheMappedFile) {
  LONGROPE_REQUIRE_FILE(test::smollm_path());
  auto m = Model::load(test::smollm_path().string());
  // Norms are F32 in the file: nothing is copied at all.
  EXPECT_EQ(m->owned_bytes(), 0u);
  EXPECT_EQ(m->layers()[3].wq.data, m->file().get("blk.3.attn_q.weight").data);
  EXPECT_EQ(m->layers()[29].w_down.data, m->file().get("blk.29.ffn_down.weight").data);
  EXPECT_EQ(m->tok_embd().data, m->file().get("token_embd.weight").data);
  // Tied output: the LM head is the embedding.
  EXPECT_EQ(m->output().data, m->tok_embd().data);
  size_t file_2d = 0;
  for (const auto& t : m->file().tensors)
    if (t.ne.size() == 2) file_2d += t.nbytes;
  EXPECT_EQ(m->weight_bytes(), file_2d);
  EXPECT_LT(m->weight_bytes(), size_t(100) << 20);  // 98 MB file
}

// matmul_w on a real Q4_1 matrix and on an F32 matrix, every row count class (gemv for <= 8 rows,
// decoded panels above) and both compute paths, against a double reference.
TEST(CompactWeights, MatmulMatchesReferenceOnEveryPath) {
  LONGROPE_REQUIRE_FILE(test::smollm_path());
  auto m = Model::load(test::smollm_path().string());
  const WeightView q41 = m->layers()[0].w_gate;  // 1536 x 576, Q4_1
  ASSERT_EQ(q41.type, GgmlType::Q4_1);
  const std::vector<float> f32w = rnd(size_t(77 * 96), 3, 0.1f);
  WeightView f32{GgmlType::F32, reinterpret_cast<const uint8_t*>(f32w.data()), 77, 96, 96 * 4};
  std::vector<Compute> computes = {Compute::kF32};
  if (kernels::cpu_has_avx512_bf16())
    computes.push_back(Compute::kBF16);
  else
    std::printf("bf16 compute not checked: %s\n",
                kernels::cpu_variant_missing(kernels::CpuVariant::kAvx512Bf16).c_str());
  for (const WeightView& W : {q41, f32})
    for (int64_t M : {1, 3, 8, 9, 70})
      for (Compute c : computes) {
        const auto A = rnd(size_t(M * W.cols), uint32_t(M), 1.0f);
        std::vector<float> C(static_cast<size_t>(M * W.rows), 0.5f);
        kernels::matmul_w(M, A.data(), W.cols, W, C.data(), W.rows, 0.0f, c);
        // Small M reads the blocks in FP32 whatever the compute (decode path).
        const Compute eff = M <= 8 ? Compute::kF32 : c;
        const double err = rel_err(C, reference(M, A, W, eff));
        // Measured: <= 7e-7 (f32, panels + sgemm), <= 5e-8 (gemv), <= 4e-7 (bf16 against
        // bf16-rounded inputs).
        // M == 1 on a quantized type takes int8 activations where the CPU has AVX512_VNNI
        // (gemv_w): measured 9.5e-3 of the largest output here (random inputs, Q4_1).
        const bool int8_x = M == 1 && W.type != GgmlType::F32 && kernels::cpu_has_avx512_vnni();
        EXPECT_LT(err, int8_x ? 3e-2 : 3e-6)
            << "type " << int(W.type) << " M " << M << " " << compute_name(c);
        // beta = 1 adds to C.
        std::vector<float> C2(C);
        kernels::matmul_w(M, A.data(), W.cols, W, C2.data(), W.rows, 1.0f, c);
        for (size_t i = 0; i < C.size(); i += 97)
          EXPECT_NEAR(C2[i], 2 * C[i], 1e-5 * std::abs(C[i]) + 1e-6);
      }
}

// The LM head streamed over vocabulary panels equals the log-softmax over whole rows.
TEST(CompactWeights, StreamedLogSumExpMatchesWholeRows) {
  const int64_t n = 7, V = 1000, panel = 96;  // the last panel is partial
  auto logits = rnd(size_t(n * V), 11, 4.0f);
  std::vector<int32_t> target = {0, 999, 95, 96, 500, 191, 192};
  std::vector<double> want(n);
  kernels::nll_rows_scalar(logits.data(), n, V, target.data(), want.data());
  std::vector<float> m(n, -INFINITY), tl(n, 0.0f);
  std::vector<double> s(n, 0.0);
  std::vector<float> buf(static_cast<size_t>(n * panel));
  for (int64_t v0 = 0; v0 < V; v0 += panel) {
    const int64_t w = std::min(panel, V - v0);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < w; ++j) buf[r * w + j] = logits[r * V + v0 + j];
    kernels::lse_update_rows(buf.data(), n, w, v0, target.data(), m.data(), s.data(), tl.data());
  }
  for (int64_t r = 0; r < n; ++r)
    EXPECT_NEAR(double(m[r]) + std::log(s[r]) - tl[r], want[r], 5e-7) << r;  // measured <= 8e-8
}

// Scoring only some positions returns exactly what the whole window gives there.
TEST(CompactWeights, ScoredPositionsMatchTheWholeWindow) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  auto m = Model::load(test::stories_gguf().string());
  auto ids = m->tokenizer().encode(
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "park with her friends. One day, she saw a big red ball.");
  ids.insert(ids.begin(), m->tokenizer().bos());
  const int64_t n = static_cast<int64_t>(ids.size());
  ScoreOptions all;
  all.compute = Compute::kF32;
  const auto full = score_window(*m, ids, RopeScaling{}, all);
  ScoreOptions some = all;
  some.positions = {n - 2, 0, 7, 3};
  const auto part = score_window(*m, ids, RopeScaling{}, some);
  ASSERT_EQ(part.size(), 4u);
  // Equal up to the summation order of the LM head: for 4 rows and for the whole window the GEMM
  // library may take different kernels (it chooses by the row count), which add the K = 64
  // products of each logit in another order. Error model: two FP32 orders of a K-term sum differ
  // by about sqrt(K) u S (u = 2^-24; S = sum |x_i w_i|, at most 33.8 for this text, measured
  // with the numpy reference), and the NLL, a log-sum-exp minus the target logit, by at most
  // twice a logit's change: 2 sqrt(64) 2^-24 33.8 = 3.2e-5. Measured 0 where the test was
  // written, 1.2e-6 on a Xeon with AVX512_BF16 and no AMX.
  const double tol = 2.0 * std::sqrt(64.0) * std::ldexp(1.0, -24) * 33.8;
  for (size_t i = 0; i < part.size(); ++i)
    EXPECT_NEAR(part[i], full[static_cast<size_t>(some.positions[i])], tol) << i;
  some.positions = {n - 1};
  test::expect_error([&] { score_window(*m, ids, RopeScaling{}, some); },
                     {"scored position", "out of range"});
}

// bf16 compute changes SmolLM2's perplexity by a few hundredths of a percent (measured 0.02% at
// 2048 and 0.03% at 8192 tokens), well inside the 0.3% the bf16 path is held to.
TEST(CompactWeights, Bf16PerplexityIsCloseToF32) {
  LONGROPE_REQUIRE_CPU_VARIANT(kernels::CpuVariant::kAvx512Bf16);
  LONGROPE_REQUIRE_FILE(test::smollm_path());
  const auto text = test::shared_text("pride_and_prejudice.txt");
  LONGROPE_REQUIRE_FILE(text);
  auto m = Model::load(test::smollm_path().string());
  auto ids = m->tokenizer().encode(test::slurp(text).substr(0, 8000));
  ids.resize(1024);
  ids.insert(ids.begin(), m->tokenizer().bos());
  auto ppl = [&](Compute c) {
    ScoreOptions so;
    so.compute = c;
    double s = 0;
    const auto nll = score_window(*m, ids, RopeScaling{}, so);
    for (double x : nll) s += x;
    return std::exp(s / double(nll.size()));
  };
  const double f = ppl(Compute::kF32), b = ppl(Compute::kBF16);
  std::printf("ppl f32 %.6f bf16 %.6f (%.4f%%)\n", f, b, 100 * (b / f - 1));
  EXPECT_NEAR(b / f, 1.0, 1e-3);
}
