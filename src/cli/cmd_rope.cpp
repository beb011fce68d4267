// longrope rope: print the per-pair frequencies of a RoPE scaling, with or without a model.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <numbers>
#include <string>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/rope_flags.h"
#include "longrope/error.h"
#include "longrope/model_file.h"
#include "longrope/rope.h"

namespace longrope::cli {

namespace {

struct RopeCmd {
  RopeFlags rope;
  std::string model_path;
  std::string tokenizer_path;
  int head_dim = 0;
  double base = 10000.0;
  int64_t seq_len = -1;
  bool json = false;
  CLI::Option* head_dim_opt = nullptr;
  CLI::Option* base_opt = nullptr;
};

// The length the table is shown for when -c is not given: the scaling's target length.
int64_t default_seq_len(const RopeScaling& s, int64_t model_ctx) {
  const int64_t L = s.orig_ctx > 0 ? s.orig_ctx : model_ctx;
  if (s.method == RopeMethod::kLongrope && s.target_ctx > 0) return s.target_ctx;
  if (L <= 0) return 0;
  double f = s.method == RopeMethod::kNone ? 1.0 : s.factor;
  return static_cast<int64_t>(std::llround(static_cast<double>(L) * f));
}

int run(const RopeCmd& c) {
  int n_rot = c.head_dim;
  double base = c.base;
  int64_t model_ctx = 0;
  RopeScaling model_default;
  if (!c.model_path.empty()) {
    if (c.head_dim_opt->count() > 0 || c.base_opt->count() > 0) {
      throw Error("rope: --head-dim/--base come from the model with -m; expected one or the other");
    }
    ModelFile mf = load_model_file(c.model_path, c.tokenizer_path);
    n_rot = mf.hp.n_rot;
    base = mf.hp.rope_base;
    model_ctx = mf.hp.n_ctx_train;
    model_default = rope_of_model_file(mf);
  } else if (n_rot <= 0) {
    throw Error("rope: --head-dim D is required without -m MODEL (rotary dims per head)");
  }
  if (n_rot <= 0 || n_rot % 2 != 0) {
    throw Error(fmt::format("rope: head dim {}; expected a positive even number", n_rot));
  }
  RopeScaling s = resolve_rope(c.rope, model_default, n_rot);
  const int64_t seq_len = c.seq_len >= 0 ? c.seq_len : default_seq_len(s, model_ctx);
  if (seq_len > 0) check_scaling_for_ctx(s, seq_len);
  RopeTables t = s.tables(seq_len, n_rot, base, model_ctx);
  const int64_t L = s.orig_ctx > 0 ? s.orig_ctx : model_ctx;
  const double two_pi = 2.0 * std::numbers::pi;
  const size_t n = t.inv_freq.size();

  if (c.json) {
    nlohmann::json j;
    j["method"] = rope_method_name(s.method);
    j["describe"] = s.describe();
    j["n_rot"] = n_rot;
    j["base"] = base;
    j["seq_len"] = seq_len;
    j["orig_ctx"] = L;
    j["attention_factor"] = t.attn_factor;
    j["n_hat"] = t.n_hat;
    if (s.method == RopeMethod::kLongrope) {
      j["factor_set"] = longrope_set_index(s.sets, seq_len);
    }
    nlohmann::json lam = nlohmann::json::array(), wl = nlohmann::json::array(),
                   wl0 = nlohmann::json::array();
    for (size_t k = 0; k < n; ++k) {
      lam.push_back(t.inv_freq_orig[k] / t.inv_freq[k]);
      wl.push_back(two_pi / t.inv_freq[k]);
      wl0.push_back(two_pi / t.inv_freq_orig[k]);
    }
    j["inv_freq"] = t.inv_freq;
    j["inv_freq_orig"] = t.inv_freq_orig;
    j["lambda"] = std::move(lam);
    j["wavelength"] = std::move(wl);
    j["wavelength_orig"] = std::move(wl0);
    fmt::print("{}\n", j.dump());
    return 0;
  }

  fmt::print("scaling   {}\n", s.describe());
  fmt::print("n_rot {}  base {}  seq_len {}  orig_ctx {}\n", n_rot, base, seq_len,
             L > 0 ? std::to_string(L) : std::string("unknown"));
  if (s.method == RopeMethod::kLongrope) {
    size_t k = longrope_set_index(s.sets, seq_len);
    fmt::print(
        "factor set {} of {} (max_len {})\n", k, s.sets.size(),
        s.sets[k].max_len > 0 ? std::to_string(s.sets[k].max_len) : std::string("unbounded"));
  }
  fmt::print("attention factor {:.9g} (attention logits x {:.9g})\n", t.attn_factor,
             t.attn_factor * t.attn_factor);
  fmt::print(
      "n_hat {}{}\n", t.n_hat,
      t.n_hat > 0 ? " (positions below keep the original rotation, attention factor 1)" : "");
  fmt::print("{:>4}  {:>16}  {:>16}  {:>16}  {:>16}  {:>12}\n", "j", "inv_freq_orig", "inv_freq",
             "wavelen_orig", "wavelen", "lambda");
  for (size_t k = 0; k < n; ++k) {
    fmt::print("{:>4}  {:>16.9e}  {:>16.9e}  {:>16.6f}  {:>16.6f}  {:>12.6f}\n", k,
               t.inv_freq_orig[k], t.inv_freq[k], two_pi / t.inv_freq_orig[k],
               two_pi / t.inv_freq[k], t.inv_freq_orig[k] / t.inv_freq[k]);
  }
  return 0;
}

}  // namespace

Runner register_rope(CLI::App& app) {
  auto c = std::make_shared<RopeCmd>();
  CLI::App* cmd = app.add_subcommand(
      "rope",
      "Show the per-pair RoPE frequencies, wavelengths and rescale factors of a scaling (no model "
      "needed; -m takes head dim, base, context and declared scaling from a model file)");
  add_model_flags(cmd, c->model_path, c->tokenizer_path, "", false);
  c->head_dim_opt = cmd->add_option("--head-dim", c->head_dim, "rotary dims per head (without -m)")
                        ->check(in_range(1, 65536));
  c->base_opt = cmd->add_option("--base", c->base, "RoPE base (without -m; default 10000)")
                    ->check(in_range(1e-6, 1e15));
  add_ctx_option(cmd, c->seq_len,
                 "sequence length the tables are for (default: the scaling's target length)", 0);
  add_deprecated_alias(cmd, "--seq-len", "-c/--ctx", c->seq_len)
      ->check(in_range(0, double(kMaxContext)));
  cmd->add_flag("--json", c->json, "print one JSON object instead of a table");
  add_rope_flags(cmd, c->rope);
  // longrope::Error propagates to main, which prints it as one line and exits non-zero.
  return [c]() -> int { return run(*c); };
}

}  // namespace longrope::cli
