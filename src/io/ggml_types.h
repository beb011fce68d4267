// Internal: the block layout of every type id ggml defines, including the ones this project cannot
// dequantize (needed to size and bounds-check tensors in files that contain them).
#pragma once
#include <cstddef>
#include <cstdint>

namespace longrope::io {

struct GgmlTypeInfo {
  const char* name;    // nullptr for ids ggml does not define
  int64_t block_size;  // elements per block
  size_t type_size;    // bytes per block
  bool dequantizable;  // implemented by dequantize()
};

// Layout of a type id; name == nullptr for unknown ids.
const GgmlTypeInfo& ggml_type_info(uint32_t type);

}  // namespace longrope::io
