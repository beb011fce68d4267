// Internal: the GGUF half of load_model_file, callable on an already parsed GGUF (fuzzing).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "longrope/gguf.h"
#include "longrope/model_file.h"

namespace longrope::io {

// Names of the hyper-parameters in messages: GGUF keys, or llama2.c header fields.
struct HpNames {
  std::string layers, embd, ff, head, head_kv, ctx, rot, base, eps, key_length;
  static HpNames gguf(const std::string& arch) {
    const std::string a = arch + ".";
    return {a + "block_count",
            a + "embedding_length",
            a + "feed_forward_length",
            a + "attention.head_count",
            a + "attention.head_count_kv",
            a + "context_length",
            a + "rope.dimension_count",
            a + "rope.freq_base",
            a + "attention.layer_norm_rms_epsilon",
            a + "attention.key_length"};
  }
  static HpNames llama2c() {
    return {"n_layers", "dim",   "hidden_dim", "n_heads",  "n_kv_heads",
            "seq_len",  "n_rot", "rope_base",  "norm_eps", "head_dim"};
  }
};

// Range checks of the hyper-parameters; errors name the keys (k) and path.
void validate_hparams(const std::string& path, const HParams& hp, const HpNames& k);
// Required tensors (GGUF names) and their shapes; also checks every tensor's type.
void validate_tensors(const ModelFile& m);

// A layer tensor's HF name (after "model.layers.N.") and GGUF name (after "blk.N."), and whether
// its rows are a rotary projection (q: n_head heads, k: n_head_kv heads) whose rows the two
// layouts order differently. Phi-3's fused qkv_proj / gate_up_proj are handled apart.
enum class RotaryRows { kNone, kQ, kK };
struct HfLayerTensor {
  const char* hf;
  const char* gguf;
  RotaryRows rotary;
};
inline constexpr HfLayerTensor kHfLayerTensors[] = {
    {"input_layernorm.weight", "attn_norm.weight", RotaryRows::kNone},
    {"self_attn.q_proj.weight", "attn_q.weight", RotaryRows::kQ},
    {"self_attn.k_proj.weight", "attn_k.weight", RotaryRows::kK},
    {"self_attn.v_proj.weight", "attn_v.weight", RotaryRows::kNone},
    {"self_attn.o_proj.weight", "attn_output.weight", RotaryRows::kNone},
    {"self_attn.q_proj.bias", "attn_q.bias", RotaryRows::kQ},
    {"self_attn.k_proj.bias", "attn_k.bias", RotaryRows::kK},
    {"self_attn.v_proj.bias", "attn_v.bias", RotaryRows::kNone},
    {"self_attn.o_proj.bias", "attn_output.bias", RotaryRows::kNone},
    {"post_attention_layernorm.weight", "ffn_norm.weight", RotaryRows::kNone},
    {"mlp.gate_proj.weight", "ffn_gate.weight", RotaryRows::kNone},
    {"mlp.up_proj.weight", "ffn_up.weight", RotaryRows::kNone},
    {"mlp.down_proj.weight", "ffn_down.weight", RotaryRows::kNone},
};
// Heads of a rotary projection (0 for other tensors).
inline int64_t rotary_heads(RotaryRows r, const HParams& hp) {
  return r == RotaryRows::kQ ? hp.n_head : r == RotaryRows::kK ? hp.n_head_kv : 0;
}

// Row order between HF's half-split rotary layout and the interleaved pairs of GGUF and the
// engine: within each of `heads` heads, interleaved row 2i + h is half-split row h * n_rot/2 + i
// (i < n_rot/2, h = 0, 1); rows past n_rot keep their place. Rows are row_bytes each (a bias:
// one value). to_interleaved = false applies the inverse.
std::vector<uint8_t> permute_rotary_rows(const uint8_t* src, int64_t heads, int64_t head_dim,
                                         int n_rot, size_t row_bytes, bool to_interleaved);

// Reads hyper-parameters, vocabulary and RoPE metadata from g and validates its tensors; errors
// name g->path().
ModelFile model_from_gguf(std::shared_ptr<const GgufFile> g);

}  // namespace longrope::io
