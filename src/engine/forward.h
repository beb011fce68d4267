// The Llama forward pass over a block of tokens, shared by whole-window scoring and decoding.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "longrope/backend.h"
#include "longrope/context.h"
#include "longrope/model.h"
#include "longrope/rope.h"

namespace longrope::engine {

// Per-position rotary tables (attention factor folded in) for positions [p0, p0+n).
void build_rope_cache(const RopeTables& t, int64_t p0, int64_t n, std::vector<float>& cos_tab,
                      std::vector<float>& sin_tab);

// Runs tokens[0..n) at positions p0.. through every layer, every operation through `be` (kv and
// ws are its storage). On return ws.x holds the final hidden states (before the output norm), n
// rows of n_embd.
// With nonfinite_at set, the hidden states are checked after the embeddings and after every
// layer, and *nonfinite_at receives where a NaN or Inf first appears (0: the embeddings, l + 1:
// layer l) or -1; the pass stops there. (A diagnostic: scoring runs it only after a non-finite
// loss.)
// on_layer, when set, is called after each layer with (layers done, layers in all): progress for a
// long prompt.
void forward_layers(const Backend& be, const Model& model, const int32_t* tokens, int64_t n,
                    int64_t p0, const RopeTables& tables, const KvView& kv, Workspace& ws,
                    PhaseStats* stats, int* nonfinite_at = nullptr,
                    const std::function<void(int, int)>& on_layer = {});

// "the embeddings" / "layer 3 (of 30)" / "the output layer" for a value of nonfinite_at (-1: the
// output norm or LM head), and the one-line error of a non-finite loss or logit.
std::string nonfinite_where(int at, int n_layer);

// Where the first non-finite hidden state of tokens[0, n) appears (see forward_layers'
// nonfinite_at), from a checked pass with its own cache and workspace.
int first_nonfinite_at(const Backend& be, const Model& model, const int32_t* tokens, int64_t n,
                       const RopeTables& tables);

// Next-token negative log-likelihoods from final hidden states already through the output norm:
// nll[r] = logsumexp(h_r W^T) - (h_r W^T)[target[r]] for n rows. Streams the vocabulary in panels
// (each decoded once) and row chunks with an online log-sum-exp: no n x vocab buffer.
void lm_head_nll(const Backend& be, const Model& model, const float* h, int64_t n,
                 const int32_t* target, double* nll);

// The next-token distributions of two sets of final hidden states (through the output norm) of
// the same n rows compared: out[r] = KL(P_ref || P), P's NLL of target[r] and whether the top
// tokens agree (Backend::kl_update_rows). Streams the vocabulary as lm_head_nll does: each panel
// is decoded once and multiplies both sets of rows; no n x vocab buffer.
void lm_head_kl(const Backend& be, const Model& model, const float* h_ref, const float* h,
                int64_t n, const int32_t* target, kernels::KlRow* out);

}  // namespace longrope::engine
