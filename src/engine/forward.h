// The Llama forward pass over a block of tokens, shared by whole-window scoring and decoding.
#pragma once
#include <cstdint>
#include <vector>

#include "longrope/context.h"
#include "longrope/model.h"
#include "longrope/rope.h"

namespace longrope::engine {

// Per-position rotary tables (attention factor folded in) for positions [p0, p0+n).
void build_rope_cache(const RopeTables& t, int64_t p0, int64_t n, std::vector<float>& cos_tab,
                      std::vector<float>& sin_tab);

// Key/value storage: layer l, kv head h, position p, dim d at
// base + l*layer_stride + (h*cap + p)*head_dim + d. layer_stride 0 shares one layer's storage
// between all layers (enough when a whole sequence goes through the model layer by layer).
struct KvView {
  float* k = nullptr;
  float* v = nullptr;
  int64_t cap = 0;
  int64_t layer_stride = 0;
};

struct Workspace {
  std::vector<float> x, h, q, k, v, att, g, u, cos_tab, sin_tab;
};

// Runs tokens[0..n) at positions p0.. through every layer. On return ws.x holds the final hidden
// states (before the output norm), n rows of n_embd.
void forward_layers(const Model& model, const int32_t* tokens, int64_t n, int64_t p0,
                    const RopeTables& tables, const KvView& kv, Workspace& ws, PhaseStats* stats);

}  // namespace longrope::engine
