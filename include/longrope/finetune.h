// Fine-tuning at an extended length (progressive extension, docs/finetune.md): full training of a
// Llama-architecture model with a given RoPE scaling, AdamW on FP32 master weights, a resumable
// training state, a JSON log with a loss-curve plot, and a GGUF of the result. The CLI's
// `finetune` is a thin layer over run_finetune.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "longrope/model.h"
#include "longrope/rope.h"
#include "longrope/train.h"

namespace longrope {

struct FinetuneConfig {
  std::string model_path;          // the model's file (provenance)
  std::vector<std::string> texts;  // UTF-8 training texts, one token stream
  RopeScaling rope;                // the scaling trained with (any method; LongRoPE factors too)
  std::string rope_label;          // for the log ("yarn", "factors.json")
  int64_t ctx = 0;                 // L: tokens per sequence (BOS + L - 1 text tokens)
  int64_t steps = 100;             // optimizer steps
  int64_t batch = 1;               // sequences per step (gradient accumulation)
  double lr = 2e-5;
  std::optional<double> min_lr;  // default lr / 10
  int64_t warmup = -1;           // steps; -1: steps / 10
  train::Decay decay = train::Decay::kCosine;
  train::AdamW adam;
  double clip = 1.0;  // global gradient norm; 0 = off
  uint64_t seed = 1;
  // Mixed context-window training (LongRoPE2): this share of the sequences has short_ctx tokens
  // and the rotary tables of that length: the scaling's short set when it has one serving
  // short_ctx, else the model's own RoPE.
  double short_share = 0.0;
  int64_t short_ctx = 0;  // default: the original context (the scaling's or the model's)
  bool checkpoint_activations = true;
  // Arithmetic of the linear layers and the LM head (train::LossOptions::compute).
  kernels::Compute compute = kernels::Compute::kF32;
  // The backend every training step runs on; null: the CPU backend with `compute`.
  std::shared_ptr<const Backend> backend;
  std::string output;            // the GGUF written at the end
  std::string hf_dir;            // an HF model folder written at the end (any input format)
  std::string out_type = "f32";  // f32, f16 or bf16
  std::string state_path;        // default OUTPUT.train: the training state
  int64_t save_every = 0;        // steps between state saves; 0: every 10 minutes and at the end
  bool resume = false;
  // Without resume, an existing training state is refused unless overwrite is set
  // (OutputRefused); outputs that are inputs (the model, texts, other_inputs) always are.
  bool overwrite = false;
  std::vector<std::string> other_inputs;  // further files read: a factors file, a tokenizer
  int n_threads = 0;
};

struct FinetuneStep {
  int64_t step = 0;  // 1-based
  int64_t steps = 0;
  double loss = 0;  // mean NLL per predicted token of this step's sequences
  double lr = 0;
  double grad_norm = 0;    // before clipping
  int64_t tokens = 0;      // predicted tokens this step
  int64_t short_seqs = 0;  // sequences at short_ctx in this step
  double seconds = 0;      // this step
  double elapsed = 0;      // since the run (or its first segment) began
};

struct FinetuneResult {
  int64_t steps_done = 0;
  int64_t resumed_from = 0;              // the step a resumed run started from (0: fresh)
  double first_loss = 0, last_loss = 0;  // the run's first and last steps (resumed ones too)
  double seconds = 0;                    // this process's training time
  double tokens_per_second = 0;
  size_t workspace_bytes = 0;  // activations and scratch at the largest sequence
  size_t state_bytes = 0;      // weights, gradient and moments
  std::string log_path, plot_svg, plot_png;
};

// Runs the fine-tuning; on_step is called after every optimizer step (progress). Saves the
// training state every save_every steps (or 10 minutes), on Ctrl-C (then throws Interrupted) and
// at the end; writes OUTPUT (GGUF) and/or the HF folder hf_dir, and BASE.log.json and the loss
// plot BASE.loss.svg/.png, BASE being OUTPUT, else hf_dir.
// Throws Error (one line) on bad settings or inputs, before any training.
// model: any format for hf_dir; OUTPUT (a copy of the model's file with new weights) needs a GGUF.
FinetuneResult run_finetune(const Model& model, const FinetuneConfig& cfg,
                            const std::function<void(const FinetuneStep&)>& on_step = {});

// The scaling as LongRoPE factors at length ctx (one set: the model's frequencies over the
// scaled ones, with the scaling's attention factor and n_hat; LongRoPE scalings as they are), so
// that any method can be written into a GGUF as export_gguf writes factors.
RopeScaling as_factor_scaling(const RopeScaling& rope, const HParams& hp, int64_t ctx);

}  // namespace longrope
