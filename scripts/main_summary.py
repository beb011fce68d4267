#!/usr/bin/env python3
"""The main job's closing summary: what the search found, how it scores on the held-out text
against each rule, and what the exported files are (scripts/main.sh, step 5).

usage: main_summary.py FACTORS.json EVAL_DIR EXPORTED_PPL.json CONFIG.json
"""
import json
import platform
import sys


def cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__.strip().splitlines()[-1])
    factors_path, eval_dir, exported_path, config_path = sys.argv[1:]
    with open(factors_path, encoding="utf-8") as f:
        factors = json.load(f)
    with open(f"{eval_dir}/results.json", encoding="utf-8") as f:
        cells = json.load(f)["cells"]
    with open(exported_path, encoding="utf-8") as f:
        exported = json.load(f)

    prov = factors.get("provenance", {})
    ev = prov.get("evaluations", {})
    print(f"== summary (on {cpu_name()})")
    print(f"search: {ev.get('full', 0)} full + {ev.get('partial', 0)} partial evaluations at "
          f"{factors.get('max_position_embeddings')} tokens; best perplexity "
          f"{prov.get('best_ppl', float('nan')):.4f} on the search text; n_hat "
          f"{factors.get('n_hat')}, attention factor {factors.get('attention_factor')}")
    by_label = {c["label"]: c for c in cells}
    searched = by_label.get("searched")
    length = cells[0]["length"] if cells else 0
    texts = ", ".join(cells[0]["key"].get("texts", [])) if cells else ""
    print(f"held-out perplexity at {length} tokens on {texts}:")
    for label, c in by_label.items():
        line = f"  {label:10s} {c['ppl']:10.4f}"
        if searched is not None and label != "searched":
            line += f"   searched is {100.0 * (searched['ppl'] / c['ppl'] - 1.0):+.1f}% against it"
        print(line)
    if searched is not None:
        diff = 100.0 * (exported["ppl"] / searched["ppl"] - 1.0)
        why = []
        if factors.get("n_hat", 0):
            why.append(f"a GGUF has no start tokens (n_hat {factors['n_hat']} becomes 0)")
        why.append("the file stores the factors in F32")
        print(f"exported GGUF {exported['model']}: perplexity {exported['ppl']:.4f} "
              f"({diff:+.3f}% against the searched set in longrope; {'; '.join(why)})")
    print(f"exported transformers config: {config_path} (rope_scaling type longrope)")


if __name__ == "__main__":
    main()
