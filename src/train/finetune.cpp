// The fine-tuning loop (include/longrope/finetune.h): sequences sampled from the token stream by
// (seed, step, sequence) alone, gradient accumulation, AdamW, the training state and the output.
#include "longrope/finetune.h"

#include <fmt/core.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "longrope/atomic_file.h"
#include "longrope/error.h"
#include "longrope/export.h"
#include "longrope/fingerprint.h"
#include "longrope/gguf.h"
#include "longrope/interrupt.h"
#include "longrope/model_file.h"
#include "longrope/perplexity.h"
#include "longrope/plot.h"
#include "longrope/quant.h"

namespace longrope {

namespace {

constexpr char kStateMagic[8] = {'L', 'R', 'T', 'R', 'A', 'I', 'N', '1'};

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Sequence `seq` of step `step`: whether it is short and where it starts. Depends on the seed,
// step and sequence only, so a resumed run sees the same data as an uninterrupted one.
struct Draw {
  bool is_short = false;
  uint64_t start_u = 0;
};
Draw draw(uint64_t seed, int64_t step, int64_t seq, double short_share) {
  const uint64_t h =
      splitmix64(seed ^ splitmix64(uint64_t(step) * 0x100000001b3ull + uint64_t(seq)));
  const uint64_t h2 = splitmix64(h);
  Draw d;
  d.is_short = short_share > 0 && double(h >> 11) * 0x1.0p-53 < short_share;
  d.start_u = h2;
  return d;
}

const char* decay_name(train::Decay d) {
  return d == train::Decay::kConstant ? "constant"
         : d == train::Decay::kLinear ? "linear"
                                      : "cosine";
}

GgmlType output_type(const std::string& t) {
  if (const std::optional<GgmlType> g = float_type_by_name(t)) return *g;
  throw Error(fmt::format("finetune: output type '{}' (expected f32, f16 or bf16)", t));
}

// Everything a resumed run must share with the run that wrote the state.
nlohmann::json settings_json(const FinetuneConfig& c, const Model& model,
                             const std::string& data_fp, double min_lr, int64_t warmup,
                             int64_t short_ctx) {
  return {{"model", model_fingerprint(model)},
          {"data", data_fp},
          {"rope", c.rope.describe()},
          {"ctx", c.ctx},
          {"steps", c.steps},
          {"batch", c.batch},
          {"lr", c.lr},
          {"min_lr", min_lr},
          {"warmup", warmup},
          {"decay", decay_name(c.decay)},
          {"beta1", c.adam.beta1},
          {"beta2", c.adam.beta2},
          {"eps", c.adam.eps},
          {"weight_decay", c.adam.weight_decay},
          {"clip", c.clip},
          {"seed", c.seed},
          {"short_share", c.short_share},
          {"short_ctx", short_ctx},
          {"checkpoint_activations", c.checkpoint_activations},
          {"compute", kernels::compute_name(c.compute)}};
}

struct State {
  std::vector<float> params, m, v;
  int64_t step = 0;
  nlohmann::json history = nlohmann::json::array();
};

void save_state(const std::string& path, const nlohmann::json& settings, const State& s) {
  const nlohmann::json head = {{"format", "longrope training state"},
                               {"settings", settings},
                               {"step", s.step},
                               {"params", s.params.size()},
                               {"history", s.history}};
  const std::string h = head.dump();
  write_file_atomically(path, [&](std::FILE* f, const std::string& tmp) {
    const uint64_t len = h.size();
    auto put = [&](const void* p, size_t n) {
      if (std::fwrite(p, 1, n, f) != n) throw Error(fmt::format("{}: write failed", tmp));
    };
    put(kStateMagic, sizeof kStateMagic);
    put(&len, sizeof len);
    put(h.data(), h.size());
    for (const auto* a : {&s.params, &s.m, &s.v}) put(a->data(), a->size() * sizeof(float));
  });
}

// legacy_model: the model's legacy_model_fingerprint, which states written before the one model
// fingerprint carry.
State load_state(const std::string& path, const nlohmann::json& settings, size_t total,
                 const std::string& legacy_model) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f)
    throw Error(
        fmt::format("{}: cannot open the training state to resume (expected the file a "
                    "finetune run writes; run without --resume to start anew)",
                    path));
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> guard(f, std::fclose);
  auto bad = [&](const std::string& what) {
    return Error(fmt::format("{}: {} (expected a longrope training state)", path, what));
  };
  char magic[8];
  uint64_t len = 0;
  if (std::fread(magic, 1, 8, f) != 8 || std::memcmp(magic, kStateMagic, 8) != 0)
    throw bad("not a training state");
  if (std::fread(&len, sizeof len, 1, f) != 1 || len > (uint64_t(1) << 30))
    throw bad("truncated header");
  std::string h(len, '\0');
  if (std::fread(h.data(), 1, len, f) != len) throw bad("truncated header");
  nlohmann::json head;
  try {
    head = nlohmann::json::parse(h);
  } catch (const nlohmann::json::exception&) {
    throw bad("unreadable header");
  }
  if (!head.contains("settings") || !head.contains("step") || !head.contains("params"))
    throw bad("header without settings, step or params");
  // States written before --compute existed trained in FP32.
  if (head["settings"].is_object() && !head["settings"].contains("compute"))
    head["settings"]["compute"] = "f32";
  if (head["settings"].is_object() && head["settings"].value("model", "") == legacy_model)
    head["settings"]["model"] = settings["model"];
  if (head["settings"] != settings) {
    std::string diff;
    for (auto it = settings.begin(); it != settings.end(); ++it)
      if (!head["settings"].contains(it.key()) || head["settings"][it.key()] != it.value()) {
        diff = fmt::format(
            "{} was {}, now {}", it.key(),
            head["settings"].contains(it.key()) ? head["settings"][it.key()].dump() : "absent",
            it.value().dump());
        break;
      }
    throw Error(fmt::format(
        "{}: written by a run with other settings ({}); resume with the same model, texts and "
        "flags, or run without --resume",
        path, diff));
  }
  if (head["params"].get<size_t>() != total) throw bad("parameter count differs");
  State s;
  s.step = head["step"].get<int64_t>();
  s.history = head.value("history", nlohmann::json::array());
  for (auto* a : {&s.params, &s.m, &s.v}) {
    a->resize(total);
    if (std::fread(a->data(), sizeof(float), total, f) != total) throw bad("truncated tensors");
  }
  return s;
}

// A trained tensor's bytes in the output type; norms and biases (vectors) stay F32, as
// llama.cpp's converters write them.
struct TrainedTensor {
  GgmlType type;
  std::vector<uint8_t> bytes;
};
TrainedTensor encode_trained(const train::ParamTensor& t, const float* params, GgmlType out) {
  const GgmlType type = t.rows == 1 ? GgmlType::F32 : out;
  return {type, encode_floats(params + t.offset, t.size(), type)};
}

void write_output_gguf(const ModelFile& mf, const train::ParamLayout& P, const float* params,
                       const RopeScaling& factors, const std::string& type,
                       const std::string& path) {
  const GgmlType gt = output_type(type);
  GgufWriter w;
  w.copy_from(mf.gguf);
  for (const train::ParamTensor& t : P.tensors) {
    TrainedTensor e = encode_trained(t, params, gt);
    std::vector<int64_t> ne =
        t.rows == 1 ? std::vector<int64_t>{t.cols} : std::vector<int64_t>{t.cols, t.rows};
    w.add_tensor(t.name, static_cast<uint32_t>(e.type), std::move(ne), std::move(e.bytes));
  }
  if (factors.method == RopeMethod::kLongrope) set_gguf_factors(w, mf, factors);
  // llama.cpp's file types: ALL_F32 0, MOSTLY_F16 1, MOSTLY_BF16 32.
  w.set_u32("general.file_type", gt == GgmlType::F32 ? 0u : gt == GgmlType::F16 ? 1u : 32u);
  w.write(path);
}

std::string trim_trailing_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

// An HF model folder (write_hf_folder) of the model with the trained weights (matrices in `type`,
// norms and biases F32) and the trained scaling, folded onto the model's own frequencies.
void write_output_hf(const ModelFile& mf, const train::ParamLayout& P, const float* params,
                     const RopeScaling& trained, const std::string& type, const std::string& dir) {
  const GgmlType gt = output_type(type);
  ModelFile out = mf;
  std::vector<TrainedTensor> encoded;
  encoded.reserve(P.tensors.size());
  for (const train::ParamTensor& t : P.tensors) {
    const TrainedTensor& e = encoded.emplace_back(encode_trained(t, params, gt));
    auto it = std::find_if(out.tensors.begin(), out.tensors.end(),
                           [&](const TensorRef& r) { return r.name == t.name; });
    if (it == out.tensors.end())
      throw Error(fmt::format("finetune: trained tensor {} is not in {}", t.name, mf.path));
    it->type = e.type;
    it->data = e.bytes.data();
    it->nbytes = e.bytes.size();
  }
  write_hf_folder(out,
                  trained.method == RopeMethod::kNone ? rope_of_model_file(mf)
                                                      : fold_model_factors(mf, trained),
                  dir, type);
}

void write_loss_plot(const nlohmann::json& history, const std::string& title,
                     const std::string& stem, FinetuneResult& r) {
  PlotSeries lng{"loss", {}, {}, {}, {}}, shrt{"loss (short sequences only)", {}, {}, {}, {}};
  for (const auto& h : history) {
    const bool only_short = h.value("short_seqs", 0) > 0 && h.value("long_seqs", 1) == 0;
    PlotSeries& se = only_short ? shrt : lng;
    se.x.push_back(h["step"].get<double>());
    se.y.push_back(h["loss"].get<double>());
  }
  PlotSpec spec;
  spec.title = title;
  spec.xlabel = "optimizer step";
  spec.ylabel = "training loss (mean NLL per token)";
  spec.log_x = false;
  if (!lng.x.empty()) spec.series.push_back(lng);
  if (!shrt.x.empty()) spec.series.push_back(shrt);
  if (spec.series.empty()) return;
  r.plot_svg = stem + ".svg";
  write_plot_svg(spec, r.plot_svg);
  if (plot_png_supported()) {
    r.plot_png = stem + ".png";
    write_plot_png(spec, r.plot_png);
  }
}

}  // namespace

RopeScaling as_factor_scaling(const RopeScaling& rope, const HParams& hp, int64_t ctx) {
  if (rope.method == RopeMethod::kLongrope) return rope;
  const RopeTables t = rope.tables(ctx, hp.n_rot, hp.rope_base, hp.n_ctx_train);
  RopeScaling f;
  f.method = RopeMethod::kLongrope;
  f.orig_ctx = rope.orig_ctx > 0 ? rope.orig_ctx : hp.n_ctx_train;
  f.target_ctx = std::max<int64_t>(ctx, f.orig_ctx);
  std::vector<double> lam(t.inv_freq.size());
  for (size_t j = 0; j < lam.size(); ++j) lam[j] = t.inv_freq_orig[j] / t.inv_freq[j];
  f.sets.emplace_back(std::move(lam), 0, t.attn_factor);
  f.attn_factor = t.attn_factor;
  f.longrope_attn = LongropeAttn::kConstant;
  return f;
}

namespace {

// Refuses flags out of range, a missing text or output, an unknown output type or compute mode.
void check_flags(const FinetuneConfig& c) {
  if (c.ctx < 2) throw Error(fmt::format("finetune: -c {} (expected at least 2 tokens)", c.ctx));
  if (c.steps < 1) throw Error(fmt::format("finetune: --steps {} (expected >= 1)", c.steps));
  if (c.batch < 1) throw Error(fmt::format("finetune: --batch {} (expected >= 1)", c.batch));
  if (!(c.lr > 0) || !std::isfinite(c.lr))
    throw Error(fmt::format("finetune: --lr {} (expected a positive number)", c.lr));
  if (!(c.short_share >= 0 && c.short_share < 1))
    throw Error(
        fmt::format("finetune: --short-share {} (expected a share in [0, 1))", c.short_share));
  if (c.texts.empty()) throw Error("finetune: no training text (expected -f TEXT[,TEXT...])");
  if (c.output.empty() && c.hf_dir.empty())
    throw Error("finetune: no output (expected -o OUT.gguf, --hf-dir DIR or both)");
  output_type(c.out_type);
  kernels::require_compute(c.compute);
}

// The files a run writes besides its outputs: the state, log and plot are named after the GGUF
// output, else after the HF folder (base: the name without the suffix).
struct RunPaths {
  std::string base, state, log;
};
RunPaths run_paths(const FinetuneConfig& c) {
  const std::string base = !c.output.empty() ? c.output : trim_trailing_slashes(c.hf_dir);
  return {base, c.state_path.empty() ? base + ".train" : c.state_path, base + ".log.json"};
}

// Refuses outputs that would replace an input or an earlier run's state, or cannot be written.
void check_outputs(const FinetuneConfig& c, const RunPaths& paths) {
  std::vector<std::string> inputs = c.texts;
  inputs.push_back(c.model_path);
  inputs.insert(inputs.end(), c.other_inputs.begin(), c.other_inputs.end());
  for (const std::string& path : {c.output, paths.state, paths.log, paths.base + ".loss.svg",
                                  paths.base + ".loss.png", c.hf_dir})
    refuse_output_over_inputs("finetune", path, inputs);
  refuse_existing_state("finetune", paths.state, c.resume, c.overwrite);
  if (!c.output.empty()) check_writable(c.output);
  check_writable(paths.state);
  check_writable(paths.log);
  if (!c.hf_dir.empty()) {
    std::error_code ec;
    if (std::filesystem::exists(c.hf_dir, ec) && !std::filesystem::is_directory(c.hf_dir, ec))
      throw Error(fmt::format("finetune: --hf-dir {} exists and is not a folder", c.hf_dir));
  }
}

// Refuses a -o output for a model that is not GGUF, and a scaling the model or -c cannot take.
void check_model(const Model& model, const FinetuneConfig& c) {
  const ModelFile& mf = model.file();
  if (!mf.gguf && !c.output.empty())
    throw Error(fmt::format(
        "finetune: {} is a {} model; the -o output is a copy of a GGUF model with new weights "
        "(expected a GGUF file, or --hf-dir DIR to write an HF model folder)",
        c.model_path, mf.format));
  c.rope.validate(model.hp().n_rot);
  if (c.rope.method == RopeMethod::kLongrope && c.rope.n_hat >= c.ctx)
    throw Error(
        fmt::format("finetune: n_hat {} must be smaller than the context {}", c.rope.n_hat, c.ctx));
}

// The settings the flags leave to defaults: the short sequences' length and the learning-rate
// schedule's floor and warm-up steps.
struct Derived {
  int64_t short_ctx;
  double min_lr;
  int64_t warmup;
};
Derived derive(const FinetuneConfig& c, const HParams& hp) {
  const int64_t orig_ctx = c.rope.orig_ctx > 0 ? c.rope.orig_ctx : hp.n_ctx_train;
  const int64_t short_ctx = c.short_ctx > 0 ? c.short_ctx : orig_ctx;
  if (c.short_share > 0 && (short_ctx < 2 || short_ctx > c.ctx))
    throw Error(fmt::format("finetune: --short-ctx {} (expected 2..{})", short_ctx, c.ctx));
  return {short_ctx, c.min_lr.value_or(c.lr / 10), c.warmup >= 0 ? c.warmup : c.steps / 10};
}

// The training data: one token stream; a sequence is BOS + len - 1 consecutive tokens.
struct TrainingData {
  std::vector<int32_t> stream;
  int32_t bos;
};
TrainingData read_training_data(const Model& model, const FinetuneConfig& c) {
  std::vector<int32_t> stream;
  for (const std::string& path : c.texts) {
    const std::vector<int32_t> t =
        model.tokenizer().encode(normalize_newlines(read_text_file(path)));
    stream.insert(stream.end(), t.begin(), t.end());
  }
  const int32_t bos = model.tokenizer().bos();
  if (bos < 0)
    throw Error(
        "finetune: the model's vocabulary has no BOS token (needed to start each sequence)");
  if (int64_t(stream.size()) < c.ctx)
    throw Error(fmt::format(
        "finetune: the training texts hold {} tokens, fewer than one sequence of {} (expected "
        "longer or more texts)",
        stream.size(), c.ctx));
  return {std::move(stream), bos};
}

// The rotary tables of long and short sequences.
struct Tables {
  RopeTables lng, shrt;
};
// The scaling at ctx; short sequences use the scaling's short set when it has one that serves
// short_ctx, else the model's own RoPE.
Tables rope_tables(const Model& model, const FinetuneConfig& c, int64_t short_ctx) {
  const HParams& hp = model.hp();
  RopeTables long_tables = c.rope.tables(c.ctx, hp.n_rot, hp.rope_base, hp.n_ctx_train);
  const bool has_short_set = c.rope.method == RopeMethod::kLongrope && c.rope.sets.size() > 1 &&
                             short_ctx <= c.rope.sets.front().max_len;
  RopeTables short_tables =
      has_short_set
          ? c.rope.tables(short_ctx, hp.n_rot, hp.rope_base, hp.n_ctx_train)
          : model.default_rope().tables(short_ctx, hp.n_rot, hp.rope_base, hp.n_ctx_train);
  return {std::move(long_tables), std::move(short_tables)};
}

// The state to start from: the saved one when resuming (its losses go to r, which describe the
// whole run), else the model's weights with zero moments.
State start_state(const Model& model, const FinetuneConfig& c, const train::ParamLayout& P,
                  const nlohmann::json& settings, const std::string& state_path,
                  FinetuneResult& r) {
  State s;
  if (c.resume) {
    s = load_state(state_path, settings, P.total, legacy_model_fingerprint(model));
    r.resumed_from = s.step;
    if (!s.history.empty()) {  // the losses describe the whole run, earlier segments included
      r.first_loss = s.history.front().value("loss", 0.0);
      r.last_loss = s.history.back().value("loss", 0.0);
    }
  } else {
    s.params = train::load_params<float>(model, P);
    s.m.assign(P.total, 0.0f);
    s.v.assign(P.total, 0.0f);
  }
  return s;
}

// A step's entry in the state's and the log's history.
nlohmann::json history_entry(const FinetuneStep& st, int64_t batch) {
  return {{"step", st.step},
          {"loss", st.loss},
          {"lr", st.lr},
          {"grad_norm", st.grad_norm},
          {"tokens", st.tokens},
          {"short_seqs", st.short_seqs},
          {"long_seqs", batch - st.short_seqs},
          {"seconds", st.seconds},
          {"elapsed", st.elapsed}};
}

// A step's summed NLL over its batch, the tokens it predicted and its short sequences.
struct BatchLoss {
  double nll = 0;
  int64_t predicted = 0, n_short = 0;
};

// The training loop: its fixed inputs and the buffers its steps reuse.
class Trainer {
 public:
  Trainer(const FinetuneConfig& c, const train::ParamLayout& P, const TrainingData& data,
          const Tables& tables, const Derived& d, const nlohmann::json& settings,
          const std::string& state_path)
      : c_(c),
        P_(P),
        data_(data),
        tables_(tables),
        d_(d),
        settings_(settings),
        state_path_(state_path),
        grad_(P.total, 0.0f),
        lo_{c.checkpoint_activations, c.compute, backend_or_cpu(c.backend, c.compute)} {}

  // Trains s from its step to c.steps, saving the state when due, at the end and when stopped;
  // fills r's step count, times and workspace size.
  void train(State& s, FinetuneResult& r, const std::function<void(const FinetuneStep&)>& on_step);

 private:
  // Step `step`'s batch: its gradient into grad_, scaled so that it is that of the mean NLL per
  // token.
  BatchLoss batch_gradient(const State& s, int64_t step);

  const FinetuneConfig& c_;
  const train::ParamLayout& P_;
  const TrainingData& data_;
  const Tables& tables_;
  const Derived& d_;
  const nlohmann::json& settings_;
  const std::string& state_path_;
  std::vector<float> grad_;
  train::TrainWorkspace<float> ws_;
  const train::LossOptions lo_;
  std::vector<int32_t> seq_;
};

BatchLoss Trainer::batch_gradient(const State& s, int64_t step) {
  std::fill(grad_.begin(), grad_.end(), 0.0f);
  // Every sequence's gradient is scaled by 1 / (all predicted tokens of the step): the step's
  // gradient is that of the mean NLL per token.
  std::vector<Draw> draws;
  BatchLoss b;
  for (int64_t k = 0; k < c_.batch; ++k) {
    draws.push_back(draw(c_.seed, step, k, c_.short_share));
    const int64_t len = draws.back().is_short ? d_.short_ctx : c_.ctx;
    b.predicted += len - 1;
    b.n_short += draws.back().is_short;
  }
  const std::vector<int32_t>& stream = data_.stream;
  for (int64_t k = 0; k < c_.batch; ++k) {
    const int64_t len = draws[size_t(k)].is_short ? d_.short_ctx : c_.ctx;
    const uint64_t span = uint64_t(int64_t(stream.size()) - (len - 1)) + 1;
    const int64_t start = int64_t(draws[size_t(k)].start_u % span);
    seq_.assign(1, data_.bos);
    seq_.insert(seq_.end(), stream.begin() + start, stream.begin() + start + (len - 1));
    b.nll += train::loss_and_grad<float>(P_, s.params.data(), seq_.data(), len,
                                         draws[size_t(k)].is_short ? tables_.shrt : tables_.lng,
                                         grad_.data(), 1.0f / float(b.predicted), ws_, lo_);
  }
  return b;
}

void Trainer::train(State& s, FinetuneResult& r,
                    const std::function<void(const FinetuneStep&)>& on_step) {
  const double t_start = omp_get_wtime();
  double last_save = t_start;
  const double elapsed_before = s.history.empty() ? 0.0 : s.history.back().value("elapsed", 0.0);
  int64_t tokens_done = 0;
  auto save = [&] { save_state(state_path_, settings_, s); };
  while (s.step < c_.steps) {
    if (stop_requested()) {
      save();
      throw Interrupted(fmt::format(
          "interrupted after step {} of {}; the training state is in {} (resume with --resume)",
          s.step, c_.steps, state_path_));
    }
    const int64_t step = s.step + 1;
    const double t0 = omp_get_wtime();
    const BatchLoss b = batch_gradient(s, step);
    const double loss = b.nll / double(b.predicted);
    if (!std::isfinite(loss))
      throw Error(fmt::format(
          "finetune: the loss is {} at step {} (expected a finite number; try a lower --lr); the "
          "last saved state is in {}",
          loss, step, state_path_));
    const double gnorm = train::clip_grad_norm(grad_.data(), grad_.size(), c_.clip);
    const double lr = train::schedule_lr(c_.lr, d_.min_lr, d_.warmup, c_.steps, c_.decay, step);
    train::adamw_update(P_, c_.adam, lr, step, s.params.data(), grad_.data(), s.m.data(),
                        s.v.data());
    s.step = step;
    const double t1 = omp_get_wtime();
    tokens_done += b.predicted;
    FinetuneStep st{step,      c_.steps, loss,
                    lr,        gnorm,    b.predicted,
                    b.n_short, t1 - t0,  elapsed_before + (t1 - t_start)};
    s.history.push_back(history_entry(st, c_.batch));
    if (r.first_loss == 0) r.first_loss = loss;
    r.last_loss = loss;
    if (on_step) on_step(st);
    const bool due = c_.save_every > 0 ? step % c_.save_every == 0 : t1 - last_save > 600.0;
    if (due || step == c_.steps) {
      save();
      last_save = omp_get_wtime();
    }
  }
  r.steps_done = s.step;
  r.seconds = omp_get_wtime() - t_start;
  r.tokens_per_second = r.seconds > 0 ? double(tokens_done) / r.seconds : 0;
  r.workspace_bytes = ws_.bytes();
}

// Writes the outputs: the trained model (-o and/or --hf-dir), the log and the loss plot.
void write_outputs(const Model& model, const FinetuneConfig& c, const train::ParamLayout& P,
                   const State& s, const nlohmann::json& settings, const RunPaths& paths,
                   FinetuneResult& r) {
  const ModelFile& mf = model.file();
  const HParams& hp = model.hp();
  const RopeScaling trained =
      c.rope.method == RopeMethod::kNone ? c.rope : as_factor_scaling(c.rope, hp, c.ctx);
  if (!c.output.empty()) write_output_gguf(mf, P, s.params.data(), trained, c.out_type, c.output);
  if (!c.hf_dir.empty()) write_output_hf(mf, P, s.params.data(), trained, c.out_type, c.hf_dir);
  nlohmann::json log = {{"model", path_name(c.model_path)},
                        {"texts", c.texts},
                        {"rope_label", c.rope_label},
                        {"settings", settings},
                        {"output", c.output},
                        {"hf_dir", c.hf_dir},
                        {"out_type", c.out_type},
                        {"steps", s.history}};
  write_file_atomically(paths.log, log.dump(1) + "\n");
  r.log_path = paths.log;
  write_loss_plot(s.history,
                  fmt::format("fine-tuning {} at {} tokens ({})", path_name(c.model_path), c.ctx,
                              c.rope_label.empty() ? c.rope.describe() : c.rope_label),
                  paths.base + ".loss", r);
}

}  // namespace

FinetuneResult run_finetune(const Model& model, const FinetuneConfig& c,
                            const std::function<void(const FinetuneStep&)>& on_step) {
  // ---- settings, before any work
  check_flags(c);
  const RunPaths paths = run_paths(c);
  check_outputs(c, paths);
  if (c.n_threads > 0) omp_set_num_threads(c.n_threads);
  check_model(model, c);
  const train::ParamLayout P = train::param_layout(model);
  const Derived d = derive(c, model.hp());

  // ---- data
  const TrainingData data = read_training_data(model, c);
  const std::string data_fp = tokens_fingerprint({data.stream});
  const nlohmann::json settings = settings_json(c, model, data_fp, d.min_lr, d.warmup, d.short_ctx);
  const Tables tables = rope_tables(model, c, d.short_ctx);

  // ---- state and training
  FinetuneResult r;
  State s = start_state(model, c, P, settings, paths.state, r);
  Trainer trainer(c, P, data, tables, d, settings, paths.state);
  r.state_bytes = 4 * sizeof(float) * P.total;
  trainer.train(s, r, on_step);

  // ---- outputs
  write_outputs(model, c, P, s, settings, paths, r);
  return r;
}

}  // namespace longrope
