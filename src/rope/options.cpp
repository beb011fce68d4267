// Choosing a scaling from user options (the CLI's --rope flags) and the model's declared scaling.
#include <fmt/format.h>

#include <algorithm>
#include <string>

#include "longrope/error.h"
#include "longrope/rope.h"

namespace longrope {

namespace {

bool method_needs_factor(RopeMethod m) {
  return m == RopeMethod::kLinear || m == RopeMethod::kNtk || m == RopeMethod::kDynamic ||
         m == RopeMethod::kYarn || m == RopeMethod::kLlama3;
}

[[noreturn]] void not_applicable(const char* flag, const char* applies_to, RopeMethod m,
                                 bool from_model) {
  throw Error(fmt::format("{} applies to {}, but the scaling is {}{}; expected {}", flag,
                          applies_to, rope_method_name(m), from_model ? " (the model's own)" : "",
                          from_model ? "--rope METHOD as well" : "a matching --rope METHOD"));
}

}  // namespace

bool RopeOptions::empty() const {
  return !method && !factor && !orig_ctx && factors_path.empty() && !beta_fast && !beta_slow &&
         !low_freq_factor && !high_freq_factor && !attn_factor && !n_hat;
}

RopeScaling resolve_rope(const RopeOptions& o, const RopeScaling& model_default, int n_rot) {
  if (o.empty()) {
    model_default.validate(n_rot);
    return model_default;
  }
  std::optional<RopeMethod> method;
  if (o.method) method = parse_rope_method(*o.method);

  RopeScaling s;
  bool from_model = false;
  if (!o.factors_path.empty()) {
    if (method && *method != RopeMethod::kLongrope) {
      throw Error(fmt::format("--factors {} implies --rope longrope; got --rope {}", o.factors_path,
                              *o.method));
    }
    s = read_factors_file(o.factors_path);
    if (o.factor) {
      throw Error(
          "--rope-factor does not apply with --factors; expected the target length in the "
          "factors file (max_position_embeddings)");
    }
    if (o.orig_ctx) {
      throw Error(
          "--orig-ctx does not apply with --factors; expected the original length in the "
          "factors file (original_max_position_embeddings)");
    }
  } else if (method) {
    if (*method == RopeMethod::kLongrope) {
      throw Error("--rope longrope needs --factors FILE (the searched per-pair factors)");
    }
    s.method = *method;
    if (method_needs_factor(*method)) {
      if (!o.factor) {
        throw Error(
            fmt::format("--rope {} needs --rope-factor S (the extension ratio, e.g. target "
                        "length / original context)",
                        *o.method));
      }
      s.factor = *o.factor;
    } else if (o.factor) {
      not_applicable("--rope-factor", "linear, ntk, dynamic, yarn and llama3", s.method, false);
    }
    if (o.orig_ctx) {
      if (s.method == RopeMethod::kNone) {
        not_applicable("--orig-ctx", "a scaling method", s.method, false);
      }
      s.orig_ctx = *o.orig_ctx;
    }
  } else {
    s = model_default;
    from_model = true;
  }
  // The model's own frequency divisors (GGUF rope_freqs, e.g. Llama 3's) stay under any chosen
  // scaling: searched factors and rules scale the frequencies the model was trained with.
  if (!from_model) s.freq_factors = model_default.freq_factors;
  if (from_model) {
    if (o.factor) {
      if (!method_needs_factor(s.method)) {
        not_applicable("--rope-factor", "linear, ntk, dynamic, yarn and llama3", s.method, true);
      }
      s.factor = *o.factor;
    }
    if (o.orig_ctx) {
      if (s.method == RopeMethod::kNone) {
        not_applicable("--orig-ctx", "a scaling method", s.method, true);
      }
      if (s.method == RopeMethod::kLongrope) {
        throw Error(
            "--orig-ctx does not apply to the model's longrope scaling (its factor sets "
            "are tied to the declared original length)");
      }
      s.orig_ctx = *o.orig_ctx;
    }
  }
  if (o.orig_ctx && *o.orig_ctx <= 0) {
    throw Error(fmt::format("--orig-ctx {}: expected a positive number of tokens", *o.orig_ctx));
  }
  if (o.beta_fast || o.beta_slow) {
    if (s.method != RopeMethod::kYarn) {
      not_applicable(o.beta_fast ? "--yarn-beta-fast" : "--yarn-beta-slow", "yarn", s.method,
                     from_model);
    }
    if (o.beta_fast) s.beta_fast = *o.beta_fast;
    if (o.beta_slow) s.beta_slow = *o.beta_slow;
  }
  if (o.low_freq_factor || o.high_freq_factor) {
    if (s.method != RopeMethod::kLlama3) {
      not_applicable(o.low_freq_factor ? "--low-freq-factor" : "--high-freq-factor", "llama3",
                     s.method, from_model);
    }
    if (o.low_freq_factor) s.low_freq_factor = *o.low_freq_factor;
    if (o.high_freq_factor) s.high_freq_factor = *o.high_freq_factor;
  }
  if (o.n_hat) {
    if (s.method != RopeMethod::kLongrope)
      not_applicable("--n-hat", "longrope", s.method, from_model);
    if (*o.n_hat < 0) throw Error(fmt::format("--n-hat {}: expected >= 0", *o.n_hat));
    s.n_hat = *o.n_hat;
  }
  if (o.attn_factor) s.attn_factor = *o.attn_factor;
  try {
    s.validate(n_rot);
  } catch (const Error& e) {
    if (o.factors_path.empty()) throw;
    throw Error(
        fmt::format("factors file {} does not fit this model: {}", o.factors_path, e.what()));
  }
  return s;
}

void default_rope_factor(RopeOptions& o, int64_t eval_len, int64_t model_ctx) {
  if (o.factor || !o.method || !o.factors_path.empty()) return;
  RopeMethod m = parse_rope_method(*o.method);
  if (!method_needs_factor(m)) return;
  const int64_t L = o.orig_ctx.value_or(model_ctx);
  if (L <= 0) {
    throw Error(
        fmt::format("--rope {}: cannot default --rope-factor, the original context is "
                    "unknown; expected --rope-factor or --orig-ctx",
                    *o.method));
  }
  o.factor = std::max(1.0, static_cast<double>(eval_len) / static_cast<double>(L));
}

void check_scaling_for_ctx(const RopeScaling& s, int64_t ctx) {
  if (s.method == RopeMethod::kLongrope && s.n_hat >= ctx) {
    throw Error(
        fmt::format("rope longrope: n_hat {} >= context {}: every position would keep the "
                    "original rotation; expected n_hat < {}",
                    s.n_hat, ctx, ctx));
  }
}

}  // namespace longrope
