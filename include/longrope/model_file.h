// A model file, whatever its format, described the same way: hyper-parameters, vocabulary,
// RoPE scaling metadata and named tensors that point into the memory-mapped file.
// Tensor names follow the GGUF convention (token_embd.weight, blk.N.attn_q.weight, ...);
// llama2.c checkpoints are presented under the same names.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "longrope/quant.h"

namespace longrope {

class GgufFile;

struct HParams {
  std::string arch = "llama";
  int n_layer = 0;
  int n_embd = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;  // n_embd / n_head unless the file says otherwise
  int n_ff = 0;
  int n_vocab = 0;
  int n_ctx_train = 0;
  int n_rot = 0;  // rotary dimensions per head (<= head_dim)
  double rope_base = 10000.0;
  float norm_eps = 1e-5f;
};

struct VocabSpec {
  enum class Kind { kSpm, kGpt2 };
  Kind kind = Kind::kSpm;
  std::vector<std::string> tokens;
  std::vector<float> scores;  // SPM merge scores (empty for gpt2)
  std::vector<int32_t>
      types;  // llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user, 6 byte
  std::vector<std::string> merges;  // gpt2: "a b" per line, in rank order
  std::string pre = "default";      // gpt2 pre-tokenizer name (tokenizer.ggml.pre)
  // gpt2: the pre-tokenizer as regexes applied in turn (from an HF tokenizer.json); when given,
  // they replace the rules named by `pre`.
  std::vector<std::string> pre_regexes;
  std::optional<bool> ignore_merges;  // gpt2: overrides the pre-tokenizer rules' choice
  int32_t bos = -1, eos = -1, unk = -1, pad = -1, eot = -1;
  bool add_bos = true;
  bool add_eos = false;
  bool add_space_prefix = true;  // SPM: prepend a space before encoding
  std::string chat_template;     // tokenizer.chat_template, if any
};

// RoPE scaling as declared by a model file (raw; turned into a RopeScaling by src/rope).
struct RopeScalingMeta {
  std::string type;  // "", "none", "linear", "yarn", "longrope", "llama3", ...
  std::optional<double> factor;
  std::optional<int64_t> original_context_length;
  std::optional<double> attn_factor;
  std::optional<double> yarn_beta_fast, yarn_beta_slow, yarn_ext_factor, yarn_log_multiplier;
  std::vector<float> rope_freqs;     // rope_freqs.weight (divides the frequencies)
  std::vector<float> factors_long;   // rope_factors_long.weight
  std::vector<float> factors_short;  // rope_factors_short.weight
  // longrope's own keys (written by `longrope export`; llama.cpp ignores them):
  std::optional<int64_t> n_hat;  // longrope.n_hat: start tokens keeping the original rotation
  std::optional<int64_t> short_max_len;  // longrope.short_max_len: longest length of the short set
  std::optional<double> short_attn_factor;  // longrope.short_attn_factor: the short set's own
};

struct TensorRef {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the innermost (row length)
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t nelements() const { return element_count(ne); }
};

class ModelFile {
 public:
  std::string path;
  std::string format;  // "gguf", "llama2c" or "hf" (a Hugging Face model folder)
  HParams hp;
  VocabSpec vocab;
  RopeScalingMeta rope;   // GGUF / llama2.c (an HF folder's scaling is in hf_config)
  std::string hf_config;  // "hf": the text of config.json (its rope_scaling is the model's)
  std::vector<TensorRef> tensors;

  const TensorRef* find(const std::string& name) const;
  // Throws Error naming the tensor and the file when it is missing.
  const TensorRef& get(const std::string& name) const;
  // The GGUF behind this model (null for llama2.c), for tools that copy or inspect it.
  std::shared_ptr<const GgufFile> gguf;
  // Keeps the mapped file(s) alive as long as the tensors are referenced.
  std::vector<std::shared_ptr<const void>> keep_alive;
};

// The last component of a path, for titles and provenance ("dir/" gives "dir": a model folder
// given with a trailing slash keeps its name).
std::string path_name(const std::string& path);

// Opens a model, detecting the format from the file's contents (GGUF magic, llama2.c headers);
// a folder is read as a Hugging Face model folder (longrope/hf.h).
// tokenizer_path is required for llama2.c checkpoints (tokenizer.bin) and refused otherwise.
// Validates hyper-parameters and tensor shapes; throws Error with one clear line on any problem.
ModelFile load_model_file(const std::string& path, const std::string& tokenizer_path = "");

}  // namespace longrope
