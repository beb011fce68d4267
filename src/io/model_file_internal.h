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
