// longrope search: the LongRoPE evolutionary search for per-pair RoPE rescale factors.
#include <fmt/core.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "longrope/error.h"
#include "longrope/perplexity.h"
#include "longrope/search.h"

namespace longrope::cli {

namespace {

struct SearchArgs {
  std::string model, tokenizer, output = "factors.json";
  std::vector<std::string> texts;
  int64_t target = 0;
  std::optional<int64_t> orig_ctx;
  int64_t docs = 1;
  SearchSettings settings;
  std::optional<double> lambda_max;
  std::vector<int64_t> n_hat;
  std::optional<double> attn_factor;
  std::optional<int64_t> short_ctx;
  std::optional<double> short_lambda_max;
  int64_t reject_stage = 0;
  bool resume = false;
  bool json = false;
  bool progress = true;
  int threads = 0;
  std::string compute = "auto";
};

uint64_t fnv(const void* data, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

std::string model_fingerprint(const Model& m) {
  const HParams& hp = m.hp();
  std::string s =
      fmt::format("{}/{}/{}/{}/{}/{}/{}/{}/{}/{}", hp.arch, hp.n_layer, hp.n_embd, hp.n_head,
                  hp.n_head_kv, hp.n_ff, hp.n_vocab, hp.n_ctx_train, hp.n_rot, hp.rope_base);
  uint64_t h = fnv(s.data(), s.size());
  // The first 64K embedding values as FP32 (decoded, so the fingerprint is that of the values).
  const WeightView& e = m.tok_embd();
  const int64_t n = std::min<int64_t>(e.rows * e.cols, 1 << 16);
  std::vector<float> vals(static_cast<size_t>(n));
  dequantize(e.type, e.data, vals.data(), n);
  h = fnv(vals.data(), vals.size() * sizeof(float), h);
  return fmt::format("{:016x}", h);
}

std::string windows_fingerprint(const std::vector<std::vector<int32_t>>& w) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& v : w) h = fnv(v.data(), v.size() * sizeof(int32_t), h);
  return fmt::format("{:016x}", h);
}

std::string utc_date() {
  std::time_t t = std::time(nullptr);
  if (const char* e = std::getenv("SOURCE_DATE_EPOCH")) t = static_cast<std::time_t>(std::atoll(e));
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void write_json_atomic(const std::string& path, const nlohmann::json& j) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw Error(fmt::format("{}: cannot open for writing", tmp));
    f << j.dump(1) << '\n';
    if (!f) throw Error(fmt::format("{}: write failed", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw Error(fmt::format("{}: cannot rename to {}: {}", tmp, path, ec.message()));
}

nlohmann::json space_json(const SearchSpace& sp) {
  return {{"target_ctx", sp.target_ctx},
          {"orig_ctx", sp.orig_ctx},
          {"lambda_max", sp.lambda_max / 100.0},
          {"n_hat_candidates", sp.n_hat_candidates},
          {"attn_candidates", sp.attn_candidates}};
}

nlohmann::json log_json(const EvolutionSearch& s) {
  nlohmann::json it = nlohmann::json::array();
  for (const auto& L : s.log())
    it.push_back({{"iteration", L.iteration},
                  {"best_ppl", L.best_ppl},
                  {"median_ppl", L.median_ppl},
                  {"full_evals", L.full_evals},
                  {"partial_evals", L.partial_evals},
                  {"elapsed_seconds", L.elapsed_seconds}});
  const int64_t n = s.full_evals() + s.partial_evals();
  return {{"target_ctx", s.space().target_ctx},
          {"best_ppl", s.best_ppl()},
          {"full_evals", s.full_evals()},
          {"partial_evals", s.partial_evals()},
          {"eval_seconds", s.eval_seconds()},
          {"seconds_per_eval", n ? s.eval_seconds() / static_cast<double>(n) : 0.0},
          {"iterations", it}};
}

}  // namespace

Runner register_search(CLI::App& app) {
  auto a = std::make_shared<SearchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "search", "LongRoPE evolutionary search for per-pair RoPE rescale factors (docs/search.md)");
  cmd->add_option("-m,--model", a->model, "model file (GGUF or llama2.c checkpoint)")->required();
  cmd->add_option("--tokenizer", a->tokenizer, "tokenizer.bin for llama2.c checkpoints");
  cmd->add_option("-f,--file", a->texts, "text file(s), comma separated (UTF-8)")
      ->required()
      ->delimiter(',');
  cmd->add_option("--target-ctx", a->target, "target context length L (fitness window length)")
      ->required()
      ->check(CLI::Range(int64_t(2), int64_t(1) << 24));
  cmd->add_option("--orig-ctx", a->orig_ctx, "original context (default: the model's trained one)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 24));
  cmd->add_option("--docs", a->docs, "windows K of L tokens in the fitness")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--population", a->settings.population, "population size")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--iterations", a->settings.iterations, "iterations after the initial population")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--parents", a->settings.parents, "parents kept per iteration")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--mutations", a->settings.mutations, "mutants per iteration")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--crossovers", a->settings.crossovers, "crossovers per iteration")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--mutation-prob", a->settings.mutation_prob, "per-pair mutation probability")
      ->capture_default_str();
  cmd->add_option("--lambda-max", a->lambda_max, "upper bound of the factors (default 1.25*s)");
  cmd->add_option("--n-hat", a->n_hat,
                  "start-token candidates, comma separated (default "
                  "0,1,2,4,8,12,16,20,24,28,32,64,128,256 below L)")
      ->delimiter(',');
  cmd->add_option("--attn-factor", a->attn_factor,
                  "fix the attention factor (default: searched over {1, sqrt(1+ln s/ln L_orig), "
                  "0.1 ln s + 1})");
  cmd->add_option("--short-ctx", a->short_ctx,
                  "also search a short factor set serving lengths up to N (fitness at N)")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 24));
  cmd->add_option("--short-lambda-max", a->short_lambda_max,
                  "upper bound of the short factors (default max(1, 1.25*N/L_orig))");
  cmd->add_option("--seed", a->settings.seed, "random seed")->capture_default_str();
  cmd->add_flag("!--no-early-reject", a->settings.early_reject,
                "evaluate every candidate on all windows");
  cmd->add_option("--reject-stage", a->reject_stage,
                  "tokens of window 0 scored before an early reject (default: window 0, or "
                  "half of it when --docs 1)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("-o,--output", a->output, "factors file to write")->capture_default_str();
  cmd->add_flag("--resume", a->resume, "continue from <output>.ckpt.json");
  cmd->add_flag("--json", a->json, "print one JSON summary on stdout");
  cmd->add_flag("!--no-progress", a->progress, "no progress bar");
  cmd->add_option("-t,--threads", a->threads, "threads (default: all cores)");
  add_compute_flag(cmd, a->compute);

  return [a]() {
    const std::string ckpt_path = a->output + ".ckpt.json";
    const std::string log_path = a->output + ".log.json";
    apply_compute_flag(a->compute);
    auto model = load_model_verbose(a->model, a->tokenizer, a->threads);
    const HParams& hp = model->hp();
    const int64_t L = a->target;
    const int64_t Lorig = a->orig_ctx.value_or(hp.n_ctx_train);
    if (L <= Lorig)
      throw Error(fmt::format(
          "search: --target-ctx {} is not above the original context {} (expected target > "
          "original)",
          L, Lorig));
    const double s = static_cast<double>(L) / static_cast<double>(Lorig);
    if (a->short_ctx && *a->short_ctx >= L)
      throw Error(
          fmt::format("search: --short-ctx {} is not below --target-ctx {} (expected "
                      "short < target)",
                      *a->short_ctx, L));

    // Texts -> one token stream.
    std::vector<int32_t> tokens;
    for (const auto& path : a->texts) {
      const std::vector<int32_t> t =
          model->tokenizer().encode(normalize_newlines(read_text_file(path)));
      tokens.insert(tokens.end(), t.begin(), t.end());
    }
    const int32_t bos = model->file().vocab.bos;
    auto windows_for = [&](int64_t ctx) {
      try {
        return make_windows(tokens, bos, ctx, a->docs);
      } catch (const Error& e) {
        throw Error(fmt::format("search: too little text for {} window(s) of {} tokens: {}",
                                a->docs, ctx, e.what()));
      }
    };
    auto windows = windows_for(L);

    SearchSpace sp;
    sp.n_rot = hp.n_rot;
    sp.n_pairs = hp.n_rot / 2;
    sp.rope_base = hp.rope_base;
    sp.orig_ctx = Lorig;
    sp.target_ctx = L;
    const double lmax = a->lambda_max.value_or(1.25 * s);
    sp.lambda_max = static_cast<int>(std::floor(lmax * 100.0 + 1e-9));
    if (lmax < 1.0) sp.lambda_max = std::min(sp.lambda_max, 99);
    sp.n_hat_candidates = a->n_hat.empty() ? default_n_hat_candidates(L) : a->n_hat;
    sp.attn_candidates =
        a->attn_factor ? std::vector<double>{*a->attn_factor} : default_attn_candidates(Lorig, L);
    validate_space(sp);

    SearchSettings settings = a->settings;
    const nlohmann::json fingerprint = {
        {"model", model_fingerprint(*model)},
        {"text", windows_fingerprint(windows)},
        {"target_ctx", L},
        {"orig_ctx", Lorig},
        {"docs", a->docs},
        {"short_ctx", a->short_ctx ? *a->short_ctx : 0},
        // bf16 and FP32 fitness values must not mix in one run.
        {"compute", kernels::compute_name(kernels::default_compute())}};
    nlohmann::json ck_settings = settings.to_json();
    ck_settings["space"] = space_json(sp);
    ck_settings["short_lambda_max"] = a->short_lambda_max ? *a->short_lambda_max : 0.0;
    ck_settings["reject_stage"] = a->reject_stage;

    nlohmann::json ck;
    if (a->resume) {
      std::ifstream f(ckpt_path);
      if (!f)
        throw Error(
            fmt::format("search: --resume but no checkpoint at {} (expected the file "
                        "written by an earlier run with -o {})",
                        ckpt_path, a->output));
      try {
        ck = nlohmann::json::parse(f);
      } catch (const nlohmann::json::exception&) {
        throw Error(
            fmt::format("{}: corrupt checkpoint (not valid JSON); delete it and start "
                        "again without --resume",
                        ckpt_path));
      }
      if (!ck.is_object() || ck.value("format", "") != "longrope-search-checkpoint" ||
          !ck.contains("fingerprint") || !ck.contains("settings") || !ck.contains("long"))
        throw Error(fmt::format("{}: corrupt checkpoint (expected a longrope search checkpoint)",
                                ckpt_path));
      for (const auto& [k, v] : fingerprint.items()) {
        if (ck["fingerprint"].value(k, nlohmann::json()) != v)
          throw Error(fmt::format(
              "{}: checkpoint is for another {} ({} there, {} here); refusing to resume", ckpt_path,
              k == "text" ? "text/window set" : k,
              ck["fingerprint"].value(k, nlohmann::json()).dump(), v.dump()));
      }
      if (ck["settings"] != ck_settings)
        throw Error(
            fmt::format("{}: checkpoint was written with other search settings ({}); "
                        "expected the same flags except --iterations",
                        ckpt_path, ck["settings"].dump()));
    }

    PerplexityEvaluator ev(model, windows, a->threads, a->reject_stage);
    EvolutionSearch lng(sp, settings);
    std::optional<EvolutionSearch> shrt;
    std::optional<PerplexityEvaluator> short_ev;
    nlohmann::json short_basis;
    if (a->resume) {
      try {
        lng.restore(ck["long"]);
      } catch (const Error& e) {
        throw Error(fmt::format("{}: corrupt checkpoint: {}", ckpt_path, e.what()));
      }
    }

    auto save = [&]() {
      nlohmann::json j = {{"format", "longrope-search-checkpoint"},
                          {"version", 1},
                          {"fingerprint", fingerprint},
                          {"settings", ck_settings},
                          {"long", lng.to_json()},
                          {"short", shrt ? shrt->to_json() : nlohmann::json()},
                          {"short_basis", short_basis}};
      write_json_atomic(ckpt_path, j);
      nlohmann::json lg = {{"phases", nlohmann::json::array({log_json(lng)})}};
      if (shrt) lg["phases"].push_back(log_json(*shrt));
      write_json_atomic(log_path, lg);
    };

    const int T = settings.iterations;
    auto run_phase = [&](EvolutionSearch& srch, Evaluator& e, const char* label) {
      Progress bar(label, T + 1, a->progress);
      srch.on_eval = [&]() {
        bar.update(srch.iterations_done(),
                   fmt::format("it {} evals {}+{} best {:.4f}", srch.iterations_done(),
                               srch.full_evals(), srch.partial_evals(), srch.best_ppl()));
      };
      while (!srch.finished(T)) {
        srch.step(e);
        save();
        bar.update(srch.iterations_done(),
                   fmt::format("it {} evals {}+{} best {:.4f}", srch.iterations_done() - 1,
                               srch.full_evals(), srch.partial_evals(), srch.best_ppl()));
      }
      bar.finish();
      srch.on_eval = nullptr;
    };
    fmt::print(stderr,
               "search: {} pairs, target {} (s = {:.3f}), {} window(s), lambda in [1, {:.2f}]\n",
               sp.n_pairs, L, s, windows.size(), sp.lambda_max / 100.0);
    run_phase(lng, ev, "search");

    RopeScaling result = to_scaling(sp, lng.best());
    if (a->short_ctx) {
      const int64_t N = *a->short_ctx;
      SearchSpace ss = sp;
      ss.target_ctx = N;
      const double smax = a->short_lambda_max.value_or(
          std::max(1.0, 1.25 * static_cast<double>(N) / static_cast<double>(Lorig)));
      ss.lambda_max = static_cast<int>(std::floor(smax * 100.0 + 1e-9));
      if (smax < 1.0) ss.lambda_max = std::min(ss.lambda_max, 99);
      ss.n_hat_candidates = {result.n_hat};
      ss.attn_candidates = {*result.attn_factor};
      if (result.n_hat >= N)
        throw Error(
            fmt::format("search: the long set's n_hat {} is not below --short-ctx {} "
                        "(expected n_hat < N)",
                        result.n_hat, N));
      validate_space(ss);
      short_basis = {{"n_hat", result.n_hat}, {"attn", *result.attn_factor}};
      SearchSettings st = settings;
      st.seed = settings.seed ^ 0x9e3779b97f4a7c15ull;
      shrt.emplace(ss, st);
      short_ev.emplace(model, windows_for(N), a->threads, a->reject_stage);
      if (a->resume && ck.contains("short") && !ck["short"].is_null() &&
          ck.value("short_basis", nlohmann::json()) == short_basis) {
        try {
          shrt->restore(ck["short"]);
        } catch (const Error& e) {
          throw Error(fmt::format("{}: corrupt checkpoint: {}", ckpt_path, e.what()));
        }
      }
      run_phase(*shrt, *short_ev, "short");
      const RopeScaling sr = to_scaling(ss, shrt->best());
      result.sets = {FactorSet{sr.sets[0].factors, N}, FactorSet{result.sets[0].factors, 0}};
    }
    save();

    // Provenance: deterministic for a given seed (the date honours SOURCE_DATE_EPOCH).
    nlohmann::json seeds = nlohmann::json::object();
    for (const auto& [name, ind] : rule_seeds(sp)) {
      auto it = lng.memo().find(ind.key());
      if (it != lng.memo().end() && !it->second.rejected) seeds[name] = it->second.ppl;
    }
    nlohmann::json search = settings.to_json();
    search["iterations"] = T;
    search["docs"] = a->docs;
    search["space"] = space_json(sp);
    search["reject_stage"] = a->reject_stage;
    nlohmann::json prov = {
        {"tool", "longrope search"},
        {"model", std::filesystem::path(a->model).filename().string()},
        {"model_fingerprint", fingerprint["model"]},
        {"texts", a->texts},
        {"target_ctx", L},
        {"orig_ctx", Lorig},
        {"search", search},
        {"seed", settings.seed},
        {"date", utc_date()},
        {"best_ppl", lng.best_ppl()},
        {"seed_ppl", seeds},
        {"evaluations", {{"full", lng.full_evals()}, {"partial", lng.partial_evals()}}}};
    if (shrt) {
      prov["short"] = {
          {"short_ctx", *a->short_ctx},
          {"lambda_max", shrt->space().lambda_max / 100.0},
          {"best_ppl", shrt->best_ppl()},
          {"evaluations", {{"full", shrt->full_evals()}, {"partial", shrt->partial_evals()}}}};
    }
    write_factors_file(a->output, result, prov);

    const int64_t n_eval = lng.full_evals() + lng.partial_evals();
    const double spe = n_eval ? lng.eval_seconds() / static_cast<double>(n_eval) : 0.0;
    if (a->json) {
      nlohmann::json j = {{"output", a->output},
                          {"log", log_path},
                          {"best_ppl", lng.best_ppl()},
                          {"factors", result.sets.back().factors},
                          {"n_hat", result.n_hat},
                          {"attn_factor", *result.attn_factor},
                          {"full_evals", lng.full_evals()},
                          {"partial_evals", lng.partial_evals()},
                          {"eval_seconds", lng.eval_seconds()},
                          {"seconds_per_eval", spe},
                          {"seed_ppl", seeds}};
      if (shrt) j["short_best_ppl"] = shrt->best_ppl();
      fmt::print("{}\n", j.dump());
    } else {
      std::string f;
      for (double x : result.sets.back().factors) f += fmt::format("{} ", x);
      fmt::print("best ppl {:.4f} at {} (n_hat {}, attn {:.4f}); factors: {}\n", lng.best_ppl(), L,
                 result.n_hat, *result.attn_factor, f);
      for (const auto& [name, v] : seeds.items())
        fmt::print("  seed {:8s} ppl {:.4f}\n", name, v.get<double>());
      fmt::print("{} full + {} partial evaluations in {:.1f}s ({:.3f}s per evaluation)\n",
                 lng.full_evals(), lng.partial_evals(), lng.eval_seconds(), spe);
      if (shrt) fmt::print("short set (<= {}): best ppl {:.4f}\n", *a->short_ctx, shrt->best_ppl());
      fmt::print("wrote {} (log {}, checkpoint {})\n", a->output, log_path, ckpt_path);
    }
    return 0;
  };
}

}  // namespace longrope::cli
