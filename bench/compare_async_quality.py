#!/usr/bin/env python3
"""Result quality of the steady-state search (--async) against the generational one: the README's
stories260K search (512 -> 4096, 192 candidates) with several seeds, both modes over the same MPI
ranks; the searched factors are then scored on a book the search never saw.

Usage: bench/compare_async_quality.py [--build build/release] [--ranks 2] [--seeds 7,8,9]
Prints a Markdown table (for docs/benchmarks.md). Run it on an idle machine.
"""
import argparse
import json
import pathlib
import shutil
import statistics
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "stories260K.gguf"
SEARCH = ("search -m {model} -f {text} -c 4096 --docs 2 --population 32 "
          "--iterations 10 --parents 16 --mutations 8 --crossovers 8 --seed {seed} -t 1 "
          "--no-progress --json -o {out} {extra}")
HELD_OUT = "perplexity -m {model} -f {text} -c 4096 --docs 4 --factors {factors} -t 2 --json"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=str(ROOT / "build" / "release"))
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--seeds", default="7,8,9")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench-async"))
    args = ap.parse_args()
    cli = pathlib.Path(args.build) / "longrope"
    out = pathlib.Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    mpirun = f"mpirun --allow-run-as-root --oversubscribe --bind-to none -np {args.ranks} "
    rows = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for mode, extra in (("generational", ""), ("steady state (--async)", "--async")):
            f = out / f"{'async' if extra else 'gen'}-{seed}.json"
            t0 = time.monotonic()
            r = subprocess.run(mpirun + f"{cli} " + SEARCH.format(
                model=MODEL, text=SHARED / "data" / "pride_and_prejudice.txt", seed=seed, out=f,
                extra=extra), shell=True, check=True, capture_output=True, text=True)
            wall = time.monotonic() - t0
            s = json.loads(r.stdout.strip().splitlines()[-1])
            h = subprocess.run(f"{cli} " + HELD_OUT.format(
                model=MODEL, text=SHARED / "data" / "moby-dick.txt", factors=f), shell=True,
                check=True, capture_output=True, text=True)
            held = json.loads(h.stdout)["ppl"]
            rows.setdefault(mode, []).append((seed, s["best_ppl"], held, wall,
                                              s["full_evals"], s["partial_evals"]))
            print(f"{mode} seed {seed}: search ppl {s['best_ppl']:.4f}, held-out {held:.4f}, "
                  f"{wall:.1f} s, {s['full_evals']}+{s['partial_evals']} evaluations",
                  flush=True)
    print()
    print(f"{args.ranks} MPI ranks x 1 thread.")
    print()
    print("| mode | seed | search fitness (pride_and_prejudice, 2 x 4096) | held-out ppl "
          "(moby-dick, 4 x 4096) | wall time | full + rejected evaluations |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, rs in rows.items():
        for seed, best, held, wall, full, part in rs:
            print(f"| {mode} | {seed} | {best:.4f} | {held:.4f} | {wall:.1f} s | {full} + {part} |")
        print(f"| {mode} | mean | {statistics.mean(r[1] for r in rs):.4f} | "
              f"{statistics.mean(r[2] for r in rs):.4f} | "
              f"{statistics.mean(r[3] for r in rs):.1f} s | |")


if __name__ == "__main__":
    main()
