// Unaligned little-endian reads from file bytes (block formats, headers).
#pragma once
#include <cstdint>
#include <cstring>

namespace longrope::io {

inline uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t rd32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

}  // namespace longrope::io
