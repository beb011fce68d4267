// GGUF (v2, v3) reader and v3 writer.
//
// Layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv; n_kv times {string key,
// u32 value type, value}; n_tensors times {string name, u32 n_dims, u64 ne[n_dims], u32 ggml type,
// u64 offset}; padding to general.alignment (default 32); tensor data, each tensor at its offset
// (a multiple of the alignment) from the start of the data section. A string is u64 length +
// bytes; an array is u32 element type + u64 count + elements.
//
// The reader never trusts a count or length: each is checked against the bytes that remain before
// anything is allocated, and every tensor must lie inside the file. All failures throw
// longrope::Error with one line "<path>: <what is wrong> (expected <what>)".
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace longrope {

// GGUF metadata value types (on-disk ids).
enum class GgufType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};

// "u8", "i32", "f32", "bool", "string", "array", ... or "type 42" for an unknown id.
std::string gguf_type_name(uint32_t type);
inline std::string gguf_type_name(GgufType type) {
  return gguf_type_name(static_cast<uint32_t>(type));
}
// Bytes of one scalar of a fixed-size type (0 for STRING, ARRAY and unknown ids).
size_t gguf_scalar_size(GgufType type);

// One metadata value. Scalars are held in u (unsigned and bool), i (signed) or f (f32/f64) by
// type, strings in s. An array keeps its element type and count; numeric and bool elements are
// packed little-endian as on disk in raw, strings in strings, nested arrays in items.
struct GgufValue {
  GgufType type = GgufType::U32;
  uint64_t u = 0;                     // U8, U16, U32, U64, BOOL (0/1)
  int64_t i = 0;                      // I8, I16, I32, I64
  double f = 0.0;                     // F32, F64 (an F32 value is exactly representable)
  std::string s;                      // STRING
  GgufType elem_type = GgufType::U8;  // ARRAY
  uint64_t count = 0;                 // ARRAY: number of elements
  std::vector<uint8_t> raw;           // ARRAY of numbers/bools: count * element size bytes
  std::vector<std::string> strings;   // ARRAY of STRING
  std::vector<GgufValue> items;       // ARRAY of ARRAY

  static GgufValue make_u8(uint8_t v);
  static GgufValue make_i8(int8_t v);
  static GgufValue make_u16(uint16_t v);
  static GgufValue make_i16(int16_t v);
  static GgufValue make_u32(uint32_t v);
  static GgufValue make_i32(int32_t v);
  static GgufValue make_u64(uint64_t v);
  static GgufValue make_i64(int64_t v);
  static GgufValue make_f32(float v);
  static GgufValue make_f64(double v);
  static GgufValue make_bool(bool v);
  static GgufValue make_string(std::string v);
  static GgufValue make_string_array(std::vector<std::string> v);
  static GgufValue make_f32_array(const std::vector<float>& v);
  static GgufValue make_i32_array(const std::vector<int32_t>& v);
  static GgufValue make_u32_array(const std::vector<uint32_t>& v);
  // Any numeric/bool element type from its packed little-endian bytes (size checked).
  static GgufValue make_packed_array(GgufType elem, std::vector<uint8_t> raw);
  // An array whose elements are arrays.
  static GgufValue make_array_of_arrays(std::vector<GgufValue> items);

  bool is_integer() const;  // U8..I64 (not BOOL)
  bool is_float() const;    // F32, F64
  // Element k of a numeric/bool array, converted (no range checks beyond the index).
  double number_at(uint64_t k) const;
  // Element k of an integer/bool array; nullopt if a u64 element exceeds INT64_MAX.
  std::optional<int64_t> int_at(uint64_t k) const;
  // Short human-readable rendering (long arrays and strings are abbreviated).
  std::string to_string(size_t max_items = 8) const;

  // Exact equality (floats compared bit for bit).
  bool operator==(const GgufValue& o) const;
};

struct GgufTensorInfo {
  std::string name;
  uint32_t type = 0;        // ggml type id; may be one this project cannot dequantize
  std::vector<int64_t> ne;  // ggml order: ne[0] is the row length
  uint64_t offset = 0;      // from the start of the data section
  size_t nbytes = 0;
  const uint8_t* data = nullptr;  // inside the file's bytes
  int64_t nelements() const;
};

struct GgufKV {
  std::string key;
  GgufValue value;
};

class GgufFile {
 public:
  // Maps path read-only and parses it.
  static std::shared_ptr<GgufFile> open(const std::string& path);
  // Parses a GGUF image held in memory (takes the bytes; for tests and fuzzing).
  static std::shared_ptr<GgufFile> from_memory(std::vector<uint8_t> bytes,
                                               const std::string& name = "<memory>");
  static std::shared_ptr<GgufFile> from_memory(const void* data, size_t size,
                                               const std::string& name = "<memory>");

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  size_t data_offset() const { return data_offset_; }  // start of the tensor data section
  size_t size() const { return size_; }                // bytes in the file
  const uint8_t* bytes() const { return bytes_; }

  // ---- metadata (in file order)
  const std::vector<GgufKV>& metadata() const { return kv_; }
  const GgufValue* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }
  // Throws "<path>: key K not found (expected ...)".
  const GgufValue& at(const std::string& key) const;

  // Strict typed getters: throw "<path>: key K has type T, expected U" on a type mismatch and
  // "<path>: key K not found" when absent. T is one of uint8_t, int8_t, uint16_t, int16_t,
  // uint32_t, int32_t, uint64_t, int64_t, float, double, bool, std::string.
  template <class T>
  T get(const std::string& key) const;
  // As get, but nullopt when the key is absent (a present key of the wrong type still throws).
  template <class T>
  std::optional<T> get_opt(const std::string& key) const;

  // Lenient numeric getters: any integer type (range-checked into int64), any integer or float
  // type as double.
  int64_t get_int(const std::string& key) const;
  std::optional<int64_t> get_int_opt(const std::string& key) const;
  double get_number(const std::string& key) const;
  std::optional<double> get_number_opt(const std::string& key) const;

  // Array getters: throw if the key is absent, not an array, or of the wrong element type.
  uint64_t get_array_size(const std::string& key) const;
  const std::vector<std::string>& get_string_array(const std::string& key) const;
  std::vector<float> get_float_array(const std::string& key) const;  // f32 or f64 elements
  std::vector<int64_t> get_int_array(const std::string& key) const;  // any integer elements

  // ---- tensors (in file order)
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;

 private:
  GgufFile() = default;
  void parse();
  [[noreturn]] void fail(const std::string& what) const;
  [[noreturn]] void type_mismatch(const std::string& key, const GgufValue& v,
                                  const std::string& expected) const;

  std::string path_;
  std::shared_ptr<const void> storage_;  // the mapping or the owned bytes
  const uint8_t* bytes_ = nullptr;
  size_t size_ = 0;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  size_t data_offset_ = 0;
  std::vector<GgufKV> kv_;
  std::unordered_map<std::string, size_t> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

// Builds a GGUF v3 file: metadata of any type and tensors given as raw bytes. The alignment is
// general.alignment when set (a u32 power of two), else 32.
class GgufWriter {
 public:
  // Sets a key (replacing its value in place if present, else appending).
  void set(const std::string& key, GgufValue value);
  void set_string(const std::string& key, std::string v) {
    set(key, GgufValue::make_string(std::move(v)));
  }
  void set_u32(const std::string& key, uint32_t v) { set(key, GgufValue::make_u32(v)); }
  void set_i32(const std::string& key, int32_t v) { set(key, GgufValue::make_i32(v)); }
  void set_f32(const std::string& key, float v) { set(key, GgufValue::make_f32(v)); }
  void set_bool(const std::string& key, bool v) { set(key, GgufValue::make_bool(v)); }
  bool remove(const std::string& key);
  const GgufValue* find(const std::string& key) const;
  const std::vector<GgufKV>& metadata() const { return kv_; }

  // Adds (or replaces, keeping its position) a tensor whose bytes stay owned by the caller (or by
  // keep_alive) until write()/to_bytes() returns. nbytes must match the type and shape when the
  // type is known to ggml. Throws Error otherwise.
  void add_tensor(const std::string& name, uint32_t type, std::vector<int64_t> ne, const void* data,
                  size_t nbytes, std::shared_ptr<const void> keep_alive = nullptr);
  // Same, with bytes owned by the writer.
  void add_tensor(const std::string& name, uint32_t type, std::vector<int64_t> ne,
                  std::vector<uint8_t> bytes);
  bool remove_tensor(const std::string& name);
  size_t n_tensors() const { return tensors_.size(); }

  // Copies every key and tensor of src (tensor bytes referenced; src is kept alive).
  void copy_from(const std::shared_ptr<const GgufFile>& src);

  size_t alignment() const;
  // Writes the file (to path + ".tmp", then renamed over path). Throws Error on I/O failure.
  void write(const std::string& path) const;
  std::vector<uint8_t> to_bytes() const;

 private:
  struct Tensor {
    std::string name;
    uint32_t type = 0;
    std::vector<int64_t> ne;
    const uint8_t* data = nullptr;
    size_t nbytes = 0;
    std::shared_ptr<const void> keep;
  };
  template <class Sink>
  void emit(Sink& sink) const;

  std::vector<GgufKV> kv_;
  std::vector<Tensor> tensors_;
};

}  // namespace longrope
