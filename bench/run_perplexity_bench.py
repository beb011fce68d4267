#!/usr/bin/env python3
"""Perplexity throughput, per-phase GFLOP/s and peak RSS by context length and compute path (one
process per run, since peak RSS only grows). Prints a Markdown table.

Usage: bench/run_perplexity_bench.py BUILD_DIR MODEL TEXT [--lengths 512,2048,8192] [--threads 2]
       [--compute f32,bf16] [--peak-gflops 166.4|measure]
Percentages are against the FP32 peak for f32 runs and, for bf16 runs, the bf16 peak: with
`--peak-gflops measure` both are measured on this machine by BUILD_DIR/bench/bench_peak (the
widest FMA loop the CPU runs, and its `vdpbf16ps` loop); with a number, the FP32 peak given and
twice it for bf16 (AVX512_BF16 does two products per FP32 lane, at the FMA's rate on a Zen 4).
"""
import argparse, json, subprocess, sys

ap = argparse.ArgumentParser()
ap.add_argument("build"); ap.add_argument("model"); ap.add_argument("text")
ap.add_argument("--lengths", default="512,2048,8192")
ap.add_argument("--threads", default="2")
ap.add_argument("--compute", default="f32,bf16")
ap.add_argument("--peak-gflops", default="166.4",
                help="FP32 peak of the machine (Zen 4: 32 FLOP/cycle/core x 2 cores x 2.6 GHz), "
                     "or 'measure' to run bench_peak")
a = ap.parse_args()


def measured_peaks(build):
    """(FP32, bf16) GFLOP/s from bench_peak: the best FMA loop, and the vdpbf16ps loop (None
    where the CPU lacks it)."""
    out = subprocess.run([f"{build}/bench/bench_peak", "--benchmark_format=json",
                          "--benchmark_repetitions=3", "--benchmark_report_aggregates_only=true"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stderr)
    best = {}
    for b in json.loads(out.stdout)["benchmarks"]:
        if b.get("aggregate_name") == "median" and "FLOPS" in b:
            best[b["run_name"].split("/")[0]] = b["FLOPS"] / 1e9
    fp32 = max(v for k, v in best.items() if k.startswith("BM_peak_fma"))
    return fp32, best.get("BM_peak_dpbf16")


if a.peak_gflops == "measure":
    peak_f32, peak_bf16 = measured_peaks(a.build)
    print(f"measured peak: FP32 {peak_f32:.0f} GFLOP/s, bf16 "
          f"{'-' if peak_bf16 is None else f'{peak_bf16:.0f} GFLOP/s'}", file=sys.stderr)
else:
    peak_f32 = float(a.peak_gflops)
    peak_bf16 = 2 * peak_f32
rows = []
for c in a.compute.split(","):
    for L in a.lengths.split(","):
        out = subprocess.run([f"{a.build}/bench/bench_perplexity", a.model, a.text, L, a.threads, c],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(json.dumps(r), file=sys.stderr)
print("| compute | ctx | tokens/s | seconds | matmul GFLOP/s (% peak) | attention GFLOP/s (% peak) | LM head GFLOP/s (% peak) | other s | peak RSS MB | ppl |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    pk = peak_bf16 if r["compute"] == "bf16" else peak_f32
    print(f"| {r['compute']} | {r['ctx']} | {r['tokens_per_second']:.0f} | {r['seconds']:.2f} | "
          f"{r['matmul_gflops']:.1f} ({100 * r['matmul_gflops'] / pk:.0f}%) | "
          f"{r['attention_gflops']:.1f} ({100 * r['attention_gflops'] / pk:.0f}%) | "
          f"{r['lm_head_gflops']:.1f} ({100 * r['lm_head_gflops'] / pk:.0f}%) | "
          f"{r['other_seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['ppl']:.3f} |")
