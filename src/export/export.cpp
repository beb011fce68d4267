// Exporting LongRoPE factors into GGUF files and HF configs (include/longrope/export.h).
#include "longrope/export.h"

#include <fmt/core.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "longrope/error.h"
#include "longrope/gguf.h"
#include "longrope/model_file.h"

namespace longrope {

namespace {

void check_factors(const RopeScaling& f, int n_rot) {
  if (f.method != RopeMethod::kLongrope || f.sets.empty())
    throw Error("export: the factors are not a longrope scaling (expected a factors file)");
  if (f.sets.size() > 2)
    throw Error(
        fmt::format("export: {} factor sets; GGUF and HF configs hold at most two "
                    "(short and long)",
                    f.sets.size()));
  if (f.orig_ctx <= 0 || f.target_ctx <= 0)
    throw Error(
        "export: the factors file lacks original_max_position_embeddings or "
        "max_position_embeddings (expected both)");
  if (n_rot > 0) f.validate(n_rot);
}

std::vector<uint8_t> f32_bytes(const std::vector<double>& v) {
  std::vector<uint8_t> out(v.size() * 4);
  for (size_t i = 0; i < v.size(); ++i) {
    const float x = static_cast<float>(v[i]);
    std::memcpy(out.data() + 4 * i, &x, 4);
  }
  return out;
}

}  // namespace

// llama.cpp divides by one tensor and HF configs hold one factor list per set, so the model's own
// divisors are folded in. Start tokens keep the model's own rotation, which folded factors cannot
// express.
RopeScaling fold_model_factors(const ModelFile& mf, const RopeScaling& searched) {
  check_factors(searched, mf.hp.n_rot);
  RopeScaling factors = searched;
  const std::vector<double> own = rope_of_model_file(mf).freq_factors;
  if (!own.empty()) {
    if (factors.n_hat > 0)
      throw Error(fmt::format(
          "export: {} has its own frequency factors (rope_freqs) and the factors file has n_hat "
          "{}: start tokens would lose the model's rotation in the exported file; expected "
          "factors searched with --n-hat-candidates 0",
          mf.path, factors.n_hat));
    for (FactorSet& s : factors.sets)
      for (size_t j = 0; j < s.factors.size(); ++j) s.factors[j] *= own[j];
  }
  return factors;
}

void set_gguf_factors(GgufWriter& w, const ModelFile& mf, const RopeScaling& searched) {
  const RopeScaling factors = fold_model_factors(mf, searched);
  const std::string a = mf.hp.arch + ".";
  for (const char* t :
       {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"})
    w.remove_tensor(t);
  for (const char* k : {"rope.scaling.type", "rope.scaling.factor", "rope.scale_linear",
                        "rope.scaling.yarn_beta_fast", "rope.scaling.yarn_beta_slow",
                        "rope.scaling.yarn_ext_factor", "rope.scaling.yarn_log_multiplier"})
    w.remove(a + k);
  w.remove("longrope.n_hat");
  w.remove("longrope.short_max_len");
  w.remove("longrope.short_attn_factor");
  const int64_t half = mf.hp.n_rot / 2;
  constexpr uint32_t kF32 = 0;
  if (factors.sets.size() == 1) {
    w.add_tensor("rope_freqs.weight", kF32, {half}, f32_bytes(factors.sets[0].factors));
  } else {
    w.add_tensor("rope_factors_long.weight", kF32, {half}, f32_bytes(factors.sets[1].factors));
    w.add_tensor("rope_factors_short.weight", kF32, {half}, f32_bytes(factors.sets[0].factors));
    // llama.cpp loads the two tensors only under this scaling type (and otherwise refuses the file:
    // "wrong number of tensors"); with it, it picks the long set above the original context.
    w.set_string(a + "rope.scaling.type", "longrope");
  }
  w.set_u32(a + "context_length", static_cast<uint32_t>(factors.target_ctx));
  w.set_u32(a + "rope.scaling.original_context_length", static_cast<uint32_t>(factors.orig_ctx));
  w.set_f32(a + "rope.scaling.attn_factor",
            static_cast<float>(file_attn_factor(factors, factors.orig_ctx)));
  if (factors.n_hat > 0) w.set_u32("longrope.n_hat", static_cast<uint32_t>(factors.n_hat));
  if (factors.sets.size() == 2 && factors.sets[0].max_len != factors.orig_ctx)
    w.set_u32("longrope.short_max_len", static_cast<uint32_t>(factors.sets[0].max_len));
  if (factors.sets.size() == 2 && factors.sets[0].attn_factor)
    w.set_f32("longrope.short_attn_factor", static_cast<float>(*factors.sets[0].attn_factor));
}

void export_gguf(const std::string& model_path, const RopeScaling& searched,
                 const std::string& out_path) {
  {
    // Before loading: a llama2.c checkpoint would first ask for its tokenizer.
    char magic[4] = {};
    std::ifstream in(model_path, std::ios::binary);
    if (in && (!in.read(magic, 4) || std::memcmp(magic, "GGUF", 4) != 0))
      throw Error(fmt::format(
          "export: {} is not a GGUF file (export copies a GGUF model with the factors; a llama2.c "
          "checkpoint has no place for them: use --factors with it instead)",
          model_path));
  }
  const ModelFile mf = load_model_file(model_path);
  if (!mf.gguf)
    throw Error(
        fmt::format("export: {} is a {} model; expected a GGUF file", model_path, mf.format));
  GgufWriter w;
  w.copy_from(mf.gguf);
  set_gguf_factors(w, mf, searched);
  w.write(out_path);
}

std::vector<std::string> export_warnings(const RopeScaling& f, bool gguf) {
  return deploy_differences(f, gguf ? DeployTarget::kLlamaCpp : DeployTarget::kTransformers,
                            f.orig_ctx);
}

void check_hf_config_fits(const nlohmann::json& config, const RopeScaling& factors,
                          std::optional<double> rope_base) {
  auto number = [&](const char* key) -> std::optional<double> {
    if (config.contains(key) && config[key].is_number()) return config[key].get<double>();
    return std::nullopt;
  };
  // Rotary pairs: head_dim (or hidden_size / num_attention_heads) x partial_rotary_factor / 2.
  std::optional<double> head_dim = number("head_dim");
  if (!head_dim && number("hidden_size") && number("num_attention_heads") &&
      *number("num_attention_heads") > 0)
    head_dim = *number("hidden_size") / *number("num_attention_heads");
  if (head_dim) {
    const auto pairs = static_cast<int64_t>(
        std::floor(*head_dim * number("partial_rotary_factor").value_or(1.0)) / 2);
    const auto have = static_cast<int64_t>(factors.sets.back().factors.size());
    if (pairs != have)
      throw Error(fmt::format(
          "export: the config's model has {} rotary pairs per head and the factors file has {} "
          "factors (expected the config of the model the factors were searched for)",
          pairs, have));
  }
  // The context the model was trained at, against the one the factors extend: a longrope
  // config's original_max_position_embeddings (the rope_scaling's or the top-level one), else
  // max_position_embeddings (a llama3 or linear rule's original length is not the model's).
  std::optional<double> orig;
  const nlohmann::json rs = config.value("rope_scaling", nlohmann::json());
  if (rs.is_object()) {
    const std::string type = rs.value("rope_type", rs.value("type", std::string()));
    if (type == "longrope" || type == "su") {
      if (rs.contains("original_max_position_embeddings") &&
          rs["original_max_position_embeddings"].is_number())
        orig = rs["original_max_position_embeddings"].get<double>();
      if (!orig) orig = number("original_max_position_embeddings");
    }
  }
  if (!orig) orig = number("max_position_embeddings");
  if (orig && static_cast<int64_t>(*orig) != factors.orig_ctx)
    throw Error(fmt::format(
        "export: the config's model was trained at {} tokens and the factors file extends {} "
        "(expected the config of the model the factors were searched for)",
        static_cast<int64_t>(*orig), factors.orig_ctx));
  // The rotary base the factors were searched on (a factors file's provenance.rope_base), against
  // the config's rope_theta (10000 when absent, as transformers reads it).
  if (rope_base) {
    const double theta = number("rope_theta").value_or(10000.0);
    if (std::fabs(theta - *rope_base) > 1e-6 * *rope_base)
      throw Error(fmt::format(
          "export: the config's model has rope_theta {:g} and the factors were searched on a model "
          "with rope base {:g} (expected the config of the model the factors were searched for)",
          theta, *rope_base));
  }
}

nlohmann::json export_hf_config(const nlohmann::json& config, const RopeScaling& factors,
                                std::optional<double> rope_base) {
  if (!config.is_object()) throw Error("export: the HF config is not a JSON object");
  check_factors(factors, 0);
  check_hf_config_fits(config, factors, rope_base);
  nlohmann::json out = config;
  auto lng = factors.sets.back().factors;
  auto shrt = factors.sets.front().factors;
  // The config's own scaling (Llama 3's llama3 rule, or linear) sets the frequencies the model was
  // trained with; the factors are relative to them, so its per-pair divisors are folded in.
  const RopeScaling own = rope_from_hf_config(config);
  if (own.method == RopeMethod::kLlama3 || own.method == RopeMethod::kLinear) {
    if (factors.n_hat > 0)
      throw Error(fmt::format(
          "export: the config has its own {} rope scaling and the factors file has n_hat {}: "
          "start tokens would lose the model's rotation; expected factors searched with "
          "--n-hat-candidates 0",
          rope_method_name(own.method), factors.n_hat));
    const int n_rot = static_cast<int>(2 * lng.size());
    const double base = config.value("rope_theta", 10000.0);
    const std::vector<double> w = default_inv_freq(n_rot, base);
    const RopeTables t = own.tables(factors.orig_ctx, n_rot, base, factors.orig_ctx);
    for (size_t j = 0; j < lng.size(); ++j) {
      lng[j] *= w[j] / t.inv_freq[j];
      shrt[j] *= w[j] / t.inv_freq[j];
    }
  } else if (own.method != RopeMethod::kNone && own.method != RopeMethod::kLongrope) {
    throw Error(fmt::format(
        "export: the config's rope_scaling is {}; its frequencies cannot be folded into longrope "
        "factors (expected none, linear or llama3, or a longrope scaling to replace)",
        rope_method_name(own.method)));
  }
  out["rope_scaling"] = {
      {"rope_type", "longrope"},
      {"short_factor", shrt},
      {"long_factor", lng},
      {"original_max_position_embeddings", factors.orig_ctx},
      {"factor", static_cast<double>(factors.target_ctx) / static_cast<double>(factors.orig_ctx)},
      {"attention_factor", file_attn_factor(factors, factors.orig_ctx)}};
  // Start tokens: longrope reads the key back; transformers ignores it (with a warning).
  if (factors.n_hat > 0) out["rope_scaling"]["n_hat"] = factors.n_hat;
  out["max_position_embeddings"] = factors.target_ctx;
  if (out.contains("original_max_position_embeddings"))
    out["original_max_position_embeddings"] = factors.orig_ctx;
  return out;
}

}  // namespace longrope

namespace longrope {

void export_hf_folder(const std::string& model_path, const std::string& tokenizer_path,
                      const RopeScaling* searched, const std::string& out_dir,
                      const std::string& dtype) {
  const ModelFile mf = load_model_file(model_path, tokenizer_path);
  const RopeScaling scaling = searched ? fold_model_factors(mf, *searched) : rope_of_model_file(mf);
  write_hf_folder(mf, scaling, out_dir, dtype);
}

}  // namespace longrope
