// Typed access to JSON fields with one-line errors naming the source and the field (internal:
// the readers of JSON files in src/rope, src/io and src/tokenizer).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace longrope::json_fields {

using nlohmann::json;

// "<source>: <field>: <what>"
[[noreturn]] void field_error(const std::string& source, const std::string& field,
                              const std::string& what);
const char* json_type_name(const json& v);

// Optional fields of an object: nullopt when the key is absent or null; Error on a wrong type.
std::optional<double> opt_number(const json& obj, const std::string& key, const std::string& source,
                                 const std::string& prefix);
std::optional<int64_t> opt_int(const json& obj, const std::string& key, const std::string& source,
                               const std::string& prefix);
std::optional<bool> opt_bool(const json& obj, const std::string& key, const std::string& source,
                             const std::string& prefix);
std::optional<std::string> opt_string(const json& obj, const std::string& key,
                                      const std::string& source, const std::string& prefix);
// An array of numbers (field names the array in errors, e.g. "rope_scaling.long_factor").
std::vector<double> number_array(const json& v, const std::string& source,
                                 const std::string& field);

}  // namespace longrope::json_fields
