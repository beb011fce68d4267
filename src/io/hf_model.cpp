// Hugging Face model folders (include/longrope/hf.h): reading into a ModelFile under GGUF names.
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "io/model_file_internal.h"
#include "longrope/error.h"
#include "longrope/hf.h"
#include "longrope/hf_tokenizer.h"
#include "longrope/rope.h"
#include "longrope/safetensors.h"
#include "util/json_fields.h"

namespace longrope {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json read_json(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open", p.string()));
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON ({})", p.string(), e.what()));
  }
}

std::optional<json> read_json_opt(const fs::path& p) {
  std::error_code ec;
  if (!fs::exists(p, ec)) return std::nullopt;
  return read_json(p);
}

// Typed config fields, with the project's JSON field rules and errors ("<file>: <key>: ...").
struct Config {
  const json& j;
  std::string src;
  std::optional<int64_t> opt_int(const char* key) const {
    return json_fields::opt_int(j, key, src, "");
  }
  int64_t req_int(const char* key) const {
    if (auto v = opt_int(key)) return *v;
    json_fields::field_error(src, key, "missing; expected an integer");
  }
  std::optional<double> opt_num(const char* key) const {
    return json_fields::opt_number(j, key, src, "");
  }
  std::optional<bool> opt_bool(const char* key) const {
    return json_fields::opt_bool(j, key, src, "");
  }
  std::optional<std::string> opt_str(const char* key) const {
    return json_fields::opt_string(j, key, src, "");
  }
};

int to_int32(const Config& c, const char* key, int64_t v) {
  if (v < INT32_MIN || v > INT32_MAX)
    throw Error(fmt::format("{}: {} is {} (expected a value that fits in 32 bits)", c.src, key, v));
  return static_cast<int>(v);
}

const std::set<std::string> kModelTypes = {"llama", "mistral", "qwen2", "phi3"};

}  // namespace

std::vector<uint8_t> io::permute_rotary_rows(const uint8_t* src, int64_t heads, int64_t head_dim,
                                             int n_rot, size_t row_bytes, bool to_interleaved) {
  std::vector<uint8_t> out(static_cast<size_t>(heads * head_dim) * row_bytes);
  const int64_t half = n_rot / 2;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t r = 0; r < head_dim; ++r) {
      // Interleaved row r holds half-split row `split`.
      const int64_t split = r < n_rot ? (r % 2) * half + r / 2 : r;
      const int64_t from = h * head_dim + (to_interleaved ? split : r);
      const int64_t to = h * head_dim + (to_interleaved ? r : split);
      std::memcpy(out.data() + to * row_bytes, src + from * row_bytes, row_bytes);
    }
  }
  return out;
}

bool is_hf_folder(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

namespace {

// The model_type of a config.json object (one longrope supports).
std::string read_model_type(const json& cfg, const Config& c) {
  if (!cfg.is_object()) throw Error(fmt::format("{}: expected a JSON object", c.src));
  const std::string type = c.opt_str("model_type").value_or("");
  if (!kModelTypes.count(type))
    throw Error(fmt::format(
        "{}: model_type \"{}\" is not supported (expected llama, mistral, qwen2 or phi3)", c.src,
        type));
  return type;
}

// The shape, RoPE and norm hyperparameters of config.json (n_vocab left for later).
HParams read_hparams(const json& cfg, const Config& c, const std::string& type) {
  HParams hp;
  hp.arch = type;
  hp.n_layer = to_int32(c, "num_hidden_layers", c.req_int("num_hidden_layers"));
  hp.n_embd = to_int32(c, "hidden_size", c.req_int("hidden_size"));
  hp.n_ff = to_int32(c, "intermediate_size", c.req_int("intermediate_size"));
  hp.n_head = to_int32(c, "num_attention_heads", c.req_int("num_attention_heads"));
  hp.n_head_kv =
      to_int32(c, "num_key_value_heads", c.opt_int("num_key_value_heads").value_or(hp.n_head));
  hp.n_ctx_train = to_int32(c, "max_position_embeddings", c.req_int("max_position_embeddings"));
  if (auto hd = c.opt_int("head_dim")) {
    hp.head_dim = to_int32(c, "head_dim", *hd);
  } else {
    if (hp.n_head <= 0 || hp.n_embd % hp.n_head != 0)
      throw Error(
          fmt::format("{}: hidden_size {} is not a multiple of num_attention_heads {} "
                      "(expected whole heads, or a head_dim key)",
                      c.src, hp.n_embd, hp.n_head));
    hp.head_dim = hp.n_embd / hp.n_head;
  }
  const double prf = c.opt_num("partial_rotary_factor").value_or(1.0);
  if (!(prf > 0.0 && prf <= 1.0))
    throw Error(
        fmt::format("{}: partial_rotary_factor {} (expected a number in (0, 1])", c.src, prf));
  hp.n_rot = static_cast<int>(std::lround(hp.head_dim * prf));
  std::optional<double> theta = c.opt_num("rope_theta");
  if (!theta && cfg.contains("rope_parameters") && cfg["rope_parameters"].is_object()) {
    const json& rp = cfg["rope_parameters"];  // transformers v5 keeps rope_theta here
    if (rp.contains("rope_theta") && rp["rope_theta"].is_number())
      theta = rp["rope_theta"].get<double>();
  }
  hp.rope_base = theta.value_or(10000.0);
  hp.norm_eps = static_cast<float>(c.opt_num("rms_norm_eps").value_or(1e-6));
  return hp;
}

// Refuses what the config asks for that the engine lacks: another activation, MLP biases,
// sliding-window attention.
void check_supported_layers(const Config& c, const std::string& type, int n_ctx_train) {
  for (const char* key : {"hidden_act", "hidden_activation"}) {
    if (auto act = c.opt_str(key); act && *act != "silu")
      throw Error(fmt::format("{}: {} is \"{}\" (expected silu: a SwiGLU MLP)", c.src, key, *act));
  }
  if (c.opt_bool("mlp_bias").value_or(false))
    throw Error(
        fmt::format("{}: mlp_bias is true (expected false: MLP biases are not supported)", c.src));
  if (type == "qwen2" && c.opt_bool("use_sliding_window").value_or(false))
    throw Error(fmt::format(
        "{}: use_sliding_window is true (expected false: sliding-window attention is not "
        "supported)",
        c.src));
  if (type == "mistral" || type == "phi3") {
    if (auto sw = c.opt_int("sliding_window"); sw && *sw < n_ctx_train)
      throw Error(fmt::format(
          "{}: sliding_window {} is shorter than max_position_embeddings {} (expected null: "
          "sliding-window attention is not supported)",
          c.src, *sw, n_ctx_train));
  }
}

// The vocabulary of the folder's tokenizer.json (with tokenizer_config.json when present).
VocabSpec read_folder_vocab(const fs::path& d, const std::string& dir, const json& cfg,
                            int64_t n_vocab) {
  std::error_code ec;
  const fs::path tok_path = d / "tokenizer.json";
  if (!fs::exists(tok_path, ec))
    throw Error(fmt::format(
        "{}: no tokenizer.json (expected the fast tokenizer file; tokenizer.model alone is not "
        "supported)",
        dir));
  const json tok = read_json(tok_path);
  const json tok_cfg = read_json_opt(d / "tokenizer_config.json").value_or(json());
  return vocab_from_hf_tokenizer(tok, tok_cfg, cfg, n_vocab, tok_path.string());
}

// The safetensors files of a folder, and which file holds each tensor (empty for a single
// model.safetensors).
struct WeightFiles {
  std::map<std::string, std::string> where;  // tensor -> file
  std::vector<std::string> files;
};

// The weight files: model.safetensors, or the shards an index names.
WeightFiles weight_files(const fs::path& d, const std::string& dir) {
  WeightFiles w;
  std::error_code ec;
  if (fs::exists(d / "model.safetensors", ec)) {
    w.files.push_back("model.safetensors");
  } else if (auto idx = read_json_opt(d / "model.safetensors.index.json")) {
    const std::string isrc = (d / "model.safetensors.index.json").string();
    if (!idx->is_object() || !idx->contains("weight_map") || !(*idx)["weight_map"].is_object())
      throw Error(fmt::format("{}: weight_map missing (expected tensor -> file)", isrc));
    std::set<std::string> distinct;
    for (const auto& [name, file] : (*idx)["weight_map"].items()) {
      if (!file.is_string() || file.get<std::string>().find('/') != std::string::npos)
        throw Error(fmt::format("{}: weight_map.{} is {} (expected a file name in the folder)",
                                isrc, name, file.dump()));
      w.where[name] = file.get<std::string>();
      distinct.insert(file.get<std::string>());
    }
    w.files.assign(distinct.begin(), distinct.end());
  } else {
    throw Error(fmt::format(
        "{}: no model.safetensors or model.safetensors.index.json (expected safetensors "
        "weights; PyTorch .bin files are not supported)",
        dir));
  }
  return w;
}

// Opens the weight files (kept alive by m) and returns their tensors by HF name, each from the
// file the index places it in.
std::map<std::string, const SafetensorsTensor*> open_weights(const fs::path& d,
                                                             const WeightFiles& w, ModelFile& m) {
  std::map<std::string, const SafetensorsTensor*> st;
  for (const std::string& f : w.files) {
    auto file = SafetensorsFile::open((d / f).string());
    for (const SafetensorsTensor& t : file->tensors()) {
      if (!w.where.empty()) {
        const auto it = w.where.find(t.name);
        if (it == w.where.end() || it->second != f) continue;  // not this shard's to give
      }
      if (!st.emplace(t.name, &t).second)
        throw Error(fmt::format("{}: tensor {} appears twice", (d / f).string(), t.name));
    }
    m.keep_alive.push_back(file);
  }
  for (const auto& [name, file] : w.where)
    if (!st.count(name))
      throw Error(
          fmt::format("{}: tensor {} not found (model.safetensors.index.json places it "
                      "there)",
                      (d / file).string(), name));
  return st;
}

// The rows of a safetensors tensor (its first dimension; 1 for a scalar).
int64_t rows_of(const SafetensorsTensor& t) {
  return t.shape.empty() ? 1 : t.shape[0];
}

// Adds GGUF tensor `name` to m: `rows` rows of t from row0, its rotary rows reordered from HF's
// half-split layout to interleaved pairs when permute_heads (the heads they hold) is above 0.
void add_tensor(ModelFile& m, const std::string& dir, const std::string& name,
                const SafetensorsTensor& t, int64_t row0, int64_t rows, int64_t permute_heads) {
  const int64_t hd = m.hp.head_dim;
  TensorRef r;
  r.name = name;
  r.type = t.type;
  const int64_t cols = t.shape.size() >= 2 ? t.shape.back() : 1;
  const size_t row_bytes = static_cast<size_t>(cols) * ggml_type_size(t.type);
  r.ne = t.shape.size() >= 2 ? std::vector<int64_t>{cols, rows} : std::vector<int64_t>{rows};
  r.data = t.data + static_cast<size_t>(row0) * row_bytes;
  r.nbytes = static_cast<size_t>(rows) * row_bytes;
  if (permute_heads > 0) {
    if (rows != permute_heads * hd)
      throw Error(fmt::format("{}: tensor {} has {} rows (expected {} heads x head_dim {})", dir,
                              t.name, rows, permute_heads, hd));
    auto buf = std::make_shared<std::vector<uint8_t>>(
        io::permute_rotary_rows(r.data, permute_heads, hd, m.hp.n_rot, row_bytes, true));
    r.data = buf->data();
    m.keep_alive.push_back(buf);
  }
  if (m.find(name))
    throw Error(fmt::format("{}: {} is given twice (by {} and another tensor)", dir, name, t.name));
  m.tensors.push_back(std::move(r));
}

// The layer of a "model.layers.N.<rest>" name (-1 for another name), with `dot` set to the dot
// before <rest>.
int layer_of(const std::string& name, size_t& dot) {
  const std::string pre = "model.layers.";
  dot = std::string::npos;
  int layer = -1;
  if (name.rfind(pre, 0) == 0) {
    dot = name.find('.', pre.size());
    const std::string num = name.substr(pre.size(), dot - pre.size());
    if (dot != std::string::npos && !num.empty() && num.size() < 7 &&
        num.find_first_not_of("0123456789") == std::string::npos)
      layer = std::stoi(num);
  }
  return layer;
}

// Adds layer `layer`'s tensor `s` (name without "model.layers.N.") under its GGUF name(s),
// splitting Phi-3's fused q/k/v and gate/up matrices.
void add_layer_tensor(ModelFile& m, const std::string& dir, const std::string& type,
                      const std::string& name, const SafetensorsTensor& t, int layer,
                      const std::string& s) {
  const HParams& hp = m.hp;
  const int64_t hd = hp.head_dim, qrows = int64_t{hp.n_head} * hd,
                kvrows = int64_t{hp.n_head_kv} * hd;
  const std::string b = fmt::format("blk.{}.", layer);
  const int64_t R = rows_of(t);
  const io::HfLayerTensor* known = nullptr;
  for (const io::HfLayerTensor& e : io::kHfLayerTensors)
    if (s == e.hf) known = &e;
  if (known)
    add_tensor(m, dir, b + known->gguf, t, 0, R, io::rotary_heads(known->rotary, hp));
  else if (s == "self_attn.qkv_proj.weight") {  // Phi-3: [q; k; v] rows
    if (R != qrows + 2 * kvrows)
      throw Error(fmt::format("{}: tensor {} has {} rows (expected q {} + k {} + v {})", dir, name,
                              R, qrows, kvrows, kvrows));
    add_tensor(m, dir, b + "attn_q.weight", t, 0, qrows, hp.n_head);
    add_tensor(m, dir, b + "attn_k.weight", t, qrows, kvrows, hp.n_head_kv);
    add_tensor(m, dir, b + "attn_v.weight", t, qrows + kvrows, kvrows, 0);
  } else if (s == "mlp.gate_up_proj.weight") {  // Phi-3: [gate; up] rows
    if (R != 2 * int64_t{hp.n_ff})
      throw Error(fmt::format("{}: tensor {} has {} rows (expected 2 x intermediate_size {})", dir,
                              name, R, hp.n_ff));
    add_tensor(m, dir, b + "ffn_gate.weight", t, 0, hp.n_ff, 0);
    add_tensor(m, dir, b + "ffn_up.weight", t, hp.n_ff, hp.n_ff, 0);
  } else if (s == "self_attn.rotary_emb.inv_freq") {
    // A buffer some old checkpoints saved; the frequencies come from the config.
  } else {
    throw Error(
        fmt::format("{}: tensor {} is not supported for model_type {} (expected the "
                    "Llama layer weights{})",
                    dir, name, type, type == "qwen2" ? " and q/k/v biases" : ""));
  }
}

// Adds the HF tensors to m under GGUF names and layouts.
void add_hf_tensors(ModelFile& m, const std::string& dir, const std::string& type,
                    const std::map<std::string, const SafetensorsTensor*>& st) {
  for (const auto& [name, tp] : st) {
    const SafetensorsTensor& t = *tp;
    if (t.shape.empty() || t.shape.size() > 2)
      throw Error(fmt::format("{}: tensor {} has {} dimensions (expected 1 or 2)", dir, name,
                              t.shape.size()));
    if (name == "model.embed_tokens.weight") {
      add_tensor(m, dir, "token_embd.weight", t, 0, rows_of(t), 0);
      continue;
    }
    if (name == "model.norm.weight") {
      add_tensor(m, dir, "output_norm.weight", t, 0, rows_of(t), 0);
      continue;
    }
    if (name == "lm_head.weight") {
      add_tensor(m, dir, "output.weight", t, 0, rows_of(t), 0);
      continue;
    }
    size_t dot = std::string::npos;
    const int layer = layer_of(name, dot);
    if (layer < 0) {
      throw Error(
          fmt::format("{}: tensor {} is not a weight of a {} model (expected "
                      "model.embed_tokens, model.layers.N.*, model.norm, lm_head)",
                      dir, name, type));
    }
    if (layer >= m.hp.n_layer)
      throw Error(
          fmt::format("{}: tensor {} is beyond num_hidden_layers {}", dir, name, m.hp.n_layer));
    add_layer_tensor(m, dir, type, name, t, layer, name.substr(dot + 1));
  }
}

}  // namespace

ModelFile load_hf_folder(const std::string& dir) {
  const fs::path d(dir);
  const fs::path cfg_path = d / "config.json";
  std::error_code ec;
  if (!fs::exists(cfg_path, ec))
    throw Error(fmt::format(
        "{}: no config.json (expected a Hugging Face model folder: config.json, safetensors "
        "weights, tokenizer.json)",
        dir));
  const json cfg = read_json(cfg_path);
  const Config c{cfg, cfg_path.string()};
  const std::string type = read_model_type(cfg, c);

  ModelFile m;
  m.path = dir;
  m.format = "hf";
  HParams& hp = m.hp;
  hp = read_hparams(cfg, c, type);
  check_supported_layers(c, type, hp.n_ctx_train);
  const auto vocab_size = c.opt_int("vocab_size");
  hp.n_vocab = vocab_size ? to_int32(c, "vocab_size", *vocab_size) : 0;

  m.vocab = read_folder_vocab(d, dir, cfg, hp.n_vocab);
  hp.n_vocab = static_cast<int>(m.vocab.tokens.size());
  io::validate_hparams(
      c.src, hp,
      io::HpNames{"num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings",
                  "head_dim x partial_rotary_factor", "rope_theta", "rms_norm_eps", "head_dim"});

  add_hf_tensors(m, dir, type, open_weights(d, weight_files(d, dir), m));
  if (!m.find("output.weight") && c.opt_bool("tie_word_embeddings") == false)
    throw Error(
        fmt::format("{}: tie_word_embeddings is false but there is no lm_head.weight", c.src));
  io::validate_tensors(m);
  m.hf_config = cfg.dump();
  (void)rope_of_model_file(m);  // the rope_scaling is checked at load, like GGUF's metadata
  return m;
}

}  // namespace longrope
