// The longrope rope_scaling object, shared by the two readers that accept it (internal:
// src/rope/factors_file.cpp for factors files, src/rope/model_scaling.cpp for HF configs).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "longrope/rope.h"

namespace longrope::rope_detail {

// A longrope rope_scaling object (HF's, or the factors-file superset) -> RopeScaling, not yet
// validated. top: the enclosing HF config for top-level fallbacks
// (original_max_position_embeddings, max_position_embeddings), or null. prefix: how fields of `rs`
// are named in errors
// ("rope_scaling." or "").
RopeScaling parse_longrope_object(const nlohmann::json& rs, const nlohmann::json* top,
                                  const std::string& source, const std::string& prefix);

}  // namespace longrope::rope_detail
