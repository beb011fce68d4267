// libFuzzer target: arbitrary bytes as a GGUF file. Parsing must either succeed or throw
// longrope::Error; on success every key and tensor is walked, small tensors are dequantized, the
// file goes through the llama model loader, and a GgufWriter copy must parse back identically.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "io/model_file_internal.h"
#include "longrope/error.h"
#include "longrope/gguf.h"
#include "longrope/quant.h"

using namespace longrope;

namespace {

volatile uint64_t g_sink;

void walk_value(const GgufFile& g, const std::string& key, const GgufValue& v) {
  g_sink = g_sink + v.to_string().size();
  try {
    g_sink = g_sink + static_cast<uint64_t>(g.get_int(key));
  } catch (const Error&) {
  }
  try {
    g_sink = g_sink + (g.get_number(key) > 0.0 ? 1 : 0);
  } catch (const Error&) {
  }
  if (v.type == GgufType::ARRAY) {
    try {
      g_sink = g_sink + g.get_string_array(key).size();
    } catch (const Error&) {
    }
    try {
      g_sink = g_sink + g.get_float_array(key).size();
    } catch (const Error&) {
    }
    try {
      g_sink = g_sink + g.get_int_array(key).size();
    } catch (const Error&) {
    }
  }
}

void touch_tensors(const std::vector<TensorRef>& ts) {
  std::vector<float> buf;
  for (const auto& t : ts) {
    if (t.nbytes) g_sink = g_sink + t.data[0] + t.data[t.nbytes - 1];
    if (!ggml_type_supported(static_cast<uint32_t>(t.type))) continue;
    const int64_t n = t.nelements();
    if (n <= 0 || n > (1 << 20)) continue;
    buf.resize(static_cast<size_t>(n));
    dequantize(t.type, t.data, buf.data(), n);
    g_sink = g_sink + static_cast<uint64_t>(buf[0] == buf[0]);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::shared_ptr<GgufFile> g;
  try {
    g = GgufFile::from_memory(data, size, "fuzz.gguf");
  } catch (const Error&) {
    return 0;
  }
  for (const auto& kv : g->metadata()) walk_value(*g, kv.key, kv.value);
  std::vector<TensorRef> refs;
  for (const auto& t : g->tensors()) {
    if (t.nbytes) g_sink = g_sink + t.data[0] + t.data[t.nbytes - 1];
    if (!ggml_type_supported(t.type)) continue;
    refs.push_back({t.name, static_cast<GgmlType>(t.type), t.ne, t.data, t.nbytes});
  }
  touch_tensors(refs);

  // The model loader on top (hparams, vocab, shapes): Error or a consistent model.
  try {
    ModelFile m = io::model_from_gguf(g);
    touch_tensors(m.tensors);
    g_sink = g_sink + m.vocab.tokens.size() + m.rope.rope_freqs.size();
  } catch (const Error&) {
  }

  // Writer round trip: what was read must be written and read back unchanged.
  GgufWriter w;
  w.copy_from(g);
  const std::vector<uint8_t> bytes = w.to_bytes();
  std::shared_ptr<GgufFile> back = GgufFile::from_memory(bytes, "copy.gguf");
  if (back->metadata().size() != g->metadata().size() ||
      back->tensors().size() != g->tensors().size()) {
    std::abort();
  }
  for (size_t k = 0; k < g->metadata().size(); ++k) {
    if (back->metadata()[k].key != g->metadata()[k].key ||
        !(back->metadata()[k].value == g->metadata()[k].value)) {
      std::abort();
    }
  }
  for (size_t k = 0; k < g->tensors().size(); ++k) {
    const auto& a = g->tensors()[k];
    const auto& b = back->tensors()[k];
    if (a.name != b.name || a.type != b.type || a.ne != b.ne || a.nbytes != b.nbytes ||
        (a.nbytes && std::memcmp(a.data, b.data, a.nbytes) != 0)) {
      std::abort();
    }
  }
  return 0;
}
