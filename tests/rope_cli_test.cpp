// The `longrope rope` command, run as a subprocess.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "longrope/rope.h"
#include "test_paths.h"

namespace longrope {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

int run_rope(const std::string& args, std::string* out) {
  std::string cmd = "'";
  cmd += test::cli_path().string();
  cmd += "' rope ";
  cmd += args;
  return test::run_command(cmd, out);
}

json run_json(const std::string& args) {
  std::string out;
  const int rc = run_rope(args + " --json", &out);
  EXPECT_EQ(rc, 0) << "longrope rope " << args << " --json:\n" << out;
  try {
    return json::parse(out);
  } catch (const json::exception& e) {
    ADD_FAILURE() << "not JSON (" << e.what() << "):\n" << out;
    return json::object();
  }
}

fs::path temp_path(const std::string& tag) {
  return fs::temp_directory_path() /
         ("longrope_rope_cli_" + std::to_string(::getpid()) + "_" + tag + ".json");
}

RopeScaling three_sets() {
  RopeScaling s;
  s.method = RopeMethod::kLongrope;
  s.orig_ctx = 512;
  s.target_ctx = 8192;
  s.n_hat = 4;
  s.sets = {FactorSet{{1.0, 1.0, 1.1, 1.2}, 512}, FactorSet{{1.0, 1.5, 2.0, 3.0}, 2048},
            FactorSet{{1.0, 2.0, 6.0, 16.0}, 0}};
  return s;
}

TEST(RopeCli, JsonMatchesLibrary) {
  LONGROPE_REQUIRE_FILE(test::cli_path());
  json j = run_json("--head-dim 64 --base 10000 --rope yarn --rope-factor 8 --orig-ctx 512");
  RopeScaling s;
  s.method = RopeMethod::kYarn;
  s.factor = 8.0;
  s.orig_ctx = 512;
  RopeTables t = s.tables(4096, 64, 10000.0, 0);
  EXPECT_EQ(j["method"], "yarn");
  EXPECT_EQ(j["seq_len"], 4096);  // default: the target length orig * s
  EXPECT_EQ(j["n_rot"], 64);
  EXPECT_EQ(j["n_hat"], 0);
  EXPECT_EQ(j["inv_freq"].get<std::vector<double>>(), t.inv_freq);  // printed exactly
  EXPECT_EQ(j["inv_freq_orig"].get<std::vector<double>>(), t.inv_freq_orig);
  EXPECT_EQ(j["attention_factor"].get<double>(), t.attn_factor);
  ASSERT_EQ(j["lambda"].size(), 32u);
  EXPECT_DOUBLE_EQ(j["lambda"][31].get<double>(), 8.0);
  EXPECT_DOUBLE_EQ(j["lambda"][0].get<double>(), 1.0);

  // Every method without a model.
  for (const char* args :
       {"--rope none", "--rope linear --rope-factor 4", "--rope pi --rope-factor 4",
        "--rope ntk --rope-factor 4",
        "--rope dynamic --rope-factor 2 --orig-ctx 2048 -c 8192",
        "--rope llama3 --rope-factor 8 --orig-ctx 8192 --low-freq-factor 1 --high-freq-factor 4"}) {
    SCOPED_TRACE(args);
    json k = run_json(std::string("--head-dim 128 --base 500000 ") + args);
    EXPECT_EQ(k["inv_freq"].size(), 64u);
  }
  json lin = run_json("--head-dim 8 --rope linear --rope-factor 4");
  EXPECT_EQ(lin["inv_freq"][1].get<double>(), 0.1 / 4.0);
  EXPECT_EQ(lin["method"], "linear");
  json att = run_json("--head-dim 8 --rope linear --rope-factor 4 --attn-factor 1.5");
  EXPECT_EQ(att["attention_factor"].get<double>(), 1.5);
}

TEST(RopeCli, LongropeFactorsFileSelectsSetByLength) {
  LONGROPE_REQUIRE_FILE(test::cli_path());
  const RopeScaling s = three_sets();
  const fs::path p = temp_path("factors");
  write_factors_file(p.string(), s);
  const std::vector<double> w = default_inv_freq(8, 10000.0);
  struct Case {
    int64_t len;
    size_t set;
  };
  for (Case c :
       {Case{100, 0}, Case{512, 0}, Case{513, 1}, Case{2048, 1}, Case{2049, 2}, Case{100000, 2}}) {
    SCOPED_TRACE("seq_len " + std::to_string(c.len));
    json j =
        run_json("--head-dim 8 --factors '" + p.string() + "' -c " + std::to_string(c.len));
    EXPECT_EQ(j["method"], "longrope");
    EXPECT_EQ(j["factor_set"], c.set);
    EXPECT_EQ(j["n_hat"], 4);
    EXPECT_EQ(j["inv_freq"].get<std::vector<double>>(), s.tables(c.len, 8, 10000.0, 0).inv_freq);
    EXPECT_EQ(j["lambda"][3].get<double>(), s.sets[c.set].factors[3]);
    EXPECT_DOUBLE_EQ(j["attention_factor"].get<double>(),
                     std::sqrt(1.0 + std::log(16.0) / std::log(512.0)));
  }
  json d = run_json("--head-dim 8 --factors '" + p.string() + "'");
  EXPECT_EQ(d["seq_len"], 8192);  // default: the target length
  json o = run_json("--head-dim 8 --factors '" + p.string() +
                    "' --rope longrope --n-hat 2 --attn-factor 1");
  EXPECT_EQ(o["n_hat"], 2);
  EXPECT_EQ(o["attention_factor"].get<double>(), 1.0);
  fs::remove(p);
}

TEST(RopeCli, TextTable) {
  LONGROPE_REQUIRE_FILE(test::cli_path());
  std::string out;
  ASSERT_EQ(run_rope("--head-dim 8 --rope yarn --rope-factor 4 --orig-ctx 512", &out), 0) << out;
  EXPECT_NE(out.find("yarn s=4 orig=512"), std::string::npos) << out;
  EXPECT_NE(out.find("attention factor 1.13862944"), std::string::npos) << out;
  EXPECT_NE(out.find("n_hat 0"), std::string::npos) << out;
  EXPECT_NE(out.find("lambda"), std::string::npos) << out;
  EXPECT_NE(out.find("wavelen_orig"), std::string::npos) << out;
  int rows = 0;
  for (size_t pos = 0; (pos = out.find('\n', pos)) != std::string::npos; ++pos) ++rows;
  EXPECT_EQ(rows, 5 + 4) << out;  // 4 header lines + column header + 4 pairs
}

TEST(RopeCli, ErrorsExitNonZeroWithOneLine) {
  LONGROPE_REQUIRE_FILE(test::cli_path());
  const fs::path p = temp_path("errs");
  write_factors_file(p.string(), three_sets());
  struct Case {
    std::string args;
    std::string expect;
    int rc;  // 2: a usage error found while parsing the flags; 1: any other failure
  };
  const std::vector<Case> cases = {
      {"--head-dim 8 --rope yarn", "--rope yarn needs --rope-factor", 1},
      {"--head-dim 8 --rope bogus", "unknown rope method 'bogus'", 2},
      {"--head-dim 8 --rope longrope", "--rope longrope needs --factors", 1},
      {"--rope linear --rope-factor 2", "--head-dim D is required", 1},
      {"--head-dim 8 --factors /nonexistent/f.json", "cannot read factors file /nonexistent/f.json",
       1},
      {"--head-dim 8 --rope linear --rope-factor 0.5", "factor = 0.5", 1},
      {"--head-dim 7 --rope linear --rope-factor 2", "positive even", 1},
      {"--head-dim 16 --factors '" + p.string() + "'", "has 4 factors; expected 8", 1},
      {"--head-dim 8 --factors '" + p.string() + "' --n-hat 100 -c 50",
       "n_hat 100 >= context 50", 1},
      {"--head-dim 8 --factors '" + p.string() + "' --rope yarn", "implies --rope longrope", 1},
      {"--head-dim 8 --rope linear --rope-factor 2 --yarn-beta-fast 8",
       "--yarn-beta-fast applies to yarn", 1},
      {"--head-dim 8 --rope dynamic --rope-factor 2", "original context unknown", 1},
      {"--head-dim 8 --rope-factor abc", "--rope-factor", 2},
      {"--head-dim 8 --n-hat -3", "--n-hat", 2},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    std::string out;
    EXPECT_EQ(run_rope(c.args, &out), c.rc) << out;
    EXPECT_NE(out.find(c.expect), std::string::npos) << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
    EXPECT_EQ(out.rfind("error: ", 0), 0u) << out;
  }
  fs::remove(p);
}

TEST(RopeCli, WithModelFile) {
  LONGROPE_REQUIRE_FILE(test::cli_path());
  const fs::path model = test::shared_dir() / "models" / "stories260K.gguf";
  LONGROPE_REQUIRE_FILE(model);
  const std::string m = "-m '" + model.string() + "'";
  // stories260K: head_dim 8, base 10000, trained context 512, no declared scaling.
  json j = run_json(m);
  EXPECT_EQ(j["method"], "none");
  EXPECT_EQ(j["n_rot"], 8);
  EXPECT_EQ(j["base"].get<double>(), 10000.0);
  EXPECT_EQ(j["orig_ctx"], 512);
  EXPECT_EQ(j["seq_len"], 512);
  EXPECT_EQ(j["inv_freq"].get<std::vector<double>>(), default_inv_freq(8, 10000.0));
  // --orig-ctx defaults to the model's trained context.
  json y = run_json(m + " --rope yarn --rope-factor 4");
  RopeScaling s;
  s.method = RopeMethod::kYarn;
  s.factor = 4.0;
  EXPECT_EQ(y["orig_ctx"], 512);
  EXPECT_EQ(y["seq_len"], 2048);
  EXPECT_EQ(y["inv_freq"].get<std::vector<double>>(), s.tables(2048, 8, 10000.0, 512).inv_freq);
  std::string out;
  EXPECT_NE(run_rope(m + " --head-dim 8", &out), 0);
  EXPECT_NE(out.find("come from the model"), std::string::npos) << out;
  EXPECT_NE(run_rope("-m /nonexistent/model.gguf", &out), 0);
}

}  // namespace
}  // namespace longrope
