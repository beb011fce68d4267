#!/usr/bin/env python3
"""Perplexity throughput, per-phase GFLOP/s and peak RSS by context length and compute path (one
process per run, since peak RSS only grows). Prints a Markdown table.

Usage: bench/run_perplexity_bench.py BUILD_DIR MODEL TEXT [--lengths 512,2048,8192] [--threads 2]
       [--compute f32,bf16] [--peak-gflops 166.4]
Percentages are against the FP32 peak for f32 runs and twice it for bf16 runs (AVX512_BF16 does
two products per FP32 lane).
"""
import argparse, json, subprocess, sys

ap = argparse.ArgumentParser()
ap.add_argument("build"); ap.add_argument("model"); ap.add_argument("text")
ap.add_argument("--lengths", default="512,2048,8192")
ap.add_argument("--threads", default="2")
ap.add_argument("--compute", default="f32,bf16")
ap.add_argument("--peak-gflops", type=float, default=166.4,
                help="FP32 peak of the machine (Zen 4: 32 FLOP/cycle/core x 2 cores x 2.6 GHz)")
a = ap.parse_args()
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
    pk = a.peak_gflops * (2 if r["compute"] == "bf16" else 1)
    print(f"| {r['compute']} | {r['ctx']} | {r['tokens_per_second']:.0f} | {r['seconds']:.2f} | "
          f"{r['matmul_gflops']:.1f} ({100 * r['matmul_gflops'] / pk:.0f}%) | "
          f"{r['attention_gflops']:.1f} ({100 * r['attention_gflops'] / pk:.0f}%) | "
          f"{r['lm_head_gflops']:.1f} ({100 * r['lm_head_gflops'] / pk:.0f}%) | "
          f"{r['other_seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['ppl']:.3f} |")
