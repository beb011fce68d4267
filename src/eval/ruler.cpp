// The RULER sweep: every prompt built up front, methods x lengths cells (each holding every task's
// samples) through the sweep machinery, and the outputs (tables, heat maps, RULER's prediction
// files and summary.csv).
#include "longrope/ruler.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <sstream>

#include "greedy.h"
#include "longrope/atomic_file.h"
#include "longrope/error.h"
#include "longrope/fingerprint.h"
#include "longrope/model_file.h"
#include "longrope/perplexity.h"
#include "longrope/plot.h"

namespace longrope {

namespace {

// A label as a file name piece.
std::string file_stem(const std::string& label) {
  std::string s;
  for (char ch : label) s += std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' ? ch : '_';
  return s;
}

// Python's repr of a float rounded to 2 decimals, as pandas writes RULER's scores ("100.0").
std::string py_float(double x) {
  std::string s = fmt::format("{}", std::round(x * 100.0) / 100.0);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

// Mean of a task's per-sample scores (0..1) and its interval, as a cell's fields (0..100).
void put_score(nlohmann::json& j, const std::vector<double>& scores) {
  double sum = 0;
  for (double x : scores) sum += x;
  const double mean = scores.empty() ? 0.0 : sum / double(scores.size());
  const auto [lo, hi] = ruler_interval(mean, int64_t(scores.size()));
  j["score"] = 100.0 * mean;
  j["ci_low"] = 100.0 * lo;
  j["ci_high"] = 100.0 * hi;
}

const nlohmann::json* task_cell(const nlohmann::json& cell, const std::string& task) {
  if (cell.is_null() || !cell.contains("tasks") || !cell["tasks"].contains(task)) return nullptr;
  return &cell["tasks"][task];
}

}  // namespace

std::vector<RulerSample> read_ruler_data(const Model& model, const std::string& dir,
                                         const std::string& task, int64_t length, int64_t samples,
                                         bool chat) {
  const std::string ours = fmt::format("{}/data/{}/{}.jsonl", dir, length, task);
  const std::string ruler = fmt::format("{}/{}/data/{}/validation.jsonl", dir, length, task);
  const std::string path = std::filesystem::exists(ours) ? ours : ruler;
  if (!std::filesystem::exists(path))
    throw Error(fmt::format("no RULER data for {} at {}: neither {} nor {} exists", task, length,
                            ours, ruler));
  std::istringstream in(read_text_file(path));
  std::vector<RulerSample> out;
  std::string line;
  for (int64_t no = 1; int64_t(out.size()) < samples && std::getline(in, line); ++no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto bad = [&](const std::string& why) {
      return Error(fmt::format("{}:{}: {}", path, no, why));
    };
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      throw bad("not a JSON line");
    }
    if (!j.is_object() || !j.contains("input") || !j["input"].is_string() ||
        !j.contains("outputs") || !j["outputs"].is_array() || j["outputs"].empty())
      throw bad("a sample needs \"input\" (text) and \"outputs\" (a non-empty list of text)");
    RulerSample s;
    s.task = task;
    s.index = int64_t(out.size());
    if (j.contains("index")) {
      if (!j["index"].is_number_integer()) throw bad("\"index\" is not an integer");
      s.index = j["index"].get<int64_t>();
    }
    s.input = j["input"].get<std::string>();
    for (const auto& o : j["outputs"]) {
      if (!o.is_string()) throw bad("\"outputs\" holds something other than text");
      s.outputs.push_back(o.get<std::string>());
    }
    // RULER's files name it answer_prefix; lm-eval-harness's port gen_prefix (without the space).
    if (j.contains("answer_prefix") && j["answer_prefix"].is_string())
      s.answer_prefix = j["answer_prefix"].get<std::string>();
    else if (j.contains("gen_prefix") && j["gen_prefix"].is_string())
      s.answer_prefix = " " + j["gen_prefix"].get<std::string>();
    s.max_new = ruler_max_new(task);
    s.tokens = ruler_prompt_tokens(model, s, chat);
    out.push_back(std::move(s));
  }
  if (int64_t(out.size()) < samples)
    throw Error(
        fmt::format("{} holds {} sample(s); --samples asks for {}", path, out.size(), samples));
  return out;
}

SweepPlan plan_ruler(const Model& model, const RulerConfig& cfg,
                     std::shared_ptr<const RulerPrompts>* prompts_out) {
  if (cfg.samples < 1) throw Error("--samples must be at least 1");
  if (cfg.lengths.empty()) throw Error("no length given (--lengths 4k,8k,...)");
  if (cfg.tasks.empty()) throw Error("no RULER task given (--tasks all, niah or a list)");
  for (const std::string& t : cfg.tasks) ruler_max_new(t);  // unknown names throw
  SweepPlan plan;
  plan.compute = cfg.compute;
  const auto scalings =
      start_prompt_plan(plan, "ruler", model, cfg.methods, cfg.lengths, cfg.scale, cfg.n_threads);
  // The tasks that run: qa_* only with its data.
  auto prompts = std::make_shared<RulerPrompts>();
  for (const std::string& t : cfg.tasks) {
    const bool qa = t == "qa_1" || t == "qa_2";
    const std::string& data = t == "qa_1" ? cfg.squad_path : cfg.hotpot_path;
    (qa && data.empty() ? prompts->not_run : prompts->tasks).push_back(t);
  }
  if (prompts->tasks.empty())
    throw Error(fmt::format("none of the tasks {} can run (qa_1/qa_2 need --qa-data)",
                            fmt::join(cfg.tasks, ",")));
  const bool essay = std::any_of(prompts->tasks.begin(), prompts->tasks.end(), ruler_uses_essay);
  if (!cfg.data_dir.empty()) {
    // Prepared prompts: nothing is generated, so neither word list nor haystack is read.
    for (int64_t len : cfg.lengths) {
      std::vector<std::vector<RulerSample>> per_task;
      for (const std::string& t : prompts->tasks)
        per_task.push_back(read_ruler_data(model, cfg.data_dir, t, len, cfg.samples, cfg.chat));
      prompts->samples.push_back(std::move(per_task));
    }
  } else if (essay && cfg.haystack_paths.empty())
    throw Error(
        "the essay tasks (niah_single_2/3, niah_multikey_1, niah_multivalue, "
        "niah_multiquery) need a haystack text: --haystack FILE[,FILE...]");
  RulerResources res;
  if (cfg.data_dir.empty()) res = load_ruler_resources(cfg.words_path, cfg.haystack_paths);
  auto wants = [&](const char* t) {
    return std::find(prompts->tasks.begin(), prompts->tasks.end(), t) != prompts->tasks.end();
  };
  if (cfg.data_dir.empty() && wants("qa_1")) res.qa_1 = read_squad(cfg.squad_path);
  if (cfg.data_dir.empty() && wants("qa_2")) res.qa_2 = read_hotpotqa(cfg.hotpot_path);
  // Every prompt, sized once per task and length from sample 0 (as the reference sizes them).
  for (int64_t len : cfg.data_dir.empty() ? cfg.lengths : std::vector<int64_t>{}) {
    std::vector<std::vector<RulerSample>> per_task;
    for (const std::string& t : prompts->tasks) {
      const int64_t units = ruler_haystack_units(model, res, t, len, cfg.seed, cfg.chat);
      std::vector<RulerSample> row;
      for (int64_t i = 0; i < cfg.samples; ++i)
        row.push_back(make_ruler_sample(model, res, t, len, cfg.seed, i, cfg.chat, units));
      per_task.push_back(std::move(row));
    }
    prompts->samples.push_back(std::move(per_task));
  }
  // Every prompt, or the first n samples of each task and length (the prompts a run of n has).
  auto prompt_tokens = [prompts](int64_t n) {
    std::vector<std::vector<int32_t>> all;
    for (const auto& per_task : prompts->samples)
      for (const auto& row : per_task)
        for (int64_t i = 0; i < n; ++i) all.push_back(row[size_t(i)].tokens);
    return all;
  };
  nlohmann::json base_key = {{"model", path_name(cfg.model_path)},
                             {"model_fingerprint", model_fingerprint(model)},
                             {"seed", cfg.seed},
                             {"chat", cfg.chat},
                             {"tasks", prompts->tasks}};
  if (!cfg.data_dir.empty()) base_key["data"] = path_name(cfg.data_dir);
  add_scale_key(base_key, cfg.scale);
  key_plan_by_prompts(plan, model, base_key, prompt_tokens, cfg.samples, "samples");
  share_identical_cells(plan, model, scalings, [prompts](size_t li) {
    std::vector<int64_t> lens;
    for (const auto& row : prompts->samples[li])
      for (const RulerSample& s : row) lens.push_back(int64_t(s.tokens.size()));
    return lens;
  });

  const int64_t per_cell = cfg.samples * int64_t(prompts->tasks.size());
  plan.work = [per_cell](int64_t len) {
    return per_cell * int64_t(double(len) * (1.0 + double(len) / 8192.0));
  };
  plan.compute_cell = [&model, scalings, prompts, samples = cfg.samples, n_threads = cfg.n_threads,
                       compute = cfg.compute, methods = plan.methods, lengths = plan.lengths,
                       keys = plan.keys](
                          size_t mi, size_t li,
                          const std::function<void(double, const std::string&)>& progress,
                          const nlohmann::json& prefix,
                          const std::function<void(const nlohmann::json&)>& save_partial) {
    const EvalMethod& m = methods[mi];
    const int64_t len = lengths[li];
    nlohmann::json tasks = nlohmann::json::object();
    double seconds = 0;
    std::vector<double> by_sample(size_t(samples), 0.0);  // each sample's mean over tasks
    const size_t n_tasks = prompts->tasks.size();
    for (size_t ti = 0; ti < n_tasks; ++ti) {
      const std::string& task = prompts->tasks[ti];
      const std::vector<RulerSample>& row = prompts->samples[li][ti];
      nlohmann::json results = nlohmann::json::array();
      // The samples of a shorter stored run (its key matched this run's first samples), or of
      // this run's unfinished cell (the tasks before and the samples done of the current one).
      if (const nlohmann::json* stored = task_cell(prefix, task))
        for (const nlohmann::json& r : stored->at("results")) {
          if (results.size() >= size_t(samples) ||
              r.at("prompt_tokens") != row[results.size()].tokens.size())
            throw Error(fmt::format(
                "the stored RULER samples of {} @ {} ({}) do not match this run's prompts "
                "(results.json or partial.json edited?)",
                m.label, len, task));
          results.push_back(r);
        }
      for (int64_t i = int64_t(results.size()); i < samples; ++i) {
        if (progress)
          progress(double(int64_t(ti) * samples + i) / double(int64_t(n_tasks) * samples),
                   fmt::format("{} @ {} {} sample {}/{}", m.label, len, task, i + 1, samples));
        const RulerSample& s = row[size_t(i)];
        const GreedyOutput g =
            greedy_decode(model, s.tokens, (*scalings)[mi][li], n_threads, s.max_new, compute);
        results.push_back({{"index", s.index},
                           {"pred", g.text},
                           {"outputs", s.outputs},
                           {"score", ruler_score(task, g.text, s.outputs)},
                           {"prompt_tokens", s.tokens.size()},
                           {"depths", s.depths},
                           {"seconds", g.seconds}});
        if (save_partial && (i + 1 < samples || ti + 1 < n_tasks)) {
          // The finished tasks as they are, and this one's samples so far.
          nlohmann::json so_far = {{"tasks", tasks}};
          so_far["tasks"][task]["results"] = results;
          save_partial(so_far);
        }
      }
      std::vector<double> scores;
      double task_seconds = 0;
      int64_t nulls = 0;
      for (const nlohmann::json& r : results) {
        scores.push_back(r.at("score").get<double>());
        by_sample[scores.size() - 1] += scores.back() / double(n_tasks);
        task_seconds += r.at("seconds").get<double>();
        std::string p = r.at("pred").get<std::string>();
        nulls += std::all_of(p.begin(), p.end(),
                             [](char c) { return std::isspace(static_cast<unsigned char>(c)); });
      }
      nlohmann::json tj = {{"nulls", nulls}, {"seconds", task_seconds}, {"results", results}};
      put_score(tj, scores);
      tasks[task] = std::move(tj);
      seconds += task_seconds;
    }
    nlohmann::json cell = {{"method", m.spec},
                           {"label", m.label},
                           {"length", len},
                           {"key", keys[mi]},
                           {"samples", samples},
                           {"seconds", seconds},
                           {"rope", (*scalings)[mi][li].describe()}};
    put_score(cell, by_sample);
    cell["tasks"] = std::move(tasks);
    return cell;
  };
  if (prompts_out) *prompts_out = prompts;
  return plan;
}

EvalRun run_ruler(const Model& model, const RulerConfig& cfg,
                  std::shared_ptr<const RulerPrompts>* prompts_out, const SweepProgress& progress) {
  return execute_sweep(plan_ruler(model, cfg, prompts_out), cfg.out_dir, cfg.resume, cfg.overwrite,
                       progress);
}

int64_t ruler_effective_length(const std::vector<int64_t>& lengths,
                               const std::vector<std::optional<double>>& scores, double threshold) {
  std::vector<size_t> order(lengths.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return lengths[a] < lengths[b]; });
  int64_t eff = 0;
  for (size_t i : order) {
    if (!scores[i] || !(*scores[i] > threshold)) break;
    eff = lengths[i];
  }
  return eff;
}

namespace {

// Per method: a task x length table of scores with their intervals.
ResultTable task_table(const EvalRun& run, const EvalMethod& m,
                       const std::vector<std::string>& tasks) {
  ResultTable t;
  t.lengths = run.lengths;
  for (const std::string& task : tasks) {
    t.methods.push_back(task);
    std::vector<std::optional<double>> row(run.lengths.size());
    std::vector<std::optional<std::pair<double, double>>> ci(run.lengths.size());
    for (const nlohmann::json& c : run.cells) {
      if (c.is_null() || c.value("method", "") != m.spec) continue;
      const auto li = std::find(run.lengths.begin(), run.lengths.end(), c.value("length", 0));
      const nlohmann::json* tc = task_cell(c, task);
      if (li == run.lengths.end() || !tc) continue;
      const size_t i = size_t(li - run.lengths.begin());
      row[i] = tc->at("score").get<double>();
      ci[i] = std::make_pair(tc->at("ci_low").get<double>(), tc->at("ci_high").get<double>());
    }
    t.values.push_back(std::move(row));
    t.intervals.push_back(std::move(ci));
  }
  return t;
}

void write_heatmap(const ResultTable& t, const std::string& title, const std::string& path_stem) {
  HeatmapSpec h;
  h.title = title;
  h.xlabel = "prompt length (tokens)";
  h.ylabel = "";  // the rows name the tasks (a label would overlap them)
  for (int64_t len : t.lengths) h.columns.push_back(fmt::format("{}", len));
  h.rows = t.methods;
  for (const auto& row : t.values) {
    h.values.emplace_back();
    h.texts.emplace_back();
    for (const auto& v : row) {
      h.values.back().push_back(v ? *v / 100.0 : std::nan(""));
      h.texts.back().push_back(v ? fmt::format("{:.1f}", *v) : "");
    }
  }
  h.height = std::max(600, 120 + 40 * int(h.rows.size()));
  write_heatmap_svg(h, path_stem + ".svg");
  if (plot_png_supported()) write_heatmap_png(h, path_stem + ".png");
}

// RULER's `length` of a sample: its prompt tokens plus the generation budget.
int64_t ruler_length(const RulerSample& s) {
  return int64_t(s.tokens.size()) + s.max_new;
}

// The `others` field of a sample's line in RULER's data and prediction files.
nlohmann::ordered_json sample_others(const RulerSample& s, const std::string& task, uint64_t seed) {
  nlohmann::ordered_json o;
  o["id"] = s.index;
  o["task"] = task;
  o["seed"] = seed;
  o["prompt_tokens"] = s.tokens.size();
  o["max_new_tokens"] = s.max_new;
  o["haystack_units"] = s.units;
  o["depths"] = s.depths;
  return o;
}

// RULER's prediction files and summary.csv of one method at one length.
void write_pred_dir(const nlohmann::json& cell, const RulerPrompts& prompts, size_t li,
                    const std::string& dir, uint64_t seed) {
  std::filesystem::create_directories(dir);
  std::vector<std::string> names{"Tasks"}, scores{"Score"}, nulls{"Nulls"};
  for (size_t ti = 0; ti < prompts.tasks.size(); ++ti) {
    const std::string& task = prompts.tasks[ti];
    const nlohmann::json* tc = task_cell(cell, task);
    if (!tc) continue;
    std::string jsonl;
    for (const nlohmann::json& r : tc->at("results")) {
      const RulerSample& s = prompts.samples[li][ti][r.at("index").get<size_t>()];
      nlohmann::ordered_json line;
      line["index"] = s.index;
      line["pred"] = r.at("pred");
      line["input"] = s.input;
      line["outputs"] = s.outputs;
      line["others"] = sample_others(s, task, seed);
      line["others"]["score"] = r.at("score");
      line["truncation"] = -1;
      line["length"] = ruler_length(s);
      line["answer_prefix"] = s.answer_prefix;
      jsonl += line.dump() + "\n";
    }
    write_file_atomically(dir + "/" + task + ".jsonl", jsonl);
    names.push_back(task);
    scores.push_back(py_float(tc->at("score").get<double>()));
    nulls.push_back(fmt::format("{}/{}", tc->at("nulls").get<int64_t>(), tc->at("results").size()));
  }
  std::string header;
  for (size_t i = 0; i < names.size(); ++i) header += fmt::format("{}{}", i ? "," : "", i);
  write_file_atomically(dir + "/summary.csv",
                        fmt::format("{}\n{}\n{}\n{}\n", header, fmt::join(names, ","),
                                    fmt::join(scores, ","), fmt::join(nulls, ",")));
}

}  // namespace

std::string write_ruler_outputs(const EvalRun& run, const Model& model, const RulerConfig& cfg,
                                const RulerPrompts& prompts) {
  const std::string model_name = path_name(cfg.model_path);
  SweepOutputs out;
  out.field = "score";
  out.lo_field = "ci_low";
  out.hi_field = "ci_high";
  out.decimals = 1;
  out.stem = "score";
  out.plot.title = fmt::format("RULER: {}, mean over {} task(s), {} sample(s) each", model_name,
                               prompts.tasks.size(), cfg.samples);
  out.plot.ylabel = "score (0-100)";
  out.plot.y_min = -5;
  out.plot.y_max = 105;
  const int64_t orig = cfg.scale.orig_ctx ? *cfg.scale.orig_ctx : model.hp().n_ctx_train;
  std::string md = write_sweep_outputs(run, cfg.out_dir, orig, std::move(out));
  const ResultTable mean = make_table(run.cells, run.methods, run.lengths, "score");
  // The model's own score at its trained length: method none (else the first method) at the
  // longest tested length within the trained context.
  std::optional<double> reference;
  int64_t ref_len = 0;
  for (size_t i = 0; i < run.lengths.size(); ++i)
    if (run.lengths[i] <= orig && run.lengths[i] > ref_len) ref_len = run.lengths[i];
  if (ref_len > 0) {
    size_t mi = 0;
    for (size_t m = 0; m < run.methods.size(); ++m)
      if (run.methods[m].method == RopeMethod::kNone && run.methods[m].factors_path.empty()) {
        mi = m;
        break;
      }
    const size_t li =
        size_t(std::find(run.lengths.begin(), run.lengths.end(), ref_len) - run.lengths.begin());
    reference = mean.values[mi][li];
  }
  md += fmt::format(
      "\nEffective context length: the longest tested length whose mean score, and that of every "
      "shorter tested length, is above the threshold ({} = RULER's; relative: the model's own "
      "score at its trained context {}{}).\n\n| method | effective @ {} | effective @ relative "
      "|\n|---|---:|---:|\n",
      cfg.threshold, orig,
      reference ? fmt::format(", {:.1f} at {}", *reference, ref_len) : ", not measured",
      cfg.threshold);
  nlohmann::json effective = nlohmann::json::object();
  for (size_t m = 0; m < run.methods.size(); ++m) {
    const int64_t abs_eff = ruler_effective_length(run.lengths, mean.values[m], cfg.threshold);
    // Relative: at or above the reference score (a hair below it counts as equal).
    const int64_t rel_eff =
        reference && *reference > 0
            ? ruler_effective_length(run.lengths, mean.values[m], *reference - 1e-9)
            : -1;
    auto show = [](int64_t e) {
      return e < 0 ? std::string("n/a") : e == 0 ? std::string("< shortest") : fmt::format("{}", e);
    };
    md += fmt::format("| {} | {} | {} |\n", run.methods[m].label, show(abs_eff), show(rel_eff));
    effective[run.methods[m].label] = {{"threshold", cfg.threshold},
                                       {"effective", abs_eff},
                                       {"reference", reference ? *reference : -1.0},
                                       {"effective_relative", rel_eff}};
  }
  for (const EvalMethod& m : run.methods)
    md += fmt::format("\n{} by task (score [95% interval]):\n\n", m.label) +
          table_markdown(task_table(run, m, prompts.tasks), "task \\ length", 1);
  if (!prompts.not_run.empty())
    md += fmt::format("\nNot run: {} (give the data with --qa-data).\n",
                      fmt::join(prompts.not_run, ", "));
  if (cfg.out_dir.empty()) return md;
  write_file_atomically(cfg.out_dir + "/results.md", md);
  write_file_atomically(cfg.out_dir + "/effective_length.json", effective.dump(2) + "\n");
  std::string csv = "method,length";
  for (const std::string& t : cfg.tasks) csv += "," + t;
  csv += ",average\n";
  for (size_t m = 0; m < run.methods.size(); ++m) {
    const EvalMethod& em = run.methods[m];
    const ResultTable t = task_table(run, em, cfg.tasks);
    write_heatmap(t, fmt::format("RULER by task: {}, {}", model_name, em.label),
                  cfg.out_dir + "/heatmap_" + file_stem(em.label));
    for (size_t li = 0; li < run.lengths.size(); ++li) {
      csv += fmt::format("{},{}", em.label, run.lengths[li]);
      for (const auto& row : t.values)
        csv += fmt::format(",{}", row[li] ? py_float(*row[li]) : "not run");
      const auto& avg = mean.values[m][li];
      csv += fmt::format(",{}\n", avg ? py_float(*avg) : "");
      for (const nlohmann::json& c : run.cells)
        if (!c.is_null() && c.value("method", "") == em.spec &&
            c.value("length", int64_t(0)) == run.lengths[li])
          write_pred_dir(
              c, prompts, li,
              fmt::format("{}/{}/{}/pred", cfg.out_dir, file_stem(em.label), run.lengths[li]),
              cfg.seed);
    }
  }
  write_file_atomically(cfg.out_dir + "/summary.csv", csv);
  return md;
}

std::string write_ruler_data(const RulerPrompts& prompts, const RulerConfig& cfg) {
  if (cfg.out_dir.empty())
    throw Error("writing RULER's data files needs an output folder (-O DIR)");
  std::string md = fmt::format(
      "RULER prompts (seed {}, {} sample(s) per task and length{}), in "
      "{}/data/<length>/<task>.jsonl:"
      "\n\n| task | length | samples | prompt tokens | haystack units "
      "|\n|---|---:|---:|---:|---:|\n",
      cfg.seed, cfg.samples, cfg.chat ? ", ChatML" : "", cfg.out_dir);
  for (size_t li = 0; li < cfg.lengths.size(); ++li) {
    const std::string dir = fmt::format("{}/data/{}", cfg.out_dir, cfg.lengths[li]);
    std::filesystem::create_directories(dir);
    for (size_t ti = 0; ti < prompts.tasks.size(); ++ti) {
      const std::string& task = prompts.tasks[ti];
      std::string jsonl;
      size_t lo = SIZE_MAX, hi = 0;
      int64_t ulo = INT64_MAX, uhi = 0;
      for (const RulerSample& s : prompts.samples[li][ti]) {
        nlohmann::ordered_json line;
        line["index"] = s.index;
        line["input"] = s.input;
        line["outputs"] = s.outputs;
        line["length"] = ruler_length(s);
        line["answer_prefix"] = s.answer_prefix;
        line["others"] = sample_others(s, task, cfg.seed);
        jsonl += line.dump() + "\n";
        lo = std::min(lo, s.tokens.size());
        hi = std::max(hi, s.tokens.size());
        ulo = std::min(ulo, s.units);
        uhi = std::max(uhi, s.units);
      }
      write_file_atomically(dir + "/" + task + ".jsonl", jsonl);
      md += fmt::format("| {} | {} | {} | {}-{} | {}-{} |\n", task, cfg.lengths[li],
                        prompts.samples[li][ti].size(), lo, hi, ulo, uhi);
    }
  }
  if (!prompts.not_run.empty())
    md += fmt::format("\nNot written: {} (give the data with --qa-data).\n",
                      fmt::join(prompts.not_run, ", "));
  return md;
}

}  // namespace longrope
