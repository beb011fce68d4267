#!/usr/bin/env python3
"""Expected efficiency of the distributed search at many ranks, simulated from measured
per-candidate times (docs/distributed.md, "Scaling beyond one machine").

The generational search (the default, reproducible for any number of ranks) evaluates a
generation's children together: the initial population (no early reject: there is no bound
yet), then per iteration `mutations + crossovers` children, each either rejected after its first
stage (time t_stage) or evaluated whole (t_stage + t_full when the stage is a prefix of the only
window, as with --docs 1; t_full when the stage is window 0 of several). Candidates go to the
first free rank in order (dynamic assignment) and the next generation starts when the last
child is done, so a generation with fewer children than ranks, or one long child among short
ones, leaves ranks idle.

The steady-state mode (--async) keeps every rank busy: a new child is bred as soon as any
evaluation finishes; only the end of the budget leaves ranks idle.

Efficiency = candidate-seconds of work / (ranks x wall time). Each candidate's time is drawn
from a normal distribution with the measured mean and spread (coefficient of variation), the
rejected share from a measured search log; 200 simulated searches per cell, mean reported.

Usage: bench/simulate_mpi_scaling.py [--times FILE] [--seed N]
  FILE: lines "REP LENGTH SECONDS" (as bench/data/smollm2_candidate_times_2026-11-30.txt: one
  window of LENGTH tokens scored whole by `longrope perplexity --docs 1 -t 2`); without it the
  numbers of that file are used.
"""
import argparse
import heapq
import random
import statistics

# Measured on 2026-11-30, SmolLM2-135M Q4_1, bf16, 2 threads (docs/benchmarks.md): seconds of
# one window scored whole, three repetitions each.
MEASURED = {8192: [6.80, 6.95, 6.88], 16384: [20.45, 19.45, 19.71], 32768: [65.74, 69.53, 64.13]}


def load(path):
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                out.setdefault(int(parts[1]), []).append(float(parts[2]))
    return out


def draw(rng, mean, cv):
    return max(0.05 * mean, rng.gauss(mean, cv * mean))


def makespan(times, ranks):
    """Greedy list scheduling in order: each candidate to the first free rank."""
    free = [0.0] * ranks
    heapq.heapify(free)
    end = 0.0
    for t in times:
        start = heapq.heappop(free)
        heapq.heappush(free, start + t)
        end = max(end, start + t)
    return end


def generational(rng, ranks, s):
    work = wall = 0.0
    gens = [(s["population"], False)] + [(s["children"], True)] * s["iterations"]
    for n, can_reject in gens:
        times = []
        for _ in range(n):
            if can_reject and rng.random() < s["reject"]:
                times.append(draw(rng, s["t_stage"], s["cv"]))
            else:
                full = s["t_full"] + (s["t_stage"] if can_reject and s["stage_extra"] else 0.0)
                times.append(draw(rng, full, s["cv"]))
        work += sum(times)
        wall += makespan(times, ranks)
    return work / (ranks * wall)


def steady_state(rng, ranks, s):
    # The initial population as a generation (children are bred from it), then a continuous
    # stream of children: the same number of candidates as the generational budget.
    first = [draw(rng, s["t_full"], s["cv"]) for _ in range(s["population"])]
    times = []
    for _ in range(s["children"] * s["iterations"]):
        if rng.random() < s["reject"]:
            times.append(draw(rng, s["t_stage"], s["cv"]))
        else:
            times.append(draw(rng, s["t_full"] + (s["t_stage"] if s["stage_extra"] else 0.0),
                              s["cv"]))
    # The children stream: a rank takes the next child the moment it is free.
    wall = makespan(first, ranks) + makespan(times, ranks)
    return (sum(first) + sum(times)) / (ranks * wall)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--times", help="measured times (REP LENGTH SECONDS per line)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    m = load(args.times) if args.times else MEASURED

    def stats(length):
        v = m[length]
        mean = statistics.mean(v)
        cv = statistics.pstdev(v) / mean if len(v) > 1 else 0.0
        return mean, cv

    cases = []
    for target, label in ((16384, "SmolLM2 at 16k"), (32768, "SmolLM2 at 32k")):
        full, cv_full = stats(target)
        stage, cv_stage = stats(target // 2)
        cv = max(cv_full, cv_stage, 0.02)  # at least 2%: other jobs, thermal state
        # --docs 1: the first stage is the first half of the window, scored again whole when
        # the candidate passes.
        for reject, why in ((0.125, "12.5% rejected (SmolLM2 16k log)"),
                            (0.46, "46% rejected (stories260K log)")):
            cases.append((f"{label}, --docs 1, {why}", dict(
                population=64, children=32, iterations=40, reject=reject, t_stage=stage,
                t_full=full, cv=cv, stage_extra=True)))
        # --docs 4: the first stage is window 0, reused when the candidate passes.
        cases.append((f"{label}, --docs 4, 46% rejected", dict(
            population=64, children=32, iterations=40, reject=0.46, t_stage=full,
            t_full=4 * full, cv=cv, stage_extra=False)))
    rank_counts = (4, 16, 32, 64)
    print("Budget of the paper: population 64, then 40 iterations of 16 mutations + 16 "
          "crossovers (1,344 candidates).")
    print(f"Per-window seconds (mean): "
          + ", ".join(f"{k}: {statistics.mean(v):.1f} s" for k, v in sorted(m.items())))
    print()
    print("| case | mode | " + " | ".join(f"{r} ranks" for r in rank_counts) + " |")
    print("|---|---|" + "---:|" * len(rank_counts))
    for label, s in cases:
        for mode, fn in (("generational", generational), ("steady-state", steady_state)):
            effs = []
            for r in rank_counts:
                rng = random.Random(args.seed)
                effs.append(statistics.mean(fn(rng, r, s) for _ in range(args.reps)))
            print(f"| {label} | {mode} | " + " | ".join(f"{100 * e:.0f}%" for e in effs) + " |")


if __name__ == "__main__":
    main()
