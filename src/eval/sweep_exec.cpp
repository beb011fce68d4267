// Running a sweep plan here or over MPI ranks (include/longrope/eval.h).
#include <fmt/core.h>

#include <sstream>

#include "longrope/atomic_file.h"
#include "longrope/context.h"
#include "longrope/dist.h"
#include "longrope/error.h"
#include "longrope/eval.h"
#include "longrope/fingerprint.h"
#include "longrope/kernels.h"

namespace longrope {

namespace {

// A cell travels between ranks as "mi li", followed by the stored shorter run it extends.
std::string cell_task(size_t mi, size_t li, const nlohmann::json& prefix = nullptr) {
  return prefix.is_null() ? fmt::format("{} {}", mi, li)
                          : fmt::format("{} {} {}", mi, li, prefix.dump());
}

nlohmann::json compute_task(const SweepPlan& plan, const std::string& task,
                            const std::function<void(double, const std::string&)>& progress,
                            const std::function<void(const nlohmann::json&)>& save_partial) {
  std::istringstream in(task);
  size_t mi = 0, li = 0;
  if (!(in >> mi >> li) || mi >= plan.methods.size() || li >= plan.lengths.size())
    throw Error(
        fmt::format("a cell task '{}' outside this sweep (expected the same flags on "
                    "every rank)",
                    task));
  std::string rest;
  std::getline(in >> std::ws, rest, '\0');
  const nlohmann::json prefix = rest.empty() ? nlohmann::json() : nlohmann::json::parse(rest);
  // The cell builder hands over its units; the cell's identity is the plan's.
  std::function<void(const nlohmann::json&)> save;
  if (save_partial)
    save = [&](const nlohmann::json& units) {
      nlohmann::json cell = units;
      cell["method"] = plan.methods[mi].spec;
      cell["length"] = plan.lengths[li];
      cell["key"] = plan.keys[mi];
      save_partial(cell);
    };
  return plan.compute_cell(mi, li, progress, prefix, save);
}

}  // namespace

nlohmann::json sweep_fingerprint(const Model& model,
                                 const std::vector<std::vector<int32_t>>& tokens,
                                 const std::vector<nlohmann::json>& keys,
                                 const std::vector<int64_t>& lengths, kernels::Compute compute) {
  const std::string k = nlohmann::json(keys).dump();
  return {{"model", model_fingerprint(model)},
          {"tokens", tokens_fingerprint(tokens)},
          {"cells", fmt::format("{:016x}", fnv1a(k.data(), k.size()))},
          {"lengths", lengths},
          {"compute", kernels::compute_name(compute)}};
}

std::shared_ptr<const std::vector<std::vector<RopeScaling>>> start_prompt_plan(
    SweepPlan& plan, const std::string& kind, const Model& model,
    const std::vector<std::string>& methods, const std::vector<int64_t>& lengths,
    const ScaleOptions& scale, int n_threads) {
  plan.kind = kind;
  plan.length_major = true;
  plan.methods = parse_eval_methods(methods, model);
  plan.lengths = lengths;
  for (int64_t len : lengths) check_memory_for_length(model.hp(), len, n_threads);
  auto scalings = std::make_shared<std::vector<std::vector<RopeScaling>>>();
  for (const EvalMethod& m : plan.methods) {
    std::vector<RopeScaling> row;
    for (int64_t len : lengths) row.push_back(eval_scaling(m, model, len, scale));
    scalings->push_back(std::move(row));
  }
  return scalings;
}

void share_identical_cells(SweepPlan& plan, const Model& model,
                           std::shared_ptr<const std::vector<std::vector<RopeScaling>>> scalings,
                           const std::function<std::vector<int64_t>(size_t li)>& prompt_lengths) {
  const size_t n_methods = plan.methods.size(), n_lengths = plan.lengths.size();
  std::vector<std::vector<int>> same(n_methods, std::vector<int>(n_lengths, -1));
  bool any = false;
  for (size_t li = 0; li < n_lengths; ++li) {
    const std::vector<int64_t> lens = prompt_lengths(li);
    // Each method's tables at every prompt length of this column.
    std::vector<std::vector<RopeTables>> tables(n_methods);
    for (size_t mi = 0; mi < n_methods; ++mi)
      for (int64_t n : lens) tables[mi].push_back(rope_tables(model, (*scalings)[mi][li], n));
    for (size_t mi = 1; mi < n_methods; ++mi)
      for (size_t mj = 0; mj < mi && same[mi][li] < 0; ++mj)
        if (same[mj][li] < 0 && tables[mj] == tables[mi]) {
          same[mi][li] = int(mj);
          any = true;
        }
  }
  if (!any) return;
  plan.same_as = std::move(same);
  plan.alias_cell = [scalings, methods = plan.methods, keys = plan.keys](
                        size_t mi, size_t li, const nlohmann::json& source) {
    nlohmann::json cell = source;
    cell["method"] = methods[mi].spec;
    cell["label"] = methods[mi].label;
    cell["key"] = keys[mi];
    cell["rope"] = (*scalings)[mi][li].describe();
    cell["same_as"] = source.at("label");
    cell["seconds"] = 0.0;
    return cell;
  };
}

void key_plan_by_prompts(SweepPlan& plan, const Model& model, const nlohmann::json& base_key,
                         std::function<std::vector<std::vector<int32_t>>(int64_t)> prompt_tokens,
                         int64_t n, const std::string& units) {
  auto all_prompts = std::make_shared<std::vector<std::vector<int32_t>>>(prompt_tokens(n));
  auto key_for = [base_key, prompt_tokens, all_prompts, n, units](int64_t m) {
    nlohmann::json k = base_key;
    k["prompts_fingerprint"] = tokens_fingerprint(m == n ? *all_prompts : prompt_tokens(m));
    k[units] = m;
    return k;
  };
  plan.keys = cell_keys(key_for(n), plan.methods);
  plan.units = units;
  plan.key_for_units = [key_for, methods = plan.methods](size_t mi, int64_t m) {
    return cell_keys(key_for(m), {methods[mi]})[0];
  };
  plan.fingerprint = [&model, all_prompts, keys = plan.keys, lengths = plan.lengths,
                      compute = plan.compute] {
    return sweep_fingerprint(model, *all_prompts, keys, lengths, compute);
  };
}

EvalRun execute_sweep(const SweepPlan& plan, const std::string& out_dir, bool resume,
                      bool overwrite, const SweepProgress& progress) {
  const std::string command = plan.kind == "perplexity" ? "eval" : plan.kind;
  if (!out_dir.empty())
    for (const char* state : {"/results.json", "/partial.json"})
      refuse_existing_state(command, out_dir + state, resume, overwrite);
  make_output_dir(out_dir);
  ResultsStore store(out_dir.empty() ? "" : out_dir + "/results.json", plan.kind, resume);
  // The cells begun and not finished (compute_cell's save_partial), which --resume continues.
  ResultsStore partial(out_dir.empty() ? "" : out_dir + "/partial.json", plan.kind, resume);
  EvalRun run;
  run.methods = plan.methods;
  run.lengths = plan.lengths;

  // The cells in plan order; those found in the store are reused.
  struct Slot {
    size_t mi, li;
    nlohmann::json cell;  // null until known
  };
  std::vector<Slot> slots;
  auto add = [&](size_t mi, size_t li) { slots.push_back({mi, li, nullptr}); };
  for (size_t a = 0; a < (plan.length_major ? plan.lengths.size() : plan.methods.size()); ++a)
    for (size_t b = 0; b < (plan.length_major ? plan.methods.size() : plan.lengths.size()); ++b)
      plan.length_major ? add(b, a) : add(a, b);

  const int64_t n_cells = static_cast<int64_t>(slots.size());
  int64_t total_work = 0, done_work = 0, done_cells = 0;
  std::vector<size_t> todo;  // indices into slots
  std::vector<std::string> tasks;
  // The slot of each cell, and the cells that repeat another's (filled in once it is known).
  std::vector<std::vector<size_t>> slot_of(plan.methods.size(),
                                           std::vector<size_t>(plan.lengths.size()));
  for (size_t i = 0; i < slots.size(); ++i) slot_of[slots[i].mi][slots[i].li] = i;
  auto source_of = [&](const Slot& s) {
    return plan.same_as.empty() ? -1 : plan.same_as[s.mi][s.li];
  };
  std::vector<size_t> aliases;
  for (size_t i = 0; i < slots.size(); ++i) {
    Slot& s = slots[i];
    if (resume)
      if (const nlohmann::json* c =
              store.find(plan.methods[s.mi].spec, plan.lengths[s.li], plan.keys[s.mi])) {
        s.cell = *c;
        ++done_cells;
        continue;
      }
    if (source_of(s) >= 0) {
      aliases.push_back(i);
      continue;
    }
    nlohmann::json prefix;
    if (resume)
      if (const nlohmann::json* c =
              partial.find(plan.methods[s.mi].spec, plan.lengths[s.li], plan.keys[s.mi])) {
        prefix = *c;
        ++run.continued;
      }
    if (resume && prefix.is_null() && plan.key_for_units)
      if (const nlohmann::json* c =
              store.find_prefix(plan.methods[s.mi].spec, plan.lengths[s.li], plan.units,
                                plan.keys[s.mi].value(plan.units, int64_t(0)),
                                [&](int64_t n) { return plan.key_for_units(s.mi, n); }))
        prefix = *c;
    todo.push_back(i);
    tasks.push_back(cell_task(s.mi, s.li, prefix));
    total_work += plan.work(plan.lengths[s.li]);
  }
  // Copies the cells whose source is known and stores them.
  auto fill_aliases = [&] {
    for (size_t i : aliases) {
      Slot& s = slots[i];
      const Slot& src = slots[slot_of[size_t(source_of(s))][s.li]];
      if (!s.cell.is_null() || src.cell.is_null()) continue;
      s.cell = plan.alias_cell(s.mi, s.li, src.cell);
      store.put(s.cell);
      ++done_cells;
      ++run.repeated;
    }
  };
  fill_aliases();
  if (progress && done_cells) progress(done_cells, n_cells, done_work, total_work, "resumed");

  auto label = [&](size_t t) {
    const Slot& s = slots[todo[t]];
    return fmt::format("{} @ {}", plan.methods[s.mi].label, plan.lengths[s.li]);
  };
  // In a one-rank world the cells run on this thread, in order, and can report their own
  // progress; spread over ranks, progress moves a cell at a time.
  const bool here = dist::world().size == 1;
  size_t current = 0;
  auto in_cell = [&](double frac, const std::string& msg) {
    if (!progress) return;
    const int64_t w = plan.work(plan.lengths[slots[todo[current]].li]);
    progress(done_cells, n_cells, done_work + static_cast<int64_t>(frac * static_cast<double>(w)),
             total_work, msg.empty() ? label(current) : msg);
  };
  dist::FarmOptions opt;
  opt.label = label;
  opt.on_result = [&](size_t t, const std::string& result) {
    Slot& s = slots[todo[t]];
    s.cell = nlohmann::json::parse(result);
    store.put(s.cell);
    partial.erase(plan.methods[s.mi].spec, plan.lengths[s.li], plan.keys[s.mi]);
    ++run.computed;
    ++done_cells;
    done_work += plan.work(plan.lengths[s.li]);
    current = t + 1;
    fill_aliases();
    if (progress) progress(done_cells, n_cells, done_work, total_work, label(t));
  };
  std::function<void(double, const std::string&)> cell_progress;
  // Unfinished cells are kept where this process computes them (spread over ranks, a cell is
  // stored when it is done).
  std::function<void(const nlohmann::json&)> save_partial;
  if (here) {
    cell_progress = in_cell;
    if (!out_dir.empty()) save_partial = [&partial](const nlohmann::json& c) { partial.put(c); };
  }
  dist::farm(
      tasks,
      [&](const std::string& task) {
        return compute_task(plan, task, cell_progress, save_partial).dump();
      },
      opt);

  run.cells = nlohmann::json::array();
  for (const Slot& s : slots) run.cells.push_back(s.cell);
  return run;
}

void serve_sweep(const SweepPlan& plan) {
  dist::serve(
      [&](const std::string& task) { return compute_task(plan, task, nullptr, nullptr).dump(); });
}

}  // namespace longrope
