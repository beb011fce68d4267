#include "longrope/safetensors.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/mapped_file.h"
#include "longrope/atomic_file.h"
#include "longrope/error.h"

namespace longrope {

namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeader = uint64_t{100} << 20;  // the format's own limit is 100 MB

bool dtype_of(const std::string& s, GgmlType* t) {
  if (s == "F32")
    *t = GgmlType::F32;
  else if (s == "F16")
    *t = GgmlType::F16;
  else if (s == "BF16")
    *t = GgmlType::BF16;
  else
    return false;
  return true;
}

const char* dtype_name(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
      return "F32";
    case GgmlType::F16:
      return "F16";
    case GgmlType::BF16:
      return "BF16";
    default:
      return nullptr;
  }
}

}  // namespace

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

std::shared_ptr<const SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto file = io::MappedFile::open(path);
  auto parsed = parse(file->data(), file->size(), path);
  auto out = std::shared_ptr<SafetensorsFile>(new SafetensorsFile(*parsed));
  out->keep_alive_ = file;
  return out;
}

std::shared_ptr<const SafetensorsFile> SafetensorsFile::parse(const uint8_t* data, size_t size,
                                                              const std::string& name) {
  auto fail = [&](const std::string& what) -> void {
    throw Error(fmt::format("{}: {}", name, what));
  };
  if (size < 8)
    fail(
        fmt::format("{} bytes (expected a safetensors file: 8-byte header length "
                    "and a JSON header)",
                    size));
  uint64_t n = 0;
  std::memcpy(&n, data, 8);
  if (n < 2 || n > kMaxHeader || n > size - 8)
    fail(
        fmt::format("header length {} does not fit the file of {} bytes (expected 2..{} and "
                    "at most the file size - 8; is this a safetensors file?)",
                    n, size, std::min<uint64_t>(kMaxHeader, size - 8)));
  json h;
  try {
    h = json::parse(data + 8, data + 8 + n);
  } catch (const json::exception& e) {
    fail(fmt::format("header is not valid JSON ({})", e.what()));
  }
  if (!h.is_object()) fail("header is not a JSON object (expected {name: tensor info})");
  auto out = std::shared_ptr<SafetensorsFile>(new SafetensorsFile());
  out->path_ = name;
  const uint8_t* base = data + 8 + n;
  const uint64_t avail = size - 8 - n;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& [key, v] : h.items()) {
    if (key == "__metadata__") {
      if (!v.is_object()) fail("__metadata__ is not an object (expected string values)");
      for (const auto& [mk, mv] : v.items()) {
        if (!mv.is_string()) fail(fmt::format("__metadata__.{} is not a string", mk));
        out->metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor " + key;
    if (!v.is_object()) fail(where + ": expected an object with dtype, shape and data_offsets");
    const auto dt = v.find("dtype"), sh = v.find("shape"), off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) fail(where + ": dtype missing or not a string");
    if (sh == v.end() || !sh->is_array()) fail(where + ": shape missing or not an array");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      fail(where + ": data_offsets missing or not two non-negative integers");
    SafetensorsTensor t;
    t.name = key;
    const std::string dts = dt->get<std::string>();
    if (!dtype_of(dts, &t.type))
      fail(fmt::format("{}: dtype {} is not supported (expected F32, F16 or BF16)", where, dts));
    uint64_t count = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) fail(where + ": shape holds a value that is not a size");
      const uint64_t x = d.get<uint64_t>();
      if (x > (uint64_t{1} << 40) || (x != 0 && count > (uint64_t{1} << 40) / x))
        fail(where + ": shape is too large");
      count *= x;
      t.shape.push_back(static_cast<int64_t>(x));
    }
    const uint64_t b = (*off)[0].get<uint64_t>(), e = (*off)[1].get<uint64_t>();
    const uint64_t want = count * ggml_type_size(t.type);
    if (b > e || e > avail)
      fail(fmt::format("{}: data_offsets [{}, {}] outside the {} data bytes", where, b, e, avail));
    if (e - b != want)
      fail(fmt::format("{}: data_offsets [{}, {}] hold {} bytes (expected {} for shape {} {})",
                       where, b, e, e - b, want, sh->dump(), dts));
    t.data = base + b;
    t.nbytes = static_cast<size_t>(e - b);
    if (e > b) spans.emplace_back(b, e);
    out->tensors_.push_back(std::move(t));
  }
  std::sort(spans.begin(), spans.end());
  for (size_t k = 1; k < spans.size(); ++k)
    if (spans[k].first < spans[k - 1].second)
      fail(fmt::format("tensors overlap at data offset {} (expected disjoint data_offsets)",
                       spans[k].first));
  return out;
}

void write_safetensors(const std::string& path, const std::vector<SafetensorsOut>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::vector<uint64_t> offsets, sizes;  // data section, in the caller's order, 8-byte aligned
  uint64_t off = 0;
  for (const SafetensorsOut& t : tensors) {
    const char* dt = dtype_name(t.type);
    if (!dt)
      throw Error(fmt::format("{}: tensor {} has type {} (expected F32, F16 or BF16)", path, t.name,
                              ggml_type_name(static_cast<uint32_t>(t.type))));
    const uint64_t nbytes = static_cast<uint64_t>(element_count(t.shape)) * ggml_type_size(t.type);
    if (!t.make && nbytes != t.nbytes)
      throw Error(
          fmt::format("{}: tensor {} holds {} bytes, expected {}", path, t.name, t.nbytes, nbytes));
    off = (off + 7) / 8 * 8;
    h[t.name] = {{"dtype", dt}, {"shape", t.shape}, {"data_offsets", {off, off + nbytes}}};
    offsets.push_back(off);
    sizes.push_back(nbytes);
    off += nbytes;
  }
  // nlohmann orders keys alphabetically; the offsets above follow the caller's order, which is
  // what matters. The header is padded with spaces to 8 bytes so the data starts aligned.
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  write_file_atomically(path, [&](std::FILE* f, const std::string& tmp) {
    auto put = [&](const void* p, size_t k) {
      if (k && std::fwrite(p, 1, k, f) != k) throw Error(fmt::format("{}: write failed", tmp));
    };
    const uint64_t n = header.size();
    put(&n, 8);
    put(header.data(), header.size());
    uint64_t pos = 0;
    static const char zeros[8] = {};
    for (size_t i = 0; i < tensors.size(); ++i) {
      const SafetensorsOut& t = tensors[i];
      put(zeros, offsets[i] - pos);
      if (t.make) {
        const std::vector<uint8_t> bytes = t.make();
        if (bytes.size() != sizes[i])
          throw Error(fmt::format("{}: tensor {} was made with {} bytes, expected {}", path, t.name,
                                  bytes.size(), sizes[i]));
        put(bytes.data(), bytes.size());
      } else {
        put(t.data, t.nbytes);
      }
      pos = offsets[i] + sizes[i];
    }
  });
}

}  // namespace longrope
