#!/usr/bin/env python3
"""Independent per-token NLLs for a (quantized) Llama GGUF model, for the tests.

Dequantizes every tensor with the `gguf` package (PyPI, llama.cpp's own Python reader; not this
project's code) and runs the float64 numpy forward pass of ../shared/tools/ref_llama.py on the
given token ids. Tokenization is the caller's (ids in, NLLs out), so only the model is checked.

usage: ref_gguf_nll.py MODEL.gguf IDS.json SCALINGS.json OUT.json REF_TOOLS_DIR
  IDS.json: [bos, t1, ..., tn]; SCALINGS.json: a list of ref_llama scaling dicts
  OUT.json: {"nll": [[n values per scaling], ...]}
"""
import json
import sys

import numpy as np


def load(path):
    import gguf

    r = gguf.GGUFReader(path)
    kv = {}
    for f in r.fields.values():
        if not f.types or f.name.startswith("tokenizer.ggml."):
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.STRING:
            kv[f.name] = bytes(f.parts[f.data[0]])
        elif t != gguf.GGUFValueType.ARRAY:
            kv[f.name] = f.parts[f.data[0]].tolist()[0]
    W = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        W[t.name] = np.asarray(a, dtype=np.float64).reshape([int(d) for d in reversed(t.shape)])
    return kv, W


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    model, ids_path, scalings_path, out_path, tools = sys.argv[1:]
    sys.path.insert(0, tools)
    import ref_llama

    kv, W = load(model)
    ids = np.array(json.load(open(ids_path)), dtype=np.int64)
    nll = [ref_llama.forward_nll(kv, W, ids, s).tolist() for s in json.load(open(scalings_path))]
    with open(out_path, "w") as f:
        json.dump({"nll": nll}, f)


if __name__ == "__main__":
    main()
