// RopeScaling semantics: set selection, start tokens, attention rules, validation messages,
// option resolution.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/rope.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;
using test::expect_error;

// Expects fn to throw longrope::Error whose one-line message contains every substring.
std::vector<double> filled(size_t n, double v) {
  return std::vector<double>(n, v);
}

RopeScaling longrope3() {
  RopeScaling s;
  s.method = RopeMethod::kLongrope;
  s.orig_ctx = 1024;
  s.target_ctx = 16384;
  s.sets = {FactorSet{filled(4, 1.5), 1024}, FactorSet{filled(4, 2.0), 4096},
            FactorSet{filled(4, 8.0), 0}};
  return s;
}

TEST(RopeScaling, MethodNames) {
  for (RopeMethod m :
       {RopeMethod::kNone, RopeMethod::kLinear, RopeMethod::kNtk, RopeMethod::kDynamic,
        RopeMethod::kYarn, RopeMethod::kLlama3, RopeMethod::kLongrope}) {
    EXPECT_EQ(parse_rope_method(rope_method_name(m)), m);
  }
  EXPECT_EQ(parse_rope_method("pi"), RopeMethod::kLinear);
  expect_error([] { parse_rope_method("Yarn2"); }, {"unknown rope method 'Yarn2'", "longrope"});
  for (LongropeAttn a : {LongropeAttn::kSqrtLog, LongropeAttn::kYarnLog, LongropeAttn::kConstant}) {
    EXPECT_EQ(parse_longrope_attn(longrope_attn_name(a)), a);
  }
  expect_error([] { parse_longrope_attn("su"); }, {"attention rule 'su'"});
}

TEST(RopeScaling, NoneIsTheModelsOwn) {
  RopeScaling s;
  RopeTables t = s.tables(100, 64, 10000.0, 512);
  EXPECT_EQ(t.inv_freq, default_inv_freq(64, 10000.0));
  EXPECT_EQ(t.inv_freq_orig, t.inv_freq);
  EXPECT_EQ(t.attn_factor, 1.0);
  EXPECT_EQ(t.n_hat, 0);
  EXPECT_EQ(s.describe(), "none");
  // Per-pair factors from the model file (GGUF rope_freqs) are the model's scaling, not "none".
  RopeScaling from_file;
  from_file.freq_factors = {1.0, 2.0, 4.0, 8.0};
  EXPECT_EQ(from_file.describe(), "rope_freqs from the model file (4 per-pair factors)");
}

TEST(RopeScaling, SetSelectionByLengthThreeBuckets) {
  RopeScaling s = longrope3();
  const std::vector<double> w = default_inv_freq(8, 10000.0);
  struct Case {
    int64_t len;
    size_t set;
    double lambda;
  };
  for (Case c : {Case{1, 0, 1.5}, Case{1024, 0, 1.5}, Case{1025, 1, 2.0}, Case{4096, 1, 2.0},
                 Case{4097, 2, 8.0}, Case{1000000, 2, 8.0}}) {
    SCOPED_TRACE("len " + std::to_string(c.len));
    EXPECT_EQ(longrope_set_index(s.sets, c.len), c.set);
    RopeTables t = s.tables(c.len, 8, 10000.0, 0);
    for (size_t j = 0; j < w.size(); ++j) EXPECT_DOUBLE_EQ(t.inv_freq[j], w[j] / c.lambda);
    // The attention factor depends on the target ratio, not on the current length.
    EXPECT_DOUBLE_EQ(t.attn_factor, std::sqrt(1.0 + std::log(16.0) / std::log(1024.0)));
  }
  // All bounded: longer sequences use the last set.
  s.sets.back().max_len = 16384;
  EXPECT_EQ(longrope_set_index(s.sets, 20000), 2u);
  EXPECT_EQ(longrope_set_index(s.sets, 16384), 2u);
  expect_error([] { longrope_set_index({}, 5); }, {"no factor sets"});
}

TEST(RopeScaling, StartTokensAndOriginalFrequencies) {
  RopeScaling s = longrope3();
  s.n_hat = 4;
  RopeTables t = s.tables(8192, 8, 10000.0, 0);
  EXPECT_EQ(t.n_hat, 4);
  EXPECT_EQ(t.inv_freq_orig, default_inv_freq(8, 10000.0));
  // n_hat only applies to longrope.
  RopeScaling y;
  y.method = RopeMethod::kYarn;
  y.factor = 4;
  y.orig_ctx = 512;
  y.n_hat = 4;
  EXPECT_EQ(y.tables(2048, 8, 10000.0, 0).n_hat, 0);
}

TEST(RopeScaling, LongropeAttentionRules) {
  RopeScaling s = longrope3();  // s = 16384 / 1024 = 16
  const double s16 = 16.0;
  EXPECT_DOUBLE_EQ(s.tables(1, 8, 1e4, 0).attn_factor,
                   std::sqrt(1.0 + std::log(s16) / std::log(1024.0)));
  s.longrope_attn = LongropeAttn::kYarnLog;
  EXPECT_DOUBLE_EQ(s.tables(1, 8, 1e4, 0).attn_factor, 0.1 * std::log(s16) + 1.0);
  s.longrope_attn = LongropeAttn::kConstant;
  EXPECT_DOUBLE_EQ(s.tables(1, 8, 1e4, 0).attn_factor, 1.0);
  s.attn_factor = 1.25;
  EXPECT_DOUBLE_EQ(s.tables(1, 8, 1e4, 0).attn_factor, 1.25);
  s.longrope_attn = LongropeAttn::kSqrtLog;
  EXPECT_DOUBLE_EQ(s.tables(1, 8, 1e4, 0).attn_factor, 1.25);  // the override wins
  s.attn_factor.reset();
  // No target: s = factor.
  s.target_ctx = 0;
  s.factor = 4.0;
  EXPECT_DOUBLE_EQ(s.tables(1, 8, 1e4, 0).attn_factor,
                   std::sqrt(1.0 + std::log(4.0) / std::log(1024.0)));
  EXPECT_DOUBLE_EQ(rope_extension_ratio(s, 0), 4.0);
  // Target <= original: 1.
  s.target_ctx = 1024;
  EXPECT_DOUBLE_EQ(s.tables(1, 8, 1e4, 0).attn_factor, 1.0);
  // orig_ctx 0: the model's trained context.
  s.orig_ctx = 0;
  s.target_ctx = 2048;
  EXPECT_DOUBLE_EQ(s.tables(1, 8, 1e4, 512).attn_factor,
                   std::sqrt(1.0 + std::log(4.0) / std::log(512.0)));
  EXPECT_DOUBLE_EQ(rope_extension_ratio(s, 512), 4.0);
}

TEST(RopeScaling, YarnAttentionFactor) {
  RopeScaling y;
  y.method = RopeMethod::kYarn;
  y.factor = 4.0;
  y.orig_ctx = 2048;
  EXPECT_DOUBLE_EQ(y.tables(0, 64, 1e4, 0).attn_factor, 0.1 * std::log(4.0) + 1.0);
  y.mscale = 2.0;  // only one of the two: ignored
  EXPECT_DOUBLE_EQ(y.tables(0, 64, 1e4, 0).attn_factor, 0.1 * std::log(4.0) + 1.0);
  y.mscale_all_dim = 1.0;
  EXPECT_DOUBLE_EQ(y.tables(0, 64, 1e4, 0).attn_factor,
                   (0.2 * std::log(4.0) + 1.0) / (0.1 * std::log(4.0) + 1.0));
  y.mscale = 0.707;
  y.mscale_all_dim = 0.707;
  EXPECT_DOUBLE_EQ(y.tables(0, 64, 1e4, 0).attn_factor, 1.0);
  y.attn_factor = 0.5;
  EXPECT_DOUBLE_EQ(y.tables(0, 64, 1e4, 0).attn_factor, 0.5);
  y.attn_factor.reset();
  y.mscale.reset();
  y.mscale_all_dim.reset();
  y.factor = 1.0;
  EXPECT_DOUBLE_EQ(y.tables(0, 64, 1e4, 0).attn_factor, 1.0);
  const std::vector<double> inv = y.tables(0, 64, 1e4, 0).inv_freq;
  const std::vector<double> w = default_inv_freq(64, 1e4);
  for (size_t j = 0; j < w.size(); ++j) EXPECT_DOUBLE_EQ(inv[j], w[j]);
}

TEST(RopeScaling, OrigCtxZeroMeansModelContext) {
  RopeScaling a;
  a.method = RopeMethod::kYarn;
  a.factor = 8.0;
  RopeScaling b = a;
  b.orig_ctx = 512;
  EXPECT_EQ(a.tables(4096, 64, 1e4, 512), b.tables(4096, 64, 1e4, 0));
  expect_error([&] { a.tables(4096, 64, 1e4, 0); }, {"original context unknown", "--orig-ctx"});
}

TEST(RopeScaling, FreqFactorsDivide) {
  RopeScaling s;
  s.freq_factors = {1.0, 2.0, 4.0, 8.0};
  RopeTables t = s.tables(10, 8, 1e4, 512);
  const std::vector<double> w = default_inv_freq(8, 1e4);
  for (size_t j = 0; j < 4; ++j) {
    EXPECT_DOUBLE_EQ(t.inv_freq[j], w[j] / s.freq_factors[j]);
    EXPECT_DOUBLE_EQ(t.inv_freq_orig[j], w[j] / s.freq_factors[j]);
  }
  s.freq_factors = {1.0, 2.0};
  expect_error([&] { s.validate(8); }, {"2 freq_factors", "expected 4"});
  s.freq_factors = {1.0, 2.0, 0.0, 1.0};
  expect_error([&] { s.validate(8); }, {"freq_factors[2] = 0"});
}

TEST(RopeScaling, ValidationErrors) {
  RopeScaling lr;
  lr.method = RopeMethod::kLongrope;
  lr.orig_ctx = 512;
  expect_error([&] { lr.validate(8); }, {"longrope", "no factor sets"});
  lr.sets = {FactorSet{filled(4, 1.0), 512}, FactorSet{filled(3, 2.0), 0}};
  expect_error([&] { lr.validate(8); }, {"set 1 (max_len 0) has 3 factors", "expected 4"});
  lr.sets[1].factors = {1.0, 2.0, std::nan(""), 3.0};
  expect_error([&] { lr.validate(8); }, {"set 1 factor[2] = nan", ">= 1"});
  lr.sets[1].factors = {1.0, 0.5, 2.0, 3.0};
  expect_error([&] { lr.validate(8); }, {"set 1 factor[1] = 0.5", ">= 1"});
  lr.sets[1].factors = {1.0, std::numeric_limits<double>::infinity(), 2.0, 3.0};
  expect_error([&] { lr.validate(8); }, {"set 1 factor[1] = inf"});
  lr.sets[1].factors = filled(4, 2.0);
  lr.validate(8);
  lr.sets[1].max_len = 256;
  expect_error([&] { lr.validate(8); }, {"set 1 max_len 256 is not greater than set 0's 512"});
  lr.sets[1].max_len = 0;
  lr.sets[0].max_len = 0;
  expect_error([&] { lr.validate(8); }, {"set 0 of 2 has max_len 0", "only the last set"});
  lr.sets[0].max_len = 512;
  lr.n_hat = -1;
  expect_error([&] { lr.validate(8); }, {"n_hat = -1"});
  lr.n_hat = 0;
  expect_error([&] { lr.validate(7); }, {"n_rot = 7", "positive even"});

  RopeScaling lin;
  lin.method = RopeMethod::kLinear;
  lin.factor = 0.5;
  expect_error([&] { lin.validate(64); }, {"rope linear: factor = 0.5", ">= 1"});
  lin.factor = std::nan("");
  expect_error([&] { lin.validate(64); }, {"factor = nan"});
  lin.factor = 2.0;
  lin.attn_factor = -1.0;
  expect_error([&] { lin.validate(64); }, {"attn_factor = -1"});

  RopeScaling ntk;
  ntk.method = RopeMethod::kNtk;
  ntk.factor = 2.0;
  expect_error([&] { ntk.validate(2); }, {"n_rot > 2"});

  RopeScaling y;
  y.method = RopeMethod::kYarn;
  y.factor = 2.0;
  y.beta_fast = 1.0;
  y.beta_slow = 32.0;
  expect_error([&] { y.validate(64); },
               {"beta_fast = 1, beta_slow = 32", "beta_fast > beta_slow > 0"});
  y.beta_fast = 32.0;
  y.beta_slow = 0.0;
  expect_error([&] { y.validate(64); }, {"beta_slow = 0"});

  RopeScaling l3;
  l3.method = RopeMethod::kLlama3;
  l3.factor = 8.0;
  l3.low_freq_factor = 4.0;
  l3.high_freq_factor = 4.0;
  expect_error([&] { l3.validate(64); }, {"low_freq_factor = 4, high_freq_factor = 4"});

  expect_error([] { default_inv_freq(0, 1e4); }, {"n_rot = 0"});
  expect_error([] { default_inv_freq(8, 0.5); }, {"base = 0.5"});
  // tables() validates too.
  expect_error([&] { lin.tables(10, 64, 1e4, 0); }, {"attn_factor = -1"});
}

TEST(RopeScaling, Describe) {
  RopeScaling y;
  y.method = RopeMethod::kYarn;
  y.factor = 4;
  y.orig_ctx = 512;
  EXPECT_EQ(y.describe(), "yarn s=4 orig=512 beta=32/1");
  RopeScaling s = longrope3();
  s.n_hat = 4;
  EXPECT_EQ(s.describe(),
            "longrope orig=1024 target=16384 sets=3 (<=1024, <=4096, rest) n_hat=4 attn=sqrt_log");
  RopeScaling l;
  l.method = RopeMethod::kLinear;
  l.factor = 2.5;
  l.attn_factor = 1.1;
  EXPECT_EQ(l.describe(), "linear s=2.5 attn_factor=1.1");
}

TEST(RopeScaling, CheckScalingForCtx) {
  RopeScaling s = longrope3();
  s.n_hat = 8;
  check_scaling_for_ctx(s, 9);
  expect_error([&] { check_scaling_for_ctx(s, 8); }, {"n_hat 8 >= context 8"});
  RopeScaling y;
  check_scaling_for_ctx(y, 1);
}

// ---- resolve_rope ------------------------------------------------------------------------------

fs::path write_temp_factors(const std::string& tag, const RopeScaling& s) {
  fs::path p = fs::temp_directory_path() /
               ("longrope_rope_scaling_" + std::to_string(::getpid()) + "_" + tag + ".json");
  write_factors_file(p.string(), s);
  return p;
}

TEST(RopeScaling, ResolveNoFlagsIsModelDefault) {
  RopeScaling model = longrope3();
  EXPECT_EQ(resolve_rope(RopeOptions{}, model, 8), model);
  EXPECT_EQ(resolve_rope(RopeOptions{}, RopeScaling{}, 8), RopeScaling{});
}

TEST(RopeScaling, ResolveMethodFlags) {
  RopeOptions o;
  o.method = "yarn";
  expect_error([&] { resolve_rope(o, RopeScaling{}, 64); }, {"--rope yarn needs --rope-factor"});
  default_rope_factor(o, 2048, 512);
  ASSERT_TRUE(o.factor.has_value());
  EXPECT_DOUBLE_EQ(*o.factor, 4.0);
  o.beta_fast = 16.0;
  RopeScaling s = resolve_rope(o, longrope3(), 64);  // the model's scaling is replaced
  EXPECT_EQ(s.method, RopeMethod::kYarn);
  EXPECT_EQ(s.factor, 4.0);
  EXPECT_EQ(s.beta_fast, 16.0);
  EXPECT_EQ(s.orig_ctx, 0);
  o.orig_ctx = 1024;
  EXPECT_EQ(resolve_rope(o, RopeScaling{}, 64).orig_ctx, 1024);

  RopeOptions d;
  d.method = "linear";
  d.orig_ctx = 1000;
  default_rope_factor(d, 500, 512);  // never below 1
  EXPECT_EQ(*d.factor, 1.0);

  RopeOptions lr;
  lr.method = "longrope";
  expect_error([&] { resolve_rope(lr, RopeScaling{}, 8); }, {"--rope longrope needs --factors"});

  RopeOptions bad;
  bad.method = "linear";
  bad.factor = 0.5;
  expect_error([&] { resolve_rope(bad, RopeScaling{}, 8); }, {"factor = 0.5"});
  bad.factor = 2.0;
  bad.beta_fast = 8.0;
  expect_error([&] { resolve_rope(bad, RopeScaling{}, 8); }, {"--yarn-beta-fast applies to yarn"});
  bad.beta_fast.reset();
  bad.n_hat = 4;
  expect_error([&] { resolve_rope(bad, RopeScaling{}, 8); }, {"--n-hat applies to longrope"});

  RopeOptions none;
  none.method = "none";
  none.factor = 2.0;
  expect_error([&] { resolve_rope(none, RopeScaling{}, 8); }, {"--rope-factor applies to"});
  RopeOptions unknown;
  unknown.method = "rope2";
  expect_error([&] { resolve_rope(unknown, RopeScaling{}, 8); }, {"unknown rope method 'rope2'"});
}

TEST(RopeScaling, ResolveFactorsFile) {
  RopeScaling file = longrope3();
  file.n_hat = 2;
  const fs::path p = write_temp_factors("resolve", file);
  RopeOptions o;
  o.factors_path = p.string();
  EXPECT_EQ(resolve_rope(o, RopeScaling{}, 8), file);
  o.n_hat = 5;
  o.attn_factor = 1.5;
  RopeScaling s = resolve_rope(o, RopeScaling{}, 8);
  EXPECT_EQ(s.n_hat, 5);
  EXPECT_EQ(s.attn_factor, 1.5);
  EXPECT_EQ(s.sets, file.sets);
  o.method = "longrope";
  EXPECT_EQ(resolve_rope(o, RopeScaling{}, 8).n_hat, 5);
  o.method = "yarn";
  expect_error([&] { resolve_rope(o, RopeScaling{}, 8); },
               {"implies --rope longrope", "--rope yarn"});
  o.method.reset();
  o.factor = 2.0;
  expect_error([&] { resolve_rope(o, RopeScaling{}, 8); },
               {"--rope-factor does not apply with --factors"});
  o.factor.reset();
  // Factors for another head size.
  expect_error([&] { resolve_rope(o, RopeScaling{}, 16); }, {"has 4 factors", "expected 8"});
  RopeOptions missing;
  missing.factors_path = "/nonexistent/dir/factors.json";
  expect_error([&] { resolve_rope(missing, RopeScaling{}, 8); },
               {"cannot read factors file /nonexistent/dir/factors.json"});
  fs::remove(p);
}

TEST(RopeScaling, ResolveModifiersAdjustModelDefault) {
  RopeScaling model;
  model.method = RopeMethod::kYarn;
  model.factor = 4.0;
  model.orig_ctx = 512;
  RopeOptions o;
  o.attn_factor = 1.0;
  o.beta_slow = 2.0;
  RopeScaling s = resolve_rope(o, model, 64);
  EXPECT_EQ(s.method, RopeMethod::kYarn);
  EXPECT_EQ(s.attn_factor, 1.0);
  EXPECT_EQ(s.beta_slow, 2.0);
  EXPECT_EQ(s.factor, 4.0);
  RopeOptions f;
  f.factor = 8.0;
  EXPECT_EQ(resolve_rope(f, model, 64).factor, 8.0);
  expect_error([&] { resolve_rope(f, RopeScaling{}, 64); },
               {"--rope-factor applies to", "none (the model's own)"});
  RopeOptions n;
  n.n_hat = 3;
  EXPECT_EQ(resolve_rope(n, longrope3(), 8).n_hat, 3);
}

}  // namespace
}  // namespace longrope
