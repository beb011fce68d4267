// Compact-weight kernels (Google Benchmark): gemv_w with one activation row (the decode path) on
// SmolLM2-135M shapes, row decoding for the prefill panels, and the matrices of one SmolLM2 token.
// Run: build/release/bench/bench_quant [--benchmark_min_time=0.2]
//   W_bytes: weight bytes streamed per second; FLOPS: 2 * rows * cols per second.
//   BM_gemv_w/T/S/N: type id T, shape S (index into kShapes), N threads.
//   BM_token reads the model named by $LONGROPE_BENCH_MODEL
//   (default models/SmolLM2-135M-Instruct.Q4_1.gguf, relative to the working directory).
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/kernels.h"
#include "longrope/model_file.h"
#include "longrope/quant.h"

namespace {

using longrope::GgmlType;
namespace lk = longrope::kernels;

// rows x cols of SmolLM2-135M: q/o, k/v, gate/up, down, LM head.
constexpr int64_t kShapes[][2] = {{576, 576}, {192, 576}, {1536, 576}, {576, 1536}, {49152, 576}};

struct Matrix {
  std::vector<uint8_t> data;
  lk::WeightView view;
};

void put_half(uint8_t* p, float v) {
  const uint16_t h = longrope::fp32_to_fp16(v);
  std::memcpy(p, &h, 2);
}

// Random quant bytes with finite scales (the speed does not depend on the values).
Matrix random_matrix(GgmlType t, int64_t rows, int64_t cols) {
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<float> u(-0.02f, 0.02f);
  const size_t rb = longrope::ggml_row_size(t, cols);
  Matrix m;
  m.data.resize(rb * static_cast<size_t>(rows));
  if (t == GgmlType::F32) {
    for (size_t i = 0; i < m.data.size(); i += 4) {
      const float v = u(rng);
      std::memcpy(m.data.data() + i, &v, 4);
    }
  } else if (t == GgmlType::F16 || t == GgmlType::BF16) {
    for (size_t i = 0; i < m.data.size(); i += 2) {
      const float v = u(rng);
      const uint16_t h = t == GgmlType::F16 ? longrope::fp32_to_fp16(v) : longrope::fp32_to_bf16(v);
      std::memcpy(m.data.data() + i, &h, 2);
    }
  } else {
    for (auto& b : m.data) b = static_cast<uint8_t>(rng());
    const size_t bsz = longrope::ggml_type_size(t);
    for (size_t off = 0; off < m.data.size(); off += bsz) {
      uint8_t* b = m.data.data() + off;
      switch (t) {
        case GgmlType::Q4_1:
        case GgmlType::Q5_1:
        case GgmlType::Q4_K:
        case GgmlType::Q5_K:
          put_half(b, u(rng));
          put_half(b + 2, u(rng));
          break;
        case GgmlType::Q6_K:
          put_half(b + 208, u(rng));
          break;
        default:
          put_half(b, u(rng));
          break;
      }
    }
  }
  m.view = {t, m.data.data(), rows, cols, rb};
  return m;
}

std::vector<float> random_vec(size_t n) {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Args: type id, shape index, threads.
void BM_gemv_w(benchmark::State& st) {
  const auto type = static_cast<GgmlType>(st.range(0));
  const int64_t rows = kShapes[st.range(1)][0];
  // K-quant rows are whole 256-element super-blocks: 576 columns become 768.
  const int64_t bs = longrope::ggml_block_size(type);
  const int64_t cols = (kShapes[st.range(1)][1] + bs - 1) / bs * bs;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(static_cast<int>(st.range(2)));
  const Matrix m = random_matrix(type, rows, cols);
  const auto x = random_vec(static_cast<size_t>(cols));
  std::vector<float> y(static_cast<size_t>(rows));
  for (auto _ : st) {
    lk::gemv_w(1, x.data(), cols, m.view, y.data(), rows, 0.0f);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  omp_set_num_threads(saved);
  st.SetLabel(longrope::ggml_type_name(static_cast<uint32_t>(type)) + " " + std::to_string(rows) +
              "x" + std::to_string(cols));
  st.counters["W_bytes"] = benchmark::Counter(static_cast<double>(m.data.size()),
                                              benchmark::Counter::kIsIterationInvariantRate);
  st.counters["FLOPS"] =
      benchmark::Counter(2.0 * rows * cols, benchmark::Counter::kIsIterationInvariantRate);
}

void gemv_args(benchmark::internal::Benchmark* b) {
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K,
                     GgmlType::F32}) {
    for (int s = 0; s < 5; ++s) {
      for (int th : {1, 2}) b->Args({static_cast<int64_t>(t), s, th});
    }
  }
}
BENCHMARK(BM_gemv_w)->Apply(gemv_args)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Single-threaded decoding of a 1536x576 matrix (1536x768 for K-quants). Args: type id, 0 = FP32
// rows, 1 = bf16 rows.
void BM_dequant_rows(benchmark::State& st) {
  const auto type = static_cast<GgmlType>(st.range(0));
  const bool bf16 = st.range(1) != 0;
  const int64_t rows = 1536, cols = longrope::ggml_block_size(type) == 256 ? 768 : 576;
  const Matrix m = random_matrix(type, rows, cols);
  std::vector<float> f(static_cast<size_t>(rows * cols));
  std::vector<uint16_t> h(static_cast<size_t>(rows * cols));
  for (auto _ : st) {
    if (bf16) {
      lk::dequant_rows_bf16(m.view, 0, rows, h.data(), cols);
      benchmark::DoNotOptimize(h.data());
    } else {
      lk::dequant_rows_f32(m.view, 0, rows, f.data(), cols);
      benchmark::DoNotOptimize(f.data());
    }
    benchmark::ClobberMemory();
  }
  st.SetLabel(longrope::ggml_type_name(static_cast<uint32_t>(type)) +
              (bf16 ? " -> bf16" : " -> f32"));
  st.SetItemsProcessed(st.iterations() * rows * cols);
  st.counters["W_bytes"] = benchmark::Counter(static_cast<double>(m.data.size()),
                                              benchmark::Counter::kIsIterationInvariantRate);
}

void dequant_args(benchmark::internal::Benchmark* b) {
  for (GgmlType t :
       {GgmlType::F16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
        GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q3_K}) {
    for (int bf16 : {0, 1}) b->Args({static_cast<int64_t>(t), bf16});
  }
}
BENCHMARK(BM_dequant_rows)->Apply(dequant_args)->Unit(benchmark::kMicrosecond);

// One decode token's projections of the real model: per layer q, k, v, o, gate, up, down, then
// the LM head (output.weight, or the tied token_embd.weight). Arg: threads.
void BM_token(benchmark::State& st) {
  const char* env = std::getenv("LONGROPE_BENCH_MODEL");
  const std::string path = env ? env : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) {
    st.SkipWithError(("no model at " + path + " (set LONGROPE_BENCH_MODEL)").c_str());
    return;
  }
  const auto mf = longrope::load_model_file(path);
  std::vector<lk::WeightView> mats;
  auto add = [&](const longrope::TensorRef& t) {
    const int64_t cols = t.ne[0], rows = t.nelements() / cols;
    mats.push_back({t.type, t.data, rows, cols, longrope::ggml_row_size(t.type, cols)});
  };
  for (int l = 0; l < mf.hp.n_layer; ++l) {
    for (const char* n :
         {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}) {
      add(mf.get("blk." + std::to_string(l) + "." + n + ".weight"));
    }
  }
  add(mf.find("output.weight") ? *mf.find("output.weight") : mf.get("token_embd.weight"));
  double bytes = 0.0, flops = 0.0;
  int64_t max_dim = 0;
  for (const auto& w : mats) {
    bytes += static_cast<double>(w.rows) * static_cast<double>(w.row_bytes);
    flops += 2.0 * static_cast<double>(w.rows) * static_cast<double>(w.cols);
    max_dim = std::max({max_dim, w.rows, w.cols});
  }
  const auto x = random_vec(static_cast<size_t>(max_dim));
  std::vector<float> y(static_cast<size_t>(max_dim));
  const int saved = omp_get_max_threads();
  omp_set_num_threads(static_cast<int>(st.range(0)));
  for (auto _ : st) {
    for (const auto& w : mats) lk::gemv_w(1, x.data(), w.cols, w, y.data(), w.rows, 0.0f);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  omp_set_num_threads(saved);
  st.SetLabel(std::to_string(mats.size()) + " matrices, " +
              std::to_string(static_cast<int64_t>(bytes / 1e6)) + " MB");
  st.counters["tokens"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["W_bytes"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["FLOPS"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_token)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
