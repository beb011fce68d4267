// What llama.cpp, transformers and vLLM run when given a LongRoPE factors file.
#include <fmt/core.h>

#include <cmath>

#include "longrope/error.h"
#include "longrope/rope.h"

namespace longrope {

const char* deploy_target_name(DeployTarget t) {
  switch (t) {
    case DeployTarget::kLongrope:
      return "longrope";
    case DeployTarget::kLlamaCpp:
      return "llama.cpp";
    case DeployTarget::kTransformers:
      return "transformers";
    case DeployTarget::kVllm:
      return "vllm";
  }
  return "?";
}

DeployTarget parse_deploy_target(const std::string& name) {
  for (DeployTarget t : {DeployTarget::kLongrope, DeployTarget::kLlamaCpp,
                         DeployTarget::kTransformers, DeployTarget::kVllm})
    if (name == deploy_target_name(t)) return t;
  throw Error(fmt::format(
      "unknown deployment target '{}'; expected longrope, llama.cpp, transformers or vllm", name));
}

double vllm_attn_factor(int64_t target_ctx, int64_t orig_ctx) {
  return sqrt_log_attn_factor(double(target_ctx) / double(orig_ctx), orig_ctx);
}

double file_attn_factor(const RopeScaling& s, int64_t model_ctx) {
  RopeScaling one = s;
  one.sets = {s.sets.back()};
  one.n_hat = 0;
  const int n_rot = static_cast<int>(2 * s.sets.back().factors.size());
  const int64_t len = std::max<int64_t>(1, rope_made_for_length(s, model_ctx));
  return one.tables(len, n_rot, 10000.0, model_ctx).attn_factor;
}

namespace {
int64_t orig_of(const RopeScaling& s, int64_t model_ctx) {
  return s.orig_ctx > 0 ? s.orig_ctx : model_ctx;
}

void check_two_sets(const RopeScaling& s, DeployTarget t) {
  if (s.sets.size() > 2)
    throw Error(fmt::format(
        "{} holds at most two factor sets (short and long); this scaling has {} (expected a file "
        "with one long set, or a short and a long set)",
        deploy_target_name(t), s.sets.size()));
}
}  // namespace

RopeScaling deployed_scaling(const RopeScaling& s, DeployTarget target, int64_t seq_len,
                             int64_t context, int64_t model_ctx) {
  if (target == DeployTarget::kLongrope || s.method != RopeMethod::kLongrope) return s;
  check_two_sets(s, target);
  const int64_t orig = orig_of(s, model_ctx);
  const int64_t made_for = rope_made_for_length(s, model_ctx);
  if (context <= 0) context = std::max(made_for, seq_len);
  // transformers chooses by the sequence, the others once by the context size.
  const int64_t chooser = target == DeployTarget::kTransformers ? seq_len : context;
  const FactorSet& set = s.sets.size() == 2 && chooser <= orig ? s.sets.front() : s.sets.back();
  RopeScaling d = s;
  d.n_hat = 0;
  d.sets = {FactorSet(set.factors, 0)};
  if (target == DeployTarget::kVllm) {
    const int64_t tgt = s.target_ctx > 0 ? s.target_ctx : made_for;
    d.attn_factor = vllm_attn_factor(tgt, orig);
  } else {
    d.attn_factor = file_attn_factor(s, model_ctx);
  }
  return d;
}

std::vector<std::string> deploy_differences(const RopeScaling& s, DeployTarget target,
                                            int64_t model_ctx) {
  std::vector<std::string> out;
  if (target == DeployTarget::kLongrope || s.method != RopeMethod::kLongrope) return out;
  const char* name = deploy_target_name(target);
  if (s.sets.size() > 2) {
    out.push_back(
        fmt::format("{} holds at most two factor sets; this scaling has {}", name, s.sets.size()));
    return out;
  }
  const int64_t orig = orig_of(s, model_ctx);
  if (s.n_hat > 0)
    out.push_back(fmt::format(
        "start tokens: {} has no n_hat rule and rotates every position with the factors (this "
        "set keeps the first {} positions unscaled)",
        name, s.n_hat));
  if (s.sets.size() == 2) {
    if (s.sets[0].max_len != orig)
      out.push_back(
          fmt::format("the short set serves lengths <= {} but {} switches at the "
                      "original context {}",
                      s.sets[0].max_len, name, orig));
    if (target != DeployTarget::kTransformers)
      out.push_back(fmt::format(
          "{} runs one set for every length, chosen by its context size ({}): the long set "
          "whenever that is above {}",
          name, target == DeployTarget::kVllm ? "max_model_len" : "n_ctx", orig));
  }
  const double la = file_attn_factor(s, model_ctx);
  if (s.sets.size() == 2 && s.sets[0].attn_factor && *s.sets[0].attn_factor != la &&
      target != DeployTarget::kVllm)
    out.push_back(fmt::format(
        "the short set's attention factor {}: {} applies the long set's {} at every length",
        *s.sets[0].attn_factor, name, la));
  if (target == DeployTarget::kVllm) {
    const int64_t tgt = s.target_ctx > 0 ? s.target_ctx : rope_made_for_length(s, model_ctx);
    const double v = vllm_attn_factor(tgt, orig);
    if (std::abs(v - la) > 1e-6)
      out.push_back(fmt::format(
          "the attention factor {}: vLLM computes {:.6g} = sqrt(1 + ln s / ln L_orig) from the "
          "config and reads no attention_factor",
          la, v));
  }
  return out;
}

}  // namespace longrope
