// The RoPE scaling a model file declares (rope_of_model_file, include/longrope/model_file.h): the
// file's raw metadata or config.json turned into a RopeScaling by src/rope.
#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/model_file.h"
#include "longrope/rope.h"

namespace longrope {

using nlohmann::json;

RopeScaling rope_of_model_file(const ModelFile& mf) {
  if (mf.format != "hf") return rope_from_meta(mf.rope, mf.hp.n_rot, mf.hp.n_ctx_train);
  const std::string source = mf.path + "/config.json";
  json config;
  try {
    config = json::parse(mf.hf_config);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON ({})", source, e.what()));
  }
  RopeScaling s = rope_from_hf_config(config, source);
  if (s.method == RopeMethod::kLlama3) {
    // Fixed per-pair divisors of the trained frequencies: the same as GGUF's rope_freqs.
    const int64_t orig = s.orig_ctx > 0 ? s.orig_ctx : mf.hp.n_ctx_train;
    const std::vector<double> w = default_inv_freq(mf.hp.n_rot, mf.hp.rope_base);
    const RopeTables t = s.tables(orig, mf.hp.n_rot, mf.hp.rope_base, orig);
    RopeScaling plain;
    plain.freq_factors.resize(w.size());
    for (size_t j = 0; j < w.size(); ++j) plain.freq_factors[j] = w[j] / t.inv_freq[j];
    s = plain;
  }
  try {
    s.validate(mf.hp.n_rot);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: rope_scaling: {}", source, e.what()));
  }
  return s;
}

}  // namespace longrope
