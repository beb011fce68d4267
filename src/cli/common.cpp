#include "cli/common.h"

#include <fmt/core.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include "longrope/atomic_file.h"
#include "longrope/dist.h"
#include "longrope/error.h"
#include "longrope/kernels.h"

namespace longrope::cli {

namespace {
// " (CPU variant avx512, LONGROPE_CPU)" when LONGROPE_CPU runs a variant below the CPU's best.
std::string cpu_variant_note() {
  const kernels::CpuVariant v = kernels::cpu_variant();
  if (v == kernels::cpu_best_variant()) return "";
  return fmt::format(" (CPU variant {}, LONGROPE_CPU)", kernels::cpu_variant_name(v));
}
}  // namespace

std::shared_ptr<const Model> load_model_verbose(const std::string& path,
                                                const std::string& tokenizer_path, int threads,
                                                kernels::Compute compute) {
  const double t0 = omp_get_wtime();
  LoadOptions opts;
  opts.tokenizer_path = tokenizer_path;
  opts.n_threads = threads;
  auto model = Model::load(path, opts);
  if (!dist::is_root()) return model;  // one report per job, from rank 0
  const HParams& hp = model->hp();
  fmt::print(stderr,
             "loaded {} ({}, {} layers, dim {}, {} heads / {} kv, vocab {}, trained ctx {}, rope "
             "base {:g}, {:.1f}M params, {:.0f} MB of weights kept as stored) in {:.2f}s; compute "
             "{}{}\n",
             path, model->file().format, hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.n_vocab,
             hp.n_ctx_train, hp.rope_base, double(model->n_params()) / 1e6,
             double(model->weight_bytes()) / 1048576.0, omp_get_wtime() - t0,
             kernels::compute_name(compute), cpu_variant_note());
  return model;
}

int resolve_threads(int threads) {
  const dist::World& w = dist::world();
  if (threads <= 0 && w.mpi) threads = dist::default_threads();
  if (threads > 0 && w.mpi && w.rank == 0 && threads > dist::usable_cores())
    fmt::print(stderr,
               "warning: rank 0 runs {} threads on {} core(s); start mpirun with --bind-to none or "
               "--map-by slot:PE={} (docs/distributed.md)\n",
               threads, dist::usable_cores(), threads);
  return threads;
}

double number_prefix(const std::string& text, size_t* used) {
  *used = 0;
  try {
    return std::stod(text, used);
  } catch (const std::exception&) {
    *used = 0;
    return std::numeric_limits<double>::quiet_NaN();
  }
}

double wall_seconds() {
  return omp_get_wtime();
}

int run_distributed(const std::function<nlohmann::json()>& prepare,
                    const std::function<int()>& lead, const std::function<void()>& serve) {
  nlohmann::json fingerprint;
  std::string error;
  try {
    fingerprint = prepare();
  } catch (const std::bad_alloc&) {
    error = "out of memory while loading";
  } catch (const std::exception& e) {
    error = e.what();
  }
  dist::check_same_inputs(fingerprint, error);
  if (!dist::is_root()) {
    serve();
    return 0;
  }
  const int rc = lead();
  dist::stop_workers(rc == 0);
  return rc;
}

void add_sweep_flags(CLI::App* cmd, SweepCommand& c, const std::string& out_help) {
  c.label = cmd->get_name();
  add_model_flags(cmd, c.model, c.tokenizer);
  add_out_dir_option(cmd, c.out_dir, out_help);
  add_threads_option(cmd, c.threads);
  add_compute_flag(cmd, c.compute);
  cmd->add_flag("--json", c.json, "print the results as JSON instead of a Markdown table");
  cmd->add_flag("--resume", c.resume, "reuse finished cells of DIR/results.json");
  add_overwrite_flag(cmd, c.overwrite, "replace the results of another run in -O DIR");
  add_no_progress_flag(cmd, c.progress);
}

void begin_sweep(SweepCommand& c) {
  check_resume_has_out_dir(c.label, c.resume, c.out_dir);
  // Another run's results in -O DIR: refused before the model is loaded and the prompts built
  // (execute_sweep checks again, for library callers).
  if (!c.out_dir.empty())
    refuse_existing_state(c.label, c.out_dir + "/results.json", c.resume, c.overwrite);
  c.threads = resolve_threads(c.threads);
  c.compute_mode = kernels::compute_of_flag(c.compute);
}

int run_sweep_command(const SweepCommand& c, const std::function<SweepPlan(const Model&)>& plan,
                      const std::function<std::string(const EvalRun&, const Model&)>& write) {
  std::shared_ptr<const Model> model;
  std::optional<SweepPlan> p;
  auto lead = [&] {
    Progress bar(c.label, 1000, c.progress);
    const EvalRun r = execute_sweep(
        *p, c.out_dir, c.resume, c.overwrite,
        [&](int64_t cells, int64_t n_cells, int64_t work, int64_t total, const std::string& msg) {
          bar.update(total > 0 ? work * 1000 / total : 1000,
                     fmt::format("| {} of {} cells done | {}", cells, n_cells, msg));
        });
    bar.finish();
    const std::string md = write(r, *model);
    fmt::print(
        stderr, "{} cell(s) computed{}, {}{} reused{}\n", r.computed,
        r.continued ? fmt::format(" ({} continued from partial.json)", r.continued) : std::string(),
        r.repeated ? fmt::format("{} copied from a method with the same RoPE tables, ", r.repeated)
                   : std::string(),
        int64_t(r.cells.size()) - r.computed - r.repeated,
        c.out_dir.empty() ? "; nothing written (-O DIR keeps the results and plots)"
                          : fmt::format("; results in {}/", c.out_dir));
    if (c.json) {
      nlohmann::json j = c.json_head;
      j["cells"] = r.cells;
      fmt::print("{}\n", j.dump(2));
    } else {
      fmt::print("{}", md);
    }
    return 0;
  };
  return run_distributed(
      [&] {
        model = load_model_verbose(c.model, c.tokenizer, c.threads, c.compute_mode);
        p = plan(*model);
        return dist::world().size > 1 ? p->fingerprint() : nlohmann::json();
      },
      lead, [&] { serve_sweep(*p); });
}

}  // namespace longrope::cli
