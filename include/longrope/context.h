// Inference over a Model: whole-sequence scoring (perplexity) and incremental decoding with a
// KV cache, under any RoPE scaling. Changing the scaling never touches the weights.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "longrope/backend.h"
#include "longrope/model.h"
#include "longrope/rope.h"

namespace longrope {

// What decode does when the RoPE tables change with the sequence length (dynamic NTK, LongRoPE
// length buckets, a new scaling set with set_scaling):
//  - kRecompute: re-run the cached tokens with the new tables (a prefill of the cache). Exact:
//    the logits equal a fresh run of the whole sequence with the new tables. The keys and values
//    of every layer above the first depend on the rotation used in the layers below, so nothing
//    cheaper than a prefill is exact.
//  - kRerotate: rotate the cached keys from the old to the new angles in place (cost
//    proportional to the cache, about a millisecond per thousand positions on SmolLM2). Exact for
//    the first layer only; deeper layers keep values computed under the old tables. A cheap
//    approximation whose error is measured in docs/rope-methods.md.
//  - kKeep: keep the tables chosen at the first decode (what llama.cpp does).
//  - kNewTokens: new tokens are rotated with the tables of the new length; cached keys keep the
//    rotation they were written with (no recompute). This is transformers' dynamic NTK with a
//    KV cache (the frequencies follow the length, the cache is not touched).
//  - kAuto (default): kNewTokens for dynamic NTK, whose tables change at every token past the
//    trained context (kRecompute would be one prefill per generated token), and kRecompute for
//    every other change (a LongRoPE short -> long set switch happens once; transformers also
//    recomputes the cache there).
enum class SwitchPolicy { kRecompute, kRerotate, kKeep, kNewTokens, kAuto };

// "recompute", "rerotate", "keep", "new-tokens", "auto" (the --switch values).
const char* switch_policy_name(SwitchPolicy p);

struct ContextParams {
  int64_t n_ctx = 0;  // KV cache capacity in tokens; 0 = the model's trained context
  int n_threads = 0;  // 0 = all cores
  SwitchPolicy switch_policy = SwitchPolicy::kAuto;
  // Arithmetic of prompt processing and attention; with kBF16 the KV cache is bf16 (half the
  // memory). Token-by-token decoding always reads the weight blocks directly in FP32.
  kernels::Compute compute = kernels::best_compute();
  // What runs the forward pass and owns the KV cache (longrope/backend.h); null: cpu_backend
  // (compute). When set, its compute() decides the arithmetic and `compute` is not read.
  std::shared_ptr<const Backend> backend = nullptr;
};

// What the RoPE switches of a context cost so far.
struct SwitchStats {
  int64_t switches = 0;
  int64_t positions = 0;  // cached positions recomputed or re-rotated
  double seconds = 0.0;
};

// The RoPE tables a sequence of len tokens runs under with this model and scaling (what a
// Context chooses at its first decode, and score_window for a window of len tokens).
RopeTables rope_tables(const Model& model, const RopeScaling& scaling, int64_t len);

class Context {
 public:
  Context(std::shared_ptr<const Model> model, ContextParams params, RopeScaling scaling = {});
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Changes the RoPE scaling. Only rotary tables change, never the weights; the next decode
  // brings the cache in line according to the switch policy.
  void set_scaling(const RopeScaling& scaling);
  const RopeScaling& scaling() const { return scaling_; }

  // Appends tokens at positions n_past .. n_past+n-1 and returns the logits of the last one
  // (n_vocab values). The RoPE tables follow the current sequence length (n_past + n): when they
  // change (dynamic NTK, LongRoPE length buckets), cached keys are re-rotated first.
  // on_progress, when set, receives the fraction done (per layer) of a long prefill.
  std::vector<float> decode(std::span<const int32_t> tokens,
                            const std::function<void(double)>& on_progress = {});
  // Logits of every appended token (n x n_vocab); for tests on short inputs.
  std::vector<float> decode_all_logits(std::span<const int32_t> tokens);
  void reset();
  int64_t n_past() const { return n_past_; }
  int64_t n_ctx() const { return n_ctx_; }
  const SwitchStats& switch_stats() const { return switch_stats_; }
  const Model& model() const { return *model_; }
  // What runs this context's forward pass and holds its KV cache.
  const Backend& backend() const;

 private:
  void advance(std::span<const int32_t> tokens, const std::function<void(double)>& on_progress);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::shared_ptr<const Model> model_;
  RopeScaling scaling_;
  SwitchPolicy policy_ = SwitchPolicy::kAuto;
  std::vector<int32_t> history_;  // tokens in the cache (kRecompute; locating a non-finite logit)
  int64_t n_ctx_ = 0;
  int64_t n_past_ = 0;
  SwitchStats switch_stats_;
};

// Scores one window: runs tokens[0..n) from position 0 and returns, for i = 0..n-2, the negative
// log-likelihood of tokens[i+1] given tokens[0..i]. Keeps only one layer's keys/values (the
// sequence goes through the model layer by layer) and streams the LM head over vocabulary panels
// and row chunks: memory is linear in n, with no n x n or n x vocab buffer.
struct ScoreOptions {
  int n_threads = 0;
  kernels::Compute compute = kernels::best_compute();
  // What runs the forward pass and the LM head (longrope/backend.h); null: cpu_backend(compute).
  // When set, its compute() decides the arithmetic and `compute` is not read.
  std::shared_ptr<const Backend> backend = nullptr;
  // Positions i whose next-token NLL (of tokens[i+1]) is wanted, in any order; empty = all
  // i = 0..n-2. The LM head runs only at these positions, and the result has one value each.
  std::vector<int64_t> positions;
  // Called after each layer with (layers done, layers in all): progress within a long window.
  std::function<void(int, int)> on_layer;
};
std::vector<double> score_window(const Model& model, std::span<const int32_t> tokens,
                                 const RopeScaling& scaling, const ScoreOptions& opts = {});

// score_window in two steps, for a search that can stop a window early: first tokens
// [0, prefix) through every layer, giving the NLLs of positions [0, prefix) (the last one is of
// tokens[prefix]); then, when go_on(those NLLs) returns true, the rest of the window continues
// from the first step's keys and values of every layer (nothing is computed twice). Returns the
// NLLs of positions [0, prefix) when stopped, else of all n - 1 positions. Both steps use the
// whole window's rotary tables, so the first step's NLLs are exactly the first values of the whole
// result. Every position is scored (opts.positions must be empty); the keys and values of every
// layer are kept (n_layer times score_window's cache).
std::vector<double> score_window_staged(
    const Model& model, std::span<const int32_t> tokens, const RopeScaling& scaling,
    const ScoreOptions& opts, int64_t prefix,
    const std::function<bool(const std::vector<double>&)>& go_on);

// The final hidden states of a window through the output norm, at the scored positions of
// opts (all i = 0..n-2 when empty), one row of n_embd floats each: what the LM head sees. Kept to
// compare several scalings against one reference (score_window_kl) without running it again.
std::vector<float> window_states(const Model& model, std::span<const int32_t> tokens,
                                 const RopeScaling& scaling, const ScoreOptions& opts = {});

// A window's next-token distributions under `scaling` compared, position by position, with a
// reference's (window_states of the same tokens and positions, usually the unscaled model): the
// KL divergence KL(P_reference || P_scaling) in nats, whether the two top tokens agree, and the
// NLL as score_window gives it. The vocabulary is streamed: no n x vocab buffer.
struct WindowKl {
  std::vector<double> nll, kl;
  std::vector<uint8_t> same_top;  // 1 where both distributions have the same most likely token
};
WindowKl score_window_kl(const Model& model, std::span<const int32_t> tokens,
                         const RopeScaling& scaling, const std::vector<float>& reference_states,
                         const ScoreOptions& opts = {});

// Per-phase timing and FLOP counts of the most recent score_window call on this thread.
struct PhaseStats {
  double matmul_seconds = 0, attention_seconds = 0, lm_head_seconds = 0, other_seconds = 0;
  double matmul_flops = 0, attention_flops = 0, lm_head_flops = 0;
};
const PhaseStats& last_phase_stats();

}  // namespace longrope
