// RoPE scaling math: a RopeScaling description -> per-pair inverse frequencies, attention factor
// and start-token count (RopeTables). Pure functions in double precision; the formulas are those
// of docs/METHOD.md (HF transformers' definitions where the sources differ).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/rope.h"

namespace longrope {

namespace {

constexpr double kTwoPi = 2.0 * std::numbers::pi;

bool finite_at_least(double x, double lo) {
  return std::isfinite(x) && x >= lo;
}

bool needs_factor(RopeMethod m) {
  return m == RopeMethod::kLinear || m == RopeMethod::kNtk || m == RopeMethod::kDynamic ||
         m == RopeMethod::kYarn || m == RopeMethod::kLlama3;
}

int64_t original_ctx(const RopeScaling& s, int64_t model_ctx) {
  int64_t L = s.orig_ctx > 0 ? s.orig_ctx : model_ctx;
  if (L <= 0) {
    throw Error(fmt::format(
        "rope {}: original context unknown (orig_ctx 0 and model context {}); expected a "
        "positive --orig-ctx or a model with a trained context",
        rope_method_name(s.method), model_ctx));
  }
  return L;
}

// Base frequencies with an NTK-style base change: b' = b * x^(d/(d-2)).
std::vector<double> ntk_inv_freq(int n_rot, double base, double x) {
  double b = base * std::pow(x, static_cast<double>(n_rot) / (n_rot - 2.0));
  return default_inv_freq(n_rot, b);
}

std::vector<double> yarn_inv_freq(const std::vector<double>& w, int n_rot, double base, double s,
                                  double L_orig, double beta_fast, double beta_slow,
                                  bool truncate) {
  const double d = n_rot;
  auto corr_dim = [&](double r) {
    return d * std::log(L_orig / (r * kTwoPi)) / (2.0 * std::log(base));
  };
  double low = corr_dim(beta_fast);
  double high = corr_dim(beta_slow);
  if (truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, d - 1.0);
  if (low == high) high += 0.001;  // avoid a zero-width ramp
  std::vector<double> out(w.size());
  for (size_t j = 0; j < w.size(); ++j) {
    double ramp = std::clamp((static_cast<double>(j) - low) / (high - low), 0.0, 1.0);
    // ramp 0: fast pair, kept (extrapolated); ramp 1: slow pair, interpolated (w/s).
    out[j] = (w[j] / s) * ramp + w[j] * (1.0 - ramp);
  }
  return out;
}

std::vector<double> llama3_inv_freq(const std::vector<double>& w, double f, double lo, double hi,
                                    double old) {
  const double low_wl = old / lo;   // longer wavelengths than this: divided by f
  const double high_wl = old / hi;  // shorter than this: unchanged
  std::vector<double> out(w.size());
  for (size_t j = 0; j < w.size(); ++j) {
    double wl = kTwoPi / w[j];
    if (wl < high_wl) {
      out[j] = w[j];
    } else if (wl > low_wl) {
      out[j] = w[j] / f;
    } else {
      double sm = (old / wl - lo) / (hi - lo);
      out[j] = (1.0 - sm) * w[j] / f + sm * w[j];
    }
  }
  return out;
}

std::string fmt_num(double x) {
  return fmt::format("{}", x);
}

}  // namespace

// YaRN / LongRoPE "yarn" attention factor m(s, x) = 0.1 x ln s + 1 (1 for s <= 1).
double yarn_mscale(double s, double x) {
  return s <= 1.0 ? 1.0 : 0.1 * x * std::log(s) + 1.0;
}

double sqrt_log_attn_factor(double s, int64_t orig_ctx) {
  return s <= 1.0 ? 1.0 : std::sqrt(1.0 + std::log(s) / std::log(static_cast<double>(orig_ctx)));
}

std::vector<double> default_inv_freq(int n_rot, double base) {
  if (n_rot <= 0 || n_rot % 2 != 0) {
    throw Error(
        fmt::format("rope: rotary dims n_rot = {}; expected a positive even number", n_rot));
  }
  if (!(std::isfinite(base) && base > 1.0)) {
    throw Error(fmt::format("rope: base = {}; expected a finite number > 1", base));
  }
  std::vector<double> w(n_rot / 2);
  for (int j = 0; j < n_rot / 2; ++j) {
    w[j] = 1.0 / std::pow(base, (2.0 * j) / n_rot);
  }
  return w;
}

const char* rope_method_name(RopeMethod m) {
  switch (m) {
    case RopeMethod::kNone:
      return "none";
    case RopeMethod::kLinear:
      return "linear";
    case RopeMethod::kNtk:
      return "ntk";
    case RopeMethod::kDynamic:
      return "dynamic";
    case RopeMethod::kYarn:
      return "yarn";
    case RopeMethod::kLlama3:
      return "llama3";
    case RopeMethod::kLongrope:
      return "longrope";
  }
  return "?";
}

RopeMethod parse_rope_method(const std::string& name) {
  if (name == "none") return RopeMethod::kNone;
  if (name == "linear" || name == "pi") return RopeMethod::kLinear;
  if (name == "ntk") return RopeMethod::kNtk;
  if (name == "dynamic") return RopeMethod::kDynamic;
  if (name == "yarn") return RopeMethod::kYarn;
  if (name == "llama3") return RopeMethod::kLlama3;
  if (name == "longrope") return RopeMethod::kLongrope;
  throw Error(fmt::format(
      "unknown rope method '{}'; expected none, linear (pi), ntk, dynamic, yarn, llama3 or "
      "longrope",
      name));
}

const char* longrope_attn_name(LongropeAttn a) {
  switch (a) {
    case LongropeAttn::kSqrtLog:
      return "sqrt_log";
    case LongropeAttn::kYarnLog:
      return "yarn_log";
    case LongropeAttn::kConstant:
      return "constant";
  }
  return "?";
}

LongropeAttn parse_longrope_attn(const std::string& name) {
  if (name == "sqrt_log") return LongropeAttn::kSqrtLog;
  if (name == "yarn_log") return LongropeAttn::kYarnLog;
  if (name == "constant") return LongropeAttn::kConstant;
  throw Error(fmt::format(
      "unknown longrope attention rule '{}'; expected sqrt_log, yarn_log or constant", name));
}

size_t longrope_set_index(const std::vector<FactorSet>& sets, int64_t seq_len) {
  if (sets.empty()) throw Error("rope longrope: no factor sets; expected at least one");
  for (size_t i = 0; i < sets.size(); ++i) {
    if (sets[i].max_len == 0 || sets[i].max_len >= seq_len) return i;
  }
  return sets.size() - 1;
}

double rope_extension_ratio(const RopeScaling& s, int64_t model_ctx) {
  if (s.method == RopeMethod::kLongrope && s.target_ctx > 0) {
    return static_cast<double>(s.target_ctx) / static_cast<double>(original_ctx(s, model_ctx));
  }
  return s.factor;
}

int64_t rope_made_for_length(const RopeScaling& s, int64_t model_ctx) {
  if (s.method == RopeMethod::kDynamic) return 0;
  const double orig = static_cast<double>(original_ctx(s, model_ctx));
  if (s.method == RopeMethod::kNone) return static_cast<int64_t>(orig);
  return static_cast<int64_t>(std::llround(rope_extension_ratio(s, model_ctx) * orig));
}

RopeTables RopeScaling::tables(int64_t seq_len, int n_rot, double base, int64_t model_ctx) const {
  validate(n_rot);
  if (seq_len < 0) {
    throw Error(fmt::format("rope: sequence length {}; expected >= 0", seq_len));
  }
  RopeTables t;
  const std::vector<double> w = default_inv_freq(n_rot, base);
  double a = 1.0;
  std::optional<double> set_attn;  // a longrope set's own attention factor
  switch (method) {
    case RopeMethod::kNone:
      t.inv_freq = w;
      break;
    case RopeMethod::kLinear:
      t.inv_freq = w;
      for (double& x : t.inv_freq) x /= factor;
      break;
    case RopeMethod::kNtk:
      t.inv_freq = ntk_inv_freq(n_rot, base, factor);
      break;
    case RopeMethod::kDynamic: {
      const int64_t L = original_ctx(*this, model_ctx);
      if (seq_len > L) {
        double x = factor * static_cast<double>(seq_len) / static_cast<double>(L) - (factor - 1.0);
        t.inv_freq = ntk_inv_freq(n_rot, base, x);
      } else {
        t.inv_freq = w;
      }
      break;
    }
    case RopeMethod::kYarn: {
      const int64_t L = original_ctx(*this, model_ctx);
      t.inv_freq = yarn_inv_freq(w, n_rot, base, factor, static_cast<double>(L), beta_fast,
                                 beta_slow, truncate);
      // HF: the mscale ratio only when both are given (and non-zero).
      if (mscale && mscale_all_dim && *mscale != 0.0 && *mscale_all_dim != 0.0) {
        a = yarn_mscale(factor, *mscale) / yarn_mscale(factor, *mscale_all_dim);
      } else {
        a = yarn_mscale(factor, 1.0);
      }
      break;
    }
    case RopeMethod::kLlama3: {
      const int64_t L = original_ctx(*this, model_ctx);
      t.inv_freq =
          llama3_inv_freq(w, factor, low_freq_factor, high_freq_factor, static_cast<double>(L));
      break;
    }
    case RopeMethod::kLongrope: {
      const int64_t L = original_ctx(*this, model_ctx);
      const FactorSet& set = sets[longrope_set_index(sets, seq_len)];
      t.inv_freq = w;
      for (size_t j = 0; j < w.size(); ++j) t.inv_freq[j] = w[j] / set.factors[j];
      const double s =
          target_ctx > 0 ? static_cast<double>(target_ctx) / static_cast<double>(L) : factor;
      switch (longrope_attn) {
        case LongropeAttn::kSqrtLog:
          a = sqrt_log_attn_factor(s, L);
          break;
        case LongropeAttn::kYarnLog:
          a = yarn_mscale(s, 1.0);
          break;
        case LongropeAttn::kConstant:
          a = 1.0;  // the constant is attn_factor (1 when not given)
          break;
      }
      t.n_hat = n_hat;
      if (set.attn_factor) set_attn = set.attn_factor;
      break;
    }
  }
  t.attn_factor = set_attn ? *set_attn : attn_factor.value_or(a);
  t.inv_freq_orig = w;
  if (!freq_factors.empty()) {
    for (size_t j = 0; j < w.size(); ++j) {
      t.inv_freq[j] /= freq_factors[j];
      t.inv_freq_orig[j] /= freq_factors[j];
    }
  }
  return t;
}

void RopeScaling::validate(int n_rot) const {
  const char* name = rope_method_name(method);
  if (n_rot <= 0 || n_rot % 2 != 0) {
    throw Error(fmt::format("rope {}: rotary dims n_rot = {}; expected a positive even number",
                            name, n_rot));
  }
  const size_t n_pairs = static_cast<size_t>(n_rot / 2);
  if (needs_factor(method) && !finite_at_least(factor, 1.0)) {
    throw Error(fmt::format("rope {}: factor = {}; expected a finite number >= 1", name, factor));
  }
  if (orig_ctx < 0) {
    throw Error(
        fmt::format("rope {}: orig_ctx = {}; expected > 0 (or 0 for the model's trained "
                    "context)",
                    name, orig_ctx));
  }
  if (attn_factor && !(std::isfinite(*attn_factor) && *attn_factor > 0.0)) {
    throw Error(
        fmt::format("rope {}: attn_factor = {}; expected a finite number > 0", name, *attn_factor));
  }
  if ((method == RopeMethod::kNtk || method == RopeMethod::kDynamic) && n_rot <= 2) {
    throw Error(fmt::format("rope {}: n_rot = {}; the base change b*s^(d/(d-2)) needs n_rot > 2",
                            name, n_rot));
  }
  if (method == RopeMethod::kYarn) {
    if (!(std::isfinite(beta_slow) && beta_slow > 0.0 && std::isfinite(beta_fast) &&
          beta_fast > beta_slow)) {
      throw Error(fmt::format(
          "rope yarn: beta_fast = {}, beta_slow = {}; expected finite beta_fast > beta_slow > 0",
          beta_fast, beta_slow));
    }
    if ((mscale && !std::isfinite(*mscale)) ||
        (mscale_all_dim && !std::isfinite(*mscale_all_dim))) {
      throw Error("rope yarn: mscale / mscale_all_dim not finite; expected finite numbers");
    }
  }
  if (method == RopeMethod::kLlama3) {
    if (!(std::isfinite(low_freq_factor) && std::isfinite(high_freq_factor) &&
          low_freq_factor > 0.0 && high_freq_factor > low_freq_factor)) {
      throw Error(
          fmt::format("rope llama3: low_freq_factor = {}, high_freq_factor = {}; expected finite "
                      "0 < low_freq_factor < high_freq_factor",
                      low_freq_factor, high_freq_factor));
    }
  }
  if (method == RopeMethod::kLongrope) {
    if (sets.empty()) {
      throw Error(
          "rope longrope: no factor sets; expected at least one (a factors file, long_factor / "
          "short_factor or rope_factors_long)");
    }
    for (size_t i = 0; i < sets.size(); ++i) {
      const FactorSet& fs = sets[i];
      if (fs.factors.size() != n_pairs) {
        throw Error(fmt::format(
            "rope longrope: set {} (max_len {}) has {} factors; expected {} (n_rot/2 for n_rot {})",
            i, fs.max_len, fs.factors.size(), n_pairs, n_rot));
      }
      for (size_t j = 0; j < n_pairs; ++j) {
        if (!finite_at_least(fs.factors[j], 1.0)) {
          throw Error(
              fmt::format("rope longrope: set {} factor[{}] = {}; expected a finite number >= 1", i,
                          j, fs.factors[j]));
        }
      }
      if (fs.attn_factor && !(std::isfinite(*fs.attn_factor) && *fs.attn_factor > 0.0)) {
        throw Error(
            fmt::format("rope longrope: set {} attention factor = {}; expected a finite number > 0",
                        i, *fs.attn_factor));
      }
      if (fs.max_len < 0) {
        throw Error(
            fmt::format("rope longrope: set {} max_len = {}; expected > 0 (or 0 = "
                        "unbounded on the last set)",
                        i, fs.max_len));
      }
      if (fs.max_len == 0 && i + 1 != sets.size()) {
        throw Error(
            fmt::format("rope longrope: set {} of {} has max_len 0 (unbounded); only the "
                        "last set may be unbounded (sets must be ordered by max_len)",
                        i, sets.size()));
      }
      if (i > 0 && fs.max_len != 0 && fs.max_len <= sets[i - 1].max_len) {
        throw Error(
            fmt::format("rope longrope: set {} max_len {} is not greater than set {}'s {}; "
                        "expected sets ordered by increasing max_len",
                        i, fs.max_len, i - 1, sets[i - 1].max_len));
      }
    }
    if (n_hat < 0) {
      throw Error(fmt::format("rope longrope: n_hat = {}; expected >= 0", n_hat));
    }
    if (target_ctx < 0) {
      throw Error(fmt::format("rope longrope: target_ctx = {}; expected >= 0", target_ctx));
    }
    if (target_ctx == 0 && !(std::isfinite(factor) && factor > 0.0)) {
      throw Error(fmt::format("rope longrope: factor = {}; expected a finite number > 0", factor));
    }
  }
  if (!freq_factors.empty()) {
    if (freq_factors.size() != n_pairs) {
      throw Error(
          fmt::format("rope {}: {} freq_factors (rope_freqs); expected {} (n_rot/2 for "
                      "n_rot {})",
                      name, freq_factors.size(), n_pairs, n_rot));
    }
    for (size_t j = 0; j < n_pairs; ++j) {
      if (!(std::isfinite(freq_factors[j]) && freq_factors[j] > 0.0)) {
        throw Error(fmt::format("rope {}: freq_factors[{}] = {}; expected a finite number > 0",
                                name, j, freq_factors[j]));
      }
    }
  }
}

std::string RopeScaling::describe() const {
  std::string out = rope_method_name(method);
  auto orig_str = [&] { return orig_ctx > 0 ? std::to_string(orig_ctx) : std::string("model"); };
  switch (method) {
    case RopeMethod::kNone:
      break;
    case RopeMethod::kLinear:
    case RopeMethod::kNtk:
      out += " s=" + fmt_num(factor);
      break;
    case RopeMethod::kDynamic:
      out += " s=" + fmt_num(factor) + " orig=" + orig_str();
      break;
    case RopeMethod::kYarn:
      out += fmt::format(" s={} orig={} beta={}/{}", fmt_num(factor), orig_str(),
                         fmt_num(beta_fast), fmt_num(beta_slow));
      if (!truncate) out += " no-truncate";
      if (mscale && mscale_all_dim) {
        out += fmt::format(" mscale={}/{}", fmt_num(*mscale), fmt_num(*mscale_all_dim));
      }
      break;
    case RopeMethod::kLlama3:
      out += fmt::format(" s={} orig={} low={} high={}", fmt_num(factor), orig_str(),
                         fmt_num(low_freq_factor), fmt_num(high_freq_factor));
      break;
    case RopeMethod::kLongrope: {
      out += " orig=" + orig_str();
      if (target_ctx > 0) {
        out += " target=" + std::to_string(target_ctx);
      } else {
        out += " s=" + fmt_num(factor);
      }
      out += fmt::format(" sets={} (", sets.size());
      for (size_t i = 0; i < sets.size(); ++i) {
        if (i) out += ", ";
        out += sets[i].max_len > 0 ? "<=" + std::to_string(sets[i].max_len) : std::string("rest");
        if (sets[i].attn_factor) out += " attn_factor=" + fmt_num(*sets[i].attn_factor);
      }
      out += fmt::format(") n_hat={} attn={}", n_hat, longrope_attn_name(longrope_attn));
      break;
    }
  }
  if (attn_factor) out += " attn_factor=" + fmt_num(*attn_factor);
  // Per-pair factors stored in the model (GGUF rope_freqs, as longrope export writes them): on
  // their own they are the model's scaling, not "none".
  if (!freq_factors.empty()) {
    if (method == RopeMethod::kNone) {
      out = fmt::format("rope_freqs from the model file ({} per-pair factors)", freq_factors.size());
      if (attn_factor) out += " attn_factor=" + fmt_num(*attn_factor);
    } else {
      out += fmt::format(" with the file's rope_freqs ({} per-pair factors)", freq_factors.size());
    }
  }
  return out;
}

}  // namespace longrope
