// Fingerprints (include/longrope/fingerprint.h).
#include "longrope/fingerprint.h"

#include <fmt/core.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "longrope/quant.h"

namespace longrope {

uint64_t fnv1a(const void* data, size_t n, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

std::string legacy_model_fingerprint(const Model& m) {
  const HParams& hp = m.hp();
  std::string s =
      fmt::format("{}/{}/{}/{}/{}/{}/{}/{}/{}/{}", hp.arch, hp.n_layer, hp.n_embd, hp.n_head,
                  hp.n_head_kv, hp.n_ff, hp.n_vocab, hp.n_ctx_train, hp.n_rot, hp.rope_base);
  uint64_t h = fnv1a(s.data(), s.size());
  // The first 64K embedding values as FP32 (decoded, so the fingerprint is that of the values).
  const WeightView& e = m.tok_embd();
  const int64_t n = std::min<int64_t>(e.rows * e.cols, 1 << 16);
  std::vector<float> vals(static_cast<size_t>(n));
  dequantize(e.type, e.data, vals.data(), n);
  h = fnv1a(vals.data(), vals.size() * sizeof(float), h);
  return fmt::format("{:016x}", h);
}

std::string model_fingerprint(const Model& m) {
  constexpr size_t kBlock = 4096, kStride = size_t(1) << 20;
  uint64_t h = fnv1a(nullptr, 0);
  for (const TensorRef& t : m.file().tensors) {
    const std::string head = fmt::format("{}/{}/{}/{}", t.name, static_cast<int>(t.type),
                                         fmt::join(t.ne, "x"), t.nbytes);
    h = fnv1a(head.data(), head.size(), h);
    if (!t.data) continue;
    if (t.nbytes <= kStride) {  // small tensors (norms, small models) whole
      h = fnv1a(t.data, t.nbytes, h);
      continue;
    }
    for (size_t off = 0; off < t.nbytes; off += kStride)
      h = fnv1a(t.data + off, std::min(kBlock, t.nbytes - off), h);
    h = fnv1a(t.data + t.nbytes - kBlock, kBlock, h);
  }
  return fmt::format("{:016x}", h);
}

std::string tokens_fingerprint(const std::vector<std::vector<int32_t>>& w) {
  uint64_t h = fnv1a(nullptr, 0);
  for (const auto& v : w) h = fnv1a(v.data(), v.size() * sizeof(int32_t), h);
  return fmt::format("{:016x}", h);
}

}  // namespace longrope
