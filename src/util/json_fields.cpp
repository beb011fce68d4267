#include "util/json_fields.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdint>

#include "longrope/error.h"

namespace longrope::json_fields {

void field_error(const std::string& source, const std::string& field, const std::string& what) {
  throw Error(fmt::format("{}: {}: {}", source, field, what));
}

const char* json_type_name(const json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number_float()) return "number";
  return v.type_name();
}

namespace {

const json* find(const json& obj, const std::string& key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

}  // namespace

std::optional<double> opt_number(const json& obj, const std::string& key, const std::string& source,
                                 const std::string& prefix) {
  const json* v = find(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) {
    field_error(source, prefix + key, fmt::format("expected a number, got {}", json_type_name(*v)));
  }
  return v->get<double>();
}

std::optional<int64_t> opt_int(const json& obj, const std::string& key, const std::string& source,
                               const std::string& prefix) {
  const json* v = find(obj, key);
  if (!v) return std::nullopt;
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    field_error(source, prefix + key, fmt::format("{} is too large", v->get<uint64_t>()));
  }
  if (v->is_number_integer()) return v->get<int64_t>();
  if (v->is_number_float()) {
    double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
      return static_cast<int64_t>(d);
    }
    field_error(source, prefix + key, fmt::format("expected an integer, got {}", d));
  }
  field_error(source, prefix + key, fmt::format("expected an integer, got {}", json_type_name(*v)));
}

std::optional<bool> opt_bool(const json& obj, const std::string& key, const std::string& source,
                             const std::string& prefix) {
  const json* v = find(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) {
    field_error(source, prefix + key,
                fmt::format("expected true or false, got {}", json_type_name(*v)));
  }
  return v->get<bool>();
}

std::optional<std::string> opt_string(const json& obj, const std::string& key,
                                      const std::string& source, const std::string& prefix) {
  const json* v = find(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) {
    field_error(source, prefix + key, fmt::format("expected a string, got {}", json_type_name(*v)));
  }
  return v->get<std::string>();
}

std::vector<double> number_array(const json& v, const std::string& source,
                                 const std::string& field) {
  if (!v.is_array()) {
    field_error(source, field,
                fmt::format("expected an array of numbers, got {}", json_type_name(v)));
  }
  std::vector<double> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number()) {
      field_error(source, fmt::format("{}[{}]", field, i),
                  fmt::format("expected a number, got {}", json_type_name(v[i])));
    }
    out.push_back(v[i].get<double>());
  }
  return out;
}

}  // namespace longrope::json_fields
