// The engine's backend seam (include/longrope/backend.h): a backend passed through ScoreOptions or
// ContextParams runs every operation of scoring and decoding, and one passed through
// train::LossOptions every operation of a training step (each op is counted); the CPU backend
// given explicitly gives results bit-identical to the default path.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "longrope/backend.h"
#include "longrope/context.h"
#include "longrope/error.h"
#include "longrope/kernels.h"
#include "longrope/model.h"
#include "longrope/train.h"
#include "test_paths.h"

using namespace longrope;
namespace lk = longrope::kernels;

namespace {

enum Op {
  kMakeKv,
  kMakeWorkspace,
  kReserveWorkspace,
  kMakeHeadPanel,
  kEmbed,
  kMatmulW,
  kGemvW,
  kAddBias,
  kRmsnorm,
  kRmsnormRows,
  kRopeApply,
  kStoreKv,
  kAttention,
  kSwiglu,
  kRerotateKeys,
  kAllFinite,
  kHeadRows,
  kDecodeHeadPanel,
  kHeadLogits,
  kLseUpdateRows,
  kKlUpdateRows,
  kKlFinishRows,
  kCopy,
  kAttentionForward,
  kAttentionBackward,
  kLinearBackward,
  kRmsnormBackward,
  kRopeBackward,
  kSwigluBackward,
  kLmHeadCrossEntropy,
  kEmbeddingBackward,
  kOps
};

const char* op_name(int op) {
  static const char* names[kOps] = {"make_kv",
                                    "make_workspace",
                                    "reserve_workspace",
                                    "make_head_panel",
                                    "embed",
                                    "matmul_w",
                                    "gemv_w",
                                    "add_bias",
                                    "rmsnorm",
                                    "rmsnorm_rows",
                                    "rope_apply",
                                    "store_kv",
                                    "attention",
                                    "swiglu",
                                    "rerotate_keys",
                                    "all_finite",
                                    "head_rows",
                                    "decode_head_panel",
                                    "head_logits",
                                    "lse_update_rows",
                                    "kl_update_rows",
                                    "kl_finish_rows",
                                    "copy",
                                    "attention_forward",
                                    "attention_backward",
                                    "linear_backward",
                                    "rmsnorm_backward",
                                    "rope_backward",
                                    "swiglu_backward",
                                    "lm_head_cross_entropy",
                                    "embedding_backward"};
  return names[op];
}

// The CPU backend with a call counter per operation (atomic: some ops are called from threads).
class CountingBackend : public CpuBackend {
 public:
  explicit CountingBackend(lk::Compute c) : CpuBackend(c) {}
  int64_t count(Op op) const { return counts_[op].load(); }
  std::string name() const override { return "counting"; }

  std::unique_ptr<KvStorage> make_kv(const HParams& hp, int64_t cap, int layers) const override {
    hit(kMakeKv);
    return CpuBackend::make_kv(hp, cap, layers);
  }
  std::unique_ptr<Workspace> make_workspace() const override {
    hit(kMakeWorkspace);
    return CpuBackend::make_workspace();
  }
  void reserve_workspace(Workspace& ws, const HParams& hp, int64_t n) const override {
    hit(kReserveWorkspace);
    CpuBackend::reserve_workspace(ws, hp, n);
  }
  std::unique_ptr<HeadPanel> make_head_panel() const override {
    hit(kMakeHeadPanel);
    return CpuBackend::make_head_panel();
  }
  void embed(const lk::WeightView& table, const int32_t* tokens, int64_t n,
             float* x) const override {
    hit(kEmbed);
    CpuBackend::embed(table, tokens, n, x);
  }
  void matmul_w(int64_t M, const float* A, int64_t lda, const lk::WeightView& W, float* C,
                int64_t ldc, float beta) const override {
    hit(kMatmulW);
    CpuBackend::matmul_w(M, A, lda, W, C, ldc, beta);
  }
  void gemv_w(int64_t m, const float* X, int64_t ldx, const lk::WeightView& W, float* Y,
              int64_t ldy, float beta) const override {
    hit(kGemvW);
    CpuBackend::gemv_w(m, X, ldx, W, Y, ldy, beta);
  }
  void add_bias(float* x, int64_t n, int64_t cols, const float* bias) const override {
    hit(kAddBias);
    CpuBackend::add_bias(x, n, cols, bias);
  }
  void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t d,
               float eps) const override {
    hit(kRmsnorm);
    CpuBackend::rmsnorm(x, w, y, n, d, eps);
  }
  void rmsnorm_rows(const float* x, const int64_t* rows, int64_t m, const float* w, float* y,
                    int64_t d, float eps) const override {
    hit(kRmsnormRows);
    CpuBackend::rmsnorm_rows(x, rows, m, w, y, d, eps);
  }
  void rope_apply(float* x, int64_t n, int64_t row_stride, int n_heads, int head_dim, int n_rot,
                  const float* cos_tab, const float* sin_tab) const override {
    hit(kRopeApply);
    CpuBackend::rope_apply(x, n, row_stride, n_heads, head_dim, n_rot, cos_tab, sin_tab);
  }
  void store_kv(const KvView& kv, int layer, int64_t p0, int64_t n, int n_head_kv, int head_dim,
                const float* k, const float* v) const override {
    hit(kStoreKv);
    CpuBackend::store_kv(kv, layer, p0, n, n_head_kv, head_dim, k, v);
  }
  void attention(const KvView& kv, int layer, const AttentionCall& a) const override {
    hit(kAttention);
    CpuBackend::attention(kv, layer, a);
  }
  void swiglu(float* g, const float* u, int64_t n) const override {
    hit(kSwiglu);
    CpuBackend::swiglu(g, u, n);
  }
  void rerotate_keys(const KvView& kv, int n_layer, int n_head_kv, int head_dim, int n_rot,
                     int64_t n, const float* cos_tab, const float* sin_tab) const override {
    hit(kRerotateKeys);
    CpuBackend::rerotate_keys(kv, n_layer, n_head_kv, head_dim, n_rot, n, cos_tab, sin_tab);
  }
  bool all_finite(const float* x, int64_t n) const override {
    hit(kAllFinite);
    return CpuBackend::all_finite(x, n);
  }
  std::unique_ptr<HeadRows> head_rows(const float* h, int64_t n, int64_t d) const override {
    hit(kHeadRows);
    return CpuBackend::head_rows(h, n, d);
  }
  void decode_head_panel(const lk::WeightView& W, int64_t v0, int64_t n,
                         HeadPanel& p) const override {
    hit(kDecodeHeadPanel);
    CpuBackend::decode_head_panel(W, v0, n, p);
  }
  void head_logits(const HeadRows& h, int64_t r0, int64_t rows, const HeadPanel& p, int64_t pv,
                   float* out) const override {
    hit(kHeadLogits);
    CpuBackend::head_logits(h, r0, rows, p, pv, out);
  }
  void lse_update_rows(const float* logits, int64_t n, int64_t width, int64_t v0,
                       const int32_t* target, float* m, double* s, float* tl) const override {
    hit(kLseUpdateRows);
    CpuBackend::lse_update_rows(logits, n, width, v0, target, m, s, tl);
  }
  void kl_update_rows(const float* a, const float* b, int64_t n, int64_t width, int64_t v0,
                      const int32_t* target, lk::KlState* st) const override {
    hit(kKlUpdateRows);
    CpuBackend::kl_update_rows(a, b, n, width, v0, target, st);
  }
  void kl_finish_rows(const lk::KlState* st, int64_t n, lk::KlRow* out) const override {
    hit(kKlFinishRows);
    CpuBackend::kl_finish_rows(st, n, out);
  }
  void copy(const float* src, float* dst, int64_t count) const override {
    hit(kCopy);
    CpuBackend::copy(src, dst, count);
  }
  void attention_forward(const train::AttentionShape& s, const float* q, const float* k,
                         const float* v, float* out, float* lse) const override {
    hit(kAttentionForward);
    CpuBackend::attention_forward(s, q, k, v, out, lse);
  }
  void attention_backward(const train::AttentionShape& s, const float* q, const float* k,
                          const float* v, const float* out, const float* lse, const float* dout,
                          float* dq, float* dk, float* dv) const override {
    hit(kAttentionBackward);
    CpuBackend::attention_backward(s, q, k, v, out, lse, dout, dq, dk, dv);
  }
  void linear_backward(const float* X, int64_t n, const lk::WeightView& W, const float* dY,
                       float* dX, bool accumulate_dx, float* dW, float* db) const override {
    hit(kLinearBackward);
    CpuBackend::linear_backward(X, n, W, dY, dX, accumulate_dx, dW, db);
  }
  void rmsnorm_backward(const float* x, const float* w, float eps, const float* dy, int64_t n,
                        int64_t d, float* dx, bool accumulate_dx, float* dw) const override {
    hit(kRmsnormBackward);
    CpuBackend::rmsnorm_backward(x, w, eps, dy, n, d, dx, accumulate_dx, dw);
  }
  void rope_backward(float* dx, int64_t n, int64_t row_stride, int n_heads, int head_dim, int n_rot,
                     const float* cos_tab, const float* sin_tab) const override {
    hit(kRopeBackward);
    CpuBackend::rope_backward(dx, n, row_stride, n_heads, head_dim, n_rot, cos_tab, sin_tab);
  }
  void swiglu_backward(const float* g, const float* u, const float* dout, float* dg, float* du,
                       int64_t n) const override {
    hit(kSwigluBackward);
    CpuBackend::swiglu_backward(g, u, dout, dg, du, n);
  }
  double lm_head_cross_entropy(const float* h, int64_t n, const lk::WeightView& W,
                               const int32_t* target, float grad_scale, float* dh,
                               float* dW) const override {
    hit(kLmHeadCrossEntropy);
    return CpuBackend::lm_head_cross_entropy(h, n, W, target, grad_scale, dh, dW);
  }
  void embedding_backward(const int32_t* tokens, int64_t n, int64_t d, const float* dx,
                          float* dE) const override {
    hit(kEmbeddingBackward);
    CpuBackend::embedding_backward(tokens, n, d, dx, dE);
  }

 private:
  void hit(Op op) const { counts_[op].fetch_add(1); }
  mutable std::array<std::atomic<int64_t>, kOps> counts_{};
};

// Every op of `used` was called at least once, and every other op never.
void expect_counts(const CountingBackend& be, std::initializer_list<Op> used) {
  for (int op = 0; op < kOps; ++op) {
    const bool want = std::find(used.begin(), used.end(), Op(op)) != used.end();
    if (want) {
      EXPECT_GT(be.count(Op(op)), 0) << op_name(op) << " did not go through the backend";
    } else {
      EXPECT_EQ(be.count(Op(op)), 0) << op_name(op) << " was not expected here";
    }
  }
}

class BackendSeam : public ::testing::TestWithParam<lk::Compute> {
 protected:
  void SetUp() override {
    LONGROPE_REQUIRE_FILE(test::stories_gguf());
    if (GetParam() == lk::Compute::kBF16) LONGROPE_REQUIRE_CPU_VARIANT(lk::CpuVariant::kAvx512Bf16);
    model_ = Model::load(test::stories_gguf().string());
    ids_ = model_->tokenizer().encode(
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
        "park with her dog. One day, she saw a big red ball under a tree and ran to get it.");
    ASSERT_GT(ids_.size(), 30u);
  }
  std::shared_ptr<const Model> model_;
  std::vector<int32_t> ids_;
};

TEST_P(BackendSeam, ScoreWindowRunsEveryOpThroughTheBackend) {
  const lk::Compute c = GetParam();
  auto be = std::make_shared<CountingBackend>(c);
  ScoreOptions plain;
  plain.compute = c;
  ScoreOptions counted = plain;
  counted.backend = be;
  // The counting backend carries the arithmetic: a `compute` that disagrees is not read.
  counted.compute = c == lk::Compute::kF32 ? lk::best_compute() : lk::Compute::kF32;
  const std::vector<double> ref = score_window(*model_, ids_, RopeScaling{}, plain);
  const std::vector<double> got = score_window(*model_, ids_, RopeScaling{}, counted);
  EXPECT_EQ(got, ref);  // bit-identical
  expect_counts(*be, {kMakeKv, kMakeWorkspace, kReserveWorkspace, kMakeHeadPanel, kEmbed, kMatmulW,
                      kRmsnorm, kRmsnormRows, kRopeApply, kStoreKv, kAttention, kSwiglu, kHeadRows,
                      kDecodeHeadPanel, kHeadLogits, kLseUpdateRows});
  const int layers = model_->hp().n_layer;
  EXPECT_EQ(be->count(kAttention), layers);
  EXPECT_EQ(be->count(kStoreKv), layers);
  EXPECT_EQ(be->count(kSwiglu), layers);
  EXPECT_EQ(be->count(kRopeApply), 2 * layers);
  EXPECT_EQ(be->count(kRmsnorm), 2 * layers);
  EXPECT_EQ(be->count(kMatmulW), 7 * layers);
}

TEST_P(BackendSeam, StagedAndKlScoringRunThroughTheBackend) {
  const lk::Compute c = GetParam();
  ScoreOptions plain;
  plain.compute = c;
  ScoreOptions counted = plain;
  {
    auto be = std::make_shared<CountingBackend>(c);
    counted.backend = be;
    auto all = [](const std::vector<double>&) { return true; };
    const auto ref = score_window_staged(*model_, ids_, RopeScaling{}, plain, 10, all);
    const auto got = score_window_staged(*model_, ids_, RopeScaling{}, counted, 10, all);
    EXPECT_EQ(got, ref);
    EXPECT_EQ(be->count(kMakeKv), 1);
    EXPECT_GT(be->count(kAttention), 0);
    EXPECT_GT(be->count(kLseUpdateRows), 0);
  }
  {
    auto be = std::make_shared<CountingBackend>(c);
    counted.backend = be;
    RopeScaling linear;
    linear.method = RopeMethod::kLinear;
    linear.factor = 2.0;
    const std::vector<float> states_ref = window_states(*model_, ids_, RopeScaling{}, plain);
    const std::vector<float> states = window_states(*model_, ids_, RopeScaling{}, counted);
    EXPECT_EQ(states, states_ref);
    const WindowKl ref = score_window_kl(*model_, ids_, linear, states_ref, plain);
    const WindowKl got = score_window_kl(*model_, ids_, linear, states_ref, counted);
    EXPECT_EQ(got.nll, ref.nll);
    EXPECT_EQ(got.kl, ref.kl);
    EXPECT_EQ(got.same_top, ref.same_top);
    expect_counts(*be, {kMakeKv, kMakeWorkspace, kReserveWorkspace, kMakeHeadPanel, kEmbed,
                        kMatmulW, kRmsnorm, kRmsnormRows, kRopeApply, kStoreKv, kAttention, kSwiglu,
                        kHeadRows, kDecodeHeadPanel, kHeadLogits, kKlUpdateRows, kKlFinishRows});
  }
}

TEST_P(BackendSeam, ContextDecodeRunsEveryOpThroughTheBackend) {
  const lk::Compute c = GetParam();
  auto be = std::make_shared<CountingBackend>(c);
  ContextParams plain{.n_ctx = 128, .n_threads = 0, .compute = c};
  ContextParams counted = plain;
  counted.backend = be;
  Context ref(model_, plain), got(model_, counted);
  EXPECT_EQ(&got.backend(), be.get());
  EXPECT_EQ(ref.backend().name(), "cpu");
  EXPECT_EQ(ref.backend().compute(), c);
  const std::span<const int32_t> ids(ids_);
  const size_t prompt = 12;
  EXPECT_EQ(got.decode(ids.first(prompt)), ref.decode(ids.first(prompt)));  // prefill
  for (size_t i = prompt; i < prompt + 4; ++i)
    EXPECT_EQ(got.decode(ids.subspan(i, 1)), ref.decode(ids.subspan(i, 1))) << "token " << i;
  EXPECT_EQ(got.decode_all_logits(ids.subspan(prompt + 4, 3)),
            ref.decode_all_logits(ids.subspan(prompt + 4, 3)));
  expect_counts(*be, {kMakeKv, kMakeWorkspace, kReserveWorkspace, kEmbed, kMatmulW, kGemvW,
                      kRmsnorm, kRopeApply, kStoreKv, kAttention, kSwiglu});
  EXPECT_EQ(be->count(kMakeKv), 1);
  EXPECT_EQ(be->count(kGemvW), 5);  // the LM head of each decode
}

TEST_P(BackendSeam, ContextRerotatesTheCacheThroughTheBackend) {
  const lk::Compute c = GetParam();
  auto be = std::make_shared<CountingBackend>(c);
  ContextParams plain{
      .n_ctx = 128, .n_threads = 0, .switch_policy = SwitchPolicy::kRerotate, .compute = c};
  ContextParams counted = plain;
  counted.backend = be;
  Context ref(model_, plain), got(model_, counted);
  const std::span<const int32_t> ids(ids_);
  EXPECT_EQ(got.decode(ids.first(16)), ref.decode(ids.first(16)));
  RopeScaling linear;
  linear.method = RopeMethod::kLinear;
  linear.factor = 2.0;
  ref.set_scaling(linear);
  got.set_scaling(linear);
  EXPECT_EQ(got.decode(ids.subspan(16, 1)), ref.decode(ids.subspan(16, 1)));
  EXPECT_EQ(got.switch_stats().switches, 1);
  EXPECT_EQ(be->count(kRerotateKeys), 1);
}

// Training runs the layer code of inference through the backend: every op of a training step,
// forward and backward, is counted, and the result is bit-identical to the default backend's.
TEST_P(BackendSeam, TrainingStepRunsEveryOpThroughTheBackend) {
  const lk::Compute c = GetParam();
  const train::ParamLayout P = train::param_layout(*model_);
  const std::vector<float> p = train::load_params<float>(*model_, P);
  const int64_t n = int64_t(ids_.size());
  const RopeTables t = RopeScaling{}.tables(n, model_->hp().n_rot, model_->hp().rope_base, 512);
  std::vector<float> g_ref(P.total, 0.0f), g(P.total, 0.0f);
  train::TrainWorkspace<float> w_ref, w;
  train::LossOptions plain;
  plain.checkpoint = false;
  plain.compute = c;
  const double l_ref =
      train::loss_and_grad<float>(P, p.data(), ids_.data(), n, t, g_ref.data(), 0.1f, w_ref, plain);
  auto be = std::make_shared<CountingBackend>(c);
  train::LossOptions counted = plain;
  counted.backend = be;
  counted.compute = c == lk::Compute::kF32 ? lk::best_compute() : lk::Compute::kF32;  // not read
  const double l =
      train::loss_and_grad<float>(P, p.data(), ids_.data(), n, t, g.data(), 0.1f, w, counted);
  EXPECT_EQ(l, l_ref);
  EXPECT_TRUE(g == g_ref);
  expect_counts(*be, {kEmbed, kMatmulW, kRmsnorm, kRopeApply, kSwiglu, kCopy, kAttentionForward,
                      kAttentionBackward, kLinearBackward, kRmsnormBackward, kRopeBackward,
                      kSwigluBackward, kLmHeadCrossEntropy, kEmbeddingBackward});
  const int layers = model_->hp().n_layer;
  EXPECT_EQ(be->count(kMatmulW), 7 * layers);  // the same projections as inference
  EXPECT_EQ(be->count(kLinearBackward), 7 * layers);
  EXPECT_EQ(be->count(kAttentionForward), layers);
  EXPECT_EQ(be->count(kAttentionBackward), layers);
  EXPECT_EQ(be->count(kRmsnorm), 2 * layers + 1);
  EXPECT_EQ(be->count(kRmsnormBackward), 2 * layers + 1);
  EXPECT_EQ(be->count(kRopeBackward), 2 * layers);
  EXPECT_EQ(be->count(kLmHeadCrossEntropy), 1);
}

TEST(BackendSeamCpu, FactoryChecksTheComputeAndDescribesItself) {
  LONGROPE_REQUIRE_FILE(test::stories_gguf());
  const auto be = cpu_backend(lk::Compute::kF32);
  EXPECT_EQ(be->name(), "cpu");
  EXPECT_EQ(be->compute(), lk::Compute::kF32);
  EXPECT_NE(be->description().find("f32 compute"), std::string::npos) << be->description();
  EXPECT_EQ(backend_or_cpu(be, lk::Compute::kBF16), be);
  EXPECT_EQ(backend_or_cpu(nullptr, lk::Compute::kF32)->compute(), lk::Compute::kF32);
  if (lk::cpu_variant() < lk::CpuVariant::kAvx512Bf16) {
    EXPECT_THROW(cpu_backend(lk::Compute::kBF16), Error);
  } else {
    EXPECT_EQ(cpu_backend(lk::Compute::kBF16)->compute(), lk::Compute::kBF16);
  }
  {
    const lk::CpuVariantForTesting portable(lk::CpuVariant::kPortable);
    EXPECT_THROW(cpu_backend(lk::Compute::kBF16), Error);
    ScoreOptions so;
    so.compute = lk::Compute::kBF16;
    const std::vector<int32_t> ids = {1, 2, 3};
    const auto m = Model::load(test::stories_gguf().string());
    EXPECT_THROW(score_window(*m, ids, RopeScaling{}, so), Error);
  }
}

INSTANTIATE_TEST_SUITE_P(Backend, BackendSeam,
                         ::testing::Values(lk::Compute::kF32, lk::Compute::kBF16),
                         [](const ::testing::TestParamInfo<lk::Compute>& info) {
                           return std::string(info.param == lk::Compute::kF32 ? "F32" : "BF16");
                         });

}  // namespace
