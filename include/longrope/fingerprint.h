// Fingerprints (hex FNV-1a, 16 digits): what a checkpoint, a cached result or another MPI rank
// must share with this process before its numbers can be mixed with ours.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "longrope/model.h"

namespace longrope {

uint64_t fnv1a(const void* data, size_t n, uint64_t h = 1469598103934665603ull);

// The one fingerprint of a model, wherever a file names one (search checkpoints and factors
// files, eval and passkey results, training states; key "model_fingerprint", or "model" inside a
// checkpoint's or state's fingerprint): every tensor's name, type and shape, and its bytes: whole
// for tensors up to 1 MB, else a sample (4 KB in every MB and the last 4 KB). Tells two copies of
// a model apart from two different models that share a shape and an embedding, reading a few MB
// of a GB-sized file.
std::string model_fingerprint(const Model& m);
// What search checkpoints and training states named "model" before model_fingerprint became the
// one above (the shape and the first 64K embedding values): read only, so that such a file still
// resumes.
std::string legacy_model_fingerprint(const Model& m);
// Token windows (or any token lists).
std::string tokens_fingerprint(const std::vector<std::vector<int32_t>>& w);

}  // namespace longrope
