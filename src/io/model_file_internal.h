// Internal: the GGUF half of load_model_file, callable on an already parsed GGUF (fuzzing).
#pragma once
#include <memory>

#include "longrope/gguf.h"
#include "longrope/model_file.h"

namespace longrope::io {

// Reads hyper-parameters, vocabulary and RoPE metadata from g and validates its tensors; errors
// name g->path().
ModelFile model_from_gguf(std::shared_ptr<const GgufFile> g);

}  // namespace longrope::io
