#!/usr/bin/env python3
"""The README's stories260K search (512 -> 4096) in one process and spread over MPI ranks:
wall time per layout and whether every layout wrote the same factors file, log and checkpoint.

Usage: bench/run_mpi_search_bench.py [--build build/release] [--out out/bench-mpi]
Prints a Markdown table (for docs/benchmarks.md). Run it on an idle machine: ranks and threads
compete for the same cores.
"""
import argparse
import filecmp
import os
import pathlib
import shutil
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"

SEARCH = ("search -m {model} -f {text} -c 4096 --docs 2 --population 32 "
          "--iterations 10 --parents 16 --mutations 8 --crossovers 8 --seed 7 --no-progress "
          "-o {out}")

MPIRUN = "mpirun --allow-run-as-root --oversubscribe --bind-to none -np {n} "

# (label, ranks (0 = no mpirun), threads per rank, extra flags)
LAYOUTS = [
    ("1 process x 2 threads (no mpirun)", 0, 2, ""),
    ("1 process x 1 thread (no mpirun)", 0, 1, ""),
    ("2 ranks x 1 thread", 2, 1, ""),
    ("3 ranks x 1 thread (oversubscribed)", 3, 1, ""),
    ("3 ranks x 1 thread, rank 0 only hands out work", 3, 1, "--no-root-eval"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=str(ROOT / "build" / "release"))
    ap.add_argument("--out", default=str(ROOT / "out" / "bench-mpi"))
    args = ap.parse_args()
    cli = pathlib.Path(args.build) / "longrope"
    out = pathlib.Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH="0")
    rows = []
    first = None
    for i, (label, ranks, threads, extra) in enumerate(LAYOUTS):
        f = out / f"layout{i}.json"
        cmd = (MPIRUN.format(n=ranks) if ranks else "") + f"{cli} " + SEARCH.format(
            model=SHARED / "models" / "stories260K.gguf",
            text=SHARED / "data" / "pride_and_prejudice.txt", out=f) + f" -t {threads} {extra}"
        t0 = time.monotonic()
        subprocess.run(cmd, shell=True, check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        same = "reference"
        if first is None:
            first = f
        else:
            same = "yes" if all(
                filecmp.cmp(str(first) + ext, str(f) + ext, shallow=False)
                for ext in ("", ".log.json", ".ckpt.json")) else "NO"
        rows.append((label, wall, same))
        print(f"{label}: {wall:.1f} s, identical: {same}", flush=True)
    base = rows[0][1]
    print()
    print("| layout | wall time | speed-up vs 1 x 2 | factors, log, checkpoint identical |")
    print("|---|---:|---:|---|")
    for label, wall, same in rows:
        print(f"| {label} | {wall:.1f} s | {base / wall:.2f}x | {same} |")


if __name__ == "__main__":
    main()
