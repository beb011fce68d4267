#include "longrope/gguf.h"

#include <bit>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <limits>

#include "io/ggml_types.h"
#include "io/mapped_file.h"
#include "longrope/atomic_file.h"
#include "longrope/error.h"
#include "longrope/quant.h"

namespace longrope {

namespace {

constexpr uint32_t kMaxDims = 4;    // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 16;  // nested arrays deeper than this are rejected
constexpr size_t kDefaultAlignment = 32;
constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};

bool is_known_value_type(uint32_t t) {
  return t <= static_cast<uint32_t>(GgufType::F64);
}

bool is_packed_type(GgufType t) {
  return gguf_scalar_size(t) != 0;
}

// Smallest encoding of one array element of type t (used to bound counts before allocating).
size_t min_element_size(GgufType t) {
  if (t == GgufType::STRING) return 8;     // u64 length
  if (t == GgufType::ARRAY) return 4 + 8;  // element type + count
  return gguf_scalar_size(t);
}

std::string describe_type(const GgufValue& v) {
  if (v.type == GgufType::ARRAY) return "array of " + gguf_type_name(v.elem_type);
  return gguf_type_name(v.type);
}

size_t align_up(size_t x, size_t a) {
  return (x + a - 1) / a * a;
}

template <class T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Bounds-checked little-endian reader over the file's bytes.
class Reader {
 public:
  Reader(const uint8_t* p, size_t n, const std::string& path) : p_(p), n_(n), path_(path) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return n_ - pos_; }

  [[noreturn]] void truncated(size_t k, const std::string& what) const {
    throw Error(path_ + ": truncated at byte " + std::to_string(pos_) + " while reading " + what +
                " (expected " + std::to_string(k) + " more bytes, " + std::to_string(remaining()) +
                " left)");
  }
  void need(size_t k, const std::string& what) const {
    if (k > remaining()) truncated(k, what);
  }
  template <class T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v = load_le<T>(p_ + pos_);
    pos_ += sizeof(T);
    return v;
  }
  // what is only used in messages; it is built once by the caller, never per element.
  std::string read_string(const std::string& what) {
    if (remaining() < 8) truncated(8, "the length of " + what);
    const uint64_t len = load_le<uint64_t>(p_ + pos_);
    pos_ += 8;
    if (len > remaining()) {
      throw Error(path_ + ": " + what + " at byte " + std::to_string(pos_ - 8) + " claims " +
                  std::to_string(len) + " bytes but only " + std::to_string(remaining()) +
                  " remain (expected a length within the file)");
    }
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }
  std::vector<uint8_t> read_bytes(size_t k, const std::string& what) {
    need(k, what);
    std::vector<uint8_t> v(p_ + pos_, p_ + pos_ + k);
    pos_ += k;
    return v;
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& path_;
};

GgufValue read_value(Reader& r, GgufType type, const std::string& key, const std::string& path,
                     int depth) {
  GgufValue v;
  v.type = type;
  const std::string what = "the value of key " + key;
  switch (type) {
    case GgufType::U8:
      v.u = r.read<uint8_t>(what);
      break;
    case GgufType::I8:
      v.i = r.read<int8_t>(what);
      break;
    case GgufType::U16:
      v.u = r.read<uint16_t>(what);
      break;
    case GgufType::I16:
      v.i = r.read<int16_t>(what);
      break;
    case GgufType::U32:
      v.u = r.read<uint32_t>(what);
      break;
    case GgufType::I32:
      v.i = r.read<int32_t>(what);
      break;
    case GgufType::U64:
      v.u = r.read<uint64_t>(what);
      break;
    case GgufType::I64:
      v.i = r.read<int64_t>(what);
      break;
    case GgufType::F32:
      v.f = r.read<float>(what);
      break;
    case GgufType::F64:
      v.f = r.read<double>(what);
      break;
    case GgufType::BOOL:
      v.u = r.read<uint8_t>(what);
      break;
    case GgufType::STRING:
      v.s = r.read_string(what);
      break;
    case GgufType::ARRAY: {
      const uint32_t et = r.read<uint32_t>("the element type of key " + key);
      if (!is_known_value_type(et)) {
        throw Error(path + ": key " + key + " is an array of unknown " + gguf_type_name(et) +
                    " (expected a GGUF value type 0..12)");
      }
      v.elem_type = static_cast<GgufType>(et);
      v.count = r.read<uint64_t>("the element count of key " + key);
      if (v.elem_type == GgufType::ARRAY && depth >= kMaxArrayDepth) {
        throw Error(path + ": key " + key + " has arrays nested more than " +
                    std::to_string(kMaxArrayDepth) + " deep (expected at most " +
                    std::to_string(kMaxArrayDepth) + " levels)");
      }
      const size_t min_size = min_element_size(v.elem_type);
      if (v.count > r.remaining() / min_size) {
        throw Error(path + ": key " + key + " claims " + std::to_string(v.count) +
                    " elements of type " + gguf_type_name(v.elem_type) + " but only " +
                    std::to_string(r.remaining()) +
                    " bytes remain (expected a count that fits in the file)");
      }
      const size_t n = static_cast<size_t>(v.count);
      if (is_packed_type(v.elem_type)) {
        v.raw = r.read_bytes(n * min_size, what);
      } else if (v.elem_type == GgufType::STRING) {
        v.strings.reserve(n);
        for (size_t k = 0; k < n; ++k) v.strings.push_back(r.read_string(what));
      } else {
        v.items.reserve(n);
        for (size_t k = 0; k < n; ++k) {
          v.items.push_back(read_value(r, GgufType::ARRAY, key, path, depth + 1));
        }
      }
      break;
    }
  }
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Types and values

std::string gguf_type_name(uint32_t type) {
  static const char* const kNames[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                       "bool", "string", "array", "u64", "i64", "f64"};
  if (type < std::size(kNames)) return kNames[type];
  return "type " + std::to_string(type);
}

size_t gguf_scalar_size(GgufType type) {
  switch (type) {
    case GgufType::U8:
    case GgufType::I8:
    case GgufType::BOOL:
      return 1;
    case GgufType::U16:
    case GgufType::I16:
      return 2;
    case GgufType::U32:
    case GgufType::I32:
    case GgufType::F32:
      return 4;
    case GgufType::U64:
    case GgufType::I64:
    case GgufType::F64:
      return 8;
    case GgufType::STRING:
    case GgufType::ARRAY:
      return 0;
  }
  return 0;
}

namespace {
GgufValue scalar_u(GgufType t, uint64_t u) {
  GgufValue v;
  v.type = t;
  v.u = u;
  return v;
}
GgufValue scalar_i(GgufType t, int64_t i) {
  GgufValue v;
  v.type = t;
  v.i = i;
  return v;
}
GgufValue scalar_f(GgufType t, double f) {
  GgufValue v;
  v.type = t;
  v.f = f;
  return v;
}
template <class T>
GgufValue packed_array(GgufType elem, const std::vector<T>& data) {
  std::vector<uint8_t> raw(data.size() * sizeof(T));
  if (!raw.empty()) std::memcpy(raw.data(), data.data(), raw.size());
  return GgufValue::make_packed_array(elem, std::move(raw));
}
}  // namespace

GgufValue GgufValue::make_u8(uint8_t v) {
  return scalar_u(GgufType::U8, v);
}
GgufValue GgufValue::make_i8(int8_t v) {
  return scalar_i(GgufType::I8, v);
}
GgufValue GgufValue::make_u16(uint16_t v) {
  return scalar_u(GgufType::U16, v);
}
GgufValue GgufValue::make_i16(int16_t v) {
  return scalar_i(GgufType::I16, v);
}
GgufValue GgufValue::make_u32(uint32_t v) {
  return scalar_u(GgufType::U32, v);
}
GgufValue GgufValue::make_i32(int32_t v) {
  return scalar_i(GgufType::I32, v);
}
GgufValue GgufValue::make_u64(uint64_t v) {
  return scalar_u(GgufType::U64, v);
}
GgufValue GgufValue::make_i64(int64_t v) {
  return scalar_i(GgufType::I64, v);
}
GgufValue GgufValue::make_f32(float v) {
  return scalar_f(GgufType::F32, v);
}
GgufValue GgufValue::make_f64(double v) {
  return scalar_f(GgufType::F64, v);
}
GgufValue GgufValue::make_bool(bool v) {
  return scalar_u(GgufType::BOOL, v ? 1 : 0);
}
GgufValue GgufValue::make_string(std::string v) {
  GgufValue r;
  r.type = GgufType::STRING;
  r.s = std::move(v);
  return r;
}
GgufValue GgufValue::make_string_array(std::vector<std::string> v) {
  GgufValue r;
  r.type = GgufType::ARRAY;
  r.elem_type = GgufType::STRING;
  r.count = v.size();
  r.strings = std::move(v);
  return r;
}
GgufValue GgufValue::make_f32_array(const std::vector<float>& v) {
  return packed_array(GgufType::F32, v);
}
GgufValue GgufValue::make_i32_array(const std::vector<int32_t>& v) {
  return packed_array(GgufType::I32, v);
}
GgufValue GgufValue::make_u32_array(const std::vector<uint32_t>& v) {
  return packed_array(GgufType::U32, v);
}
GgufValue GgufValue::make_packed_array(GgufType elem, std::vector<uint8_t> raw) {
  const size_t es = gguf_scalar_size(elem);
  if (es == 0) {
    throw Error("GGUF array of " + gguf_type_name(elem) +
                " cannot be packed (expected a numeric or bool element type)");
  }
  if (raw.size() % es != 0) {
    throw Error("GGUF packed array of " + gguf_type_name(elem) + " has " +
                std::to_string(raw.size()) + " bytes (expected a multiple of " +
                std::to_string(es) + ")");
  }
  GgufValue r;
  r.type = GgufType::ARRAY;
  r.elem_type = elem;
  r.count = raw.size() / es;
  r.raw = std::move(raw);
  return r;
}
GgufValue GgufValue::make_array_of_arrays(std::vector<GgufValue> items) {
  for (const auto& it : items) {
    if (it.type != GgufType::ARRAY) {
      throw Error("GGUF array of arrays given a " + gguf_type_name(it.type) +
                  " element (expected arrays only)");
    }
  }
  GgufValue r;
  r.type = GgufType::ARRAY;
  r.elem_type = GgufType::ARRAY;
  r.count = items.size();
  r.items = std::move(items);
  return r;
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::U8:
    case GgufType::I8:
    case GgufType::U16:
    case GgufType::I16:
    case GgufType::U32:
    case GgufType::I32:
    case GgufType::U64:
    case GgufType::I64:
      return true;
    default:
      return false;
  }
}

bool GgufValue::is_float() const {
  return type == GgufType::F32 || type == GgufType::F64;
}

double GgufValue::number_at(uint64_t k) const {
  const size_t es = gguf_scalar_size(elem_type);
  if (type != GgufType::ARRAY || es == 0 || k >= count) {
    throw Error("GGUF value: no numeric element " + std::to_string(k) + " in a " +
                describe_type(*this) + " (expected a numeric array index < " +
                std::to_string(count) + ")");
  }
  const uint8_t* p = raw.data() + k * es;
  switch (elem_type) {
    case GgufType::U8:
    case GgufType::BOOL:
      return *p;
    case GgufType::I8:
      return static_cast<int8_t>(*p);
    case GgufType::U16:
      return load_le<uint16_t>(p);
    case GgufType::I16:
      return load_le<int16_t>(p);
    case GgufType::U32:
      return load_le<uint32_t>(p);
    case GgufType::I32:
      return load_le<int32_t>(p);
    case GgufType::U64:
      return static_cast<double>(load_le<uint64_t>(p));
    case GgufType::I64:
      return static_cast<double>(load_le<int64_t>(p));
    case GgufType::F32:
      return load_le<float>(p);
    case GgufType::F64:
      return load_le<double>(p);
    default:
      return 0.0;
  }
}

std::optional<int64_t> GgufValue::int_at(uint64_t k) const {
  const size_t es = gguf_scalar_size(elem_type);
  if (type != GgufType::ARRAY || es == 0 || k >= count) return std::nullopt;
  const uint8_t* p = raw.data() + k * es;
  switch (elem_type) {
    case GgufType::U8:
    case GgufType::BOOL:
      return *p;
    case GgufType::I8:
      return static_cast<int8_t>(*p);
    case GgufType::U16:
      return load_le<uint16_t>(p);
    case GgufType::I16:
      return load_le<int16_t>(p);
    case GgufType::U32:
      return load_le<uint32_t>(p);
    case GgufType::I32:
      return load_le<int32_t>(p);
    case GgufType::I64:
      return load_le<int64_t>(p);
    case GgufType::U64: {
      const uint64_t u = load_le<uint64_t>(p);
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
      return static_cast<int64_t>(u);
    }
    default:
      return std::nullopt;
  }
}

std::string GgufValue::to_string(size_t max_items) const {
  auto quote = [](const std::string& s) {
    std::string out = "\"";
    const size_t lim = 60;
    for (size_t k = 0; k < s.size() && k < lim; ++k) {
      const unsigned char c = static_cast<unsigned char>(s[k]);
      if (c == '\n') {
        out += "\\n";
      } else if (c < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x%02x", c);
        out += buf;
      } else {
        out += static_cast<char>(c);
      }
    }
    if (s.size() > lim) out += "...";
    return out + "\"";
  };
  switch (type) {
    case GgufType::U8:
    case GgufType::U16:
    case GgufType::U32:
    case GgufType::U64:
      return std::to_string(u);
    case GgufType::I8:
    case GgufType::I16:
    case GgufType::I32:
    case GgufType::I64:
      return std::to_string(i);
    case GgufType::BOOL:
      return u ? "true" : "false";
    case GgufType::F32:
    case GgufType::F64: {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.9g", f);
      return buf;
    }
    case GgufType::STRING:
      return quote(s);
    case GgufType::ARRAY: {
      std::string out = "[";
      const uint64_t shown = std::min<uint64_t>(count, max_items);
      for (uint64_t k = 0; k < shown; ++k) {
        if (k) out += ", ";
        if (elem_type == GgufType::STRING) {
          out += quote(strings[k]);
        } else if (elem_type == GgufType::ARRAY) {
          out += items[k].to_string(max_items);
        } else if (elem_type == GgufType::F32 || elem_type == GgufType::F64) {
          char buf[64];
          std::snprintf(buf, sizeof buf, "%.9g", number_at(k));
          out += buf;
        } else if (auto iv = int_at(k)) {
          out += std::to_string(*iv);
        } else {
          out += std::to_string(load_le<uint64_t>(raw.data() + k * 8));
        }
      }
      if (count > shown) out += ", ... (" + std::to_string(count) + " items)";
      return out + "]";
    }
  }
  return "?";
}

bool GgufValue::operator==(const GgufValue& o) const {
  if (type != o.type) return false;
  switch (type) {
    case GgufType::U8:
    case GgufType::U16:
    case GgufType::U32:
    case GgufType::U64:
    case GgufType::BOOL:
      return u == o.u;
    case GgufType::I8:
    case GgufType::I16:
    case GgufType::I32:
    case GgufType::I64:
      return i == o.i;
    case GgufType::F32:
    case GgufType::F64:
      return std::bit_cast<uint64_t>(f) == std::bit_cast<uint64_t>(o.f);
    case GgufType::STRING:
      return s == o.s;
    case GgufType::ARRAY:
      return elem_type == o.elem_type && count == o.count && raw == o.raw && strings == o.strings &&
             items == o.items;
  }
  return false;
}

int64_t GgufTensorInfo::nelements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Reader

std::shared_ptr<GgufFile> GgufFile::open(const std::string& path) {
  auto mapped = io::MappedFile::open(path);
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  f->bytes_ = mapped->data();
  f->size_ = mapped->size();
  f->storage_ = mapped;
  f->parse();
  return f;
}

std::shared_ptr<GgufFile> GgufFile::from_memory(std::vector<uint8_t> bytes,
                                                const std::string& name) {
  auto owned = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->path_ = name;
  f->bytes_ = owned->data();
  f->size_ = owned->size();
  f->storage_ = owned;
  f->parse();
  return f;
}

std::shared_ptr<GgufFile> GgufFile::from_memory(const void* data, size_t size,
                                                const std::string& name) {
  const auto* p = static_cast<const uint8_t*>(data);
  return from_memory(std::vector<uint8_t>(p, p + size), name);
}

void GgufFile::fail(const std::string& what) const {
  throw Error(path_ + ": " + what);
}

void GgufFile::type_mismatch(const std::string& key, const GgufValue& v,
                             const std::string& expected) const {
  fail("key " + key + " has type " + describe_type(v) + ", expected " + expected);
}

void GgufFile::parse() {
  if (size_ == 0) fail("file is empty (expected a GGUF file starting with \"GGUF\")");
  if (size_ < 4 || std::memcmp(bytes_, kMagic, 4) != 0) {
    fail("not a GGUF file: bad magic (expected the bytes \"GGUF\" at offset 0)");
  }
  Reader r(bytes_, size_, path_);
  r.read<uint32_t>("the magic");
  version_ = r.read<uint32_t>("the version");
  if (version_ == 1) fail("GGUF version 1 is not supported (expected version 2 or 3)");
  if (version_ != 2 && version_ != 3) {
    const bool swapped = (version_ & 0xffffu) == 0 && version_ != 0;
    fail("unsupported GGUF version " + std::to_string(version_) +
         (swapped ? " (a big-endian file?)" : "") + " (expected version 2 or 3)");
  }
  const uint64_t n_tensors = r.read<uint64_t>("the tensor count");
  const uint64_t n_kv = r.read<uint64_t>("the metadata key count");
  // Smallest possible encodings: a key/value is 8 + 4 + 1 bytes, a tensor info 8 + 4 + 4 + 8.
  if (n_kv > r.remaining() / 13) {
    fail("header claims " + std::to_string(n_kv) + " metadata keys but only " +
         std::to_string(r.remaining()) + " bytes remain (expected a count that fits in the file)");
  }
  if (n_tensors > r.remaining() / 24) {
    fail("header claims " + std::to_string(n_tensors) + " tensors but only " +
         std::to_string(r.remaining()) + " bytes remain (expected a count that fits in the file)");
  }

  kv_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    const std::string where = "metadata key #" + std::to_string(k);
    std::string key = r.read_string(where);
    const uint32_t t = r.read<uint32_t>("the type of key " + key);
    if (!is_known_value_type(t)) {
      fail("key " + key + " has unknown value " + gguf_type_name(t) +
           " (expected a GGUF value type 0..12)");
    }
    GgufValue v = read_value(r, static_cast<GgufType>(t), key, path_, 0);
    if (kv_index_.count(key)) fail("duplicate key " + key + " (expected each key once)");
    kv_index_.emplace(key, kv_.size());
    kv_.push_back({std::move(key), std::move(v)});
  }

  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufType::U32) type_mismatch("general.alignment", *a, "u32");
    if (a->u == 0 || (a->u & (a->u - 1)) != 0) {
      fail("general.alignment is " + std::to_string(a->u) + " (expected a power of two)");
    }
    alignment_ = static_cast<size_t>(a->u);
  } else {
    alignment_ = kDefaultAlignment;
  }

  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo ti;
    ti.name = r.read_string("the name of tensor #" + std::to_string(k));
    const std::string tn = "tensor " + ti.name;
    const uint32_t n_dims = r.read<uint32_t>("the dimension count of " + tn);
    if (n_dims > kMaxDims) {
      fail(tn + " has " + std::to_string(n_dims) + " dimensions (expected at most " +
           std::to_string(kMaxDims) + ")");
    }
    int64_t nel = 1;
    bool overflow = false;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = r.read<uint64_t>("the shape of " + tn);
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail(tn + " has dimension " + std::to_string(dim) + " (expected at most 2^63-1)");
      }
      ti.ne.push_back(static_cast<int64_t>(dim));
      if (__builtin_mul_overflow(nel, static_cast<int64_t>(dim), &nel)) overflow = true;
    }
    if (overflow) fail(tn + " has an element count that overflows 64 bits (expected a sane shape)");
    ti.type = r.read<uint32_t>("the type of " + tn);
    const auto& info = io::ggml_type_info(ti.type);
    if (!info.name) {
      fail(tn + " has unknown ggml " + ggml_type_name(ti.type) + " (expected a ggml type id)");
    }
    const int64_t ne0 = ti.ne.empty() ? 1 : ti.ne[0];
    if (ne0 % info.block_size != 0) {
      fail(tn + " has rows of " + std::to_string(ne0) + " elements of type " + info.name +
           " (expected a multiple of " + std::to_string(info.block_size) + ")");
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(nel / info.block_size),
                               static_cast<uint64_t>(info.type_size), &nbytes) ||
        nbytes > std::numeric_limits<size_t>::max()) {
      fail(tn + " is too large (expected a size that fits in memory)");
    }
    ti.nbytes = static_cast<size_t>(nbytes);
    ti.offset = r.read<uint64_t>("the data offset of " + tn);
    if (ti.offset % alignment_ != 0) {
      fail(tn + " has data offset " + std::to_string(ti.offset) + " (expected a multiple of " +
           std::to_string(alignment_) + ")");
    }
    if (tensor_index_.count(ti.name)) fail("duplicate " + tn + " (expected each tensor once)");
    tensor_index_.emplace(ti.name, tensors_.size());
    tensors_.push_back(std::move(ti));
  }

  data_offset_ = align_up(r.pos(), alignment_);
  if (!tensors_.empty() && data_offset_ > size_) {
    fail("tensor data section would start at byte " + std::to_string(data_offset_) +
         " beyond the end of the file (expected at most " + std::to_string(size_) + " bytes)");
  }
  const size_t data_size = data_offset_ <= size_ ? size_ - data_offset_ : 0;
  for (auto& ti : tensors_) {
    if (ti.offset > data_size || ti.nbytes > data_size - ti.offset) {
      fail("tensor " + ti.name + " data [" + std::to_string(ti.offset) + ", " +
           std::to_string(ti.offset) + "+" + std::to_string(ti.nbytes) +
           ") extends beyond the end of the file (expected within the " +
           std::to_string(data_size) + " bytes of tensor data)");
    }
    ti.data = bytes_ + data_offset_ + ti.offset;
  }
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].value;
}

const GgufValue& GgufFile::at(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("key " + key + " not found (expected it in the GGUF metadata)");
  return *v;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
template <class T>
struct ValueTraits;
#define LONGROPE_GGUF_TRAIT(T, TYPE, EXPR)            \
  template <>                                         \
  struct ValueTraits<T> {                             \
    static constexpr GgufType kType = GgufType::TYPE; \
    static T get(const GgufValue& v) { return EXPR; } \
  };
LONGROPE_GGUF_TRAIT(uint8_t, U8, static_cast<uint8_t>(v.u))
LONGROPE_GGUF_TRAIT(int8_t, I8, static_cast<int8_t>(v.i))
LONGROPE_GGUF_TRAIT(uint16_t, U16, static_cast<uint16_t>(v.u))
LONGROPE_GGUF_TRAIT(int16_t, I16, static_cast<int16_t>(v.i))
LONGROPE_GGUF_TRAIT(uint32_t, U32, static_cast<uint32_t>(v.u))
LONGROPE_GGUF_TRAIT(int32_t, I32, static_cast<int32_t>(v.i))
LONGROPE_GGUF_TRAIT(uint64_t, U64, v.u)
LONGROPE_GGUF_TRAIT(int64_t, I64, v.i)
LONGROPE_GGUF_TRAIT(float, F32, static_cast<float>(v.f))
LONGROPE_GGUF_TRAIT(double, F64, v.f)
LONGROPE_GGUF_TRAIT(bool, BOOL, v.u != 0)
LONGROPE_GGUF_TRAIT(std::string, STRING, v.s)
#undef LONGROPE_GGUF_TRAIT
}  // namespace

template <class T>
T GgufFile::get(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) {
    fail("key " + key + " not found (expected a " + gguf_type_name(ValueTraits<T>::kType) +
         " value)");
  }
  if (v->type != ValueTraits<T>::kType) {
    type_mismatch(key, *v, gguf_type_name(ValueTraits<T>::kType));
  }
  return ValueTraits<T>::get(*v);
}

template <class T>
std::optional<T> GgufFile::get_opt(const std::string& key) const {
  if (!find(key)) return std::nullopt;
  return get<T>(key);
}

#define LONGROPE_GGUF_INSTANTIATE(T)                     \
  template T GgufFile::get<T>(const std::string&) const; \
  template std::optional<T> GgufFile::get_opt<T>(const std::string&) const;
LONGROPE_GGUF_INSTANTIATE(uint8_t)
LONGROPE_GGUF_INSTANTIATE(int8_t)
LONGROPE_GGUF_INSTANTIATE(uint16_t)
LONGROPE_GGUF_INSTANTIATE(int16_t)
LONGROPE_GGUF_INSTANTIATE(uint32_t)
LONGROPE_GGUF_INSTANTIATE(int32_t)
LONGROPE_GGUF_INSTANTIATE(uint64_t)
LONGROPE_GGUF_INSTANTIATE(int64_t)
LONGROPE_GGUF_INSTANTIATE(float)
LONGROPE_GGUF_INSTANTIATE(double)
LONGROPE_GGUF_INSTANTIATE(bool)
LONGROPE_GGUF_INSTANTIATE(std::string)
#undef LONGROPE_GGUF_INSTANTIATE

int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue& v = at(key);
  if (!v.is_integer()) type_mismatch(key, v, "an integer");
  if (v.type == GgufType::U64 && v.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    fail("key " + key + " = " + std::to_string(v.u) + " is out of range (expected at most 2^63-1)");
  }
  switch (v.type) {
    case GgufType::U8:
    case GgufType::U16:
    case GgufType::U32:
    case GgufType::U64:
      return static_cast<int64_t>(v.u);
    default:
      return v.i;
  }
}

std::optional<int64_t> GgufFile::get_int_opt(const std::string& key) const {
  if (!find(key)) return std::nullopt;
  return get_int(key);
}

double GgufFile::get_number(const std::string& key) const {
  const GgufValue& v = at(key);
  if (v.is_float()) return v.f;
  if (v.is_integer()) return static_cast<double>(get_int(key));
  type_mismatch(key, v, "a number");
}

std::optional<double> GgufFile::get_number_opt(const std::string& key) const {
  if (!find(key)) return std::nullopt;
  return get_number(key);
}

uint64_t GgufFile::get_array_size(const std::string& key) const {
  const GgufValue& v = at(key);
  if (v.type != GgufType::ARRAY) type_mismatch(key, v, "an array");
  return v.count;
}

const std::vector<std::string>& GgufFile::get_string_array(const std::string& key) const {
  const GgufValue& v = at(key);
  if (v.type != GgufType::ARRAY || v.elem_type != GgufType::STRING) {
    type_mismatch(key, v, "array of string");
  }
  return v.strings;
}

std::vector<float> GgufFile::get_float_array(const std::string& key) const {
  const GgufValue& v = at(key);
  if (v.type != GgufType::ARRAY || (v.elem_type != GgufType::F32 && v.elem_type != GgufType::F64)) {
    type_mismatch(key, v, "array of f32");
  }
  std::vector<float> out(static_cast<size_t>(v.count));
  if (v.elem_type == GgufType::F32) {
    if (!out.empty()) std::memcpy(out.data(), v.raw.data(), out.size() * sizeof(float));
  } else {
    for (size_t k = 0; k < out.size(); ++k) out[k] = static_cast<float>(v.number_at(k));
  }
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue& v = at(key);
  GgufValue probe;
  probe.type = v.type == GgufType::ARRAY ? v.elem_type : GgufType::STRING;
  if (v.type != GgufType::ARRAY || !probe.is_integer()) type_mismatch(key, v, "array of integers");
  std::vector<int64_t> out(static_cast<size_t>(v.count));
  for (size_t k = 0; k < out.size(); ++k) {
    auto x = v.int_at(k);
    if (!x) {
      fail("key " + key + " element " + std::to_string(k) +
           " is out of range (expected at most 2^63-1)");
    }
    out[k] = *x;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writer

void GgufWriter::set(const std::string& key, GgufValue value) {
  if (key == "general.alignment") {
    if (value.type != GgufType::U32 || value.u == 0 || (value.u & (value.u - 1)) != 0) {
      throw Error("GGUF writer: general.alignment " + value.to_string() +
                  " (expected a u32 power of two)");
    }
  }
  for (auto& kv : kv_) {
    if (kv.key == key) {
      kv.value = std::move(value);
      return;
    }
  }
  kv_.push_back({key, std::move(value)});
}

bool GgufWriter::remove(const std::string& key) {
  for (auto it = kv_.begin(); it != kv_.end(); ++it) {
    if (it->key == key) {
      kv_.erase(it);
      return true;
    }
  }
  return false;
}

const GgufValue* GgufWriter::find(const std::string& key) const {
  for (const auto& kv : kv_) {
    if (kv.key == key) return &kv.value;
  }
  return nullptr;
}

void GgufWriter::add_tensor(const std::string& name, uint32_t type, std::vector<int64_t> ne,
                            const void* data, size_t nbytes,
                            std::shared_ptr<const void> keep_alive) {
  const auto& info = io::ggml_type_info(type);
  if (!info.name) {
    throw Error("GGUF writer: tensor " + name + " has unknown ggml " + ggml_type_name(type) +
                " (expected a ggml type id)");
  }
  if (ne.size() > kMaxDims) {
    throw Error("GGUF writer: tensor " + name + " has " + std::to_string(ne.size()) +
                " dimensions (expected at most 4)");
  }
  int64_t nel = 1;
  for (int64_t d : ne) {
    if (d < 0 || __builtin_mul_overflow(nel, d, &nel)) {
      throw Error("GGUF writer: tensor " + name + " has an invalid shape (expected non-negative " +
                  "dimensions whose product fits in 64 bits)");
    }
  }
  const int64_t ne0 = ne.empty() ? 1 : ne[0];
  if (ne0 % info.block_size != 0) {
    throw Error("GGUF writer: tensor " + name + " has rows of " + std::to_string(ne0) +
                " elements (expected a multiple of " + std::to_string(info.block_size) + " for " +
                info.name + ")");
  }
  const size_t expect = static_cast<size_t>(nel / info.block_size) * info.type_size;
  if (nbytes != expect) {
    throw Error("GGUF writer: tensor " + name + " given " + std::to_string(nbytes) +
                " bytes (expected " + std::to_string(expect) + " for its " + info.name + " shape)");
  }
  if (nbytes > 0 && data == nullptr) {
    throw Error("GGUF writer: tensor " + name + " has no data (expected a pointer to its bytes)");
  }
  Tensor t{
      name, type, std::move(ne), static_cast<const uint8_t*>(data), nbytes, std::move(keep_alive)};
  for (auto& old : tensors_) {
    if (old.name == name) {
      old = std::move(t);
      return;
    }
  }
  tensors_.push_back(std::move(t));
}

void GgufWriter::add_tensor(const std::string& name, uint32_t type, std::vector<int64_t> ne,
                            std::vector<uint8_t> bytes) {
  auto owned = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  add_tensor(name, type, std::move(ne), owned->data(), owned->size(), owned);
}

bool GgufWriter::remove_tensor(const std::string& name) {
  for (auto it = tensors_.begin(); it != tensors_.end(); ++it) {
    if (it->name == name) {
      tensors_.erase(it);
      return true;
    }
  }
  return false;
}

void GgufWriter::copy_from(const std::shared_ptr<const GgufFile>& src) {
  for (const auto& kv : src->metadata()) set(kv.key, kv.value);
  for (const auto& t : src->tensors()) add_tensor(t.name, t.type, t.ne, t.data, t.nbytes, src);
}

size_t GgufWriter::alignment() const {
  const GgufValue* a = find("general.alignment");
  return a ? static_cast<size_t>(a->u) : kDefaultAlignment;
}

namespace {

struct VectorSink {
  std::vector<uint8_t>* out;
  size_t written = 0;
  void put(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out->insert(out->end(), b, b + n);
    written += n;
  }
};

struct FileSink {
  std::FILE* f;
  const std::string* path;
  size_t written = 0;
  void put(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f) != n) {
      throw Error(*path + ": write failed: " + std::strerror(errno) +
                  " (expected a writable disk)");
    }
    written += n;
  }
};

template <class Sink, class T>
void put_le(Sink& s, T v) {
  s.put(&v, sizeof v);
}

template <class Sink>
void put_string(Sink& s, const std::string& str) {
  put_le<Sink, uint64_t>(s, str.size());
  s.put(str.data(), str.size());
}

template <class Sink>
void put_value_body(Sink& s, const GgufValue& v) {
  switch (v.type) {
    case GgufType::U8:
    case GgufType::BOOL:
      put_le(s, static_cast<uint8_t>(v.u));
      break;
    case GgufType::I8:
      put_le(s, static_cast<int8_t>(v.i));
      break;
    case GgufType::U16:
      put_le(s, static_cast<uint16_t>(v.u));
      break;
    case GgufType::I16:
      put_le(s, static_cast<int16_t>(v.i));
      break;
    case GgufType::U32:
      put_le(s, static_cast<uint32_t>(v.u));
      break;
    case GgufType::I32:
      put_le(s, static_cast<int32_t>(v.i));
      break;
    case GgufType::U64:
      put_le(s, v.u);
      break;
    case GgufType::I64:
      put_le(s, v.i);
      break;
    case GgufType::F32:
      put_le(s, static_cast<float>(v.f));
      break;
    case GgufType::F64:
      put_le(s, v.f);
      break;
    case GgufType::STRING:
      put_string(s, v.s);
      break;
    case GgufType::ARRAY:
      put_le(s, static_cast<uint32_t>(v.elem_type));
      put_le(s, v.count);
      if (v.elem_type == GgufType::STRING) {
        for (const auto& str : v.strings) put_string(s, str);
      } else if (v.elem_type == GgufType::ARRAY) {
        for (const auto& it : v.items) put_value_body(s, it);
      } else {
        s.put(v.raw.data(), v.raw.size());
      }
      break;
  }
}

void check_value(const std::string& key, const GgufValue& v) {
  if (v.type != GgufType::ARRAY) return;
  size_t n = 0;
  if (v.elem_type == GgufType::STRING) {
    n = v.strings.size();
  } else if (v.elem_type == GgufType::ARRAY) {
    n = v.items.size();
    for (const auto& it : v.items) {
      if (it.type != GgufType::ARRAY) {
        throw Error("GGUF writer: key " + key + " mixes arrays with " + gguf_type_name(it.type) +
                    " (expected arrays only)");
      }
      check_value(key, it);
    }
  } else {
    const size_t es = gguf_scalar_size(v.elem_type);
    if (es == 0 || v.raw.size() % es != 0) {
      throw Error("GGUF writer: key " + key + " has a malformed array (expected packed elements)");
    }
    n = v.raw.size() / es;
  }
  if (n != v.count) {
    throw Error("GGUF writer: key " + key + " has count " + std::to_string(v.count) + " but " +
                std::to_string(n) + " elements (expected them equal)");
  }
}

}  // namespace

template <class Sink>
void GgufWriter::emit(Sink& s) const {
  const size_t align = alignment();
  for (const auto& kv : kv_) check_value(kv.key, kv.value);
  s.put(kMagic, 4);
  put_le<Sink, uint32_t>(s, 3);
  put_le<Sink, uint64_t>(s, tensors_.size());
  put_le<Sink, uint64_t>(s, kv_.size());
  for (const auto& kv : kv_) {
    put_string(s, kv.key);
    put_le(s, static_cast<uint32_t>(kv.value.type));
    put_value_body(s, kv.value);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    put_string(s, t.name);
    put_le(s, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) put_le(s, static_cast<uint64_t>(d));
    put_le(s, t.type);
    put_le(s, offset);
    offset = align_up(offset + t.nbytes, align);
  }
  static const uint8_t kZeros[256] = {};
  auto pad = [&](size_t to) {
    while (s.written < to) {
      const size_t n = std::min(sizeof kZeros, to - s.written);
      s.put(kZeros, n);
    }
  };
  // Like ggml's writer: the data section starts aligned and every tensor (the last one too) is
  // padded to the alignment.
  if (!tensors_.empty()) pad(align_up(s.written, align));
  const size_t base = s.written;
  for (const auto& t : tensors_) {
    s.put(t.data, t.nbytes);
    pad(align_up(s.written - base, align) + base);
  }
}

std::vector<uint8_t> GgufWriter::to_bytes() const {
  std::vector<uint8_t> out;
  VectorSink s{&out};
  emit(s);
  return out;
}

void GgufWriter::write(const std::string& path) const {
  write_file_atomically(path, [this](std::FILE* f, const std::string& tmp) {
    FileSink s{f, &tmp};
    emit(s);
  });
}

}  // namespace longrope
