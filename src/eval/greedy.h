// Shared by the retrieval evaluations (passkey, ruler): the ChatML turn markers their --chat
// prompts use, and greedy decoding of a prompt through the engine's KV cache.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "longrope/model.h"
#include "longrope/rope.h"

namespace longrope {

// ChatML (SmolLM2, Qwen): a user turn opens with kChatMlUser; kChatMlAssistant ends it and opens
// the assistant's turn. Encoded with parse_special, so the markers become their control tokens.
inline constexpr const char* kChatMlUser = "<|im_start|>user\n";
inline constexpr const char* kChatMlAssistant = "<|im_end|>\n<|im_start|>assistant\n";

struct GreedyOutput {
  std::string text;  // decoded new tokens
  int64_t tokens = 0;
  double seconds = 0;
};
// Greedy decoding of up to max_new tokens after the prompt, stopping at end of sequence or end of
// turn (KV cache; the RoPE tables chosen at the prompt are kept while generating:
// SwitchPolicy::kKeep).
GreedyOutput greedy_decode(const Model& model, const std::vector<int32_t>& prompt,
                           const RopeScaling& scaling, int n_threads, int max_new);

}  // namespace longrope
