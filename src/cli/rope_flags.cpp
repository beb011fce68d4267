#include "cli/rope_flags.h"

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <string>

#include "cli/common.h"
#include "longrope/error.h"
#include "longrope/model.h"

namespace longrope::cli {

void add_rope_flags(CLI::App* cmd, RopeFlags& f) {
  const std::string group = "RoPE scaling";
  CLI::Validator method_check(
      [](std::string& s) -> std::string {
        try {
          parse_rope_method(s);
          return {};
        } catch (const Error& e) {
          return e.what();
        }
      },
      "");
  cmd->add_option_function<std::string>(
         "--rope", [&f](const std::string& v) { f.method = v; },
         "scaling method: none, linear (pi), ntk, dynamic, yarn, llama3, longrope "
         "(default: the model's own)")
      ->type_name("METHOD")
      ->check(method_check)
      ->group(group);
  cmd->add_option_function<double>(
         "--rope-factor", [&f](const double& v) { f.factor = v; },
         "extension ratio s for linear/ntk/dynamic/yarn/llama3 (target length / original context)")
      ->type_name("S")
      ->group(group);
  add_orig_ctx_option(
      cmd, [&f](int64_t v) { f.orig_ctx = v; },
      "original (trained) context L_orig (default: the model's trained context)")
      ->group(group);
  cmd->add_option_function<std::string>(
         "--factors", [&f](const std::string& v) { f.factors_path = v; },
         "LongRoPE factors file (docs/factors-format.md); implies --rope longrope")
      ->type_name("FILE")
      ->group(group);
  cmd->add_option_function<double>(
         "--yarn-beta-fast", [&f](const double& v) { f.beta_fast = v; },
         "YaRN beta_fast (default 32)")
      ->type_name("B")
      ->group(group);
  cmd->add_option_function<double>(
         "--yarn-beta-slow", [&f](const double& v) { f.beta_slow = v; },
         "YaRN beta_slow (default 1)")
      ->type_name("B")
      ->group(group);
  cmd->add_option_function<double>(
         "--low-freq-factor", [&f](const double& v) { f.low_freq_factor = v; },
         "llama3 low_freq_factor (default 1)")
      ->type_name("X")
      ->group(group);
  cmd->add_option_function<double>(
         "--high-freq-factor", [&f](const double& v) { f.high_freq_factor = v; },
         "llama3 high_freq_factor (default 4)")
      ->type_name("X")
      ->group(group);
  cmd->add_option_function<double>(
         "--attn-factor", [&f](const double& v) { f.attn_factor = v; },
         "attention factor (multiplies cos and sin), overriding the method's")
      ->type_name("A")
      ->group(group);
  cmd->add_option_function<int64_t>(
         "--n-hat", [&f](const int64_t& v) { f.n_hat = v; },
         "LongRoPE start tokens kept at the original rotation (overrides the factors file's)")
      ->type_name("N")
      ->check(in_range(0, double(int64_t(1) << 40)))
      ->group(group);
}

RopeScaling resolve_rope_for_length(const RopeFlags& f, const Model& model, int64_t ctx) {
  RopeFlags flags = f;
  default_rope_factor(flags, ctx, model.hp().n_ctx_train);
  // A rule whose default factor comes out as 1 extends nothing: say so instead of running the
  // plain model under another name.
  if (!f.factor && flags.factor && *flags.factor == 1.0 && f.method && f.factors_path.empty() &&
      parse_rope_method(*f.method) != RopeMethod::kNone)
    throw Error(fmt::format(
        "--rope {} without --rope-factor at length {}: the default factor length / L_orig is 1 "
        "(no extension; L_orig = {}); expected --rope-factor S or a length above L_orig (-c)",
        *f.method, ctx, f.orig_ctx.value_or(model.hp().n_ctx_train)));
  RopeScaling s = resolve_rope(flags, model.default_rope(), model.hp().n_rot);
  check_scaling_for_ctx(s, ctx);
  return s;
}

}  // namespace longrope::cli
