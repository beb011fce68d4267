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

// The model's shape and its first 64K embedding values (as FP32). Cheap; stored in search
// checkpoints.
std::string model_fingerprint(const Model& m);
// Every tensor's name, type and shape, and its bytes: whole for tensors up to 1 MB, else a sample
// (4 KB in every MB and the last 4 KB). Tells two copies of a model apart from two different models
// that share a shape and an embedding, reading a few MB of a GB-sized file.
std::string weights_fingerprint(const Model& m);
// Token windows (or any token lists).
std::string tokens_fingerprint(const std::vector<std::vector<int32_t>>& w);

}  // namespace longrope
