#!/usr/bin/env python3
"""Perplexity of a model by context length and RoPE method, as a Markdown table.

Usage: bench/rope_methods_table.py BIN MODEL TEXT [--lengths 512,1024,2048,4096] [--docs 4]
         [--methods none,linear,ntk,dynamic,yarn] [--orig 512]
Rule-based methods use s = length / orig (s = 1 at or below orig). Runs `BIN perplexity --json`.
"""
import argparse, json, subprocess, sys, time, platform

ap = argparse.ArgumentParser()
ap.add_argument("bin"); ap.add_argument("model"); ap.add_argument("text")
ap.add_argument("--lengths", default="512,1024,2048,4096")
ap.add_argument("--methods", default="none,linear,ntk,dynamic,yarn")
ap.add_argument("--docs", type=int, default=4)
ap.add_argument("--orig", type=int, default=512)
a = ap.parse_args()
lengths = [int(x) for x in a.lengths.split(",")]
methods = a.methods.split(",")
res = {}
t0 = time.time()
for m in methods:
    for L in lengths:
        cmd = [a.bin, "perplexity", "-m", a.model, "-f", a.text, "-c", str(L), "--docs", str(a.docs), "--json", "--no-progress"]
        if m != "none":
            s = max(1.0, L / a.orig)
            cmd += ["--rope", m, "--rope-factor", str(s), "--orig-ctx", str(a.orig)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
        res[(m, L)] = json.loads(out.stdout.strip().splitlines()[-1])["ppl"]
        print(f"{m:8s} {L:6d} {res[(m, L)]:.3f}", file=sys.stderr)
print(f"| method | " + " | ".join(str(L) for L in lengths) + " |")
print("|---|" + "---:|" * len(lengths))
for m in methods:
    print(f"| {m} | " + " | ".join(f"{res[(m, L)]:.2f}" for L in lengths) + " |")
print(f"\n{a.docs} windows per length; s = length/{a.orig}; {time.time() - t0:.0f} s on {platform.node()}", file=sys.stderr)
