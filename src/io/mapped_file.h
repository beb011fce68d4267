// Internal: a read-only memory-mapped file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace longrope::io {

class MappedFile {
 public:
  // Maps the whole file read-only. Throws Error ("<path>: cannot open ...") when the file is
  // missing, unreadable or not a regular file. An empty file maps to data() == nullptr, size() 0.
  static std::shared_ptr<const MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace longrope::io
