// RoPE scaling against golden values: shared/golden/rope_golden.json, the hidden cases of
// shared/tools/rope_ref.py, more cases computed by rope_ref's functions, and hand-computed ones.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numbers>
#include <string>
#include <vector>

#include "longrope/rope.h"
#include "test_paths.h"

namespace longrope {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr double kRelTol = 1e-6;

void expect_close(double got, double want, const std::string& what) {
  EXPECT_LE(std::fabs(got - want), kRelTol * std::fabs(want) + 1e-300)
      << what << ": got " << got << ", want " << want;
}

void expect_vec_close(const std::vector<double>& got, const json& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t j = 0; j < got.size(); ++j) {
    expect_close(got[j], want[j].get<double>(), what + "[" + std::to_string(j) + "]");
  }
}

// A golden case's parameters -> a RopeScaling built directly, plus the sequence length.
RopeScaling scaling_of(const std::string& method, const json& p, int64_t* seq_len) {
  RopeScaling s;
  *seq_len = p.value("seq_len", int64_t{0});
  if (p.contains("attention_factor")) s.attn_factor = p["attention_factor"].get<double>();
  if (method == "linear" || method == "ntk") {
    s.method = parse_rope_method(method);
    s.factor = p.at("factor").get<double>();
  } else if (method == "dynamic") {
    s.method = RopeMethod::kDynamic;
    s.factor = p.at("factor").get<double>();
    s.orig_ctx = p.at("max_position_embeddings").get<int64_t>();
  } else if (method == "yarn") {
    s.method = RopeMethod::kYarn;
    s.factor = p.at("factor").get<double>();
    s.orig_ctx = p.at("original_max_position_embeddings").get<int64_t>();
    s.beta_fast = p.value("beta_fast", 32.0);
    s.beta_slow = p.value("beta_slow", 1.0);
    s.truncate = p.value("truncate", true);
  } else if (method == "llama3") {
    s.method = RopeMethod::kLlama3;
    s.factor = p.at("factor").get<double>();
    s.orig_ctx = p.at("original_max_position_embeddings").get<int64_t>();
    s.low_freq_factor = p.at("low_freq_factor").get<double>();
    s.high_freq_factor = p.at("high_freq_factor").get<double>();
  } else if (method == "longrope") {
    s.method = RopeMethod::kLongrope;
    s.orig_ctx = p.at("original_max_position_embeddings").get<int64_t>();
    s.target_ctx = p.at("max_position_embeddings").get<int64_t>();
    s.sets = {FactorSet{p.at("short_factor").get<std::vector<double>>(), s.orig_ctx},
              FactorSet{p.at("long_factor").get<std::vector<double>>(), 0}};
  } else {
    ADD_FAILURE() << "unknown golden method " << method;
  }
  return s;
}

// The same case as an HF config.json, to run through rope_from_hf_config.
json hf_config_of(const std::string& method, const json& p) {
  json rs = {{"rope_type", method}};
  json cfg = {{"rope_theta", p.at("base")}, {"head_dim", p.at("head_dim")}};
  for (const char* k :
       {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "truncate",
        "low_freq_factor", "high_freq_factor", "short_factor", "long_factor", "attention_factor"}) {
    if (p.contains(k)) rs[k] = p[k];
  }
  if (method == "dynamic") {
    cfg["max_position_embeddings"] = p.at("max_position_embeddings");
  } else if (method == "longrope") {
    cfg["max_position_embeddings"] = p.at("max_position_embeddings");
  }
  cfg["rope_scaling"] = rs;
  return cfg;
}

// Checks every case of a golden-format document; returns how many cases were checked per method.
std::map<std::string, int> check_cases(const json& doc) {
  std::map<std::string, int> seen;
  EXPECT_TRUE(doc.contains("cases") && doc["cases"].is_array());
  for (const json& c : doc["cases"]) {
    const std::string name = c.at("name").get<std::string>();
    const std::string method = c.at("method").get<std::string>();
    const json& p = c.at("params");
    SCOPED_TRACE("case " + name);
    const int d = p.at("head_dim").get<int>();
    const double base = p.at("base").get<double>();
    if (method == "longrope_angles") {
      RopeScaling s;
      s.method = RopeMethod::kLongrope;
      s.orig_ctx = 512;  // irrelevant to the angles
      s.sets = {FactorSet{p.at("long_factor").get<std::vector<double>>(), 0}};
      s.n_hat = p.at("n_hat").get<int64_t>();
      std::vector<int64_t> positions = p.at("positions").get<std::vector<int64_t>>();
      RopeTables t = s.tables(positions.back() + 1, d, base, 0);
      EXPECT_EQ(t.n_hat, s.n_hat);
      const json& want = c.at("angles");
      EXPECT_EQ(want.size(), positions.size());
      for (size_t i = 0; i < positions.size() && i < want.size(); ++i) {
        const int64_t pos = positions[i];
        const std::vector<double>& w = pos < t.n_hat ? t.inv_freq_orig : t.inv_freq;
        std::vector<double> ang(w.size());
        for (size_t j = 0; j < w.size(); ++j) ang[j] = static_cast<double>(pos) * w[j];
        expect_vec_close(ang, want[i], "angles at position " + std::to_string(pos));
      }
      seen[method]++;
      continue;
    }
    int64_t seq_len = 0;
    RopeScaling s = scaling_of(method, p, &seq_len);
    RopeTables t = s.tables(seq_len, d, base, 0);
    expect_vec_close(t.inv_freq, c.at("inv_freq"), "inv_freq");
    expect_close(t.attn_factor, c.at("attention_factor").get<double>(), "attention_factor");
    expect_vec_close(t.inv_freq_orig, json(default_inv_freq(d, base)), "inv_freq_orig");
    // The same case through the HF config parser gives the same tables.
    if (method != "ntk") {
      RopeScaling h = rope_from_hf_config(hf_config_of(method, p));
      EXPECT_EQ(h.tables(seq_len, d, base, 0), t) << "via rope_from_hf_config: " << h.describe();
    }
    seen[method]++;
  }
  return seen;
}

fs::path temp_path(const std::string& tag) {
  return fs::temp_directory_path() /
         ("longrope_rope_golden_" + std::to_string(::getpid()) + "_" + tag);
}

// Skips (with a message) unless python3 and rope_ref.py are available.
bool have_rope_ref(std::string* why) {
  const fs::path script = test::shared_dir() / "tools" / "rope_ref.py";
  if (!fs::exists(script)) {
    *why = "missing " + script.string() + " (need ../shared)";
    return false;
  }
  std::string out;
  if (test::run_command("python3 -c 'import json, math, sys'", &out) != 0) {
    *why = "python3 not available: " + out;
    return false;
  }
  return true;
}

json load_json(const fs::path& p) {
  std::ifstream in(p);
  EXPECT_TRUE(in.good()) << "cannot open " << p;
  return json::parse(in);
}

TEST(RopeGolden, SharedGoldenFile) {
  const fs::path golden = test::shared_dir() / "golden" / "rope_golden.json";
  LONGROPE_REQUIRE_FILE(golden);
  std::map<std::string, int> seen = check_cases(load_json(golden));
  for (const char* m :
       {"linear", "ntk", "dynamic", "yarn", "llama3", "longrope", "longrope_angles"}) {
    EXPECT_GE(seen[m], 1) << "golden file has no " << m << " case";
  }
}

TEST(RopeGolden, HiddenCasesFromRopeRef) {
  std::string why;
  if (!have_rope_ref(&why)) LONGROPE_SKIP_OR_FAIL(why);
  const fs::path out = temp_path("hidden.json");
  const fs::path script = test::shared_dir() / "tools" / "rope_ref.py";
  std::string log;
  ASSERT_EQ(
      test::run_command("python3 '" + script.string() + "' hidden '" + out.string() + "'", &log), 0)
      << log;
  json doc = load_json(out);
  fs::remove(out);
  ASSERT_GE(doc["cases"].size(), 5u);
  std::map<std::string, int> seen = check_cases(doc);
  int total = 0;
  for (auto& [m, n] : seen) total += n;
  EXPECT_EQ(total, static_cast<int>(doc["cases"].size()));
}

// More head dims, bases and factors, computed by rope_ref's functions at test time.
TEST(RopeGolden, MoreCasesFromRopeRefFunctions) {
  std::string why;
  if (!have_rope_ref(&why)) LONGROPE_SKIP_OR_FAIL(why);
  const fs::path py = temp_path("more.py");
  const fs::path out = temp_path("more.json");
  {
    std::ofstream f(py);
    f << R"PY(import json, sys
sys.path.insert(0, sys.argv[1])
import rope_ref as r
cases = []
def add(name, method, params, res):
    inv, af = res
    cases.append({"name": name, "method": method, "params": params, "inv_freq": inv, "attention_factor": af})
add("linear_d80_b20000_s2.5", "linear", {"head_dim": 80, "base": 20000.0, "factor": 2.5}, r.linear(80, 20000.0, 2.5))
add("ntk_d128_b500000_s8", "ntk", {"head_dim": 128, "base": 500000.0, "factor": 8.0}, r.ntk(128, 500000.0, 8.0))
add("ntk_d16_s1.5", "ntk", {"head_dim": 16, "base": 10000.0, "factor": 1.5}, r.ntk(16, 10000.0, 1.5))
for L in (100, 4096, 4097, 10000):
    add("dynamic_d96_s3_len%d" % L, "dynamic", {"head_dim": 96, "base": 10000.0, "factor": 3.0, "max_position_embeddings": 4096, "seq_len": L}, r.dynamic_ntk(96, 10000.0, 3.0, 4096, L))
add("dynamic_d64_b1e6_s16", "dynamic", {"head_dim": 64, "base": 1e6, "factor": 16.0, "max_position_embeddings": 8192, "seq_len": 131072}, r.dynamic_ntk(64, 1e6, 16.0, 8192, 131072))
add("yarn_d128_b1e6_s32_notrunc", "yarn", {"head_dim": 128, "base": 1e6, "factor": 32.0, "original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False}, r.yarn(128, 1e6, 32.0, 4096, 32.0, 1.0, False))
add("yarn_d32_s2_b8_0.5", "yarn", {"head_dim": 32, "base": 10000.0, "factor": 2.0, "original_max_position_embeddings": 256, "beta_fast": 8.0, "beta_slow": 0.5, "truncate": True}, r.yarn(32, 10000.0, 2.0, 256, 8.0, 0.5, True))
add("yarn_d64_s4_attn0.8", "yarn", {"head_dim": 64, "base": 10000.0, "factor": 4.0, "original_max_position_embeddings": 2048, "attention_factor": 0.8}, r.yarn(64, 10000.0, 4.0, 2048, attention_factor=0.8))
add("yarn_d8_s4_orig10_flat", "yarn", {"head_dim": 8, "base": 10000.0, "factor": 4.0, "original_max_position_embeddings": 10}, r.yarn(8, 10000.0, 4.0, 10))
add("yarn_d64_s1", "yarn", {"head_dim": 64, "base": 10000.0, "factor": 1.0, "original_max_position_embeddings": 2048}, r.yarn(64, 10000.0, 1.0, 2048))
add("llama3_d64_s16_lo1_hi8", "llama3", {"head_dim": 64, "base": 10000.0, "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 8.0, "original_max_position_embeddings": 1024}, r.llama3(64, 10000.0, 16.0, 1.0, 8.0, 1024))
add("llama3_d128_s32_lo2_hi6", "llama3", {"head_dim": 128, "base": 500000.0, "factor": 32.0, "low_freq_factor": 2.0, "high_freq_factor": 6.0, "original_max_position_embeddings": 8192}, r.llama3(128, 500000.0, 32.0, 2.0, 6.0, 8192))
sf = [1.0 + 0.01 * j for j in range(8)]
lf = [1.0 + 0.5 * j * j for j in range(8)]
for L in (1, 1024, 1025, 16384, 100000):
    add("longrope_d16_b5e5_len%d" % L, "longrope", {"head_dim": 16, "base": 500000.0, "short_factor": sf, "long_factor": lf, "original_max_position_embeddings": 1024, "max_position_embeddings": 16384, "seq_len": L}, r.longrope(16, 500000.0, sf, lf, 1024, 16384, L))
add("longrope_d16_attn1.5", "longrope", {"head_dim": 16, "base": 10000.0, "short_factor": sf, "long_factor": lf, "original_max_position_embeddings": 2048, "max_position_embeddings": 8192, "seq_len": 8192, "attention_factor": 1.5}, r.longrope(16, 10000.0, sf, lf, 2048, 8192, 8192, 1.5))
lf64 = [1.0 + 0.1 * j for j in range(32)]
add("longrope_d64_s1", "longrope", {"head_dim": 64, "base": 10000.0, "short_factor": lf64, "long_factor": lf64, "original_max_position_embeddings": 4096, "max_position_embeddings": 4096, "seq_len": 4096}, r.longrope(64, 10000.0, lf64, lf64, 4096, 4096, 4096))
inv, _ = r.longrope(16, 10000.0, sf, lf, 1024, 16384, 16384)
pos = [0, 1, 7, 8, 9, 1000, 16383]
cases.append({"name": "longrope_angles_d16_nhat8", "method": "longrope_angles", "params": {"head_dim": 16, "base": 10000.0, "long_factor": lf, "n_hat": 8, "positions": pos}, "angles": r.angles(inv, r.default_inv_freq(16, 10000.0), pos, 8)})
json.dump({"cases": cases}, open(sys.argv[2], "w"))
)PY";
  }
  std::string log;
  const std::string tools = (test::shared_dir() / "tools").string();
  ASSERT_EQ(test::run_command(
                "python3 '" + py.string() + "' '" + tools + "' '" + out.string() + "'", &log),
            0)
      << log;
  json doc = load_json(out);
  fs::remove(py);
  fs::remove(out);
  std::map<std::string, int> seen = check_cases(doc);
  EXPECT_EQ(seen["longrope"], 7);
  EXPECT_EQ(seen["dynamic"], 5);
  EXPECT_EQ(seen["longrope_angles"], 1);
}

// Values worked out by hand (no Python needed).
TEST(RopeGolden, HandComputed) {
  // d=4, base 100: w = [1, 0.1].
  EXPECT_EQ(default_inv_freq(4, 100.0), (std::vector<double>{1.0, 0.1}));
  RopeScaling lin;
  lin.method = RopeMethod::kLinear;
  lin.factor = 2.0;
  RopeTables t = lin.tables(0, 4, 100.0, 0);
  expect_close(t.inv_freq[0], 0.5, "linear[0]");
  expect_close(t.inv_freq[1], 0.05, "linear[1]");
  EXPECT_EQ(t.attn_factor, 1.0);
  // NTK d=4, s=4: b' = 100 * 4^(4/2) = 1600, w'_1 = 1600^(-1/2) = 0.025.
  RopeScaling ntk;
  ntk.method = RopeMethod::kNtk;
  ntk.factor = 4.0;
  t = ntk.tables(0, 4, 100.0, 0);
  expect_close(t.inv_freq[0], 1.0, "ntk[0]");
  expect_close(t.inv_freq[1], 0.025, "ntk[1]");
  // Dynamic d=4, s=2, L=100, seq 200: x = 2*200/100 - 1 = 3, b' = 100 * 3^2 = 900, w'_1 = 1/30.
  RopeScaling dyn;
  dyn.method = RopeMethod::kDynamic;
  dyn.factor = 2.0;
  dyn.orig_ctx = 100;
  t = dyn.tables(200, 4, 100.0, 0);
  expect_close(t.inv_freq[1], 1.0 / 30.0, "dynamic[1]");
  EXPECT_EQ(dyn.tables(100, 4, 100.0, 0).inv_freq, default_inv_freq(4, 100.0));
  // llama3 d=8, base 1e4 (wavelengths 2pi*[1, 10, 100, 1000]), old 1000, lo 1, hi 4, f 8:
  // pairs 0, 1 kept (< 250), pair 3 divided (> 1000), pair 2 smooth.
  RopeScaling l3;
  l3.method = RopeMethod::kLlama3;
  l3.factor = 8.0;
  l3.orig_ctx = 1000;
  t = l3.tables(0, 8, 10000.0, 0);
  const double sm = (1000.0 / (2.0 * std::numbers::pi * 100.0) - 1.0) / 3.0;
  expect_close(t.inv_freq[0], 1.0, "llama3[0]");
  expect_close(t.inv_freq[1], 0.1, "llama3[1]");
  expect_close(t.inv_freq[2], (1.0 - sm) * 0.01 / 8.0 + sm * 0.01, "llama3[2]");
  expect_close(t.inv_freq[3], 0.001 / 8.0, "llama3[3]");
  // YaRN with both correction dims clamped to 0 (L_orig 10): low == high -> high = 0.001, so
  // pair 0 is kept and every other pair is divided by s.
  RopeScaling y;
  y.method = RopeMethod::kYarn;
  y.factor = 4.0;
  y.orig_ctx = 10;
  t = y.tables(0, 8, 10000.0, 0);
  expect_close(t.inv_freq[0], 1.0, "yarn[0]");
  expect_close(t.inv_freq[1], 0.1 / 4.0, "yarn[1]");
  expect_close(t.inv_freq[3], 0.001 / 4.0, "yarn[3]");
  expect_close(t.attn_factor, 0.1 * std::log(4.0) + 1.0, "yarn attn");
  // LongRoPE sqrt rule: s = 8, L = 512: sqrt(1 + ln 8 / ln 512) = sqrt(1 + 1/3).
  RopeScaling lr;
  lr.method = RopeMethod::kLongrope;
  lr.orig_ctx = 512;
  lr.target_ctx = 4096;
  lr.sets = {FactorSet{{1.0, 2.0}, 0}};
  t = lr.tables(4096, 4, 100.0, 0);
  expect_close(t.attn_factor, std::sqrt(4.0 / 3.0), "longrope attn");
  expect_close(t.inv_freq[1], 0.05, "longrope[1]");
}

}  // namespace
}  // namespace longrope
