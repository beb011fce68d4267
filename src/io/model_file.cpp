#include "longrope/model_file.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <unordered_map>

#include "io/mapped_file.h"
#include "io/model_file_internal.h"
#include "longrope/error.h"
#include "longrope/gguf.h"
#include "longrope/hf.h"
#include "longrope/llama2c.h"

namespace longrope {

std::string path_name(const std::string& path) {
  std::filesystem::path p(path);
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

const TensorRef* ModelFile::find(const std::string& name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const TensorRef& ModelFile::get(const std::string& name) const {
  if (const TensorRef* t = find(name)) return *t;
  throw Error(path + ": tensor " + name + " not found (expected it in the " + format + " model)");
}

namespace {

constexpr int64_t kMaxCtx = int64_t{1} << 24;

std::string shape_str(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t k = 0; k < ne.size(); ++k) s += (k ? ", " : "") + std::to_string(ne[k]);
  return s + "]";
}

// Shapes equal up to trailing 1s.
bool same_shape(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  const size_t n = std::max(a.size(), b.size());
  for (size_t k = 0; k < n; ++k) {
    const int64_t x = k < a.size() ? a[k] : 1;
    const int64_t y = k < b.size() ? b[k] : 1;
    if (x != y) return false;
  }
  return true;
}

}  // namespace

void io::validate_hparams(const std::string& path, const HParams& hp, const HpNames& k) {
  auto fail = [&](const std::string& what) { throw Error(path + ": " + what); };
  auto in_range = [&](const std::string& key, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) {
      fail(key + " is " + std::to_string(v) + " (expected " + std::to_string(lo) + ".." +
           std::to_string(hi) + ")");
    }
  };
  in_range(k.layers, hp.n_layer, 1, 65536);
  in_range(k.embd, hp.n_embd, 1, 1 << 20);
  in_range(k.ff, hp.n_ff, 1, 1 << 24);
  in_range(k.head, hp.n_head, 1, 1 << 16);
  in_range(k.head_kv, hp.n_head_kv, 1, hp.n_head);
  if (hp.n_head % hp.n_head_kv != 0) {
    fail(k.head + " " + std::to_string(hp.n_head) + " is not a multiple of " + k.head_kv + " " +
         std::to_string(hp.n_head_kv) + " (expected n_head_kv to divide n_head)");
  }
  in_range(k.key_length, hp.head_dim, 1, 1 << 16);
  in_range(k.ctx, hp.n_ctx_train, 1, kMaxCtx);
  if (hp.n_rot <= 0 || hp.n_rot % 2 != 0 || hp.n_rot > hp.head_dim) {
    fail(k.rot + " is " + std::to_string(hp.n_rot) + " (expected an even number in 2.." +
         std::to_string(hp.head_dim) + ", the head dimension)");
  }
  if (!(std::isfinite(hp.rope_base) && hp.rope_base > 0.0)) {
    fail(k.base + " is " + std::to_string(hp.rope_base) + " (expected a finite positive number)");
  }
  if (!(std::isfinite(hp.norm_eps) && hp.norm_eps > 0.0f && hp.norm_eps < 1.0f)) {
    fail(k.eps + " is " + std::to_string(hp.norm_eps) + " (expected a small positive number)");
  }
  if (hp.n_vocab <= 0) fail("the vocabulary is empty (expected at least one token)");
}

// Required tensors and their shapes; also checks every tensor's type.
void io::validate_tensors(const ModelFile& m) {
  const HParams& hp = m.hp;
  auto fail = [&](const std::string& what) { throw Error(m.path + ": " + what); };
  for (const auto& t : m.tensors) {
    if (!ggml_type_supported(static_cast<uint32_t>(t.type))) {
      fail("tensor " + t.name + " has unsupported type " +
           ggml_type_name(static_cast<uint32_t>(t.type)) +
           " (expected one of F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, "
           "Q4_K, Q5_K, Q6_K, Q8_K)");
    }
  }
  const int64_t E = hp.n_embd, V = hp.n_vocab, F = hp.n_ff;
  const int64_t Q = int64_t{hp.n_head} * hp.head_dim, KV = int64_t{hp.n_head_kv} * hp.head_dim;
  std::unordered_map<std::string_view, const TensorRef*> by_name;
  for (const auto& t : m.tensors) by_name.emplace(t.name, &t);
  auto expect = [&](const std::string& name, std::vector<int64_t> ne, bool required) {
    const auto it = by_name.find(name);
    const TensorRef* t = it == by_name.end() ? nullptr : it->second;
    if (!t) {
      if (required) fail("tensor " + name + " not found (expected shape " + shape_str(ne) + ")");
      return;
    }
    if (!same_shape(t->ne, ne)) {
      std::string why =
          "tensor " + name + " has shape " + shape_str(t->ne) + " (expected " + shape_str(ne);
      if (name == "token_embd.weight" || name == "output.weight") {
        why += ": n_embd " + std::to_string(E) + " x n_vocab " + std::to_string(V);
      }
      fail(why + ")");
    }
  };
  expect("token_embd.weight", {E, V}, true);
  expect("output_norm.weight", {E}, true);
  expect("output.weight", {E, V}, false);
  for (int l = 0; l < hp.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    expect(p + "attn_norm.weight", {E}, true);
    expect(p + "attn_q.weight", {E, Q}, true);
    expect(p + "attn_k.weight", {E, KV}, true);
    expect(p + "attn_v.weight", {E, KV}, true);
    expect(p + "attn_output.weight", {Q, E}, true);
    expect(p + "ffn_norm.weight", {E}, true);
    expect(p + "ffn_gate.weight", {E, F}, true);
    expect(p + "ffn_down.weight", {F, E}, true);
    expect(p + "ffn_up.weight", {E, F}, true);
    expect(p + "attn_q.bias", {Q}, false);  // Qwen2, Llama with attention_bias
    expect(p + "attn_k.bias", {KV}, false);
    expect(p + "attn_v.bias", {KV}, false);
    expect(p + "attn_output.bias", {E}, false);
  }
}

namespace {

using io::HpNames;
using io::validate_hparams;
using io::validate_tensors;

int to_int(const std::string& path, const std::string& key, int64_t v) {
  if (v < -(int64_t{1} << 31) || v >= (int64_t{1} << 31)) {
    throw Error(path + ": " + key + " is " + std::to_string(v) +
                " (expected a value that fits in 32 bits)");
  }
  return static_cast<int>(v);
}

void fill_default_types(VocabSpec& v) {
  v.types.assign(v.tokens.size(), 1);
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    const std::string& t = v.tokens[id];
    if (v.kind == VocabSpec::Kind::kSpm && t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>') {
      v.types[id] = 6;
    }
  }
  auto mark = [&](int32_t id, int32_t type) {
    if (id >= 0 && static_cast<size_t>(id) < v.types.size()) v.types[id] = type;
  };
  mark(v.unk, 2);
  mark(v.bos, 3);
  mark(v.eos, 3);
}

VocabSpec read_gguf_vocab(const GgufFile& g) {
  const std::string& path = g.path();
  auto fail = [&](const std::string& what) { throw Error(path + ": " + what); };
  VocabSpec v;
  const std::string model = g.get<std::string>("tokenizer.ggml.model");
  if (model == "llama") {
    v.kind = VocabSpec::Kind::kSpm;
  } else if (model == "gpt2") {
    v.kind = VocabSpec::Kind::kGpt2;
  } else {
    fail("unsupported tokenizer model \"" + model +
         "\" in tokenizer.ggml.model (expected llama or gpt2)");
  }
  const bool spm = v.kind == VocabSpec::Kind::kSpm;
  v.tokens = g.get_string_array("tokenizer.ggml.tokens");
  const size_t n = v.tokens.size();
  if (n == 0) fail("tokenizer.ggml.tokens is empty (expected at least one token)");
  if (n >= (size_t{1} << 31)) fail("tokenizer.ggml.tokens is too large (expected < 2^31 tokens)");
  auto check_len = [&](const std::string& key, size_t got) {
    if (got != n) {
      fail(key + " has " + std::to_string(got) + " entries (expected " + std::to_string(n) +
           ", one per token)");
    }
  };
  if (g.has("tokenizer.ggml.scores")) {
    v.scores = g.get_float_array("tokenizer.ggml.scores");
    check_len("tokenizer.ggml.scores", v.scores.size());
  } else if (spm) {
    v.scores.assign(n, 0.0f);
  }
  if (g.has("tokenizer.ggml.merges")) {
    v.merges = g.get_string_array("tokenizer.ggml.merges");
    for (size_t k = 0; k < v.merges.size(); ++k) {
      const std::string& m = v.merges[k];
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos || sp + 1 >= m.size()) {
        fail("tokenizer.ggml.merges entry " + std::to_string(k) + " \"" + m.substr(0, 40) +
             "\" (expected two tokens separated by a space)");
      }
    }
  } else if (!spm) {
    fail("tokenizer.ggml.merges not found (expected BPE merges for a gpt2 tokenizer)");
  }
  if (auto pre = g.get_opt<std::string>("tokenizer.ggml.pre")) v.pre = *pre;
  if (auto ct = g.get_opt<std::string>("tokenizer.chat_template")) v.chat_template = *ct;

  auto special = [&](const std::string& key, int32_t def) -> int32_t {
    auto id = g.get_int_opt(key);
    if (!id) return def < static_cast<int64_t>(n) ? def : -1;
    if (*id < 0 || *id >= static_cast<int64_t>(n)) {
      fail(key + " is " + std::to_string(*id) + " (expected a token id below " + std::to_string(n) +
           ")");
    }
    return static_cast<int32_t>(*id);
  };
  v.bos = special("tokenizer.ggml.bos_token_id", spm ? 1 : -1);
  v.eos = special("tokenizer.ggml.eos_token_id", spm ? 2 : -1);
  v.unk = special("tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
  v.pad = special("tokenizer.ggml.padding_token_id", -1);
  v.eot = special("tokenizer.ggml.eot_token_id", -1);
  if (v.eot < 0) {
    for (size_t id = 0; id < n; ++id) {
      if (v.tokens[id] == "<|im_end|>" || v.tokens[id] == "<|eot_id|>") {
        v.eot = static_cast<int32_t>(id);
        break;
      }
    }
  }
  v.add_bos = g.get_opt<bool>("tokenizer.ggml.add_bos_token").value_or(spm);
  v.add_eos = g.get_opt<bool>("tokenizer.ggml.add_eos_token").value_or(false);
  v.add_space_prefix = g.get_opt<bool>("tokenizer.ggml.add_space_prefix").value_or(spm);

  if (g.has("tokenizer.ggml.token_type")) {
    const auto types = g.get_int_array("tokenizer.ggml.token_type");
    check_len("tokenizer.ggml.token_type", types.size());
    v.types.resize(n);
    for (size_t k = 0; k < n; ++k) {
      if (types[k] < 0 || types[k] > 6) {
        fail("tokenizer.ggml.token_type[" + std::to_string(k) + "] is " + std::to_string(types[k]) +
             " (expected a llama token type 0..6)");
      }
      v.types[k] = static_cast<int32_t>(types[k]);
    }
  } else {
    fill_default_types(v);
  }
  return v;
}

std::vector<float> rope_tensor(const ModelFile& m, const std::string& name, int n_rot) {
  const TensorRef* t = m.find(name);
  if (!t) return {};
  const int64_t want = n_rot / 2;
  if (t->nelements() != want) {
    throw Error(m.path + ": tensor " + name + " has " + std::to_string(t->nelements()) +
                " elements (expected " + std::to_string(want) + ", n_rot / 2)");
  }
  std::vector<float> out(static_cast<size_t>(want));
  dequantize(t->type, t->data, out.data(), want);
  return out;
}

ModelFile load_gguf(std::shared_ptr<const GgufFile> g) {
  const std::string& path = g->path();
  auto fail = [&](const std::string& what) { throw Error(path + ": " + what); };
  ModelFile m;
  m.path = path;
  m.format = "gguf";
  m.gguf = g;
  m.keep_alive.push_back(g);

  const std::string arch = g->get<std::string>("general.architecture");
  if (arch != "llama") {
    fail("unsupported architecture \"" + arch + "\" in general.architecture (expected llama)");
  }
  const std::string a = arch + ".";
  HParams& hp = m.hp;
  hp.arch = arch;
  auto geti = [&](const std::string& key) { return to_int(path, key, g->get_int(key)); };
  hp.n_layer = geti(a + "block_count");
  hp.n_embd = geti(a + "embedding_length");
  hp.n_ff = geti(a + "feed_forward_length");
  hp.n_head = geti(a + "attention.head_count");
  hp.n_head_kv =
      g->has(a + "attention.head_count_kv") ? geti(a + "attention.head_count_kv") : hp.n_head;
  hp.n_ctx_train = geti(a + "context_length");
  if (g->has(a + "attention.key_length")) {
    hp.head_dim = geti(a + "attention.key_length");
    if (g->has(a + "attention.value_length") && geti(a + "attention.value_length") != hp.head_dim) {
      fail(a + "attention.value_length differs from " + a +
           "attention.key_length (expected equal key and value head sizes)");
    }
  } else {
    if (hp.n_head <= 0 || hp.n_embd % hp.n_head != 0) {
      fail(a + "embedding_length " + std::to_string(hp.n_embd) + " is not a multiple of " + a +
           "attention.head_count " + std::to_string(hp.n_head) +
           " (expected whole heads, or an attention.key_length key)");
    }
    hp.head_dim = hp.n_embd / hp.n_head;
  }
  hp.n_rot = g->has(a + "rope.dimension_count") ? geti(a + "rope.dimension_count") : hp.head_dim;
  hp.rope_base = g->get_number_opt(a + "rope.freq_base").value_or(10000.0);
  hp.norm_eps =
      static_cast<float>(g->get_number_opt(a + "attention.layer_norm_rms_epsilon").value_or(1e-5));

  m.vocab = read_gguf_vocab(*g);
  hp.n_vocab = static_cast<int>(m.vocab.tokens.size());
  if (auto vs = g->get_int_opt(a + "vocab_size"); vs && *vs != hp.n_vocab) {
    fail(a + "vocab_size is " + std::to_string(*vs) + " (expected " + std::to_string(hp.n_vocab) +
         ", the number of tokens in tokenizer.ggml.tokens)");
  }
  validate_hparams(path, hp, HpNames::gguf(arch));

  m.tensors.reserve(g->tensors().size());
  for (const auto& ti : g->tensors()) {
    TensorRef t;
    t.name = ti.name;
    t.type = static_cast<GgmlType>(ti.type);
    t.ne = ti.ne;
    t.data = ti.data;
    t.nbytes = ti.nbytes;
    m.tensors.push_back(std::move(t));
  }
  validate_tensors(m);

  RopeScalingMeta& r = m.rope;
  const std::string s = a + "rope.scaling.";
  r.type = g->get_opt<std::string>(s + "type").value_or("");
  r.factor = g->get_number_opt(s + "factor");
  if (r.type.empty() && !r.factor) {
    if (auto lin = g->get_number_opt(a + "rope.scale_linear")) {
      r.type = "linear";
      r.factor = *lin;
    }
  }
  r.original_context_length = g->get_int_opt(s + "original_context_length");
  r.attn_factor = g->get_number_opt(s + "attn_factor");
  r.yarn_beta_fast = g->get_number_opt(s + "yarn_beta_fast");
  r.yarn_beta_slow = g->get_number_opt(s + "yarn_beta_slow");
  r.yarn_ext_factor = g->get_number_opt(s + "yarn_ext_factor");
  r.yarn_log_multiplier = g->get_number_opt(s + "yarn_log_multiplier");
  r.rope_freqs = rope_tensor(m, "rope_freqs.weight", hp.n_rot);
  r.factors_long = rope_tensor(m, "rope_factors_long.weight", hp.n_rot);
  r.factors_short = rope_tensor(m, "rope_factors_short.weight", hp.n_rot);
  r.n_hat = g->get_int_opt("longrope.n_hat");
  r.short_max_len = g->get_int_opt("longrope.short_max_len");
  r.short_attn_factor = g->get_number_opt("longrope.short_attn_factor");
  return m;
}

ModelFile load_llama2c(const std::string& path, std::shared_ptr<const io::MappedFile> file,
                       const std::string& tokenizer_path) {
  Llama2cCheckpoint ck = parse_llama2c(file->data(), file->size(), path);
  if (tokenizer_path.empty()) {
    throw Error(path +
                ": llama2.c checkpoint needs a tokenizer (expected a tokenizer.bin path, "
                "e.g. tok512.bin)");
  }
  ModelFile m;
  m.path = path;
  m.format = "llama2c";
  m.hp = ck.hp;
  m.tensors = std::move(ck.tensors);
  m.keep_alive.push_back(file);
  for (auto& o : ck.owned) m.keep_alive.push_back(std::move(o));
  validate_hparams(path, m.hp, HpNames::llama2c());
  validate_tensors(m);

  auto tok = io::MappedFile::open(tokenizer_path);
  m.vocab = parse_llama2c_tokenizer(tok->data(), tok->size(), m.hp.n_vocab, tokenizer_path);
  return m;
}

}  // namespace

ModelFile io::model_from_gguf(std::shared_ptr<const GgufFile> g) {
  return load_gguf(std::move(g));
}

ModelFile load_model_file(const std::string& path, const std::string& tokenizer_path) {
  if (is_hf_folder(path)) {
    if (!tokenizer_path.empty())
      throw Error(path + ": a tokenizer file (" + tokenizer_path +
                  ") was given for an HF model folder, which carries its own tokenizer.json "
                  "(expected none; --tokenizer is for llama2.c checkpoints)");
    return load_hf_folder(path);
  }
  auto file = io::MappedFile::open(path);
  const uint8_t* d = file->data();
  const size_t n = file->size();
  if (n == 0) throw Error(path + ": file is empty (expected a GGUF or llama2.c model)");
  if (n >= 4 && std::memcmp(d, "GGUF", 4) == 0) {
    if (!tokenizer_path.empty())
      throw Error(path + ": a tokenizer file (" + tokenizer_path +
                  ") was given for a GGUF model, which carries its own (expected none; "
                  "--tokenizer is for llama2.c checkpoints)");
    file.reset();
    return load_gguf(GgufFile::open(path));
  }
  if (n >= 4 && std::memcmp(d, "FUGG", 4) == 0) {
    throw Error(path + ": big-endian GGUF file (expected a little-endian GGUF)");
  }
  if (llama2c_detect(d, n)) return load_llama2c(path, file, tokenizer_path);
  // A legacy llama2.c header with sane values but the wrong size: say so instead of "unknown".
  if (n >= 28) {
    int32_t h[7];
    std::memcpy(h, d, sizeof h);
    bool plausible = true;
    for (int k = 0; k < 7; ++k) {
      const int32_t v = k == 5 && h[k] < 0 && h[k] > -(1 << 24) ? -h[k] : h[k];
      plausible = plausible && v > 0 && v <= (1 << 24);
    }
    if (plausible && h[0] % h[3] == 0 && h[3] % h[4] == 0) {
      return load_llama2c(path, file, tokenizer_path);  // parse_llama2c names the size mismatch
    }
  }
  throw Error(path + ": unrecognized model format (expected a GGUF file or a llama2.c checkpoint)");
}

}  // namespace longrope
