#include "longrope/llama2c.h"

#include <cstring>
#include <limits>

#include "longrope/error.h"

namespace longrope {

namespace {

constexpr size_t kLegacyHeader = 7 * 4;
constexpr size_t kVersionedHeader = 256;
constexpr int kMaxParam = 1 << 24;  // any header field above this is not a real model

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Overflow-checked size arithmetic; returns false on overflow.
struct Size {
  uint64_t v = 0;
  bool ok = true;
  Size& add(uint64_t a) {
    ok = ok && !__builtin_add_overflow(v, a, &v);
    return *this;
  }
};
bool mul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}
uint64_t mul3(uint64_t a, uint64_t b, uint64_t c, bool* ok) {
  uint64_t r = 0;
  if (!mul(a, b, &r) || !mul(r, c, &r)) *ok = false;
  return r;
}

struct Shapes {
  uint64_t dim, hidden, L, vocab, q_out, kv_out, seq, head_dim;
};

// Reads the 7 params at p; vocab sign handled by the caller.
void read_params(const uint8_t* p, Llama2cConfig* c) {
  c->dim = load<int32_t>(p);
  c->hidden_dim = load<int32_t>(p + 4);
  c->n_layers = load<int32_t>(p + 8);
  c->n_heads = load<int32_t>(p + 12);
  c->n_kv_heads = load<int32_t>(p + 16);
  c->vocab_size = load<int32_t>(p + 20);
  c->seq_len = load<int32_t>(p + 24);
}

// Empty string if the params are plausible, else what is wrong.
std::string check_params(const Llama2cConfig& c) {
  auto bad = [](const char* what, int v, const std::string& expected) {
    return std::string(what) + " is " + std::to_string(v) + " (expected " + expected + ")";
  };
  const std::string range = "1.." + std::to_string(kMaxParam);
  if (c.dim <= 0 || c.dim > kMaxParam) return bad("dim", c.dim, range);
  if (c.hidden_dim <= 0 || c.hidden_dim > kMaxParam) return bad("hidden_dim", c.hidden_dim, range);
  if (c.n_layers <= 0 || c.n_layers > 65536) return bad("n_layers", c.n_layers, "1..65536");
  if (c.n_heads <= 0 || c.n_heads > c.dim || c.dim % c.n_heads != 0) {
    return bad("n_heads", c.n_heads, "a divisor of dim " + std::to_string(c.dim));
  }
  if (c.n_kv_heads <= 0 || c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0) {
    return bad("n_kv_heads", c.n_kv_heads, "a divisor of n_heads " + std::to_string(c.n_heads));
  }
  if ((c.dim / c.n_heads) % 2 != 0) {
    return bad("head_dim", c.dim / c.n_heads, "an even number (dim / n_heads)");
  }
  if (c.vocab_size <= 0 || c.vocab_size > kMaxParam) return bad("vocab_size", c.vocab_size, range);
  if (c.seq_len <= 0 || c.seq_len > kMaxParam) return bad("seq_len", c.seq_len, range);
  return "";
}

Shapes shapes_of(const Llama2cConfig& c) {
  Shapes s{};
  s.dim = static_cast<uint64_t>(c.dim);
  s.hidden = static_cast<uint64_t>(c.hidden_dim);
  s.L = static_cast<uint64_t>(c.n_layers);
  s.vocab = static_cast<uint64_t>(c.vocab_size);
  s.head_dim = s.dim / static_cast<uint64_t>(c.n_heads);
  s.q_out = s.dim;
  s.kv_out = static_cast<uint64_t>(c.n_kv_heads) * s.head_dim;
  s.seq = static_cast<uint64_t>(c.seq_len);
  return s;
}

// Float counts of the fp32 layouts (versions 0 and 1); ok false on overflow.
uint64_t fp32_floats(const Llama2cConfig& c, bool* ok) {
  const Shapes s = shapes_of(c);
  Size n;
  n.add(mul3(s.vocab, s.dim, 1, ok));                         // token embeddings
  n.add(mul3(s.L, s.dim, 2, ok));                             // attention_norm, ffn_norm
  n.add(mul3(s.L, s.dim, s.q_out, ok));                       // wq
  n.add(mul3(s.L, s.dim, s.kv_out, ok));                      // wk
  n.add(mul3(s.L, s.dim, s.kv_out, ok));                      // wv
  n.add(mul3(s.L, s.q_out, s.dim, ok));                       // wo
  n.add(mul3(s.L, s.dim, s.hidden, ok));                      // w1
  n.add(mul3(s.L, s.hidden, s.dim, ok));                      // w2
  n.add(mul3(s.L, s.dim, s.hidden, ok));                      // w3
  n.add(s.dim);                                               // final norm
  if (c.version == 0) n.add(mul3(s.seq, s.head_dim, 1, ok));  // freq_cis real + imag
  if (!c.shared_classifier) n.add(mul3(s.vocab, s.dim, 1, ok));
  if (!n.ok) *ok = false;
  return n.v;
}

// Expected file size, or 0 on overflow.
uint64_t expected_size(const Llama2cConfig& c) {
  bool ok = true;
  if (c.version == 2) {
    const Shapes s = shapes_of(c);
    const uint64_t gs = static_cast<uint64_t>(c.group_size);
    Size n;
    n.add(kVersionedHeader);
    n.add(4 * (mul3(s.L, s.dim, 2, &ok) + s.dim));
    auto q = [&](uint64_t count, uint64_t numel) {
      // int8 values + one fp32 scale per group
      n.add(mul3(count, numel, 1, &ok));
      n.add(mul3(count, numel / gs, 4, &ok));
    };
    q(1, mul3(s.vocab, s.dim, 1, &ok));
    q(s.L, mul3(s.dim, s.q_out, 1, &ok));
    q(s.L, mul3(s.dim, s.kv_out, 1, &ok));
    q(s.L, mul3(s.dim, s.kv_out, 1, &ok));
    q(s.L, mul3(s.q_out, s.dim, 1, &ok));
    q(s.L, mul3(s.dim, s.hidden, 1, &ok));
    q(s.L, mul3(s.hidden, s.dim, 1, &ok));
    q(s.L, mul3(s.dim, s.hidden, 1, &ok));
    if (!c.shared_classifier) q(1, mul3(s.vocab, s.dim, 1, &ok));
    return ok && n.ok ? n.v : 0;
  }
  const uint64_t floats = fp32_floats(c, &ok);
  uint64_t bytes = 0;
  Size n;
  n.add(c.header_bytes);
  if (!mul(floats, 4, &bytes)) ok = false;
  n.add(bytes);
  return ok && n.ok ? n.v : 0;
}

bool parse_legacy_header(const uint8_t* data, size_t size, Llama2cConfig* c) {
  if (size < kLegacyHeader) return false;
  read_params(data, c);
  c->version = 0;
  c->header_bytes = kLegacyHeader;
  c->shared_classifier = c->vocab_size > 0;
  if (c->vocab_size < 0 && c->vocab_size != std::numeric_limits<int32_t>::min()) {
    c->vocab_size = -c->vocab_size;
  }
  return true;
}

std::string layer_name(uint64_t l, const char* what) {
  return "blk." + std::to_string(l) + "." + what + ".weight";
}

}  // namespace

bool llama2c_detect(const uint8_t* data, size_t size) {
  if (size >= 4 && load<uint32_t>(data) == kLlama2cMagic) return true;
  Llama2cConfig c;
  if (!parse_legacy_header(data, size, &c) || !check_params(c).empty()) return false;
  return expected_size(c) == size;
}

Llama2cCheckpoint parse_llama2c(const uint8_t* data, size_t size, const std::string& name) {
  auto fail = [&](const std::string& what) -> Error { return Error(name + ": " + what); };
  Llama2cCheckpoint ck;
  Llama2cConfig& c = ck.config;
  if (size >= 4 && load<uint32_t>(data) == kLlama2cMagic) {
    if (size < kVersionedHeader) {
      throw fail("truncated llama2.c header: " + std::to_string(size) + " bytes (expected " +
                 std::to_string(kVersionedHeader) + ")");
    }
    c.version = load<int32_t>(data + 4);
    if (c.version != 1 && c.version != 2) {
      throw fail("unsupported llama2.c checkpoint version " + std::to_string(c.version) +
                 " (expected version 1 or 2)");
    }
    read_params(data + 8, &c);
    c.header_bytes = kVersionedHeader;
    const uint8_t flag = data[36];
    if (flag > 1) {
      throw fail("shared_classifier flag is " + std::to_string(flag) + " (expected 0 or 1)");
    }
    c.shared_classifier = flag == 1;
    if (c.version == 2) {
      c.group_size = load<int32_t>(data + 37);
      if (c.group_size <= 0 || c.group_size > kMaxParam) {
        throw fail("group_size is " + std::to_string(c.group_size) + " (expected 1.." +
                   std::to_string(kMaxParam) + ")");
      }
    }
  } else {
    if (!parse_legacy_header(data, size, &c)) {
      throw fail("file of " + std::to_string(size) +
                 " bytes is too small for a llama2.c checkpoint (expected at least 28)");
    }
  }
  if (std::string why = check_params(c); !why.empty()) {
    throw fail("invalid llama2.c header: " + why);
  }
  if (c.version == 2) {
    // Every quantized tensor's element count must split into whole groups (export.py backs the
    // group size off until it divides dim).
    const uint64_t gs = static_cast<uint64_t>(c.group_size);
    const Shapes s = shapes_of(c);
    if (s.dim % gs != 0 || (s.dim * s.hidden) % gs != 0 || (s.dim * s.kv_out) % gs != 0) {
      throw fail("group_size " + std::to_string(c.group_size) +
                 " does not divide the weight sizes (expected a divisor of dim " +
                 std::to_string(c.dim) + ")");
    }
  }
  const uint64_t expect = expected_size(c);
  if (expect == 0)
    throw fail("llama2.c header implies an impossible file size (expected sane params)");
  if (expect != size) {
    throw fail("llama2.c checkpoint (version " + std::to_string(c.version) + ", dim " +
               std::to_string(c.dim) + ", " + std::to_string(c.n_layers) + " layers, vocab " +
               std::to_string(c.vocab_size) + ") is " + std::to_string(size) + " bytes (expected " +
               std::to_string(expect) + ")");
  }

  const Shapes s = shapes_of(c);
  HParams& hp = ck.hp;
  hp.arch = "llama";
  hp.n_layer = c.n_layers;
  hp.n_embd = c.dim;
  hp.n_head = c.n_heads;
  hp.n_head_kv = c.n_kv_heads;
  hp.head_dim = c.dim / c.n_heads;
  hp.n_ff = c.hidden_dim;
  hp.n_vocab = c.vocab_size;
  hp.n_ctx_train = c.seq_len;
  hp.n_rot = hp.head_dim;
  hp.rope_base = 10000.0;
  hp.norm_eps = 1e-5f;

  const int64_t D = c.dim, H = c.hidden_dim, V = c.vocab_size, Q = static_cast<int64_t>(s.q_out),
                KV = static_cast<int64_t>(s.kv_out);
  auto& out = ck.tensors;

  if (c.version == 0 || c.version == 1) {
    const uint8_t* p = data + c.header_bytes;
    auto take = [&](const std::string& tname, std::vector<int64_t> ne) {
      TensorRef t;
      t.name = tname;
      t.type = GgmlType::F32;
      t.ne = std::move(ne);
      t.data = p;
      t.nbytes = static_cast<size_t>(t.nelements()) * 4;
      p += t.nbytes;
      out.push_back(std::move(t));
    };
    auto per_layer = [&](const char* what, std::vector<int64_t> ne) {
      for (uint64_t l = 0; l < s.L; ++l) take(layer_name(l, what), ne);
    };
    if (c.version == 0) {
      take("token_embd.weight", {D, V});
      per_layer("attn_norm", {D});
      per_layer("attn_q", {D, Q});
      per_layer("attn_k", {D, KV});
      per_layer("attn_v", {D, KV});
      per_layer("attn_output", {Q, D});
      per_layer("ffn_norm", {D});
      per_layer("ffn_gate", {D, H});
      per_layer("ffn_down", {H, D});
      per_layer("ffn_up", {D, H});
      take("output_norm.weight", {D});
      p += s.seq * s.head_dim * 4;  // freq_cis_real, freq_cis_imag (unused)
    } else {
      per_layer("attn_norm", {D});
      per_layer("ffn_norm", {D});
      take("output_norm.weight", {D});
      take("token_embd.weight", {D, V});
      per_layer("attn_q", {D, Q});
      per_layer("attn_k", {D, KV});
      per_layer("attn_v", {D, KV});
      per_layer("attn_output", {Q, D});
      per_layer("ffn_gate", {D, H});
      per_layer("ffn_down", {H, D});
      per_layer("ffn_up", {D, H});
    }
    if (!c.shared_classifier) take("output.weight", {D, V});
    return ck;
  }

  // Version 2: fp32 norms, then each matrix as int8 values + fp32 group scales, dequantized.
  const uint8_t* p = data + c.header_bytes;
  auto take_f32 = [&](const std::string& tname, int64_t n) {
    TensorRef t;
    t.name = tname;
    t.type = GgmlType::F32;
    t.ne = {n};
    t.data = p;
    t.nbytes = static_cast<size_t>(n) * 4;
    p += t.nbytes;
    out.push_back(std::move(t));
  };
  for (uint64_t l = 0; l < s.L; ++l) take_f32(layer_name(l, "attn_norm"), D);
  for (uint64_t l = 0; l < s.L; ++l) take_f32(layer_name(l, "ffn_norm"), D);
  take_f32("output_norm.weight", D);
  const size_t gs = static_cast<size_t>(c.group_size);
  auto take_q = [&](const std::string& tname, std::vector<int64_t> ne) {
    const size_t n = static_cast<size_t>(ne[0] * ne[1]);
    const auto* q = reinterpret_cast<const int8_t*>(p);
    const uint8_t* scales = p + n;
    p += n + n / gs * 4;
    auto buf = std::make_shared<std::vector<float>>(n);
    float* y = buf->data();
    for (size_t g = 0; g < n / gs; ++g) {
      const float sc = load<float>(scales + 4 * g);
      for (size_t k = 0; k < gs; ++k) y[g * gs + k] = static_cast<float>(q[g * gs + k]) * sc;
    }
    TensorRef t;
    t.name = tname;
    t.type = GgmlType::F32;
    t.ne = std::move(ne);
    t.data = reinterpret_cast<const uint8_t*>(buf->data());
    t.nbytes = n * 4;
    ck.owned.push_back(buf);
    out.push_back(std::move(t));
  };
  auto per_layer_q = [&](const char* what, std::vector<int64_t> ne) {
    for (uint64_t l = 0; l < s.L; ++l) take_q(layer_name(l, what), ne);
  };
  take_q("token_embd.weight", {D, V});
  per_layer_q("attn_q", {D, Q});
  per_layer_q("attn_k", {D, KV});
  per_layer_q("attn_v", {D, KV});
  per_layer_q("attn_output", {Q, D});
  per_layer_q("ffn_gate", {D, H});
  per_layer_q("ffn_down", {H, D});
  per_layer_q("ffn_up", {D, H});
  if (!c.shared_classifier) take_q("output.weight", {D, V});
  return ck;
}

// ---------------------------------------------------------------------------------------------
// tokenizer.bin

namespace {

const char kSpaceMarker[] = "\xe2\x96\x81";  // U+2581, SentencePiece's whitespace

bool is_byte_token(const std::string& t) {
  auto hex = [](char ch) { return (ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'F'); };
  return t.size() == 6 && t[0] == '<' && t[1] == '0' && t[2] == 'x' && hex(t[3]) && hex(t[4]) &&
         t[5] == '>';
}

// The UTF-8 bytes of code point b (0..255), as Python's chr(b).encode('utf-8').
std::string utf8_of_byte(unsigned b) {
  if (b < 0x80) return std::string(1, static_cast<char>(b));
  return {static_cast<char>(0xc0 | (b >> 6)), static_cast<char>(0x80 | (b & 0x3f))};
}

std::string byte_token(unsigned b) {
  static const char kHex[] = "0123456789ABCDEF";
  return std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">";
}

}  // namespace

VocabSpec parse_llama2c_tokenizer(const uint8_t* data, size_t size, int n_vocab,
                                  const std::string& name) {
  auto fail = [&](const std::string& what) -> Error { return Error(name + ": " + what); };
  if (n_vocab <= 0) {
    throw fail("tokenizer requested for a vocabulary of " + std::to_string(n_vocab) +
               " tokens (expected at least 1)");
  }
  if (size < 4) {
    throw fail("tokenizer file of " + std::to_string(size) +
               " bytes is too small (expected a llama2.c tokenizer.bin)");
  }
  const int32_t max_len = load<int32_t>(data);
  if (max_len <= 0) {
    throw fail("tokenizer max_token_length is " + std::to_string(max_len) +
               " (expected a positive length)");
  }
  VocabSpec v;
  v.kind = VocabSpec::Kind::kSpm;
  // n_vocab tokens need at least 8 bytes each: bound the reservation by the file size.
  const size_t n = static_cast<size_t>(n_vocab);
  v.tokens.reserve(std::min(n, (size - 4) / 8));
  v.scores.reserve(std::min(n, (size - 4) / 8));
  size_t pos = 4;
  for (size_t id = 0; id < n; ++id) {
    if (size - pos < 8) {
      throw fail("tokenizer ends after " + std::to_string(id) + " tokens (expected " +
                 std::to_string(n) + ", the model's vocab_size)");
    }
    const float score = load<float>(data + pos);
    const int32_t len = load<int32_t>(data + pos + 4);
    pos += 8;
    if (len < 0 || static_cast<size_t>(len) > size - pos) {
      throw fail("token " + std::to_string(id) + " claims " + std::to_string(len) +
                 " bytes at offset " + std::to_string(pos) + " (expected a length within the " +
                 std::to_string(size - pos) + " remaining bytes)");
    }
    v.tokens.emplace_back(reinterpret_cast<const char*>(data + pos), static_cast<size_t>(len));
    v.scores.push_back(score);
    pos += static_cast<size_t>(len);
  }
  if (pos != size) {
    throw fail("tokenizer has " + std::to_string(size - pos) + " bytes after token " +
               std::to_string(n - 1) + " (expected exactly " + std::to_string(n) +
               " tokens, the model's vocab_size)");
  }

  // Undo export.py's post-processing so the strings match the GGUF vocabulary.
  for (auto& t : v.tokens) {
    if (t == "\n<s>\n") t = "<s>";
    if (t == "\n</s>\n") t = "</s>";
  }
  if (n >= 259 && v.tokens[3] != "<0x00>") {
    bool raw_bytes = true;
    for (unsigned b = 0; b < 256 && raw_bytes; ++b) raw_bytes = v.tokens[3 + b] == utf8_of_byte(b);
    if (raw_bytes) {
      for (unsigned b = 0; b < 256; ++b) v.tokens[3 + b] = byte_token(b);
    }
  }
  v.types.resize(n, 1);
  for (size_t id = 0; id < n; ++id) {
    std::string& t = v.tokens[id];
    if (is_byte_token(t)) {
      v.types[id] = 6;
      continue;
    }
    if (id == 0) v.types[id] = 2;
    if (id == 1 || id == 2) v.types[id] = 3;
    if (t.find(' ') != std::string::npos) {
      std::string r;
      r.reserve(t.size() + 8);
      for (char ch : t) {
        if (ch == ' ') {
          r += kSpaceMarker;
        } else {
          r += ch;
        }
      }
      t = std::move(r);
    }
  }
  v.bos = n > 1 ? 1 : -1;
  v.eos = n > 2 ? 2 : -1;
  v.unk = 0;
  v.pad = -1;
  v.eot = -1;
  v.add_bos = true;
  v.add_eos = false;
  v.add_space_prefix = true;
  v.pre = "default";
  return v;
}

}  // namespace longrope
