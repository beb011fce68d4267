// The LongRoPE factors file (docs/factors-format.md): a superset of HF's longrope rope_scaling
// object with start tokens, length buckets, the attention rule and provenance.
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "longrope/atomic_file.h"
#include "longrope/error.h"
#include "longrope/rope.h"
#include "rope/longrope_object.h"
#include "util/json_fields.h"

namespace longrope {

using json_fields::field_error;
using json_fields::json_type_name;
using json_fields::number_array;
using json_fields::opt_int;
using json_fields::opt_number;
using json_fields::opt_string;
using nlohmann::json;

namespace {

constexpr int kFormatVersion = 1;

const json* find_field(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::vector<double> factor_array(const json& v, const std::string& source,
                                 const std::string& field) {
  std::vector<double> f = number_array(v, source, field);
  if (f.empty()) field_error(source, field, "empty; expected one factor per rotary pair");
  return f;
}

// Validates with n_rot = 2 * (factors per set) and names the source in the error.
void validate_longrope(const RopeScaling& s, const std::string& source) {
  try {
    if (s.sets.empty()) {
      throw Error("rope longrope: no factor sets; expected at least one");
    }
    s.validate(static_cast<int>(2 * s.sets.front().factors.size()));
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", source, e.what()));
  }
}

// One value on one line, with ", " and ": " separators.
std::string compact(const nlohmann::ordered_json& v) {
  if (v.is_array()) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + compact(v[i]);
    return out + "]";
  }
  if (v.is_object()) {
    std::string out = "{";
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      out += (first ? "" : ", ") + json(it.key()).dump() + ": " + compact(it.value());
      first = false;
    }
    return out + "}";
  }
  return v.dump();  // numbers: shortest text that reads back to the same double
}

bool is_primitive(const nlohmann::ordered_json& v) {
  return !v.is_array() && !v.is_object();
}

// Pretty-printed, but arrays of numbers and factor-set entries stay on one line.
std::string pretty(const nlohmann::ordered_json& v, int indent) {
  const std::string pad(static_cast<size_t>(indent + 2), ' ');
  const std::string end_pad(static_cast<size_t>(indent), ' ');
  if (v.is_array()) {
    if (v.empty() || std::all_of(v.begin(), v.end(), is_primitive)) return compact(v);
    std::string out = "[\n";
    for (size_t i = 0; i < v.size(); ++i) {
      out += pad + pretty(v[i], indent + 2) + (i + 1 < v.size() ? ",\n" : "\n");
    }
    return out + end_pad + "]";
  }
  if (v.is_object()) {
    if (v.empty() || v.contains("factors") || compact(v).size() <= 80) {
      bool flat = true;
      for (const auto& x : v) {
        flat = flat &&
               (is_primitive(x) || (x.is_array() && std::all_of(x.begin(), x.end(), is_primitive)));
      }
      if (flat) return compact(v);
    }
    std::string out = "{\n";
    size_t i = 0;
    for (auto it = v.begin(); it != v.end(); ++it, ++i) {
      out += pad + json(it.key()).dump() + ": " + pretty(it.value(), indent + 2) +
             (i + 1 < v.size() ? ",\n" : "\n");
    }
    return out + end_pad + "}";
  }
  return v.dump();
}

// The file text: HF's fields first, then ours, provenance last.
std::string format_factors_json(const json& j) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const char* k : {"format_version", "rope_type", "original_max_position_embeddings",
                        "max_position_embeddings", "factor", "attention_factor", "attention_rule",
                        "n_hat", "short_factor", "long_factor"}) {
    if (j.contains(k)) out[k] = nlohmann::ordered_json::parse(j[k].dump());
  }
  if (j.contains("sets")) {
    nlohmann::ordered_json sets = nlohmann::ordered_json::array();
    for (const json& e : j["sets"]) {
      nlohmann::ordered_json o = nlohmann::ordered_json::object();
      o["max_len"] = e["max_len"].get<int64_t>();
      if (e.contains("attention_factor"))
        o["attention_factor"] = nlohmann::ordered_json::parse(e["attention_factor"].dump());
      o["factors"] = nlohmann::ordered_json::parse(e["factors"].dump());
      sets.push_back(std::move(o));
    }
    out["sets"] = std::move(sets);
  }
  if (j.contains("front")) out["front"] = nlohmann::ordered_json::parse(j["front"].dump());
  if (j.contains("provenance"))
    out["provenance"] = nlohmann::ordered_json::parse(j["provenance"].dump());
  return pretty(out, 0) + "\n";
}

}  // namespace

namespace rope_detail {

RopeScaling parse_longrope_object(const json& rs, const json* top, const std::string& source,
                                  const std::string& prefix) {
  RopeScaling s;
  s.method = RopeMethod::kLongrope;

  // Attention factor and rule first: they decide whether a target length is needed.
  s.attn_factor = opt_number(rs, "attention_factor", source, prefix);
  if (auto rule = opt_string(rs, "attention_rule", source, prefix)) {
    try {
      s.longrope_attn = parse_longrope_attn(*rule);
    } catch (const Error& e) {
      field_error(source, prefix + "attention_rule", e.what());
    }
  }
  if (auto n = opt_int(rs, "n_hat", source, prefix)) {
    if (*n < 0) field_error(source, prefix + "n_hat", fmt::format("{}; expected >= 0", *n));
    s.n_hat = *n;
  }

  // Original and target lengths.
  const std::string orig_key = "original_max_position_embeddings";
  const std::string max_key = "max_position_embeddings";
  std::optional<int64_t> orig = opt_int(rs, orig_key, source, prefix);
  std::string orig_field = prefix + orig_key;
  std::optional<int64_t> target = opt_int(rs, max_key, source, prefix);
  std::string target_field = prefix + max_key;
  std::optional<int64_t> top_orig, top_max;
  if (top) {
    top_orig = opt_int(*top, orig_key, source, "");
    top_max = opt_int(*top, max_key, source, "");
  }
  if (!orig && top_orig) {
    orig = top_orig;
    orig_field = orig_key;
  }
  if (!target && top_max) {
    target = top_max;
    target_field = max_key;
  }
  const std::optional<double> factor = opt_number(rs, "factor", source, prefix);
  const bool attn_given = s.attn_factor || s.longrope_attn == LongropeAttn::kConstant;
  if (orig) {
    if (*orig <= 0) field_error(source, orig_field, fmt::format("{}; expected > 0", *orig));
    s.orig_ctx = *orig;
    if (target) {
      if (*target <= 0) field_error(source, target_field, fmt::format("{}; expected > 0", *target));
      s.target_ctx = *target;
    }
    if (factor) s.factor = *factor;
    if (!target && !factor && !attn_given) {
      field_error(source, prefix + max_key,
                  "missing; expected the target length (or a factor, or an attention_factor)");
    }
  } else if (top && top_max) {
    // HF without original_max_position_embeddings: max_position_embeddings is the original
    // (trained) context and the extension ratio is rope_scaling.factor.
    if (*top_max <= 0) field_error(source, max_key, fmt::format("{}; expected > 0", *top_max));
    s.orig_ctx = *top_max;
    if (factor) {
      s.factor = *factor;
    } else if (!attn_given) {
      field_error(source, prefix + "factor",
                  "missing; expected a number when original_max_position_embeddings is not given");
    }
  } else {
    field_error(source, prefix + orig_key,
                "missing; expected the original (trained) context length");
  }

  // Factor sets.
  std::optional<std::vector<double>> long_f, short_f;
  if (const json* v = find_field(rs, "long_factor")) {
    long_f = factor_array(*v, source, prefix + "long_factor");
  }
  if (const json* v = find_field(rs, "short_factor")) {
    short_f = factor_array(*v, source, prefix + "short_factor");
  }
  if (const json* sets = find_field(rs, "sets")) {
    const std::string sf = prefix + "sets";
    if (!sets->is_array() || sets->empty()) {
      field_error(source, sf,
                  fmt::format("expected a non-empty array of {{\"max_len\", \"factors\"}} objects, "
                              "got {}",
                              sets->is_array() ? "an empty array" : json_type_name(*sets)));
    }
    for (size_t i = 0; i < sets->size(); ++i) {
      const json& e = (*sets)[i];
      const std::string ef = fmt::format("{}[{}]", sf, i);
      if (!e.is_object()) {
        field_error(
            source, ef,
            fmt::format("expected an object with max_len and factors, got {}", json_type_name(e)));
      }
      FactorSet fs;
      auto max_len = opt_int(e, "max_len", source, ef + ".");
      if (!max_len)
        field_error(source, ef + ".max_len", "missing; expected an integer (0 = no limit)");
      if (*max_len < 0) {
        field_error(source, ef + ".max_len",
                    fmt::format("{}; expected >= 0 (0 = no limit)", *max_len));
      }
      fs.max_len = *max_len;
      fs.attn_factor = opt_number(e, "attention_factor", source, ef + ".");
      const json* f = find_field(e, "factors");
      if (!f) field_error(source, ef + ".factors", "missing; expected an array of numbers");
      fs.factors = factor_array(*f, source, ef + ".factors");
      s.sets.push_back(std::move(fs));
    }
    // HF's view of the same sets, when present, must agree (an edited copy would be ambiguous).
    if (long_f && *long_f != s.sets.back().factors) {
      field_error(source, prefix + "long_factor",
                  "differs from the last entry of sets; expected the same factors (or omit it)");
    }
    if (short_f) {
      size_t k = longrope_set_index(s.sets, s.orig_ctx);
      if (*short_f != s.sets[k].factors) {
        field_error(source, prefix + "short_factor",
                    fmt::format("differs from sets[{}], the set serving the original length {}; "
                                "expected the same factors (or omit it)",
                                k, s.orig_ctx));
      }
    }
  } else if (long_f) {
    if (short_f) {
      if (short_f->size() != long_f->size())
        field_error(source, prefix + "short_factor",
                    fmt::format("has {} values and long_factor {}; expected one per rotary pair in "
                                "both (the same count)",
                                short_f->size(), long_f->size()));
      s.sets.push_back(FactorSet{*short_f, s.orig_ctx});
    }
    s.sets.push_back(FactorSet{*long_f, 0});
  } else {
    field_error(source, prefix + "long_factor", "missing; expected an array of factors (or sets)");
  }
  return s;
}

}  // namespace rope_detail

RopeScaling factors_from_json(const json& j, const std::string& source, json* provenance) {
  if (!j.is_object()) {
    throw Error(fmt::format("{}: expected a JSON object, got {}", source, json_type_name(j)));
  }
  const json* rs = &j;
  const json* top = nullptr;
  std::string prefix;
  if (const json* v = find_field(j, "rope_scaling")) {  // a whole HF config.json
    if (!v->is_object()) {
      field_error(source, "rope_scaling",
                  fmt::format("expected an object, got {}", json_type_name(*v)));
    }
    rs = v;
    top = &j;
    prefix = "rope_scaling.";
  }
  if (auto ver = opt_int(*rs, "format_version", source, prefix); ver && *ver != kFormatVersion) {
    field_error(source, prefix + "format_version",
                fmt::format("{}; this build reads version {}", *ver, kFormatVersion));
  }
  std::optional<std::string> type = opt_string(*rs, "rope_type", source, prefix);
  std::string type_field = prefix + "rope_type";
  if (!type) {
    type = opt_string(*rs, "type", source, prefix);
    type_field = prefix + "type";
  }
  if (!type) field_error(source, prefix + "rope_type", "missing; expected \"longrope\"");
  if (*type != "longrope" && *type != "su") {
    field_error(
        source, type_field,
        fmt::format("\"{}\"; a factors file holds a longrope scaling, expected \"longrope\"",
                    *type));
  }
  RopeScaling s = rope_detail::parse_longrope_object(*rs, top, source, prefix);
  const json* prov = find_field(*rs, "provenance");
  if (prov && !prov->is_object()) {
    field_error(source, prefix + "provenance",
                fmt::format("expected an object, got {}", json_type_name(*prov)));
  }
  if (provenance) *provenance = prov ? *prov : json();
  validate_longrope(s, source);
  return s;
}

json factors_to_json(const RopeScaling& s, const json& provenance) {
  const std::string source = "factors file";
  if (s.method != RopeMethod::kLongrope) {
    throw Error(fmt::format("factors file: scaling is {}; expected a longrope scaling",
                            rope_method_name(s.method)));
  }
  validate_longrope(s, source);
  if (s.orig_ctx <= 0) {
    throw Error(
        "factors file: orig_ctx is 0 (the model's context); expected the original context length "
        "to be set explicitly");
  }
  if (!s.freq_factors.empty()) {
    throw Error(
        "factors file: the scaling has freq_factors (rope_freqs); expected none (fold them "
        "into the factor sets)");
  }
  if (!provenance.is_null() && !provenance.is_object()) {
    throw Error(fmt::format("factors file: provenance is {}; expected an object",
                            json_type_name(provenance)));
  }
  json j = json::object();
  j["format_version"] = kFormatVersion;
  j["rope_type"] = "longrope";
  j["original_max_position_embeddings"] = s.orig_ctx;
  if (s.target_ctx > 0) j["max_position_embeddings"] = s.target_ctx;
  // Without a target length the factor is s, and a reader may need it even when it is 1.
  if (s.factor != 1.0 || s.target_ctx == 0) j["factor"] = s.factor;
  j["short_factor"] = s.sets[longrope_set_index(s.sets, s.orig_ctx)].factors;
  j["long_factor"] = s.sets.back().factors;
  json sets = json::array();
  for (const FactorSet& fs : s.sets) {
    json e = {{"max_len", fs.max_len}, {"factors", fs.factors}};
    if (fs.attn_factor) e["attention_factor"] = *fs.attn_factor;
    sets.push_back(std::move(e));
  }
  j["sets"] = std::move(sets);
  j["n_hat"] = s.n_hat;
  j["attention_rule"] = longrope_attn_name(s.longrope_attn);
  if (s.attn_factor) j["attention_factor"] = *s.attn_factor;
  if (!provenance.is_null()) j["provenance"] = provenance;
  return j;
}

RopeScaling read_factors_file(const std::string& path, json* provenance) {
  const std::string source = "factors file " + path;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw Error(fmt::format("cannot read factors file {}: {}", path, std::strerror(errno)));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e400
    throw Error(fmt::format("{}: not valid JSON: {}", source, e.what()));
  }
  return factors_from_json(j, source, provenance);
}

void write_factors_file(const std::string& path, const RopeScaling& scaling,
                        const json& provenance) {
  write_file_atomically(path, format_factors_json(factors_to_json(scaling, provenance)));
}

void write_factors_file(const std::string& path, const RopeScaling& scaling, const json& provenance,
                        const json& front) {
  json j = factors_to_json(scaling, provenance);
  if (!front.is_null()) j["front"] = front;
  write_file_atomically(path, format_factors_json(j));
}

void write_factors_file(const std::string& path, const RopeScaling& scaling) {
  write_factors_file(path, scaling, json());
}

}  // namespace longrope
