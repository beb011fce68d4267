#!/usr/bin/env python3
"""Checks that the library's stages include each other in one direction only (docs/design.md,
"Stages").

Every file in src/ belongs to the stage named by its folder (src/engine/kernels/ is engine); a
public header in include/longrope/ belongs to the stage whose folder implements it (HEADERS
below). A file may include its own stage and the stages on lower levels. Printed, one line each,
and exit status 1: an include of a stage on a higher level (up) or on the same level (sideways),
two stages that include each other, an include that names no file, and a file or header that has
no stage here (add it to the tables).

Usage: scripts/check_includes.py [REPOSITORY_ROOT]   (default: the folder above scripts/)
"""

import re
import sys
from pathlib import Path

# Lowest first. A stage may include the stages of lower levels, never those of its own level or
# of a higher one.
LEVELS = [
    ["util"],  # errors, atomic files, the stop-on-signal flag, JSON field helpers
    ["tokenizer", "rope", "distributed"],  # vocabularies; RoPE math and files; MPI task farm
    ["io"],  # model files: weights, their vocabulary (tokenizer) and RoPE scaling (rope)
    ["engine", "export"],  # the forward pass; writing GGUF files and HF model folders
    ["eval"],  # perplexity, sweeps, passkey, RULER, plots
    ["search", "train"],  # the factor search; fine-tuning
    ["cli"],
]

# Public headers -> the stage that implements them (a header of declarations only: its users).
HEADERS = {
    "error.h": "util",
    "atomic_file.h": "util",
    "interrupt.h": "util",
    "progress.h": "util",
    "vocab.h": "tokenizer",
    "tokenizer.h": "tokenizer",
    "hf_tokenizer.h": "tokenizer",
    "rope.h": "rope",
    "dist.h": "distributed",
    "quant.h": "io",
    "model_file.h": "io",
    "gguf.h": "io",
    "llama2c.h": "io",
    "safetensors.h": "io",
    "hf.h": "io",
    "kernels.h": "engine",
    "backend.h": "engine",
    "model.h": "engine",
    "context.h": "engine",
    "fingerprint.h": "engine",
    "sampling.h": "engine",
    "export.h": "export",
    "perplexity.h": "eval",
    "eval.h": "eval",
    "needle.h": "eval",
    "passkey.h": "eval",
    "plot.h": "eval",
    "ruler.h": "eval",
    "search.h": "search",
    "search_run.h": "search",
    "train.h": "train",
    "train_ops.h": "engine",
    "finetune.h": "train",
}

LEVEL = {stage: i for i, stages in enumerate(LEVELS) for stage in stages}
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def stage_of(root, path):
    """The stage of a file (a Path under root), or None when it has none."""
    rel = path.relative_to(root)
    if rel.parts[0] == "src" and len(rel.parts) > 2:
        return rel.parts[1] if rel.parts[1] in LEVEL else None
    if rel.parts[:2] == ("include", "longrope") and len(rel.parts) == 3:
        return HEADERS.get(rel.parts[2])
    return None


def resolve(root, including, name):
    """The file an #include "name" in `including` names: longrope/... in include/, else beside
    the including file, else under src/. None when there is none."""
    bases = [root / "include"] if name.startswith("longrope/") else [including.parent, root / "src"]
    for base in bases:
        candidate = base / name
        if candidate.is_file():
            return candidate.resolve()
    return None


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    root = root.resolve()
    files = sorted(
        p.resolve()
        for p in list((root / "src").rglob("*")) + list((root / "include" / "longrope").glob("*"))
        if p.is_file() and p.suffix in (".h", ".hpp", ".cpp", ".cc")
    )
    problems = []
    edges = {}  # (from stage, to stage) -> first "file:line" where it happens
    for path in files:
        rel = path.relative_to(root)
        stage = stage_of(root, path)
        if stage is None:
            problems.append(f"{rel}: no stage (add its folder to LEVELS or the header to HEADERS)")
            continue
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            m = INCLUDE_RE.match(line)
            if not m:
                continue
            where = f"{rel}:{number}"
            target = resolve(root, path, m.group(1))
            if target is None:
                problems.append(f'{where}: #include "{m.group(1)}" names no file in the tree')
                continue
            to = stage_of(root, target)
            if to is None:
                if target.is_relative_to(root / "src") or target.is_relative_to(root / "include"):
                    problems.append(f'{where}: #include "{m.group(1)}": that file has no stage')
                continue
            if to == stage:
                continue
            edges.setdefault((stage, to), where)
            if LEVEL[to] > LEVEL[stage]:
                problems.append(f'{where}: {stage} includes "{m.group(1)}" of {to}, a higher stage')
            elif LEVEL[to] == LEVEL[stage]:
                problems.append(
                    f'{where}: {stage} includes "{m.group(1)}" of {to}, a stage on the same level'
                )
    for (a, b), where in sorted(edges.items()):
        if a < b and (b, a) in edges:
            problems.append(f"{a} and {b} include each other ({where}; {edges[(b, a)]})")
    for p in problems:
        print(p)
    if problems:
        print(f"check_includes: {len(problems)} problem(s); the order is in docs/design.md, Stages")
        return 1
    order = " -> ".join(" | ".join(stages) for stages in LEVELS)
    print(f"check_includes: {len(files)} files, every include points down: {order}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
