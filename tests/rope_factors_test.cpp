// The LongRoPE factors file: exact round trip, HF compatibility, errors naming file and field.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/rope.h"
#include "test_paths.h"

namespace longrope {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using test::expect_error;
using test::slurp;

fs::path temp_path(const std::string& tag) {
  return fs::temp_directory_path() /
         ("longrope_rope_factors_" + std::to_string(::getpid()) + "_" + tag + ".json");
}

void spit(const fs::path& p, const std::string& text) {
  std::ofstream out(p);
  out << text;
}

RopeScaling three_sets() {
  RopeScaling s;
  s.method = RopeMethod::kLongrope;
  s.orig_ctx = 4096;
  s.target_ctx = 65536;
  s.n_hat = 7;
  s.longrope_attn = LongropeAttn::kYarnLog;
  s.attn_factor = 1.2345678901234567;
  // Doubles that need all 17 significant digits.
  // The first set has its own attention factor.
  s.sets = {FactorSet{{1.0, 1.0000000000000002, 1.0 + 1.0 / 3.0, 2.718281828459045}, 2048, 1.0},
            FactorSet{{1.1, 1.2, 1.3000000000000003, 9.87654321e2}, 8192},
            FactorSet{{1.0, 3.141592653589793, 7.0 / 3.0, 1e15 + 0.125}, 0}};
  return s;
}

TEST(RopeFactors, RoundTripExactThreeSets) {
  const RopeScaling s = three_sets();
  const json prov = {{"model", "stories260K.gguf"},
                     {"texts", {"moby-dick.txt", "ulysses.txt"}},
                     {"search", {{"population", 64}, {"iterations", 40}, {"seed", 1234}}},
                     {"date", "2025-01-01T00:00:00Z"}};
  const fs::path p = temp_path("roundtrip");
  write_factors_file(p.string(), s, prov);
  json prov_back;
  RopeScaling back = read_factors_file(p.string(), &prov_back);
  EXPECT_EQ(back, s);
  EXPECT_EQ(prov_back, prov);
  // write(read(file)) reproduces the file byte for byte.
  const fs::path p2 = temp_path("roundtrip2");
  write_factors_file(p2.string(), back, prov_back);
  EXPECT_EQ(slurp(p), slurp(p2));
  // HF's view: short_factor = the set serving the original length, long_factor = the last set.
  json raw = json::parse(slurp(p));
  EXPECT_EQ(raw["rope_type"], "longrope");
  EXPECT_EQ(raw["original_max_position_embeddings"], 4096);
  EXPECT_EQ(raw["max_position_embeddings"], 65536);
  EXPECT_EQ(raw["short_factor"].get<std::vector<double>>(), s.sets[1].factors);
  EXPECT_EQ(raw["long_factor"].get<std::vector<double>>(), s.sets[2].factors);
  EXPECT_EQ(raw["n_hat"], 7);
  EXPECT_EQ(raw["attention_rule"], "yarn_log");
  EXPECT_EQ(raw["attention_factor"].get<double>(), 1.2345678901234567);
  EXPECT_EQ(raw["sets"].size(), 3u);
  EXPECT_EQ(raw["sets"][0]["attention_factor"].get<double>(), 1.0);
  EXPECT_FALSE(raw["sets"][1].contains("attention_factor"));
  // The set's own factor is what its lengths get; the others get the scaling's.
  EXPECT_EQ(s.tables(2048, 8, 10000.0, 4096).attn_factor, 1.0);
  EXPECT_EQ(s.tables(4096, 8, 10000.0, 4096).attn_factor, 1.2345678901234567);
  EXPECT_FALSE(fs::exists(p.string() + ".tmp"));
  fs::remove(p);
  fs::remove(p2);
}

TEST(RopeFactors, RoundTripOtherShapes) {
  RopeScaling s;
  s.method = RopeMethod::kLongrope;
  s.orig_ctx = 512;
  s.factor = 8.0;  // no target length: s = factor
  s.longrope_attn = LongropeAttn::kConstant;
  s.sets = {FactorSet{{1.0, 1.5}, 512}, FactorSet{{2.0, 4.0}, 0}};
  const fs::path p = temp_path("shapes");
  write_factors_file(p.string(), s);
  json prov = json::object();
  EXPECT_EQ(read_factors_file(p.string(), &prov), s);
  EXPECT_TRUE(prov.is_null());
  // One unbounded set.
  s.sets = {FactorSet{{1.0, 1.25, 1.5, 1.75}, 0}};
  s.target_ctx = 2048;
  s.longrope_attn = LongropeAttn::kSqrtLog;
  write_factors_file(p.string(), s);
  EXPECT_EQ(read_factors_file(p.string()), s);
  // factors_from_json / factors_to_json directly.
  EXPECT_EQ(factors_from_json(factors_to_json(three_sets(), json())), three_sets());
  fs::remove(p);
}

TEST(RopeFactors, RoundTripFactorOneWithoutTarget) {
  // s = factor = 1 and no target length: the written file must still say so to be readable.
  const json in = {{"rope_type", "longrope"},
                   {"original_max_position_embeddings", 4},
                   {"factor", 1},
                   {"long_factor", {1}}};
  const RopeScaling s = factors_from_json(in);
  EXPECT_EQ(factors_from_json(factors_to_json(s, json())), s);
  const fs::path p = temp_path("factor_one");
  write_factors_file(p.string(), s);
  EXPECT_EQ(read_factors_file(p.string()), s);
  fs::remove(p);
}

TEST(RopeFactors, HfObjectAsIs) {
  // An HF longrope rope_scaling object (lengths inside it) read as a factors file.
  json hf = {{"rope_type", "longrope"},
             {"short_factor", {1.0, 1.0, 1.05, 1.2}},
             {"long_factor", {1.0, 1.5, 4.0, 8.5}},
             {"original_max_position_embeddings", 512},
             {"max_position_embeddings", 4096}};
  const fs::path p = temp_path("hf");
  spit(p, hf.dump(2));
  RopeScaling s = read_factors_file(p.string());
  EXPECT_EQ(s.orig_ctx, 512);
  EXPECT_EQ(s.target_ctx, 4096);
  EXPECT_EQ(s.n_hat, 0);
  EXPECT_EQ(s.longrope_attn, LongropeAttn::kSqrtLog);
  ASSERT_EQ(s.sets.size(), 2u);
  EXPECT_EQ(s.sets[0], (FactorSet{{1.0, 1.0, 1.05, 1.2}, 512}));
  EXPECT_EQ(s.sets[1], (FactorSet{{1.0, 1.5, 4.0, 8.5}, 0}));
  // A whole HF config.json works too.
  json cfg = {{"max_position_embeddings", 4096},
              {"original_max_position_embeddings", 512},
              {"rope_scaling",
               {{"type", "longrope"},
                {"short_factor", hf["short_factor"]},
                {"long_factor", hf["long_factor"]}}}};
  spit(p, cfg.dump());
  EXPECT_EQ(read_factors_file(p.string()), s);
  fs::remove(p);
}

TEST(RopeFactors, ReadErrorsNameFileAndField) {
  const fs::path p = temp_path("errors");
  const std::string ps = p.string();
  const std::string good_head =
      R"("rope_type": "longrope", "original_max_position_embeddings": 512, "max_position_embeddings": 4096)";
  struct Case {
    std::string text;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"{", {"not valid JSON"}},
      {R"({"rope_type": "longrope", "original_max_position_embeddings": 1e400})",
       {"not valid JSON", "number overflow"}},
      {"[1, 2]", {"expected a JSON object, got array"}},
      {R"({"long_factor": [1, 2], "original_max_position_embeddings": 512, "max_position_embeddings": 4096})",
       {"rope_type: missing"}},
      {R"({"rope_type": "yarn", "long_factor": [1, 2]})",
       {"rope_type: \"yarn\"", "expected \"longrope\""}},
      {R"({"rope_type": "longrope", "long_factor": [1, 2], "max_position_embeddings": 4096})",
       {"original_max_position_embeddings: missing"}},
      {R"({"rope_type": "longrope", "long_factor": [1, 2], "original_max_position_embeddings": "512"})",
       {"original_max_position_embeddings: expected an integer, got string"}},
      {R"({"rope_type": "longrope", "long_factor": [1, 2], "original_max_position_embeddings": 512.5})",
       {"original_max_position_embeddings: expected an integer, got 512.5"}},
      {R"({"rope_type": "longrope", "long_factor": [1, 2], "original_max_position_embeddings": 512})",
       {"max_position_embeddings: missing"}},
      {"{" + good_head + "}", {"long_factor: missing"}},
      {"{" + good_head + R"(, "short_factor": [1, 2]})", {"long_factor: missing"}},
      {"{" + good_head + R"(, "long_factor": {"a": 1}})",
       {"long_factor: expected an array of numbers, got object"}},
      {"{" + good_head + R"(, "long_factor": [1, null]})",
       {"long_factor[1]: expected a number, got null"}},
      {"{" + good_head + R"(, "long_factor": []})", {"long_factor: empty"}},
      {"{" + good_head + R"(, "long_factor": [1, 0.5]})", {"rope longrope: set 0 factor[1] = 0.5"}},
      {"{" + good_head + R"(, "long_factor": [1, 2], "short_factor": [1, 2, 3]})",
       {"short_factor: has 3 values and long_factor 2; expected one per rotary pair in both"}},
      {"{" + good_head + R"(, "sets": []})", {"sets: expected a non-empty array"}},
      {"{" + good_head + R"(, "sets": [{"factors": [1, 2]}]})", {"sets[0].max_len: missing"}},
      {"{" + good_head + R"(, "sets": [{"max_len": 0}]})", {"sets[0].factors: missing"}},
      {"{" + good_head +
           R"(, "sets": [{"max_len": 8, "factors": [1, 2]}, {"max_len": 0, "factors": [1, "2"]}]})",
       {"sets[1].factors[1]: expected a number, got string"}},
      {"{" + good_head +
           R"(, "sets": [{"max_len": 8, "factors": [1, 2]}, {"max_len": 4, "factors": [1, 2]}]})",
       {"set 1 max_len 4 is not greater than set 0's 8"}},
      {"{" + good_head + R"(, "sets": [{"max_len": -1, "factors": [1, 2]}]})",
       {"sets[0].max_len: -1"}},
      {"{" + good_head + R"(, "sets": [{"max_len": 0, "factors": [1, 2]}], "long_factor": [1, 3]})",
       {"long_factor: differs from the last entry of sets"}},
      {"{" + good_head +
           R"(, "sets": [{"max_len": 0, "factors": [1, 2]}], "short_factor": [1, 3]})",
       {"short_factor: differs from sets[0]"}},
      {"{" + good_head + R"(, "long_factor": [1, 2], "n_hat": -1})", {"n_hat: -1; expected >= 0"}},
      {"{" + good_head + R"(, "long_factor": [1, 2], "n_hat": "4"})",
       {"n_hat: expected an integer, got string"}},
      {"{" + good_head + R"(, "long_factor": [1, 2], "attention_rule": "foo"})",
       {"attention_rule: unknown longrope attention rule 'foo'"}},
      {"{" + good_head + R"(, "long_factor": [1, 2], "attention_factor": "big"})",
       {"attention_factor: expected a number, got string"}},
      {"{" + good_head + R"(, "long_factor": [1, 2], "attention_factor": -1})",
       {"attn_factor = -1"}},
      {"{" + good_head + R"(, "long_factor": [1, 2], "provenance": "me"})",
       {"provenance: expected an object, got string"}},
      {"{" + good_head + R"(, "long_factor": [1, 2], "format_version": 2})",
       {"format_version: 2; this build reads version 1"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    spit(p, c.text);
    std::vector<std::string> parts = c.parts;
    parts.push_back("factors file " + ps);
    expect_error([&] { read_factors_file(ps); }, parts);
  }
  fs::remove(p);
  expect_error([&] { read_factors_file(ps); }, {"cannot read factors file " + ps, "No such file"});
}

TEST(RopeFactors, WriteErrors) {
  RopeScaling y;
  y.method = RopeMethod::kYarn;
  y.factor = 2.0;
  expect_error([&] { write_factors_file(temp_path("w").string(), y); },
               {"expected a longrope scaling"});
  RopeScaling s = three_sets();
  s.orig_ctx = 0;
  expect_error([&] { write_factors_file(temp_path("w").string(), s); }, {"orig_ctx is 0"});
  s = three_sets();
  s.sets[0].factors[0] = 0.0;
  expect_error([&] { write_factors_file(temp_path("w").string(), s); }, {"set 0 factor[0] = 0"});
  s = three_sets();
  expect_error([&] { write_factors_file("/nonexistent/dir/f.json", s); },
               {"cannot write /nonexistent/dir/f.json"});
  expect_error([&] { write_factors_file(temp_path("w").string(), s, json::array()); },
               {"provenance is array; expected an object"});
  EXPECT_FALSE(fs::exists(temp_path("w")));
}

}  // namespace
}  // namespace longrope
