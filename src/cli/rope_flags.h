// The --rope flags shared by every subcommand that runs a model with a RoPE scaling.
//
// Usage in a subcommand:
//   RopeFlags rf;                       // lives as long as the parsed app
//   add_rope_flags(cmd, rf);
//   ... after parsing, with a loaded model that runs windows of ctx tokens:
//   RopeScaling scaling = resolve_rope_for_length(rf, *model, ctx);
//   or, step by step:
//   default_rope_factor(rf, eval_len, hp.n_ctx_train);  // optional (see below)
//   RopeScaling scaling = resolve_rope(rf, model->default_rope(), hp.n_rot);
//   check_scaling_for_ctx(scaling, ctx);
//
// RopeFlags is longrope::RopeOptions (include/longrope/rope.h): every field is optional, so the
// caller decides what a missing --rope-factor means. resolve_rope requires --rope-factor for
// linear/ntk/dynamic/yarn/llama3 unless the caller filled it (default_rope_factor sets
// s = max(1, eval_len / L_orig)). The resolution rules are documented at resolve_rope.
#pragma once
#include "longrope/rope.h"

namespace CLI {
class App;
}
namespace longrope {
class Model;
}

namespace longrope::cli {

using RopeFlags = longrope::RopeOptions;
using longrope::check_scaling_for_ctx;
using longrope::default_rope_factor;
using longrope::resolve_rope;

// Adds --rope, --rope-factor, --orig-ctx, --factors, --yarn-beta-fast, --yarn-beta-slow,
// --low-freq-factor, --high-freq-factor, --attn-factor and --n-hat to cmd, storing into f
// (which must outlive parsing). Malformed values (an unknown method, a non-number) fail at parse
// time with CLI11's one-line error.
void add_rope_flags(CLI::App* cmd, RopeFlags& f);

// For commands that run `model` on sequences of up to ctx tokens: a missing --rope-factor (for
// linear/ntk/dynamic/yarn/llama3) defaults to max(1, ctx / L_orig); the flags are resolved against
// the model's declared scaling (Model::default_rope) and its rotary dims; n_hat must be < ctx.
RopeScaling resolve_rope_for_length(const RopeFlags& f, const Model& model, int64_t ctx);

}  // namespace longrope::cli
