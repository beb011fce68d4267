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
#include "longrope/rope.h"
#include "longrope/vocab.h"

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

// The scaling a loaded model file declares, whatever its format: rope_from_meta for GGUF and
// llama2.c, rope_from_hf_config for an HF folder, where a llama3 rule (fixed per-pair divisors)
// becomes freq_factors on method none, exactly as a Llama 3 GGUF carries it (rope_freqs), so
// that every scaling chosen later composes with it.
RopeScaling rope_of_model_file(const ModelFile& mf);

}  // namespace longrope
