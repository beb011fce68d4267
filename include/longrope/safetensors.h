// safetensors files (Hugging Face's weight format): an 8-byte little-endian header length N, N
// bytes of JSON ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {string: string}}), then the raw little-endian tensor bytes, offsets relative
// to the end of the header. Only the float types a Llama checkpoint uses are read: F32, F16, BF16.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "longrope/quant.h"

namespace longrope {

struct SafetensorsTensor {
  std::string name;
  GgmlType type = GgmlType::F32;  // F32, F16 or BF16
  std::vector<int64_t> shape;     // as stored: shape[0] is the outermost (rows of a matrix)
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t nelements() const { return element_count(shape); }
};

class SafetensorsFile {
 public:
  // Maps path read-only and parses its header; throws Error with one line naming the file and
  // what is wrong (header size, JSON, a tensor's dtype, shape or offsets).
  static std::shared_ptr<const SafetensorsFile> open(const std::string& path);
  // Parses an image held in memory (the bytes must outlive the object; tests and fuzzing).
  static std::shared_ptr<const SafetensorsFile> parse(const uint8_t* data, size_t size,
                                                      const std::string& name);

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsTensor* find(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::shared_ptr<const void> keep_alive_;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: name, type (F32, F16 or BF16), shape (outermost first) and its bytes, given
// directly (data, nbytes) or made when the writer reaches it (make; one tensor in memory at a
// time).
struct SafetensorsOut {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  std::function<std::vector<uint8_t>()> make;
};

// Writes tensors (in the given order, 8-byte aligned) to path atomically
// (write_file_atomically). Throws Error for a size that does not match the shape and type.
void write_safetensors(const std::string& path, const std::vector<SafetensorsOut>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace longrope
