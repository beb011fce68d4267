// Shared pieces of the evaluation sweeps: method specs, scalings per length, the memory check,
// the results store and tables.
#include <fmt/core.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "longrope/atomic_file.h"
#include "longrope/error.h"
#include "longrope/eval.h"

namespace longrope {

namespace {

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::vector<std::string> split_commas(const std::vector<std::string>& items) {
  std::vector<std::string> out;
  for (const std::string& it : items) {
    std::stringstream ss(it);
    std::string part;
    while (std::getline(ss, part, ',')) {
      part = trim(part);
      if (!part.empty()) out.push_back(part);
    }
  }
  return out;
}

bool is_method_name(const std::string& s) {
  try {
    parse_rope_method(s);
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

std::vector<EvalMethod> parse_eval_methods(const std::vector<std::string>& specs,
                                           const Model& model) {
  std::vector<EvalMethod> out = parse_method_specs(specs);
  for (EvalMethod& m : out) {
    if (m.factors_path.empty()) continue;
    if (!std::filesystem::is_regular_file(m.factors_path))
      throw Error(fmt::format("method '{}': cannot read factors file {}", m.spec, m.factors_path));
    m.factors = read_factors_file(m.factors_path);
    m.factors.validate(model.hp().n_rot);
  }
  return out;
}

std::vector<EvalMethod> parse_method_specs(const std::vector<std::string>& specs) {
  std::vector<EvalMethod> out;
  std::set<std::string> labels;
  for (const std::string& spec : split_commas(specs)) {
    EvalMethod m;
    m.spec = spec;
    std::string label, rest = spec;
    if (const size_t eq = spec.find('='); eq != std::string::npos) {
      label = trim(spec.substr(0, eq));
      rest = trim(spec.substr(eq + 1));
      if (label.empty() || rest.empty())
        throw Error(
            fmt::format("bad method '{}': expected [LABEL=]METHOD or LABEL=FACTORS.json", spec));
    }
    std::string file;
    if (label == "longrope") {  // NOLINT(bugprone-branch-clone): order of the checks matters
      file = rest;              // longrope=FILE
    } else if (const size_t eq2 = rest.find('='); eq2 != std::string::npos) {
      // LABEL=longrope=FILE
      if (trim(rest.substr(0, eq2)) != "longrope")
        throw Error(fmt::format("bad method '{}': expected LABEL=longrope=FACTORS.json", spec));
      file = trim(rest.substr(eq2 + 1));
    } else if (is_method_name(rest)) {
      m.method = parse_rope_method(rest);
      if (m.method == RopeMethod::kLongrope)
        throw Error(fmt::format("method '{}' needs a factors file: longrope=FACTORS.json", spec));
      if (label.empty()) label = rope_method_name(m.method);
    } else if (!label.empty()) {
      file = rest;  // LABEL=FILE
    } else {
      throw Error(
          fmt::format("unknown method '{}' (expected none, linear, ntk, dynamic, yarn, llama3, "
                      "longrope=FACTORS.json or LABEL=FACTORS.json)",
                      spec));
    }
    if (!file.empty()) {
      m.method = RopeMethod::kLongrope;
      m.factors_path = file;
      if (label.empty()) label = "longrope";
    }
    m.label = label;
    if (!labels.insert(m.label).second)
      throw Error(fmt::format("method label '{}' is used twice in --methods", m.label));
    out.push_back(std::move(m));
  }
  if (out.empty()) throw Error("no method given (--methods none,linear,...)");
  return out;
}

RopeScaling eval_scaling(const EvalMethod& m, const Model& model, int64_t length,
                         const ScaleOptions& so) {
  if (m.method == RopeMethod::kLongrope) {
    // The file read once by parse_eval_methods, put on top of the model's own frequency
    // divisors (rope_freqs: Llama 3's, or a fine-tuned model's first factors) as resolve_rope
    // does for --factors.
    RopeScaling s = m.factors;
    s.freq_factors = model.default_rope().freq_factors;
    s.validate(model.hp().n_rot);
    s = deployed_scaling(s, so.deploy, length, so.deploy_ctx, model.hp().n_ctx_train);
    check_scaling_for_ctx(s, length);
    return s;
  }
  RopeOptions opts;
  opts.method = rope_method_name(m.method);
  if (m.method != RopeMethod::kNone) {
    opts.orig_ctx = so.orig_ctx;
    opts.factor = so.rope_factor;
    default_rope_factor(opts, length, model.hp().n_ctx_train);
  }
  RopeScaling s = resolve_rope(opts, model.default_rope(), model.hp().n_rot);
  check_scaling_for_ctx(s, length);
  return s;
}

void add_scale_key(nlohmann::json& key, const ScaleOptions& so) {
  key["orig_ctx"] = so.orig_ctx ? *so.orig_ctx : int64_t(0);
  key["rope_factor"] = so.rope_factor ? *so.rope_factor : 0.0;
  if (so.deploy == DeployTarget::kLongrope) return;
  key["deploy"] = deploy_target_name(so.deploy);
  key["deploy_ctx"] = so.deploy_ctx;
}

int64_t estimate_run_bytes(const HParams& hp, int64_t length, int n_threads) {
  const int64_t hd = hp.head_dim > 0 ? hp.head_dim : (hp.n_head > 0 ? hp.n_embd / hp.n_head : 0);
  const int64_t q_dim = int64_t(hp.n_head) * hd;
  const int64_t kv_dim = int64_t(hp.n_head_kv > 0 ? hp.n_head_kv : hp.n_head) * hd;
  // Activations of one layer for the whole sequence (residual, normed input, q, k, v, attention
  // output, gate/up/down of the FFN), as FP32.
  const int64_t act = 4 * (4 * int64_t(hp.n_embd) + 2 * q_dim + 2 * kv_dim + 3 * int64_t(hp.n_ff));
  // KV cache of every layer (decoding).
  const int64_t kv_all = 4 * 2 * int64_t(hp.n_layer) * kv_dim;
  const int64_t threads = std::max(1, n_threads > 0 ? n_threads : 16);
  // Attention score rows (one per thread and head) and LM head chunk (64 rows of logits).
  const int64_t fixed = 4 * threads * int64_t(std::max(1, hp.n_head)) * length +
                        4 * 64 * int64_t(hp.n_vocab) + (int64_t(64) << 20);
  return length * (act + kv_all) + fixed;
}

int64_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t value = 0;
  std::string unit;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return value * 1024;
  }
  return 0;
}

void check_memory_for_length(const HParams& hp, int64_t length, int n_threads) {
  const int64_t avail = available_memory_bytes();
  if (avail <= 0) return;
  const int64_t need = estimate_run_bytes(hp, length, n_threads);
  if (need > avail)
    throw Error(fmt::format(
        "length {} needs about {:.1f} GiB (activations and KV cache) but only {:.1f} GiB is "
        "available (MemAvailable); use shorter lengths",
        length, double(need) / (1 << 30), double(avail) / (1 << 30)));
}

std::vector<int64_t> parse_lengths(const std::string& csv) {
  std::vector<int64_t> out;
  for (const std::string& part : split_commas({csv})) {
    std::string p = part;
    int64_t mult = 1;
    if (!p.empty() && (p.back() == 'k' || p.back() == 'K')) {
      mult = 1024;
      p.pop_back();
    }
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(p, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != p.size() || p.empty() || v <= 0 || v > (int64_t(1) << 40) / mult)
      throw Error(fmt::format("bad length '{}' in --lengths (expected e.g. 512,1k,2048)", part));
    if (v * mult < 2) throw Error(fmt::format("length {} is too short (at least 2)", part));
    out.push_back(v * mult);
  }
  if (out.empty()) throw Error("no length given (--lengths 512,1024,...)");
  return out;
}

// ---------------------------------------------------------------------------------------------

ResultsStore::ResultsStore(std::string path, std::string kind, bool resume)
    : path_(std::move(path)) {
  doc_ = {{"kind", kind}, {"version", 1}, {"cells", nlohmann::json::array()}};
  if (!resume || path_.empty() || !std::filesystem::exists(path_)) return;
  std::ifstream in(path_);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw Error(fmt::format("--resume: cannot parse {}: {}", path_, e.what()));
  }
  if (!j.is_object() || j.value("kind", "") != kind || !j.contains("cells") ||
      !j["cells"].is_array())
    throw Error(fmt::format("--resume: {} is not a {} results file", path_, kind));
  doc_["cells"] = j["cells"];
  if (j.contains("runs")) doc_["runs"] = j["runs"];
}

namespace {
bool is_cell(const nlohmann::json& c, const std::string& method_spec, int64_t length,
             const nlohmann::json& key) {
  return c.value("method", "") == method_spec && c.value("length", int64_t(0)) == length &&
         c.contains("key") && c["key"] == key;
}
}  // namespace

const nlohmann::json* ResultsStore::find(const std::string& method_spec, int64_t length,
                                         const nlohmann::json& key) const {
  for (const nlohmann::json& c : doc_["cells"])
    if (is_cell(c, method_spec, length, key)) return &c;
  return nullptr;
}

const nlohmann::json* ResultsStore::find_prefix(
    const std::string& method_spec, int64_t length, const std::string& units, int64_t below,
    const std::function<nlohmann::json(int64_t)>& key_for) const {
  const nlohmann::json* best = nullptr;
  int64_t best_n = 0;
  for (const nlohmann::json& c : doc_["cells"]) {
    if (c.value("method", "") != method_spec || c.value("length", int64_t(0)) != length ||
        !c.contains("key") || !c.contains(units) || !c[units].is_number_integer())
      continue;
    const int64_t n = c[units].get<int64_t>();
    if (n <= best_n || n >= below || c["key"] != key_for(n)) continue;
    best = &c;
    best_n = n;
  }
  return best;
}

void ResultsStore::put(const nlohmann::json& cell) {
  nlohmann::json& cells = doc_["cells"];
  bool replaced = false;
  for (nlohmann::json& c : cells)
    if (is_cell(c, cell.value("method", ""), cell.value("length", int64_t(0)), cell.at("key"))) {
      c = cell;
      replaced = true;
    }
  if (!replaced) cells.push_back(cell);
  save();
}

void ResultsStore::erase(const std::string& method_spec, int64_t length,
                         const nlohmann::json& key) {
  nlohmann::json& cells = doc_["cells"];
  const size_t before = cells.size();
  nlohmann::json kept = nlohmann::json::array();
  for (nlohmann::json& c : cells)
    if (!is_cell(c, method_spec, length, key)) kept.push_back(std::move(c));
  cells = std::move(kept);
  if (cells.size() == before || path_.empty()) return;
  if (!cells.empty()) return save();
  std::error_code ec;
  std::filesystem::remove(path_, ec);
}

void ResultsStore::save() const {
  if (path_.empty()) return;
  write_file_atomically(path_, doc_.dump(2) + "\n");
}

ResultTable make_table(const nlohmann::json& cells, const std::vector<EvalMethod>& methods,
                       const std::vector<int64_t>& lengths, const std::string& field,
                       const std::string& lo_field, const std::string& hi_field) {
  ResultTable t;
  t.lengths = lengths;
  const bool with_ci = !lo_field.empty() && !hi_field.empty();
  for (const EvalMethod& m : methods) {
    t.methods.push_back(m.label);
    std::vector<std::optional<double>> row(lengths.size());
    std::vector<std::optional<std::pair<double, double>>> ci(lengths.size());
    for (size_t i = 0; i < lengths.size(); ++i)
      for (const nlohmann::json& c : cells)
        if (c.value("method", "") == m.spec && c.value("length", int64_t(0)) == lengths[i] &&
            c.contains(field) && c[field].is_number()) {
          row[i] = c[field].get<double>();
          if (with_ci && c.contains(lo_field) && c.contains(hi_field) && c[lo_field].is_number() &&
              c[hi_field].is_number())
            ci[i] = std::make_pair(c[lo_field].get<double>(), c[hi_field].get<double>());
        }
    t.values.push_back(std::move(row));
    if (with_ci) t.intervals.push_back(std::move(ci));
  }
  return t;
}

std::pair<double, double> wilson_interval(double k, int64_t n, double z) {
  if (n <= 0) return {0.0, 1.0};
  const double nn = static_cast<double>(n), p = k / nn, z2 = z * z;
  const double centre = (p + z2 / (2 * nn)) / (1 + z2 / nn);
  const double half = z * std::sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn)) / (1 + z2 / nn);
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

std::string table_markdown(const ResultTable& t, const std::string& corner, int decimals) {
  std::string o = "| " + corner + " |";
  std::string rule = "|---|";
  for (int64_t len : t.lengths) {
    o += fmt::format(" {} |", len);
    rule += "---:|";
  }
  o += "\n" + rule + "\n";
  for (size_t m = 0; m < t.methods.size(); ++m) {
    o += "| " + t.methods[m] + " |";
    for (size_t i = 0; i < t.values[m].size(); ++i) {
      const auto& v = t.values[m][i];
      const bool ci = !t.intervals.empty() && t.intervals[m][i];
      o += !v   ? std::string(" - |")
           : ci ? fmt::format(" {0:.{3}f} [{1:.{3}f}, {2:.{3}f}] |", *v, t.intervals[m][i]->first,
                              t.intervals[m][i]->second, decimals)
                : fmt::format(" {:.{}f} |", *v, decimals);
    }
    o += "\n";
  }
  return o;
}

std::string table_csv(const ResultTable& t, int decimals) {
  auto quote = [](const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  };
  // With intervals (95% intervals, or eval's lowest and highest window), each length's value is
  // followed by its bounds: LEN,LEN_lo,LEN_hi.
  bool ci = false;
  for (const auto& row : t.intervals)
    for (const auto& iv : row) ci = ci || iv.has_value();
  std::string o = "method";
  for (int64_t len : t.lengths)
    o += ci ? fmt::format(",{0},{0}_lo,{0}_hi", len) : fmt::format(",{}", len);
  o += "\n";
  auto num = [&](const std::optional<double>& v) {
    return v ? fmt::format(",{:.{}f}", *v, decimals) : std::string(",");
  };
  for (size_t m = 0; m < t.methods.size(); ++m) {
    o += quote(t.methods[m]);
    for (size_t i = 0; i < t.values[m].size(); ++i) {
      o += num(t.values[m][i]);
      if (!ci) continue;
      const auto& iv = t.intervals[m][i];
      o += num(iv ? std::optional<double>(iv->first) : std::nullopt);
      o += num(iv ? std::optional<double>(iv->second) : std::nullopt);
    }
    o += "\n";
  }
  return o;
}

void make_output_dir(const std::string& dir) {
  if (dir.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir))
    throw Error(fmt::format("cannot create output directory {}", dir));
  check_writable((std::filesystem::path(dir) / "results.json").string());
}

std::vector<nlohmann::json> cell_keys(const nlohmann::json& key,
                                      const std::vector<EvalMethod>& methods) {
  std::vector<nlohmann::json> keys;
  for (const EvalMethod& m : methods) {
    nlohmann::json k = key;
    if (m.method == RopeMethod::kLongrope) {
      nlohmann::json sets = nlohmann::json::array();
      for (const FactorSet& fs : m.factors.sets)
        sets.push_back({{"max_len", fs.max_len}, {"factors", fs.factors}});
      k["factors"] = {{"sets", sets},
                      {"n_hat", m.factors.n_hat},
                      {"attn_factor", m.factors.attn_factor ? *m.factors.attn_factor : 0.0}};
    }
    keys.push_back(std::move(k));
  }
  return keys;
}

std::string write_sweep_outputs(const EvalRun& run, const std::string& out_dir, int64_t orig_ctx,
                                SweepOutputs out) {
  const ResultTable t =
      make_table(run.cells, run.methods, run.lengths, out.field, out.lo_field, out.hi_field);
  std::string md = out.md_head + table_markdown(t, "method \\ length", out.decimals);
  // Cells that repeat another method's (the same RoPE tables for every prompt), computed once.
  std::vector<std::string> repeats;
  for (const nlohmann::json& c : run.cells)
    if (c.is_object() && c.contains("same_as"))
      repeats.push_back(fmt::format("{} @ {} = {}", c.value("label", ""),
                                    c.value("length", int64_t(0)), c.value("same_as", "")));
  if (!repeats.empty())
    md += fmt::format(
        "\nThe same RoPE tables for every prompt, so computed once and shown for both: {}.\n",
        fmt::join(repeats, "; "));
  if (out_dir.empty()) return md;
  write_file_atomically(out_dir + "/results.md", md);
  write_file_atomically(out_dir + "/results.csv", table_csv(t, out.decimals + 3));
  PlotSpec& spec = out.plot;
  spec.vline_x = double(orig_ctx);
  spec.vline_label = fmt::format("original context {}", orig_ctx);
  for (size_t m = 0; m < t.methods.size(); ++m) {
    PlotSeries se;
    se.label = t.methods[m];
    for (size_t i = 0; i < t.lengths.size(); ++i) {
      se.x.push_back(double(t.lengths[i]));
      se.y.push_back(t.values[m][i] ? *t.values[m][i] : std::nan(""));
      if (!t.intervals.empty()) {
        const auto& ci = t.intervals[m][i];
        se.y_lo.push_back(ci ? ci->first : std::nan(""));
        se.y_hi.push_back(ci ? ci->second : std::nan(""));
      }
    }
    spec.series.push_back(std::move(se));
  }
  write_plot_svg(spec, out_dir + "/" + out.stem + ".svg");
  if (plot_png_supported()) write_plot_png(spec, out_dir + "/" + out.stem + ".png");
  return md;
}

}  // namespace longrope
