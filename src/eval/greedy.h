// Shared by the retrieval evaluations (passkey, ruler): greedy decoding of a prompt through the
// engine's KV cache (their --chat prompts: chat_prompt, longrope/tokenizer.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "longrope/kernels.h"
#include "longrope/model.h"
#include "longrope/rope.h"

namespace longrope {

struct GreedyOutput {
  std::string text;  // decoded new tokens
  int64_t tokens = 0;
  double seconds = 0;
};
// Greedy decoding of up to max_new tokens after the prompt, stopping at end of sequence or end of
// turn (KV cache; the RoPE tables chosen at the prompt are kept while generating:
// SwitchPolicy::kKeep).
GreedyOutput greedy_decode(const Model& model, const std::vector<int32_t>& prompt,
                           const RopeScaling& scaling, int n_threads, int max_new,
                           kernels::Compute compute = kernels::best_compute());

}  // namespace longrope
