// RoPE scaling: one value type describes any context-extension method and yields, for the
// current sequence length, what the engine needs (per-pair inverse frequencies, an attention
// factor and a start-token count). The engine never sees the method, only RopeTables.
#pragma once
#include <cstddef>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace longrope {

// What the forward pass applies. Pair j of a head (dims 2j, 2j+1, adjacent layout) at position p
// is rotated by p * inv_freq[j] for p >= n_hat and by p * inv_freq_orig[j] for p < n_hat; cos and
// sin are multiplied by attn_factor for p >= n_hat and by 1 for p < n_hat.
struct RopeTables {
  std::vector<double> inv_freq;       // n_rot / 2 values
  std::vector<double> inv_freq_orig;  // the model's own frequencies (used for p < n_hat)
  double attn_factor = 1.0;
  int64_t n_hat = 0;
  bool operator==(const RopeTables&) const = default;
};

// The model's own frequencies: base^(-2j/n_rot), j = 0 .. n_rot/2-1.
std::vector<double> default_inv_freq(int n_rot, double base);

enum class RopeMethod { kNone, kLinear, kNtk, kDynamic, kYarn, kLlama3, kLongrope };
const char* rope_method_name(RopeMethod m);
// Parses "none", "linear" (alias "pi"), "ntk", "dynamic", "yarn", "llama3", "longrope";
// throws Error.
RopeMethod parse_rope_method(const std::string& name);

// LongRoPE attention factor rule.
enum class LongropeAttn { kSqrtLog, kYarnLog, kConstant };

// One LongRoPE factor set, serving sequence lengths up to max_len (inclusive).
struct FactorSet {
  FactorSet() = default;
  FactorSet(std::vector<double> f, int64_t len, std::optional<double> attn = std::nullopt)
      : factors(std::move(f)), max_len(len), attn_factor(attn) {}
  std::vector<double> factors;  // lambda_j >= 1, one per rotary pair; frequencies are divided by it
  int64_t max_len = 0;          // 0 on the last set: no upper limit
  // This set's attention factor, overriding the scaling's (e.g. 1 on a short set that keeps
  // inputs up to L_orig exactly as the plain model while the long set scales the logits).
  std::optional<double> attn_factor;
  bool operator==(const FactorSet&) const = default;
};

struct RopeScaling {
  RopeMethod method = RopeMethod::kNone;
  double factor = 1.0;                // s (linear, ntk, dynamic, yarn, llama3)
  int64_t orig_ctx = 0;               // L_orig; 0 = the model's trained context
  std::optional<double> attn_factor;  // overrides the method's attention factor
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  bool truncate = true;
  std::optional<double> mscale, mscale_all_dim;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  // longrope: ordered factor sets (shortest max_len first); the set used for a sequence of length
  // L is the first whose max_len >= L (the last one serves everything longer).
  std::vector<FactorSet> sets;
  int64_t n_hat = 0;
  LongropeAttn longrope_attn = LongropeAttn::kSqrtLog;
  // max_position_embeddings: s = target_ctx / orig_ctx for the attention factor
  // (0: s = factor).
  int64_t target_ctx = 0;
  // Frequency divisors declared by a model file for method none (GGUF rope_freqs.weight); they
  // divide inv_freq and inv_freq_orig whatever the method.
  std::vector<double> freq_factors;

  bool operator==(const RopeScaling&) const = default;

  // Tables for a sequence of seq_len tokens on a head with n_rot rotary dims and the given base.
  // model_ctx is the model's trained context (used when orig_ctx is 0).
  RopeTables tables(int64_t seq_len, int n_rot, double base, int64_t model_ctx) const;
  // Throws Error (one line) if the parameters are impossible for a head with n_rot rotary dims.
  void validate(int n_rot) const;
  // Short human-readable description, e.g. "yarn s=4 orig=512".
  std::string describe() const;
};

// ---------------------------------------------------------------------------------------------
// Additions (src/rope). Everything below throws longrope::Error with a one-line message.

// "sqrt_log", "yarn_log", "constant".
const char* longrope_attn_name(LongropeAttn a);
LongropeAttn parse_longrope_attn(const std::string& name);

// Index of the LongRoPE factor set that serves a sequence of seq_len tokens: the first set whose
// max_len >= seq_len or whose max_len is 0 (unbounded); the last set when none does.
// Throws if sets is empty.
size_t longrope_set_index(const std::vector<FactorSet>& sets, int64_t seq_len);

// The extension ratio s used for the attention factor: longrope: target_ctx / L_orig when
// target_ctx > 0, else `factor`; other methods: `factor`. model_ctx as in RopeScaling::tables().
double rope_extension_ratio(const RopeScaling& scaling, int64_t model_ctx);

// The two attention-factor rules at extension ratio s (1 for s <= 1): LongRoPE's
// sqrt(1 + ln s / ln L_orig) (also what vLLM computes from a config) and YaRN's 0.1 x ln s + 1.
double sqrt_log_attn_factor(double s, int64_t orig_ctx);
double yarn_mscale(double s, double x = 1.0);

// The longest sequence the scaling was made for: L_orig for none, s x L_orig for linear, ntk,
// yarn and llama3, target_ctx (or s x L_orig) for longrope; 0 for dynamic NTK, which follows the
// length. Past it the model runs outside what the scaling was searched or designed for.
int64_t rope_made_for_length(const RopeScaling& scaling, int64_t model_ctx);

// --- From model files -------------------------------------------------------------------------
// RoPE scaling as declared by a model file (raw, as src/io reads it from GGUF keys and tensors;
// turned into a RopeScaling by rope_from_meta).
struct RopeScalingMeta {
  std::string type;  // "", "none", "linear", "yarn", "longrope", "llama3", ...
  std::optional<double> factor;
  std::optional<int64_t> original_context_length;
  std::optional<double> attn_factor;
  std::optional<double> yarn_beta_fast, yarn_beta_slow, yarn_ext_factor, yarn_log_multiplier;
  std::vector<float> rope_freqs;     // rope_freqs.weight (divides the frequencies)
  std::vector<float> factors_long;   // rope_factors_long.weight
  std::vector<float> factors_short;  // rope_factors_short.weight
  // longrope's own keys (written by `longrope export`; llama.cpp ignores them):
  std::optional<int64_t> n_hat;  // longrope.n_hat: start tokens keeping the original rotation
  std::optional<int64_t> short_max_len;  // longrope.short_max_len: longest length of the short set
  std::optional<double> short_attn_factor;  // longrope.short_attn_factor: the short set's own
};

// RoPE scaling declared by a model file (GGUF {arch}.rope.scaling.* keys and the rope_freqs /
// rope_factors_long / rope_factors_short tensors). model_ctx is the file's context_length, which
// for an extended model (Phi-3 style longrope, yarn) is the extended (target) length; n_rot is
// used to check tensor lengths. The result is validated.
//  - rope_freqs.weight -> freq_factors (divides the frequencies, any method).
//  - type "linear"/"yarn"/...: factor = rope.scaling.factor, orig_ctx = original_context_length.
//    yarn: beta keys map to beta_fast/beta_slow; attn_factor multiplies the YaRN factor
//    0.1 ln s + 1 (as ggml does when ext_factor != 0); yarn_log_multiplier x maps to
//    mscale = 1, mscale_all_dim = 10 x (as llama.cpp).
//  - rope_factors_long (+ rope_factors_short) or type "longrope": longrope; with both tensors the
//    short set serves lengths <= L_orig and the long set the rest; target_ctx = model_ctx;
//    attn_factor, when the key is present, is the attention factor as it is (ggml: ext_factor 0).
RopeScaling rope_from_meta(const RopeScalingMeta& meta, int n_rot, int64_t model_ctx);

// The rope scaling of a Hugging Face config.json (the whole config object: `rope_scaling`, or
// `rope_parameters`, plus top-level max_position_embeddings / original_max_position_embeddings /
// head_dim). No rope_scaling (or null, or rope_type "default") gives method none. Validated
// against the config's rotary dims when they can be derived (head_dim or hidden_size /
// num_attention_heads, times partial_rotary_factor). `source` names the config in errors.
RopeScaling rope_from_hf_config(const nlohmann::json& config,
                                const std::string& source = "config.json");

// The scaling a loaded model file declares: rope_of_model_file (longrope/model_file.h).

// --- LongRoPE factors file (docs/factors-format.md) ----------------------------------------------
// Parses a factors JSON object (a superset of HF's longrope rope_scaling object; a whole HF
// config.json with a longrope rope_scaling is accepted too). `source` names it in errors. When
// provenance is given it receives the "provenance" object (null if absent). The result is
// validated for n_rot = 2 * (number of factors).
RopeScaling factors_from_json(const nlohmann::json& j, const std::string& source = "factors JSON",
                              nlohmann::json* provenance = nullptr);
// The factors JSON object for a longrope scaling (validated first; orig_ctx must be > 0).
nlohmann::json factors_to_json(const RopeScaling& scaling, const nlohmann::json& provenance);
RopeScaling read_factors_file(const std::string& path, nlohmann::json* provenance = nullptr);
// Writes atomically (temporary file + rename); doubles are printed so that they read back exactly.
void write_factors_file(const std::string& path, const RopeScaling& scaling,
                        const nlohmann::json& provenance);
// With a multi-objective search's Pareto front (key "front", after the sets; null: none).
void write_factors_file(const std::string& path, const RopeScaling& scaling,
                        const nlohmann::json& provenance, const nlohmann::json& front);
void write_factors_file(const std::string& path, const RopeScaling& scaling);

// --- Choosing a scaling from user options (the CLI's --rope flags, see src/cli/rope_flags.h) ----
// Every field unset = use the model's own scaling.
struct RopeOptions {
  std::optional<std::string> method;           // --rope METHOD
  std::optional<double> factor;                // --rope-factor S
  std::optional<int64_t> orig_ctx;             // --orig-ctx N (unset: the model's trained context)
  std::string factors_path;                    // --factors FILE ("" = none); implies longrope
  std::optional<double> beta_fast, beta_slow;  // --yarn-beta-fast/-slow
  std::optional<double> low_freq_factor, high_freq_factor;  // --low/--high-freq-factor
  std::optional<double> attn_factor;                        // --attn-factor
  std::optional<int64_t> n_hat;                             // --n-hat (overrides the file's)
  bool empty() const;
};

// Resolves options against the model's declared scaling:
//  - no option at all: model_default;
//  - --factors FILE: the file's longrope scaling (--rope may only say longrope);
//  - --rope METHOD: a fresh scaling of that method (the model's declared scaling type is
//    replaced); linear/ntk/dynamic/yarn/llama3 require a factor: a caller that knows the
//    evaluation length may fill it first (see default_rope_factor); longrope requires --factors;
//  - in both, the model's rope_freqs divisors (freq_factors, e.g. Llama 3's) are kept: the
//    chosen scaling applies on top of the frequencies the model was trained with;
//  - only modifiers (--attn-factor, --n-hat, --rope-factor, ...): they adjust model_default.
// A modifier that does not apply to the resulting method is an error. The result is validated
// for n_rot.
RopeScaling resolve_rope(const RopeOptions& opts, const RopeScaling& model_default, int n_rot);
// If opts names a method that needs a factor and none is given, sets factor =
// max(1, eval_len / L_orig) with L_orig = opts.orig_ctx or model_ctx.
void default_rope_factor(RopeOptions& opts, int64_t eval_len, int64_t model_ctx);
// Throws if the scaling cannot serve a context of ctx tokens (n_hat >= ctx).
void check_scaling_for_ctx(const RopeScaling& scaling, int64_t ctx);

// --- Deployment targets -------------------------------------------------------------------------
// Where a factor set will run, and what that runtime does with a LongRoPE file:
//  - longrope: everything in the file: sets switched by the sequence's length, start tokens
//    n_hat, each set's attention factor.
//  - llama.cpp: one set for every position, chosen once by the context size n_ctx (the long set
//    when n_ctx > L_orig, else the short one); no start tokens; the attention factor of the file
//    (rope.scaling.attn_factor, as export writes it) at every length, whichever set runs.
//  - transformers: the set chosen by the sequence's length (long past L_orig); no start tokens;
//    the config's attention_factor for both sets.
//  - vllm: one set chosen once by max_model_len, as llama.cpp; no start tokens; the attention
//    factor sqrt(1 + ln s / ln L_orig) with s = max_position_embeddings / L_orig, computed from
//    the config (vLLM reads no attention_factor).
enum class DeployTarget { kLongrope, kLlamaCpp, kTransformers, kVllm };
// "longrope", "llama.cpp", "transformers", "vllm".
const char* deploy_target_name(DeployTarget t);
// Throws Error naming the four values.
DeployTarget parse_deploy_target(const std::string& name);

// The scaling as `target` runs it on a sequence of seq_len tokens when the runtime's context size
// (llama.cpp's n_ctx, vLLM's max_model_len) is `context` (0: the longest the scaling was made
// for, the file's target context, which is what the runtimes default to). Methods other than
// longrope, and the longrope target, are returned unchanged. Throws Error when the target cannot
// express the scaling at all (more than two factor sets).
RopeScaling deployed_scaling(const RopeScaling& s, DeployTarget target, int64_t seq_len,
                             int64_t context, int64_t model_ctx);

// What `target` would run differently from the file, one line each (empty: the file runs as
// searched): start tokens, a short set switched at another length than L_orig, a short set's own
// attention factor, an attention factor other than the one vLLM computes, more than two sets.
std::vector<std::string> deploy_differences(const RopeScaling& s, DeployTarget target,
                                            int64_t model_ctx);

// The attention factor vLLM computes from a config: sqrt_log_attn_factor(target / L_orig, L_orig).
double vllm_attn_factor(int64_t target_ctx, int64_t orig_ctx);

// The attention factor a LongRoPE file gives its long set (the last): what export writes as the
// GGUF's rope.scaling.attn_factor and the config's attention_factor, and what llama.cpp and
// transformers apply at every length.
double file_attn_factor(const RopeScaling& s, int64_t model_ctx);

}  // namespace longrope
