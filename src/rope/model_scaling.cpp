// RoPE scaling declared by model files: GGUF metadata (RopeScalingMeta, read by src/io) and
// Hugging Face config.json (rope_of_model_file in src/io picks one per format).
#include <fmt/format.h>

#include <climits>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/rope.h"
#include "rope/longrope_object.h"
#include "util/json_fields.h"

namespace longrope {

using json_fields::field_error;
using json_fields::json_type_name;
using json_fields::opt_bool;
using json_fields::opt_int;
using json_fields::opt_number;
using json_fields::opt_string;
using nlohmann::json;

namespace {

std::vector<double> to_double(const std::vector<float>& v) {
  return {v.begin(), v.end()};
}

void check_tensor_len(const std::vector<float>& v, const char* name, int n_rot) {
  if (static_cast<int64_t>(v.size()) * 2 != n_rot) {
    throw Error(
        fmt::format("model rope scaling: tensor {} has {} values; expected {} (n_rot/2 for "
                    "n_rot {})",
                    name, v.size(), n_rot / 2, n_rot));
  }
}

double mscale(double s, double x) {
  return s <= 1.0 ? 1.0 : 0.1 * x * std::log(s) + 1.0;
}

}  // namespace

RopeScaling rope_from_meta(const RopeScalingMeta& meta, int n_rot, int64_t model_ctx) {
  RopeScaling s;
  const std::string& type = meta.type;
  const bool has_long = !meta.factors_long.empty();
  const bool has_short = !meta.factors_short.empty();
  // A single searched set exported with start tokens: rope_freqs.weight plus longrope.n_hat.
  const bool single_set_longrope = !has_long && !has_short && !meta.rope_freqs.empty() &&
                                   (type.empty() || type == "none") && meta.n_hat.value_or(0) > 0;
  if (single_set_longrope) {
    check_tensor_len(meta.rope_freqs, "rope_freqs.weight", n_rot);
    s.method = RopeMethod::kLongrope;
    s.orig_ctx = meta.original_context_length.value_or(model_ctx);
    s.target_ctx = model_ctx > 0 ? model_ctx : 0;
    s.sets.push_back(FactorSet{to_double(meta.rope_freqs), 0});
    s.n_hat = *meta.n_hat;
    s.attn_factor = meta.attn_factor;
    s.validate(n_rot);
    return s;
  }
  if (has_long || has_short || type == "longrope") {
    if (!type.empty() && type != "none" && type != "longrope") {
      throw Error(
          fmt::format("model rope scaling: type '{}' together with rope_factors tensors; "
                      "expected longrope (or no type)",
                      type));
    }
    if (!has_long) {
      throw Error(
          fmt::format("model rope scaling: {} but no rope_factors_long.weight tensor; "
                      "expected the long factors",
                      has_short ? "rope_factors_short.weight" : "type longrope"));
    }
    check_tensor_len(meta.factors_long, "rope_factors_long.weight", n_rot);
    if (has_short) check_tensor_len(meta.factors_short, "rope_factors_short.weight", n_rot);
    s.method = RopeMethod::kLongrope;
    const int64_t L = meta.original_context_length.value_or(model_ctx);
    if (L <= 0) {
      throw Error(
          fmt::format("model rope scaling: original context {}; expected > 0 "
                      "(rope.scaling.original_context_length or context_length)",
                      L));
    }
    s.orig_ctx = L;
    s.target_ctx = model_ctx > 0 ? model_ctx : 0;
    if (has_short)
      s.sets.push_back(FactorSet{to_double(meta.factors_short), meta.short_max_len.value_or(L),
                                 meta.short_attn_factor});
    s.n_hat = meta.n_hat.value_or(0);
    s.sets.push_back(FactorSet{to_double(meta.factors_long), 0});
    s.attn_factor = meta.attn_factor;  // ggml: ext_factor 0, the key is the factor as it is
  } else if (type.empty() || type == "none") {
    s.method = RopeMethod::kNone;
    s.attn_factor = meta.attn_factor;
  } else {
    try {
      s.method = parse_rope_method(type);
    } catch (const Error& e) {
      throw Error(fmt::format("model rope scaling: rope.scaling.type: {}", e.what()));
    }
    if (!meta.factor) {
      throw Error(
          fmt::format("model rope scaling: type {} without rope.scaling.factor; expected "
                      "the scaling factor",
                      type));
    }
    s.factor = *meta.factor;
    if (meta.original_context_length) s.orig_ctx = *meta.original_context_length;
    if (s.method == RopeMethod::kYarn) {
      if (meta.yarn_beta_fast) s.beta_fast = *meta.yarn_beta_fast;
      if (meta.yarn_beta_slow) s.beta_slow = *meta.yarn_beta_slow;
      if (meta.yarn_ext_factor && *meta.yarn_ext_factor >= 0.0 && *meta.yarn_ext_factor != 1.0) {
        throw Error(
            fmt::format("model rope scaling: rope.scaling.yarn_ext_factor = {} is not "
                        "supported; expected 1 (full YaRN)",
                        *meta.yarn_ext_factor));
      }
      double base_a = mscale(s.factor, 1.0);
      if (meta.yarn_log_multiplier) {
        s.mscale = 1.0;
        s.mscale_all_dim = *meta.yarn_log_multiplier * 10.0;
        if (*s.mscale_all_dim != 0.0) {
          base_a = mscale(s.factor, 1.0) / mscale(s.factor, *s.mscale_all_dim);
        }
      }
      // ggml multiplies the key's attn_factor by the YaRN factor 0.1 ln s + 1.
      if (meta.attn_factor) s.attn_factor = *meta.attn_factor * base_a;
    } else if (s.method == RopeMethod::kLlama3 || s.method == RopeMethod::kLongrope) {
      throw Error(
          fmt::format("model rope scaling: type {} needs parameters a model file does not "
                      "carry; expected rope_freqs / rope_factors tensors",
                      type));
    } else {
      s.attn_factor = meta.attn_factor;
    }
  }
  if (!meta.rope_freqs.empty()) {
    check_tensor_len(meta.rope_freqs, "rope_freqs.weight", n_rot);
    s.freq_factors = to_double(meta.rope_freqs);
  }
  try {
    s.validate(n_rot);
  } catch (const Error& e) {
    throw Error(fmt::format("model rope scaling: {}", e.what()));
  }
  return s;
}

RopeScaling rope_from_hf_config(const json& config, const std::string& source) {
  if (!config.is_object()) {
    throw Error(fmt::format("{}: expected a JSON object, got {}", source, json_type_name(config)));
  }
  std::string key = "rope_scaling";
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) {
    key = "rope_parameters";  // transformers v5
    it = config.find(key);
  }
  RopeScaling s;
  if (it == config.end() || it->is_null()) return s;
  const json& rs = *it;
  if (!rs.is_object()) {
    field_error(source, key, fmt::format("expected an object or null, got {}", json_type_name(rs)));
  }
  const std::string prefix = key + ".";
  std::optional<std::string> type = opt_string(rs, "rope_type", source, prefix);
  std::string type_field = prefix + "rope_type";
  if (!type) {
    type = opt_string(rs, "type", source, prefix);
    type_field = prefix + "type";
  }
  if (!type) field_error(source, prefix + "rope_type", "missing; expected the scaling type");
  if (*type == "default") return s;
  if (*type == "su") *type = "longrope";  // the name used by early Phi-3 configs
  try {
    s.method = parse_rope_method(*type);
  } catch (const Error& e) {
    field_error(source, type_field, e.what());
  }

  auto top_int = [&](const char* k) { return opt_int(config, k, source, ""); };
  const std::optional<int64_t> rs_orig =
      opt_int(rs, "original_max_position_embeddings", source, prefix);
  if (s.method == RopeMethod::kLongrope) {
    s = rope_detail::parse_longrope_object(rs, &config, source, prefix);
  } else {
    const std::optional<double> factor = opt_number(rs, "factor", source, prefix);
    if (s.method != RopeMethod::kNone) {
      if (!factor) field_error(source, prefix + "factor", "missing; expected a number >= 1");
      s.factor = *factor;
    }
    s.attn_factor = opt_number(rs, "attention_factor", source, prefix);
    std::optional<int64_t> orig = rs_orig;
    switch (s.method) {
      case RopeMethod::kDynamic:
        if (!orig) orig = top_int("original_max_position_embeddings");
        if (!orig) orig = top_int("max_position_embeddings");
        break;
      case RopeMethod::kYarn:
        if (!orig) orig = top_int("max_position_embeddings");
        if (auto v = opt_number(rs, "beta_fast", source, prefix)) s.beta_fast = *v;
        if (auto v = opt_number(rs, "beta_slow", source, prefix)) s.beta_slow = *v;
        if (auto v = opt_bool(rs, "truncate", source, prefix)) s.truncate = *v;
        s.mscale = opt_number(rs, "mscale", source, prefix);
        s.mscale_all_dim = opt_number(rs, "mscale_all_dim", source, prefix);
        break;
      case RopeMethod::kLlama3:
        if (!orig) {
          field_error(source, prefix + "original_max_position_embeddings",
                      "missing; expected the original context length (llama3)");
        }
        if (auto v = opt_number(rs, "low_freq_factor", source, prefix)) {
          s.low_freq_factor = *v;
        } else {
          field_error(source, prefix + "low_freq_factor", "missing; expected a number (llama3)");
        }
        if (auto v = opt_number(rs, "high_freq_factor", source, prefix)) {
          s.high_freq_factor = *v;
        } else {
          field_error(source, prefix + "high_freq_factor", "missing; expected a number (llama3)");
        }
        break;
      default:
        break;
    }
    if (orig) {
      if (*orig <= 0) {
        field_error(source, prefix + "original_max_position_embeddings",
                    fmt::format("{}; expected > 0", *orig));
      }
      s.orig_ctx = *orig;
    }
  }

  // Rotary dims, when the config tells them.
  std::optional<int64_t> head_dim = top_int("head_dim");
  if (!head_dim) {
    auto hidden = top_int("hidden_size");
    auto heads = top_int("num_attention_heads");
    if (hidden && heads && *heads > 0) head_dim = *hidden / *heads;
  }
  int n_rot = 0;
  if (head_dim && *head_dim > 0) {
    double prf = opt_number(config, "partial_rotary_factor", source, "").value_or(1.0);
    const double rot = static_cast<double>(*head_dim) * prf;
    if (!(rot >= 0.0 && rot <= INT_MAX)) {  // the conversion to int below would be undefined
      throw Error(fmt::format(
          "{}: rotary dims head_dim {} x partial_rotary_factor {} = {}; expected a positive "
          "even number",
          source, *head_dim, prf, rot));
    }
    n_rot = static_cast<int>(rot);
  } else if (s.method == RopeMethod::kLongrope) {
    n_rot = static_cast<int>(2 * s.sets.front().factors.size());
  } else {
    n_rot = 128;  // unknown: check what does not depend on it
  }
  try {
    s.validate(n_rot);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", source, e.what()));
  }
  return s;
}

}  // namespace longrope
