// The perplexity sweep: methods x lengths, results kept incrementally, tables and plots.
#include <fmt/core.h>
#include <omp.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "longrope/atomic_file.h"
#include "longrope/error.h"
#include "longrope/eval.h"
#include "longrope/fingerprint.h"
#include "longrope/needle.h"
#include "longrope/perplexity.h"
#include "longrope/plot.h"

namespace longrope {

namespace {

// Work units of a cell for the ETA: tokens, weighted for the quadratic attention cost.
int64_t cell_work(int64_t length, int64_t windows) {
  return int64_t(double(length * windows) * (1.0 + double(length) / 8192.0));
}

// KL divergence of one cell, gathered over every scored position of every window.
struct KlCell {
  std::vector<double> kl;
  int64_t same = 0;
  void add(const WindowKl& w) {
    kl.insert(kl.end(), w.kl.begin(), w.kl.end());
    for (uint8_t x : w.same_top) same += x;
  }
  void write(nlohmann::json& cell) {
    const double n = double(kl.size());
    double sum = 0, sq = 0;
    for (double x : kl) sum += x;
    const double mean = sum / n;
    for (double x : kl) sq += (x - mean) * (x - mean);
    const double se = kl.size() > 1 ? std::sqrt(sq / (n - 1) / n) : 0.0;
    cell["kl_mean"] = mean;
    cell["kl_lo"] = std::max(0.0, mean - 1.96 * se);
    cell["kl_hi"] = mean + 1.96 * se;
    // The 99th percentile: the value below which 99% of the positions lie (nearest rank).
    const size_t k = std::min(kl.size() - 1, size_t(std::ceil(0.99 * n)) - 1);
    std::nth_element(kl.begin(), kl.begin() + std::ptrdiff_t(k), kl.end());
    cell["kl_p99"] = kl[k];
    cell["kl_max"] = *std::max_element(kl.begin(), kl.end());
    cell["same_top"] = double(same) / n;
  }
};

// The unscaled model's final states of the windows of one length, kept while the sweep is at that
// length (cells run length by length with --kl-divergence): [text][window].
struct ReferenceStates {
  int64_t length = 0;
  std::vector<std::vector<std::vector<float>>> states;
};

}  // namespace

SweepPlan plan_eval(const Model& model, const EvalConfig& cfg) {
  // --- Everything that can fail is checked before any scoring. ---
  if (cfg.text_paths.empty()) throw Error("no text file given (-f TEXT[,TEXT...])");
  if (cfg.docs < 1) throw Error("--docs must be at least 1");
  if (cfg.lengths.empty()) throw Error("no length given (--lengths 512,1024,...)");
  SweepPlan plan;
  plan.kind = "perplexity";
  if (cfg.kl_divergence && cfg.fitness != "ppl")
    throw Error("--kl-divergence compares plain windows: it takes --fitness ppl, not " +
                cfg.fitness);
  if (cfg.convention != WindowConvention::kLongrope && cfg.fitness != "ppl")
    throw Error(fmt::format("--convention {} scores plain windows: it takes --fitness ppl, not {}",
                            window_convention_name(cfg.convention), cfg.fitness));
  plan.methods = parse_eval_methods(cfg.methods, model);
  plan.compute = cfg.compute;
  plan.length_major = cfg.kl_divergence;  // one length's reference states kept at a time
  plan.lengths = cfg.lengths;
  for (int64_t len : cfg.lengths) check_memory_for_length(model.hp(), len, cfg.n_threads);
  auto scalings = std::make_shared<std::vector<std::vector<RopeScaling>>>();  // [method][length]
  for (const EvalMethod& m : plan.methods) {
    std::vector<RopeScaling> row;
    for (int64_t len : cfg.lengths) row.push_back(eval_scaling(m, model, len, cfg.scale));
    scalings->push_back(std::move(row));
  }
  const nlohmann::json fitness_json =
      fitness_key(cfg.fitness, cfg.needles, cfg.needle_seed, cfg.needle_weight);
  const bool needle = !fitness_json.is_null();  // needle windows (--fitness needle and mix)
  const double weight = cfg.needle_weight;
  auto texts = std::make_shared<std::vector<std::vector<int32_t>>>();
  // Needle fitness: the windows of each [text][length] and their scored positions.
  auto needles = std::make_shared<std::vector<std::vector<NeedleWindows>>>();
  for (const std::string& p : cfg.text_paths) {
    texts->push_back(
        model.tokenizer().encode(text_for_convention(read_text_file(p), cfg.convention)));
    if (needle) {
      needles->emplace_back();
      for (int64_t len : cfg.lengths) {
        try {
          needles->back().push_back(make_needle_windows(model.tokenizer(), texts->back(), len,
                                                        cfg.docs, cfg.needles, cfg.needle_seed));
        } catch (const Error& e) {
          throw Error(fmt::format("text {}: {}", p, e.what()));
        }
      }
      continue;
    }
    for (int64_t len : cfg.lengths) {
      const int64_t need = tokens_needed(cfg.convention, model.tokenizer(), len, cfg.docs);
      if (int64_t(texts->back().size()) < need)
        throw Error(fmt::format(
            "text {} has {} tokens: too little for {} window(s) of {} (needs {}); use fewer "
            "--docs or shorter --lengths",
            p, texts->back().size(), cfg.docs, len, need));
    }
  }
  // Names for people; content fingerprints so that --resume never reuses a cell of another
  // model or text that happens to have the same file name.
  nlohmann::json texts_json = nlohmann::json::array();
  for (const std::string& p : cfg.text_paths) texts_json.push_back(path_name(p));
  nlohmann::json key = {{"model", path_name(cfg.model_path)},
                        {"model_fingerprint", model_fingerprint(model)},
                        {"texts", texts_json},
                        {"texts_fingerprint", tokens_fingerprint(*texts)},
                        {"docs", cfg.docs}};
  add_scale_key(key, cfg.scale);
  if (needle)  // absent for the perplexity fitness: cells of older results files still match
    key["fitness"] = fitness_json;
  if (cfg.kl_divergence) key["kl_divergence"] = true;  // absent otherwise, as the fitness
  if (cfg.convention != WindowConvention::kLongrope)   // likewise
    key["convention"] = window_convention_name(cfg.convention);
  plan.keys = cell_keys(key, plan.methods);
  plan.fingerprint = [&model, texts, keys = plan.keys, lengths = plan.lengths,
                      compute = plan.compute] {
    return sweep_fingerprint(model, *texts, keys, lengths, compute);
  };

  const int64_t docs = cfg.docs, n_texts = int64_t(texts->size());
  const int n_threads = cfg.n_threads;
  const kernels::Compute compute = cfg.compute;
  plan.work = [docs, n_texts](int64_t len) { return cell_work(len, docs * n_texts); };
  const bool kl = cfg.kl_divergence;
  const int64_t trained = model.hp().n_ctx_train;
  auto reference = std::make_shared<ReferenceStates>();
  const WindowConvention convention = cfg.convention;
  plan.compute_cell = [&model, scalings, texts, needles, docs, n_threads, compute, weight, kl,
                       trained, reference, convention, methods = plan.methods,
                       lengths = plan.lengths, keys = plan.keys, fitness = cfg.fitness](
                          size_t mi, size_t li,
                          const std::function<void(double, const std::string&)>& progress,
                          const nlohmann::json& /*prefix: perplexity cells have no units*/,
                          const std::function<void(const nlohmann::json&)>& /*save_partial*/) {
    const bool mix = fitness == "mix", needle = mix || fitness == "needle";
    const EvalMethod& m = methods[mi];
    const int64_t len = lengths[li];
    const RopeScaling& scaling = (*scalings)[mi][li];
    const int64_t n = int64_t(texts->size());
    double nll_sum = 0, seconds = 0;
    int64_t tokens = 0;
    std::vector<double> text_ppl, window_ppl;  // window_ppl: every window of every text
    MixedNll mixed;                            // mix: over every text
    KlCell kl_cell;                            // --kl-divergence
    for (int64_t ti = 0; ti < n; ++ti) {
      if (needle) {  // the answers of the needle windows only, or (mix) every token
        const NeedleWindows& nws = (*needles)[size_t(ti)][li];
        ScoreOptions so;
        so.n_threads = n_threads;
        so.compute = compute;
        const double t0 = omp_get_wtime();
        MixedNll text_mix;
        const WindowLoop loop = score_windows(
            model, nws.tokens, scaling, so,
            [&](size_t k, const std::vector<double>& nll) {
              if (mix) {
                MixedNll w;
                w.add(nll, nws.positions[k]);
                window_ppl.push_back(w.fitness(weight));
                text_mix.add(w);
              } else {
                double s = 0;
                for (double x : nll) s += x;
                window_ppl.push_back(std::exp(s / double(nll.size())));
              }
              if (progress) progress(double(ti * docs + int64_t(k) + 1) / double(n * docs), "");
            },
            {}, mix ? nullptr : &nws.positions);
        nll_sum += loop.nll_sum;
        tokens += loop.tokens;
        seconds += omp_get_wtime() - t0;
        text_ppl.push_back(mix ? text_mix.fitness(weight) : loop.ppl());
        mixed.add(text_mix);
        continue;
      }
      if (kl && len <= trained) {  // plain windows against the unscaled model's
        if (reference->length != len) *reference = ReferenceStates{len, {}};
        if (reference->states.size() <= size_t(ti)) reference->states.resize(size_t(ti) + 1);
        auto& ref = reference->states[size_t(ti)];
        const TextWindows windows =
            cut_windows(convention, (*texts)[size_t(ti)], model.tokenizer(), len, docs);
        ScoreOptions so;
        so.n_threads = n_threads;
        so.compute = compute;
        const double t0 = omp_get_wtime();
        double text_nll = 0;
        int64_t text_tokens = 0;
        for (size_t k = 0; k < windows.tokens.size(); ++k) {
          if (!windows.positions.empty()) so.positions = windows.positions[k];
          if (ref.size() <= k)
            ref.push_back(window_states(model, windows.tokens[k], RopeScaling{}, so));
          const WindowKl w = score_window_kl(model, windows.tokens[k], scaling, ref[k], so);
          double ws = 0;
          for (double x : w.nll) ws += x;
          text_nll += ws;
          text_tokens += int64_t(w.nll.size());
          window_ppl.push_back(std::exp(ws / double(w.nll.size())));
          kl_cell.add(w);
          if (progress) progress(double(ti * docs + int64_t(k) + 1) / double(n * docs), "");
        }
        nll_sum += text_nll;
        tokens += text_tokens;
        seconds += omp_get_wtime() - t0;
        text_ppl.push_back(std::exp(text_nll / double(text_tokens)));
        continue;
      }
      const PerplexityResult r = perplexity(
          model, (*texts)[size_t(ti)], len, docs, scaling, n_threads,
          [&](int64_t done, int64_t, double) {
            if (progress) progress(double(ti * docs + done) / double(n * docs), "");
          },
          {}, convention, compute);
      nll_sum += r.mean_nll * double(r.tokens);
      tokens += r.tokens;
      seconds += r.seconds;
      text_ppl.push_back(r.ppl);
      window_ppl.insert(window_ppl.end(), r.window_ppl.begin(), r.window_ppl.end());
    }
    // mix: the cell's value is the mixed fitness; its two parts are kept beside it.
    const double mean_nll = mix ? std::log(mixed.fitness(weight)) : nll_sum / double(tokens);
    nlohmann::json cell = nlohmann::json{{"method", m.spec},
                                         {"label", m.label},
                                         {"length", len},
                                         {"key", keys[mi]},
                                         {"docs", docs},
                                         {"fitness", fitness},
                                         {"ppl", std::exp(mean_nll)},
                                         {"mean_nll", mean_nll},
                                         {"tokens", tokens},
                                         {"text_ppl", text_ppl},
                                         {"seconds", seconds},
                                         {"rope", scaling.describe()},
                                         {"factor", scaling.factor},
                                         {"window_ppl", window_ppl}};
    // The spread over windows (the error bars of the plot), when there is more than one.
    if (mix) {
      cell["all_ppl"] = std::exp(mixed.all_sum / double(mixed.all));
      cell["needle_ppl"] = std::exp(mixed.answer_sum / double(mixed.answers));
    }
    if (!kl_cell.kl.empty()) kl_cell.write(cell);
    if (window_ppl.size() > 1) {
      cell["ppl_min"] = *std::min_element(window_ppl.begin(), window_ppl.end());
      cell["ppl_max"] = *std::max_element(window_ppl.begin(), window_ppl.end());
    }
    return cell;
  };
  return plan;
}

EvalRun run_eval(const Model& model, const EvalConfig& cfg, const SweepProgress& progress) {
  return execute_sweep(plan_eval(model, cfg), cfg.out_dir, cfg.resume, cfg.overwrite, progress);
}

std::string write_eval_outputs(const EvalRun& run, const Model& model, const EvalConfig& cfg) {
  SweepOutputs out;
  out.field = "ppl";
  out.decimals = 3;
  out.stem = "ppl";
  // What the cells hold: perplexity of every token, of the needle answers, or the mix of both.
  const std::string what = fitness_name(cfg.fitness, cfg.needle_weight);
  out.plot.title = fmt::format("{}{} vs length: {}, {} window(s) per text",
                               char(std::toupper(static_cast<unsigned char>(what[0]))),
                               what.substr(1), path_name(cfg.model_path), cfg.docs);
  // Error bars only where there are several windows to spread over.
  out.plot.ylabel = cfg.docs > 1 ? what + " (error bars: lowest and highest window)" : what;
  out.lo_field = "ppl_min";
  out.hi_field = "ppl_max";
  out.plot.log_y = true;
  const int64_t orig = cfg.scale.orig_ctx ? *cfg.scale.orig_ctx : model.hp().n_ctx_train;
  out.md_head = fmt::format("{} per method and length, {} window(s) per text ({}).\n\n", what,
                            cfg.docs, window_convention_description(cfg.convention));
  std::string md = write_sweep_outputs(run, cfg.out_dir, orig, std::move(out));
  if (!cfg.kl_divergence) return md;
  // Beside perplexity: how far each method moves the model's next-token distributions.
  const int64_t trained = model.hp().n_ctx_train;
  md += fmt::format(
      "\nKL divergence from the unscaled model's next-token distribution (nats per position, "
      "mean [95% interval]), at lengths up to its trained context {}:\n\n",
      trained);
  md += table_markdown(make_table(run.cells, run.methods, run.lengths, "kl_mean", "kl_lo", "kl_hi"),
                       "method \\ length", 5);
  md += "\n99th percentile of the KL divergence (nats):\n\n";
  md += table_markdown(make_table(run.cells, run.methods, run.lengths, "kl_p99"),
                       "method \\ length", 5);
  md += "\nSame top token as the unscaled model (share of positions):\n\n";
  md += table_markdown(make_table(run.cells, run.methods, run.lengths, "same_top"),
                       "method \\ length", 4);
  if (cfg.out_dir.empty()) return md;
  write_file_atomically(cfg.out_dir + "/results.md", md);
  std::string csv = "method,length,ppl,kl_mean,kl_lo,kl_hi,kl_p99,kl_max,same_top\n";
  for (const auto& c : run.cells) {
    if (!c.contains("kl_mean")) continue;
    csv += fmt::format("{},{},{:.6f},{:.8f},{:.8f},{:.8f},{:.8f},{:.8f},{:.6f}\n",
                       c["label"].get<std::string>(), c["length"].get<int64_t>(),
                       c["ppl"].get<double>(), c["kl_mean"].get<double>(), c["kl_lo"].get<double>(),
                       c["kl_hi"].get<double>(), c["kl_p99"].get<double>(),
                       c["kl_max"].get<double>(), c["same_top"].get<double>());
  }
  write_file_atomically(cfg.out_dir + "/kl.csv", csv);
  return md;
}

}  // namespace longrope
