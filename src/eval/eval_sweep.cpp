// The perplexity sweep: methods x lengths, results kept incrementally, tables and plots.
#include <fmt/core.h>
#include <omp.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "longrope/error.h"
#include "longrope/eval.h"
#include "longrope/perplexity.h"
#include "longrope/plot.h"

namespace longrope {

namespace {

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read text file {}", path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (s.empty()) throw Error(fmt::format("text file {} is empty", path));
  return s;
}

std::string file_name(const std::string& p) {
  return std::filesystem::path(p).filename().string();
}

// Work units of a cell for the ETA: tokens, weighted for the quadratic attention cost.
int64_t cell_work(int64_t length, int64_t windows) {
  return int64_t(double(length * windows) * (1.0 + double(length) / 8192.0));
}

}  // namespace

EvalRun run_eval(const Model& model, const EvalConfig& cfg, const SweepProgress& progress) {
  // --- Everything that can fail is checked before any scoring. ---
  if (cfg.text_paths.empty()) throw Error("no text file given (-f TEXT[,TEXT...])");
  if (cfg.docs < 1) throw Error("--docs must be at least 1");
  if (cfg.lengths.empty()) throw Error("no length given (--lengths 512,1024,...)");
  EvalRun run;
  run.methods = parse_eval_methods(cfg.methods, model);
  run.lengths = cfg.lengths;
  for (int64_t len : cfg.lengths) check_memory_for_length(model.hp(), len, cfg.n_threads);
  std::vector<std::vector<RopeScaling>> scalings;  // [method][length]
  for (const EvalMethod& m : run.methods) {
    std::vector<RopeScaling> row;
    for (int64_t len : cfg.lengths) row.push_back(eval_scaling(m, model, len, cfg.scale));
    scalings.push_back(std::move(row));
  }
  std::vector<std::vector<int32_t>> texts;
  for (const std::string& p : cfg.text_paths) {
    texts.push_back(model.tokenizer().encode(normalize_newlines(read_whole(p))));
    for (int64_t len : cfg.lengths)
      if (int64_t(texts.back().size()) < cfg.docs * (len - 1))
        throw Error(fmt::format(
            "text {} has {} tokens: too little for {} window(s) of {} (needs {}); use fewer "
            "--docs or shorter --lengths",
            p, texts.back().size(), cfg.docs, len, cfg.docs * (len - 1)));
  }
  make_output_dir(cfg.out_dir);
  ResultsStore store(cfg.out_dir.empty() ? "" : cfg.out_dir + "/results.json", "perplexity",
                     cfg.resume);

  nlohmann::json texts_json = nlohmann::json::array();
  for (const std::string& p : cfg.text_paths) texts_json.push_back(file_name(p));
  nlohmann::json key = {{"model", file_name(cfg.model_path)},
                        {"texts", texts_json},
                        {"docs", cfg.docs},
                        {"orig_ctx", cfg.scale.orig_ctx ? *cfg.scale.orig_ctx : int64_t(0)},
                        {"rope_factor", cfg.scale.rope_factor ? *cfg.scale.rope_factor : 0.0}};
  const std::vector<nlohmann::json> keys = cell_keys(key, run.methods);

  const int64_t n_cells = int64_t(run.methods.size() * cfg.lengths.size());
  const int64_t n_texts = int64_t(texts.size());
  int64_t total_work = 0, done_work = 0, done_cells = 0;
  for (size_t mi = 0; mi < run.methods.size(); ++mi)
    for (int64_t len : cfg.lengths)
      if (!(cfg.resume && store.find(run.methods[mi].spec, len, keys[mi])))
        total_work += cell_work(len, cfg.docs * n_texts);

  run.cells = nlohmann::json::array();
  for (size_t mi = 0; mi < run.methods.size(); ++mi) {
    const EvalMethod& m = run.methods[mi];
    for (size_t li = 0; li < cfg.lengths.size(); ++li) {
      const int64_t len = cfg.lengths[li];
      if (cfg.resume)
        if (const nlohmann::json* c = store.find(m.spec, len, keys[mi])) {
          run.cells.push_back(*c);
          ++done_cells;
          if (progress) progress(done_cells, n_cells, done_work, total_work, "resumed");
          continue;
        }
      const RopeScaling& scaling = scalings[mi][li];
      const std::string msg = fmt::format("{} @ {}", m.label, len);
      const int64_t cell_total = cell_work(len, cfg.docs * n_texts);
      double nll_sum = 0, seconds = 0;
      int64_t tokens = 0;
      std::vector<double> text_ppl;
      for (int64_t ti = 0; ti < n_texts; ++ti) {
        const PerplexityResult r = perplexity(
            model, texts[ti], len, cfg.docs, scaling, cfg.n_threads,
            [&](int64_t done, int64_t, double) {
              if (progress)
                progress(done_cells, n_cells,
                         done_work + cell_total * (ti * cfg.docs + done) / (n_texts * cfg.docs),
                         total_work, msg);
            });
        nll_sum += r.mean_nll * double(r.tokens);
        tokens += r.tokens;
        seconds += r.seconds;
        text_ppl.push_back(r.ppl);
      }
      const double mean_nll = nll_sum / double(tokens);
      nlohmann::json cell = {
          {"method", m.spec},     {"label", m.label},           {"length", len},
          {"key", keys[mi]},      {"docs", cfg.docs},           {"ppl", std::exp(mean_nll)},
          {"mean_nll", mean_nll}, {"tokens", tokens},           {"text_ppl", text_ppl},
          {"seconds", seconds},   {"rope", scaling.describe()}, {"factor", scaling.factor}};
      store.put(cell);
      run.cells.push_back(cell);
      ++run.computed;
      ++done_cells;
      done_work += cell_total;
      if (progress) progress(done_cells, n_cells, done_work, total_work, msg);
    }
  }
  return run;
}

std::string write_eval_outputs(const EvalRun& run, const Model& model, const EvalConfig& cfg) {
  SweepOutputs out;
  out.field = "ppl";
  out.decimals = 3;
  out.stem = "ppl";
  out.plot.title = fmt::format("Perplexity vs length: {}, {} window(s) per text",
                               std::filesystem::path(cfg.model_path).filename().string(), cfg.docs);
  out.plot.ylabel = "perplexity";
  out.plot.log_y = true;
  const int64_t orig = cfg.scale.orig_ctx ? *cfg.scale.orig_ctx : model.hp().n_ctx_train;
  return write_sweep_outputs(run, cfg.out_dir, orig, std::move(out));
}

}  // namespace longrope
