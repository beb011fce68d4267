// Passkey retrieval: prompt construction, one trial, and the methods x lengths sweep.
#include "longrope/passkey.h"

#include <fmt/core.h>
#include <omp.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <random>

#include "greedy.h"
#include "longrope/context.h"
#include "longrope/error.h"
#include "longrope/fingerprint.h"
#include "longrope/plot.h"
#include "longrope/sampling.h"

namespace longrope {

namespace {

constexpr const char* kIntro =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important info there.";
constexpr const char* kFiller[] = {"The grass is green.", "The sky is blue.", "The sun is yellow.",
                                   "Here we go.", "There and back again."};
constexpr const char* kQuestion = "What is the pass key? The pass key is";
constexpr const char* kChatQuestion = "What is the pass key?";

// Pieces after the first one are joined with a space: SPM tokenizers that add a space prefix
// already start every piece with one, GPT-2 style ones need it written.
std::string piece(const Tokenizer& tok, const std::string& text) {
  const VocabSpec& v = tok.spec();
  const bool prefixed = v.kind == VocabSpec::Kind::kSpm && v.add_space_prefix;
  return prefixed ? text : " " + text;
}

void append(std::vector<int32_t>& out, const std::vector<int32_t>& in) {
  out.insert(out.end(), in.begin(), in.end());
}

bool contains_key(const std::string& text, int64_t key) {
  const std::string k = std::to_string(key);
  for (size_t pos = text.find(k); pos != std::string::npos; pos = text.find(k, pos + 1)) {
    const bool digit_before = pos > 0 && std::isdigit(static_cast<unsigned char>(text[pos - 1]));
    const size_t end = pos + k.size();
    const bool digit_after =
        end < text.size() && std::isdigit(static_cast<unsigned char>(text[end]));
    if (!digit_before && !digit_after) return true;
  }
  return false;
}

}  // namespace

PasskeyPrompt make_passkey_prompt(const Model& model, int64_t length, int64_t key, double depth,
                                  bool chat) {
  const Tokenizer& tok = model.tokenizer();
  if (!(depth >= 0 && depth <= 1))
    throw Error(fmt::format("passkey depth {} is not in [0, 1]", depth));
  std::vector<int32_t> head, tail;
  if (tok.add_bos() && tok.bos() >= 0) head.push_back(tok.bos());
  const ChatPrompt turn = chat_prompt();
  if (chat) append(head, tok.encode(turn.open, true));
  append(head, tok.encode(kIntro));
  const std::string k = std::to_string(key);
  const std::vector<int32_t> needle = tok.encode(
      piece(tok, fmt::format("The pass key is {0}. Remember it. {0} is the pass key.", k)));
  if (chat) {
    append(tail, tok.encode(piece(tok, kChatQuestion)));
    append(tail, tok.encode(turn.close + "The pass key is", true));
  } else {
    append(tail, tok.encode(piece(tok, kQuestion)));
  }
  std::vector<std::vector<int32_t>> units;
  for (const char* s : kFiller) units.push_back(tok.encode(piece(tok, s)));
  const int64_t fixed = int64_t(head.size() + needle.size() + tail.size());
  if (fixed + int64_t(units[0].size()) > length)
    throw Error(
        fmt::format("passkey length {} is too short: the prompt without filler takes {} tokens",
                    length, fixed));
  // As many filler sentences as fit.
  std::vector<size_t> sentences;
  int64_t filler = 0;
  for (size_t i = 0;; ++i) {
    const int64_t n = int64_t(units[i % units.size()].size());
    if (fixed + filler + n > length) break;
    filler += n;
    sentences.push_back(i % units.size());
  }
  const size_t at = size_t(std::lround(depth * double(sentences.size())));
  PasskeyPrompt p;
  p.key = key;
  p.depth = depth;
  p.tokens = head;
  for (size_t i = 0; i < sentences.size(); ++i) {
    if (i == at) {
      p.needle_token = int64_t(p.tokens.size());
      append(p.tokens, needle);
    }
    append(p.tokens, units[sentences[i]]);
  }
  if (at >= sentences.size()) {
    p.needle_token = int64_t(p.tokens.size());
    append(p.tokens, needle);
  }
  p.needle_length = int64_t(needle.size());
  append(p.tokens, tail);
  return p;
}

PasskeyTrialSpec passkey_trial_spec(uint64_t seed, int64_t length, int64_t trial,
                                    const std::vector<double>& depths) {
  // Explicit arithmetic on mt19937_64 output (not std::uniform_*_distribution, whose results
  // differ between standard libraries): same seed, same keys everywhere.
  std::seed_seq seq{uint32_t(seed),         uint32_t(seed >> 32), uint32_t(length),
                    uint32_t(length >> 32), uint32_t(trial),      0x70617373u};
  std::mt19937_64 rng(seq);
  PasskeyTrialSpec t;
  t.key = 1 + int64_t(rng() % 50000);
  const uint64_t r = rng();
  t.depth = depths.empty() ? double(r % 1001) / 1000.0 : depths[size_t(trial) % depths.size()];
  return t;
}

GreedyOutput greedy_decode(const Model& model, const std::vector<int32_t>& prompt,
                           const RopeScaling& scaling, int n_threads, int max_new,
                           kernels::Compute compute) {
  const double t0 = omp_get_wtime();
  // Non-owning handle: the caller keeps the model alive for the whole call.
  std::shared_ptr<const Model> handle(std::shared_ptr<const Model>{}, &model);
  ContextParams cp;
  cp.n_ctx = int64_t(prompt.size()) + max_new + 1;
  cp.n_threads = n_threads;
  cp.compute = compute;
  cp.switch_policy = SwitchPolicy::kKeep;
  Context ctx(handle, cp, scaling);
  std::vector<float> logits = ctx.decode(prompt);
  std::vector<int32_t> out;
  const int32_t eos = model.tokenizer().eos(), eot = model.tokenizer().eot();
  for (int i = 0; i < max_new; ++i) {
    const int32_t t = argmax(logits);
    if (t == eos || t == eot) break;
    out.push_back(t);
    if (i + 1 < max_new) {
      const int32_t one[1] = {t};
      logits = ctx.decode(one);
    }
  }
  GreedyOutput g;
  g.text = model.tokenizer().decode(out);
  g.tokens = int64_t(out.size());
  g.seconds = omp_get_wtime() - t0;
  return g;
}

PasskeyAnswer run_passkey_trial(const Model& model, const PasskeyPrompt& prompt,
                                const RopeScaling& scaling, int n_threads, int max_new,
                                kernels::Compute compute) {
  const GreedyOutput g = greedy_decode(model, prompt.tokens, scaling, n_threads, max_new, compute);
  PasskeyAnswer a;
  a.output = g.text;
  a.correct = contains_key(a.output, prompt.key);
  a.seconds = g.seconds;
  return a;
}

SweepPlan plan_passkey(const Model& model, const PasskeyConfig& cfg) {
  if (cfg.trials < 1) throw Error("--trials must be at least 1");
  if (cfg.lengths.empty()) throw Error("no length given (--lengths 1k,2k,...)");
  if (cfg.max_new < 1) throw Error("at least one new token must be generated");
  for (double d : cfg.depths)
    if (!(d >= 0 && d <= 1)) throw Error(fmt::format("depth {} is not in [0, 1]", d));
  SweepPlan plan;
  plan.compute = cfg.compute;
  const auto scalings =
      start_prompt_plan(plan, "passkey", model, cfg.methods, cfg.lengths, cfg.scale, cfg.n_threads);
  // Every prompt is built up front (also checks that every length is long enough).
  auto prompts = std::make_shared<std::vector<std::vector<PasskeyPrompt>>>();  // [length][trial]
  for (int64_t len : cfg.lengths) {
    std::vector<PasskeyPrompt> row;
    for (int64_t t = 0; t < cfg.trials; ++t) {
      const PasskeyTrialSpec ts = passkey_trial_spec(cfg.seed, len, t, cfg.depths);
      row.push_back(make_passkey_prompt(model, len, ts.key, ts.depth, cfg.chat));
    }
    prompts->push_back(std::move(row));
  }
  // Every prompt, or the first n trials of each length (the prompts a run of n trials has).
  auto prompt_tokens = [prompts](int64_t n) {
    std::vector<std::vector<int32_t>> all;
    for (const auto& row : *prompts)
      for (int64_t t = 0; t < n; ++t) all.push_back(row[size_t(t)].tokens);
    return all;
  };
  nlohmann::json base_key = {{"model", path_name(cfg.model_path)},
                             {"model_fingerprint", model_fingerprint(model)},
                             {"seed", cfg.seed},
                             {"depths", cfg.depths},
                             {"chat", cfg.chat},
                             {"max_new", cfg.max_new}};
  add_scale_key(base_key, cfg.scale);
  key_plan_by_prompts(plan, model, base_key, prompt_tokens, cfg.trials, "trials");
  share_identical_cells(plan, model, scalings, [prompts](size_t li) {
    std::vector<int64_t> lens;
    for (const PasskeyPrompt& p : (*prompts)[li]) lens.push_back(int64_t(p.tokens.size()));
    return lens;
  });

  const int64_t trials = cfg.trials;
  plan.work = [trials](int64_t len) {
    return trials * int64_t(double(len) * (1.0 + double(len) / 8192.0));
  };
  plan.compute_cell =
      [&model, scalings, prompts, trials, n_threads = cfg.n_threads, compute = cfg.compute,
       max_new = cfg.max_new, methods = plan.methods, lengths = plan.lengths, keys = plan.keys](
          size_t mi, size_t li, const std::function<void(double, const std::string&)>& progress,
          const nlohmann::json& prefix,
          const std::function<void(const nlohmann::json&)>& save_partial) {
        const EvalMethod& m = methods[mi];
        const int64_t len = lengths[li];
        nlohmann::json results = nlohmann::json::array();
        int64_t correct = 0;
        double seconds = 0;
        // The trials of a shorter stored run (its key matched this run's first trials), or of
        // this run's unfinished cell.
        if (!prefix.is_null())
          for (const nlohmann::json& r : prefix.at("results")) {
            const PasskeyPrompt& p = (*prompts)[li][results.size()];
            if (results.size() >= size_t(trials) || r.at("key") != p.key ||
                r.at("prompt_tokens") != p.tokens.size())
              throw Error(
                  fmt::format("the stored passkey trials of {} @ {} do not match this run's "
                              "prompts (results.json or partial.json edited?)",
                              m.label, len));
            correct += r.at("correct").get<bool>() ? 1 : 0;
            seconds += r.at("seconds").get<double>();
            results.push_back(r);
          }
        for (int64_t t = int64_t(results.size()); t < trials; ++t) {
          if (progress)
            progress(double(t) / double(trials),
                     fmt::format("{} @ {} trial {}/{}", m.label, len, t + 1, trials));
          const PasskeyPrompt& p = (*prompts)[li][size_t(t)];
          const PasskeyAnswer a =
              run_passkey_trial(model, p, (*scalings)[mi][li], n_threads, max_new, compute);
          correct += a.correct ? 1 : 0;
          seconds += a.seconds;
          results.push_back({{"key", p.key},
                             {"depth", p.depth},
                             {"prompt_tokens", p.tokens.size()},
                             {"output", a.output},
                             {"correct", a.correct},
                             {"seconds", a.seconds}});
          if (save_partial && t + 1 < trials) save_partial({{"results", results}});
        }
        return nlohmann::json{{"method", m.spec},
                              {"label", m.label},
                              {"length", len},
                              {"key", keys[mi]},
                              {"trials", trials},
                              {"correct", correct},
                              {"accuracy", double(correct) / double(trials)},
                              {"ci_low", wilson_interval(correct, trials).first},
                              {"ci_high", wilson_interval(correct, trials).second},
                              {"seconds", seconds},
                              {"rope", (*scalings)[mi][li].describe()},
                              {"results", results}};
      };
  return plan;
}

EvalRun run_passkey(const Model& model, const PasskeyConfig& cfg, const SweepProgress& progress) {
  return execute_sweep(plan_passkey(model, cfg), cfg.out_dir, cfg.resume, cfg.overwrite, progress);
}

std::vector<std::string> write_passkey_heatmaps(const EvalRun& run, const PasskeyConfig& cfg) {
  std::vector<std::string> files;
  if (cfg.out_dir.empty()) return files;
  // Rows: the distinct --depths, or five equal bins of the random depths.
  std::vector<double> depths = cfg.depths;
  std::sort(depths.begin(), depths.end());
  depths.erase(std::unique(depths.begin(), depths.end()), depths.end());
  const bool binned = depths.empty();
  const size_t n_rows = binned ? 5 : depths.size();
  auto row_of = [&](double d) -> size_t {
    if (binned) return std::min<size_t>(4, static_cast<size_t>(d * 5.0));
    size_t best = 0;
    for (size_t i = 1; i < depths.size(); ++i)
      if (std::abs(depths[i] - d) < std::abs(depths[best] - d)) best = i;
    return best;
  };
  for (const EvalMethod& m : run.methods) {
    HeatmapSpec h;
    h.title = fmt::format("Passkey retrieval by depth: {}, {}", path_name(cfg.model_path), m.label);
    h.xlabel = "prompt length (tokens)";
    h.ylabel = "depth of the key (0 = start, 1 = end)";
    for (int64_t len : run.lengths) h.columns.push_back(fmt::format("{}", len));
    for (size_t r = 0; r < n_rows; ++r)
      h.rows.push_back(binned ? fmt::format("{:.1f}-{:.1f}", 0.2 * double(r), 0.2 * double(r + 1))
                              : fmt::format("{:g}", depths[r]));
    std::vector<std::vector<int64_t>> right(n_rows, std::vector<int64_t>(run.lengths.size(), 0));
    std::vector<std::vector<int64_t>> total = right;
    for (const nlohmann::json& c : run.cells) {
      if (c.value("method", "") != m.spec) continue;
      const auto li =
          std::find(run.lengths.begin(), run.lengths.end(), c.value("length", int64_t(0)));
      if (li == run.lengths.end() || !c.contains("results")) continue;
      const size_t col = static_cast<size_t>(li - run.lengths.begin());
      for (const nlohmann::json& t : c["results"]) {
        const size_t row = row_of(t.value("depth", 0.0));
        ++total[row][col];
        if (t.value("correct", false)) ++right[row][col];
      }
    }
    h.values.assign(n_rows, std::vector<double>(run.lengths.size(), std::nan("")));
    h.texts.assign(n_rows, std::vector<std::string>(run.lengths.size()));
    for (size_t r = 0; r < n_rows; ++r)
      for (size_t col = 0; col < run.lengths.size(); ++col)
        if (total[r][col] > 0) {
          h.values[r][col] = double(right[r][col]) / double(total[r][col]);
          h.texts[r][col] = fmt::format("{}/{}", right[r][col], total[r][col]);
        }
    std::string stem = "depth_";
    for (char ch : m.label)
      stem += std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' ? ch : '_';
    write_heatmap_svg(h, cfg.out_dir + "/" + stem + ".svg");
    files.push_back(stem + ".svg");
    if (plot_png_supported()) {
      write_heatmap_png(h, cfg.out_dir + "/" + stem + ".png");
      files.push_back(stem + ".png");
    }
  }
  return files;
}

std::string write_passkey_outputs(const EvalRun& run, const Model& model,
                                  const PasskeyConfig& cfg) {
  SweepOutputs out;
  out.field = "accuracy";
  out.lo_field = "ci_low";
  out.hi_field = "ci_high";
  out.decimals = 2;
  out.stem = "accuracy";
  out.plot.title = fmt::format("Passkey retrieval: {}, {} trial(s) per cell",
                               path_name(cfg.model_path), cfg.trials);
  out.plot.ylabel = "accuracy (error bars: 95% Wilson interval)";
  out.md_head = fmt::format(
      "Passkey accuracy per method and length [95% Wilson interval], {} trial(s) per cell.\n\n",
      cfg.trials);
  out.plot.y_min = -0.05;
  out.plot.y_max = 1.05;
  const int64_t orig = cfg.scale.orig_ctx ? *cfg.scale.orig_ctx : model.hp().n_ctx_train;
  std::string md = write_sweep_outputs(run, cfg.out_dir, orig, std::move(out));
  write_passkey_heatmaps(run, cfg);
  return md;
}

}  // namespace longrope
