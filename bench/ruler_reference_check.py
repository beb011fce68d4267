#!/usr/bin/env python3
"""Cross-check `longrope ruler`'s prompts against a reference RULER generator, offline.

The reference is lm-eval-harness's port of RULER (lm_eval/tasks/ruler), run from its installed
package, never copied: its task entry points generate samples with a Hugging Face tokenizer that
this script builds from the model's GGUF (vocabulary, merges and pre-tokenizer read from the file),
so both sides size their prompts in the same tokens. `longrope ruler --prepare-only` writes
longrope's prompts for the same tasks and lengths. Both are then measured by the same functions:

  * tokens: the reference tokenizer's count of each longrope prompt (input + answer prefix)
    against longrope's own count (its tokenizer against an independent one);
  * fill: prompt + answer prefix + generation budget, in the reference's tokens, against the
    length (how close each generator packs its prompts);
  * haystack: units in the text (noise blocks, distractor needles, words, list items);
  * template: the instruction and the question with the variable parts (keys, values, numbers,
    variable names) masked, and the answer prefix, compared as strings;
  * answers: how many, of which form, and whether each is derivable from the prompt (present
    once for retrieval; the most frequent words for cwe/fwe; the chain for vt).

The reference needs no network here: NLTK's punkt download is skipped (the essay tasks split
sentences with NLTK only when its data is installed, else with a regular expression), and the
Paul Graham essays (downloaded by the reference) are replaced by the same novels longrope uses,
so the essay tasks compare generators on the same text.

Needs: pip install lm_eval==0.4.13 transformers tokenizers gguf datasets wonderwords nltk scipy
(a virtual environment; no PyTorch). Usage:

  python3 bench/ruler_reference_check.py --longrope build/release/longrope \
      -m models/SmolLM2-135M-Instruct.Q4_1.gguf --lengths 4096,8192 --samples 5 -O out/ruler-ref
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types

TASKS = ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
         "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe"]
BUDGET = {"vt": 30, "cwe": 120, "fwe": 50}
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def hf_tokenizer_from_gguf(path: str):
    """A fast tokenizer with the GGUF's BPE vocabulary, merges and pre-tokenizer (gpt2 family)."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    r = GGUFReader(path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def scalar(key, default=None):
        f = r.fields.get(key)
        if f is None:
            return default
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0].name == "STRING" else v[0]

    if scalar("tokenizer.ggml.model") != "gpt2":
        sys.exit(f"error: {path}: only byte-level BPE (gpt2-family) tokenizers are supported here")
    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    f = r.fields["tokenizer.ggml.token_type"]
    types_ = [int(f.parts[i][0]) for i in f.data]
    pre = scalar("tokenizer.ggml.pre", "default")
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact", "command-r"):  # digits one by one, then GPT-2's
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("default", "gpt2", "gpt-2"):
        tk.pre_tokenizer = byte_level
    else:
        sys.exit(f"error: {path}: pre-tokenizer '{pre}' is not handled by this script")
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types_) if ty == 3])
    return PreTrainedTokenizerFast(tokenizer_object=tk), bool(scalar("tokenizer.ggml.add_bos_token",
                                                                      False))


def import_reference(tokenizer, haystack_words: list[str]):
    """lm_eval's RULER modules, imported without the harness (whose __init__ pulls in the whole
    evaluator), with the tokenizer and the essay haystack supplied and downloads disabled."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        sys.exit("error: lm_eval is not installed (pip install lm_eval==0.4.13 ...; see --help)")
    root = os.path.dirname(spec.origin)
    for name, sub in [("lm_eval", ""), ("lm_eval.tasks", "/tasks"),
                      ("lm_eval.tasks.ruler", "/tasks/ruler")]:
        m = types.ModuleType(name)
        m.__path__ = [root + sub]
        sys.modules[name] = m
    import nltk

    nltk.download = lambda *a, **k: False  # no network: never fetch punkt
    from lm_eval.tasks.ruler import common_utils, cwe_utils, fwe_utils, niah_utils, prepare_niah
    from lm_eval.tasks.ruler import vt_utils

    try:
        nltk.data.find("tokenizers/punkt_tab")
        splitter = "NLTK punkt"
    except LookupError:  # the same rule longrope uses: after . ! ? (and closing quotes), a space
        sent_re = re.compile(r"(?<=[.!?])[\"')\]]*\s+")

        def split(text):
            return [s for s in sent_re.split(text) if s]

        prepare_niah.cached_sent_tokenize = split
        splitter = "regular expression (NLTK's punkt data not installed)"
    real_haystack = prepare_niah.get_haystack

    def get_haystack(type_haystack):
        return list(haystack_words) if type_haystack == "essay" else real_haystack(type_haystack)

    niah_utils.get_haystack = get_haystack
    for mod in (common_utils, niah_utils, vt_utils, cwe_utils, fwe_utils):
        mod.get_tokenizer = lambda *a, **k: tokenizer
    entry = {t: getattr(niah_utils, t) for t in TASKS if t.startswith("niah")}
    entry["vt"] = vt_utils.get_vt_dataset
    entry["cwe"] = cwe_utils.get_cw_dataset
    entry["fwe"] = fwe_utils.fwe_download
    return entry, splitter, getattr(sys.modules.get("lm_eval.tasks.ruler.prepare_niah"),
                                    "__file__", root)


def reference_samples(entry, task: str, length: int, n: int) -> list[dict]:
    import random

    import numpy as np

    random.seed(42)  # the reference draws from the global generators
    np.random.seed(42)
    rows = entry[task](max_seq_lengths=[length], tokenizer="gguf")["test"]
    out = []
    for i in range(min(n, len(rows))):
        r = dict(rows[i])
        out.append({"index": i, "input": r["input"], "outputs": list(r["outputs"]),
                    "answer_prefix": " " + r["gen_prefix"].strip(), "length": r["length"]})
    return out


def ours(outdir: str, task: str, length: int) -> list[dict]:
    path = os.path.join(outdir, "data", str(length), task + ".jsonl")
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    return [{"input": r["input"], "outputs": r["outputs"], "answer_prefix": r["answer_prefix"],
             "length": r["length"], "prompt_tokens": r["others"]["prompt_tokens"]} for r in rows]


# --- measurements, the same function for both sides ------------------------------------------
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def mask(text: str, keys: list[str]) -> str:
    for k in sorted(set(keys), key=len, reverse=True):
        text = text.replace(k, "<K>")
    text = re.sub(UUID, "<U>", text)
    text = re.sub(r"\b[A-Z]{3,5}\b", "<V>", text)
    text = re.sub(r"\d+", "<N>", text)
    return text


def keys_of(task: str, s: dict) -> list[str]:
    """The keys a niah question names (between ' for ' and ' mentioned')."""
    if not task.startswith("niah"):
        return []
    q = s["input"].rstrip().split("\n")[-1]
    m = re.search(r" for (.*) mentioned", q)
    if not m:
        return []
    return [k.strip().removeprefix("and ").strip() for k in m.group(1).split(",")]


def haystack_units(task: str, text: str) -> int:
    if task in ("niah_single_1", "vt"):
        return text.count("The grass is green.")
    if task in ("niah_multikey_2", "niah_multikey_3"):
        return text.count("One of the special magic") - 1
    if task == "cwe":  # items of the last numbered list (the task's, after any example)
        last = text[text.rfind("Memorize the ones that appear most often."):]
        return len(re.findall(r"(?:^|\s)\d+\. ", last))
    if task == "fwe":
        return len(text.split("\n")[0].split()) - 30  # words after the instruction sentence
    return len(text.split())


def form(a: str) -> str:
    for name, rx in [("uuid", UUID), ("7 digits", r"\d{7}"), ("5 digits", r"\d{5}"),
                     ("VAR name", r"[A-Z]{5}"), ("word", r"[a-z]+(?:-[a-z]+)?")]:
        if re.fullmatch(rx, a):
            return name
    return "other"


def derivable(task: str, s: dict) -> bool:
    text, outs = s["input"], s["outputs"]
    if task.startswith("niah"):
        return all(text.count(o) == 1 for o in outs)
    if task == "vt":  # the chain: VAR out[0] = number, then VAR out[i+1] = VAR out[i]
        if not re.search(rf"VAR {outs[0]} = \d+", text):
            return False
        return all(f"VAR {b} = VAR {a}" in text for a, b in zip(outs, outs[1:]))
    if task in ("cwe", "fwe"):
        body = text
        if task == "cwe":
            body = text[text.rfind("Memorize the ones that appear most often."):]
            # A list item is everything up to the next number (the reference's words can hold
            # spaces and hyphens).
            words = re.findall(r"(?:^|\s)\d+\. (.+?)(?=\s\d+\. |\n|$)", body)
        else:
            words = [w for w in body.split() if re.fullmatch(r"[a-z]{6}", w)]
        counts = collections.Counter(words)
        top = [w for w, _ in counts.most_common(len(outs))]
        return sorted(top) == sorted(outs) and min(counts[o] for o in outs) > max(
            [c for w, c in counts.items() if w not in outs] or [0])
    return False


def describe(task: str, rows: list[dict], tok, length: int) -> dict:
    budget = BUDGET.get(task, 128)
    full = [len(tok(r["input"] + r["answer_prefix"]).input_ids) + budget for r in rows]
    # The instruction: the first line up to the haystack (fwe's words follow on the same line).
    head = {mask(r["input"].split("\n")[0].split(" coded words. ")[0][:160], keys_of(task, r))
            for r in rows}
    question = {mask(r["input"].rstrip().split("\n")[-1][-200:], keys_of(task, r)) for r in rows}
    prefix = {mask(r["answer_prefix"], keys_of(task, r)) for r in rows}
    return {
        "samples": len(rows),
        "tokens_min": min(full), "tokens_max": max(full),
        "over": sum(f > length for f in full),
        "units": sorted({haystack_units(task, r["input"]) for r in rows}),
        "head": sorted(head), "question": sorted(question), "prefix": sorted(prefix),
        "answers": sorted({len(r["outputs"]) for r in rows}),
        "forms": sorted({form(a) for r in rows for a in r["outputs"]}),
        "derivable": sum(derivable(task, r) for r in rows),
    }


def score_both(a, lengths, tasks, refs, lr_dir) -> list[str]:
    """Scores the first a.score prompts of both sides with `longrope ruler --data` (the reference's
    written in the layout --prepare-only uses) and tabulates the scores side by side."""
    ref_dir = os.path.join(a.out_dir, "reference")
    for (task, length), rows in refs.items():
        d = os.path.join(ref_dir, "data", str(length))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, task + ".jsonl"), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({"index": r["index"], "input": r["input"],
                                    "outputs": r["outputs"],
                                    "answer_prefix": r["answer_prefix"]}) + "\n")
    scores = {}
    for side, data in (("reference", ref_dir), ("longrope", lr_dir)):
        out = os.path.join(a.out_dir, "scores-" + side)
        subprocess.run([a.longrope, "ruler", "-m", a.model, "--lengths", a.lengths, "--tasks",
                        ",".join(tasks), "--samples", str(a.score), "--methods", "none", "--chat",
                        "--data", data, "--no-progress", "--overwrite", "-O", out], check=True,
                       stdout=subprocess.DEVNULL)
        cells = json.load(open(os.path.join(out, "results.json"), encoding="utf-8"))["cells"]
        for c in cells:
            for task, t in c["tasks"].items():
                scores[(side, task, c["length"])] = t["score"]
    md = ["", f"Scores of SmolLM2 (method none, --chat, greedy) on the first {a.score} prompts of "
          "each side (reference / longrope):", "",
          "| task | " + " | ".join(str(n) for n in lengths) + " |",
          "|---|" + "---|" * len(lengths)]
    for task in tasks:
        md.append(f"| {task} | " + " | ".join(
            f"{scores[('reference', task, n)]:.0f} / {scores[('longrope', task, n)]:.0f}"
            for n in lengths) + " |")
    print("\n".join(md), flush=True)
    return md


def over(d: dict) -> str:
    return f" ({d['over']} over)" if d["over"] else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--longrope", default="build/release/longrope")
    ap.add_argument("-m", "--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--lengths", default="4096,8192")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--haystack", default="../shared/data/moby-dick.txt,"
                    "../shared/data/pride_and_prejudice.txt,../shared/data/ulysses.txt")
    ap.add_argument("--score", type=int, default=0, metavar="N",
                    help="also score the first N prompts of each side with the model "
                         "(longrope ruler --data, method none, --chat) and compare the scores")
    ap.add_argument("-O", "--out-dir", required=True)
    a = ap.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    tasks = a.tasks.split(",")
    os.makedirs(a.out_dir, exist_ok=True)
    tok, add_bos = hf_tokenizer_from_gguf(a.model)
    words = []
    for p in a.haystack.split(","):
        words += re.sub(r"\s+", " ", open(p, encoding="utf-8").read()).split(" ")
    entry, splitter, ref_file = import_reference(tok, words)

    lr_dir = os.path.join(a.out_dir, "longrope")
    cmd = [a.longrope, "ruler", "-m", a.model, "--lengths", a.lengths, "--tasks", ",".join(tasks),
           "--samples", str(a.samples), "--haystack", a.haystack, "--prepare-only", "--overwrite",
           "--no-progress", "-O", lr_dir]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    report = {"model": a.model, "reference": ref_file, "sentence_splitter": splitter,
              "samples": a.samples, "cells": []}
    md = [f"Reference: {ref_file} (lm_eval's RULER port); sentence splitter: {splitter}; "
          f"{a.samples} samples per task and length; tokens counted by the GGUF's tokenizer "
          "rebuilt in Hugging Face tokenizers.", "",
          "| task | length | tokens (ref / longrope) | haystack units (ref / longrope) | template "
          "| answers (ref / longrope) | derivable (ref / longrope) | longrope count = ref count |",
          "|---|---:|---|---|---|---|---|---:|"]
    refs = {}
    for length in lengths:
        for task in tasks:
            t0 = time.time()
            ref = reference_samples(entry, task, length, a.samples)
            refs[(task, length)] = ref
            t_ref = time.time() - t0
            mine = ours(lr_dir, task, length)
            R, L = describe(task, ref, tok, length), describe(task, mine, tok, length)
            agree = sum(len(tok(r["input"] + r["answer_prefix"]).input_ids) + int(add_bos) ==
                        r["prompt_tokens"] for r in mine)
            same = [k for k in ("head", "question", "prefix") if R[k] == L[k]]
            md.append(
                f"| {task} | {length} | {R['tokens_min']}-{R['tokens_max']}{over(R)} / "
                f"{L['tokens_min']}-{L['tokens_max']}{over(L)} | {R['units']} / {L['units']} | "
                f"{'same' if len(same) == 3 else 'differs: ' + ', '.join(k for k in ('head', 'question', 'prefix') if k not in same)} | "
                f"{R['answers']} {','.join(R['forms'])} / {L['answers']} {','.join(L['forms'])} | "
                f"{R['derivable']}/{R['samples']} / {L['derivable']}/{L['samples']} | "
                f"{agree}/{len(mine)} |")
            report["cells"].append({"task": task, "length": length, "reference": R, "longrope": L,
                                    "token_count_agreement": agree,
                                    "reference_seconds": round(t_ref, 1)})
            print(md[-1], flush=True)
    if a.score > 0:
        md += score_both(a, lengths, tasks, refs, lr_dir)
    with open(os.path.join(a.out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(a.out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
