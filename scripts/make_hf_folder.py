#!/usr/bin/env python3
"""Writes a Hugging Face model folder (config.json, safetensors, tokenizer.json,
tokenizer_config.json) equivalent to a Llama GGUF model, for the tests of the HF loader.

Every tensor is dequantized with the `gguf` package (llama.cpp's own Python reader), renamed to
the HF names, and q/k are un-permuted from llama.cpp's interleaved-pair rotary layout back to
HF's rotate_half layout. tokenizer.json is built with the `tokenizers` library. The output is
deterministic: the same arguments give byte-identical files. Each file is written under a
temporary name and renamed; weight files of an earlier run with another --shards are removed.

usage: make_hf_folder.py MODEL.gguf OUTDIR [--dtype f32|f16|bf16] [--shards N]
                         [--arch llama|mistral|qwen2|phi3] [--seed S] [--rope-scaling JSON]
                         [--max-pos N] [--encode TEXTFILE OUT.json]
  --dtype      tensor type in the safetensors files (default f32; bf16 rounds to nearest even)
  --shards N   split the tensors over N files plus model.safetensors.index.json (default 1)
  --arch       qwen2: adds random q/k/v biases (normal, std 0.5, numpy default_rng(--seed));
               phi3: fused qkv_proj and gate_up_proj; mistral/llama: same tensors as the GGUF
  --rope-scaling JSON   config.json "rope_scaling" object, verbatim (default null)
  --max-pos N  config.json max_position_embeddings (default: the GGUF context length); with
               --arch phi3, original_max_position_embeddings is always the GGUF context length
  --encode TEXTFILE OUT.json   also tokenize TEXTFILE (exact bytes, no special tokens added)
               with the built tokenizer and write {"ids": [...]}
"""
import argparse
import json
import os
import re
import struct
import sys

import numpy as np

ARCHS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}
DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}

# GGUF token types (llama.cpp's llama_token_type)
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_BYTE = 1, 2, 3, 4, 6


def die(msg):
    sys.exit("make_hf_folder: " + msg)


# ----------------------------------------------------------------------------------------------
# GGUF reading

def read_gguf(path):
    """Returns (kv, tensors): metadata values (strings decoded, arrays as lists) and every tensor
    dequantized to float32 with numpy shape = reversed GGUF ne (i.e. HF's [out, in])."""
    import gguf

    try:
        r = gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad input file
        die("cannot read %s: %s" % (path, e))
    kv = {}
    for f in r.fields.values():
        if not f.types:
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            if f.types[-1] == gguf.GGUFValueType.STRING:
                # keep raw bytes for arrays of strings (token texts are decoded later, strictly)
                kv[f.name] = [bytes(f.parts[i]) for i in f.data]
            else:
                kv[f.name] = [f.parts[i].tolist()[0] for i in f.data]
        elif f.types[0] == gguf.GGUFValueType.STRING:
            kv[f.name] = bytes(f.parts[f.data[0]]).decode("utf-8")
        else:
            kv[f.name] = f.parts[f.data[0]].tolist()[0]
    tensors = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = [int(d) for d in reversed(t.shape)]
        tensors[t.name] = np.array(a, dtype=np.float32).reshape(shape)
    return kv, tensors


def f32_shortest(x):
    """A float32 value as the shortest decimal that reads back as the same float32
    (GGUF stores 1e-5 as 9.999999747378752e-06; HF configs say 1e-05)."""
    return float(str(np.float32(x)))


# ----------------------------------------------------------------------------------------------
# Rotary layout

def permute_hf_to_gguf(w, n_head):
    """llama.cpp's convert_hf_to_gguf permute: half-split rows -> interleaved pairs per head."""
    out, inp = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, inp).swapaxes(1, 2).reshape(out, inp)


def permute_gguf_to_hf(w, n_head):
    """Inverse of permute_hf_to_gguf: within each head, row 2i (pair element 0) goes to i and
    row 2i+1 (pair element 1) goes to hd/2 + i."""
    out, inp = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def unpermute_checked(w, n_head, name):
    hf = np.ascontiguousarray(permute_gguf_to_hf(w, n_head))
    if not np.array_equal(permute_hf_to_gguf(hf, n_head), w):  # numpy round trip
        die("rotary un-permute round trip failed for " + name)
    return hf


# ----------------------------------------------------------------------------------------------
# Weights

def convert_weights(kv, W, arch, seed):
    """Returns [(hf_name, float32 array)] in HF's usual order (embeddings, layers, norm, head)."""
    g = "llama."
    n_layer = kv[g + "block_count"]
    n_head = kv[g + "attention.head_count"]
    n_kv = kv.get(g + "attention.head_count_kv", n_head)
    rng = np.random.default_rng(seed)

    def take(name):
        if name not in W:
            die("tensor %s missing from the GGUF" % name)
        return W.pop(name)

    out = [("model.embed_tokens.weight", take("token_embd.weight"))]
    for i in range(n_layer):
        b, p = "blk.%d." % i, "model.layers.%d." % i
        q = unpermute_checked(take(b + "attn_q.weight"), n_head, b + "attn_q.weight")
        k = unpermute_checked(take(b + "attn_k.weight"), n_kv, b + "attn_k.weight")
        v = take(b + "attn_v.weight")
        o = take(b + "attn_output.weight")
        gate, up, down = take(b + "ffn_gate.weight"), take(b + "ffn_up.weight"), take(b + "ffn_down.weight")
        out.append((p + "input_layernorm.weight", take(b + "attn_norm.weight")))
        if arch == "phi3":
            out.append((p + "self_attn.qkv_proj.weight", np.concatenate([q, k, v], axis=0)))
        else:
            out += [(p + "self_attn.q_proj.weight", q), (p + "self_attn.k_proj.weight", k),
                    (p + "self_attn.v_proj.weight", v)]
        if arch == "qwen2":
            for nm, m in (("q", q), ("k", k), ("v", v)):
                bias = rng.normal(0.0, 0.5, size=m.shape[0]).astype(np.float32)
                out.append((p + "self_attn.%s_proj.bias" % nm, bias))
        out.append((p + "self_attn.o_proj.weight", o))
        out.append((p + "post_attention_layernorm.weight", take(b + "ffn_norm.weight")))
        if arch == "phi3":
            out.append((p + "mlp.gate_up_proj.weight", np.concatenate([gate, up], axis=0)))
        else:
            out += [(p + "mlp.gate_proj.weight", gate), (p + "mlp.up_proj.weight", up)]
        out.append((p + "mlp.down_proj.weight", down))
    out.append(("model.norm.weight", take("output_norm.weight")))
    if "output.weight" in W:
        out.append(("lm_head.weight", take("output.weight")))
    W.pop("rope_freqs.weight", None)  # llama3-style factors: not part of the HF weights
    if W:
        die("unexpected GGUF tensors: " + ", ".join(sorted(W)[:5]))
    return out


def f32_to_bf16_bits(a):
    """float32 -> bfloat16 bit patterns (uint16), round to nearest, ties to even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():  # keep NaNs NaN (rounding could carry a NaN payload into infinity)
        r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def write_bf16_safetensors(path, tensors):
    """safetensors by hand: u64 LE header length, JSON header (space-padded to 8 bytes), data."""
    header, offset = {}, 0
    blobs = []
    for name in sorted(tensors):
        data = f32_to_bf16_bits(tensors[name]).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for data in blobs:
            f.write(data)


def write_safetensors(path, tensors, dtype):
    """Writes {name: float32 array} as dtype to path via a temporary name."""
    tmp = tmp_name(path)
    if dtype == "bf16":
        write_bf16_safetensors(tmp, tensors)
    else:
        from safetensors.numpy import save_file

        np_type = np.float32 if dtype == "f32" else np.float16
        save_file({n: np.ascontiguousarray(a, dtype=np_type) for n, a in tensors.items()}, tmp,
                  metadata={"format": "pt"})
    os.replace(tmp, path)


def split_shards(named, n):
    """Splits the ordered [(name, array)] into n consecutive non-empty groups of about equal
    byte size."""
    if n > len(named):
        die("--shards %d is more than the %d tensors" % (n, len(named)))
    total = sum(a.size for _, a in named)
    groups, cum = [[]], 0
    for i, (name, a) in enumerate(named):
        left_tensors, left_groups = len(named) - i, n - len(groups)
        if groups[-1] and left_groups > 0 and (cum >= len(groups) * total / n or left_tensors == left_groups):
            groups.append([])
        groups[-1].append((name, a))
        cum += a.size
    assert len(groups) == n
    return groups


def write_weights(outdir, named, dtype, n_shards):
    itemsize = 4 if dtype == "f32" else 2
    stale = re.compile(r"^model(-\d+-of-\d+)?\.safetensors(\.index\.json)?$")
    keep = set()
    if n_shards == 1:
        keep.add("model.safetensors")
        write_safetensors(os.path.join(outdir, "model.safetensors"), dict(named), dtype)
    else:
        weight_map = {}
        for k, group in enumerate(split_shards(named, n_shards)):
            fname = "model-%05d-of-%05d.safetensors" % (k + 1, n_shards)
            keep.add(fname)
            write_safetensors(os.path.join(outdir, fname), dict(group), dtype)
            weight_map.update((name, fname) for name, _ in group)
        index = {"metadata": {"total_size": sum(a.size for _, a in named) * itemsize},
                 "weight_map": dict(sorted(weight_map.items()))}
        keep.add("model.safetensors.index.json")
        write_text(os.path.join(outdir, "model.safetensors.index.json"), json.dumps(index, indent=2) + "\n")
    # weight files of an earlier run with another --shards would confuse a loader
    for fname in sorted(os.listdir(outdir)):
        if stale.match(fname) and fname not in keep:
            os.remove(os.path.join(outdir, fname))


# ----------------------------------------------------------------------------------------------
# Tokenizer

def token_texts(kv):
    try:
        return [t.decode("utf-8") for t in kv["tokenizer.ggml.tokens"]]
    except UnicodeDecodeError as e:
        die("token text is not UTF-8: %s" % e)


def spm_merges(toks, types, scores):
    """BPE merges that make HF's BPE (lowest rank first) reproduce llama.cpp's SentencePiece
    merging (highest-score concatenation first): every split of a normal piece into two normal
    pieces is a merge; ranked by the merged piece's score (highest first), then by part ids."""
    ids = {t: i for i, t in enumerate(toks) if types[i] == TT_NORMAL}
    found = []
    for piece, pid in ids.items():
        for cut in range(1, len(piece)):
            a, b = piece[:cut], piece[cut:]
            if a in ids and b in ids:
                found.append((-scores[pid], ids[a], ids[b], a, b))
    found.sort()
    return [(a, b) for _, _, _, a, b in found]


def build_tokenizer(kv):
    """Returns (tokenizers.Tokenizer, tokenizer_config dict without model_max_length)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tmodel = kv.get("tokenizer.ggml.model")
    if tmodel not in ("gpt2", "llama"):
        die("unsupported tokenizer model %r (want gpt2 or llama)" % tmodel)
    toks = token_texts(kv)
    n = len(toks)
    types = kv.get("tokenizer.ggml.token_type", [TT_NORMAL] * n)
    vocab = {}
    for i, t in enumerate(toks):
        if t in vocab:
            die("duplicate token text %r (ids %d and %d)" % (t, vocab[t], i))
        vocab[t] = i

    def special_id(key):
        i = kv.get("tokenizer.ggml.%s_token_id" % key)
        return i if i is not None and 0 <= i < n else None

    bos, eos, unk = special_id("bos"), special_id("eos"), special_id("unknown")
    add_bos = bool(kv.get("tokenizer.ggml.add_bos_token", tmodel == "llama"))

    if tmodel == "gpt2":
        merges = [tuple(m.decode("utf-8").split(" ")) for m in kv.get("tokenizer.ggml.merges", [])]
        if any(len(m) != 2 for m in merges):
            die("a merge is not two space-separated tokens")
        tk = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        pre = kv.get("tokenizer.ggml.pre", "default")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre == "smollm":
            digits = pre_tokenizers.Digits(individual_digits=True)
            tk.pre_tokenizer = pre_tokenizers.Sequence([digits, byte_level])
        else:
            if pre not in ("gpt2", "default"):
                print("make_hf_folder: warning: pre-tokenizer %r written as plain GPT-2 ByteLevel" % pre,
                      file=sys.stderr)
            tk.pre_tokenizer = byte_level
        tk.decoder = decoders.ByteLevel()
    else:
        scores = kv.get("tokenizer.ggml.scores")
        if scores is None:
            die("SentencePiece vocabulary without tokenizer.ggml.scores")
        unk_text = toks[unk] if unk is not None else "<unk>"
        tk = Tokenizer(models.BPE(vocab=vocab, merges=spm_merges(toks, types, scores),
                                  byte_fallback=True, unk_token=unk_text, fuse_unk=True))
        norms = [normalizers.Replace(" ", "\u2581")]
        if kv.get("tokenizer.ggml.add_space_prefix", True):
            norms.insert(0, normalizers.Prepend("\u2581"))
        tk.normalizer = normalizers.Sequence(norms)
        tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                        decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    if add_bos:
        if bos is None:
            die("add_bos_token without a valid bos_token_id")
        b = toks[bos]
        tk.post_processor = processors.TemplateProcessing(
            single="%s $A" % b, pair="%s $A %s:1 $B:1" % (b, b), special_tokens=[(b, bos)])
    elif tmodel == "gpt2":
        tk.post_processor = processors.ByteLevel(trim_offsets=False)

    # control and unknown tokens become special added tokens, user-defined ones plain added
    # tokens; all are already in the model vocabulary, so they keep their ids
    for i, t in enumerate(toks):
        if types[i] in (TT_CONTROL, TT_UNKNOWN):
            tk.add_special_tokens([AddedToken(t, special=True, normalized=False)])
        elif types[i] == TT_USER_DEFINED:
            tk.add_tokens([AddedToken(t, special=False, normalized=False)])
        else:
            continue
        if tk.token_to_id(t) != i:
            die("added token %r did not keep id %d" % (t, i))

    cfg = {"add_bos_token": add_bos, "add_eos_token": False}
    if bos is not None:
        cfg["bos_token"] = toks[bos]
    if eos is not None:
        cfg["eos_token"] = toks[eos]
    if unk is not None:
        cfg["unk_token"] = toks[unk]
    if "tokenizer.chat_template" in kv:
        cfg["chat_template"] = kv["tokenizer.chat_template"]
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    return tk, cfg


# ----------------------------------------------------------------------------------------------
# Config

def build_config(kv, arch, dtype, max_pos, rope_scaling, tied, n_vocab):
    g = "llama."
    n_embd = kv[g + "embedding_length"]
    n_head = kv[g + "attention.head_count"]
    head_dim = kv.get(g + "attention.key_length", n_embd // n_head)
    ctx = kv[g + "context_length"]
    cfg = {
        "architectures": [ARCHS[arch]],
        "model_type": arch,
        "hidden_size": n_embd,
        "intermediate_size": kv[g + "feed_forward_length"],
        "num_attention_heads": n_head,
        "num_key_value_heads": kv.get(g + "attention.head_count_kv", n_head),
        "num_hidden_layers": kv[g + "block_count"],
        "head_dim": head_dim,
        "rms_norm_eps": f32_shortest(kv[g + "attention.layer_norm_rms_epsilon"]),
        "rope_theta": f32_shortest(kv.get(g + "rope.freq_base", 10000.0)),
        "max_position_embeddings": max_pos if max_pos is not None else ctx,
        "vocab_size": n_vocab,
        "tie_word_embeddings": tied,
        "bos_token_id": kv.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": kv.get("tokenizer.ggml.eos_token_id"),
        "torch_dtype": DTYPES[dtype],
        "hidden_act": "silu",
        "rope_scaling": rope_scaling,
    }
    if arch == "qwen2":
        cfg["use_sliding_window"] = False
    if arch == "mistral":
        cfg["sliding_window"] = None
    if arch == "phi3":
        cfg["original_max_position_embeddings"] = ctx
    return cfg


# ----------------------------------------------------------------------------------------------

def tmp_name(path):
    d, b = os.path.split(path)
    return os.path.join(d, "." + b + ".tmp")


def write_text(path, text):
    tmp = tmp_name(path)
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def parse_args():
    if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
        print(__doc__)
        sys.exit(0)
    # usage line(s) of the docstring, up to the option descriptions
    ap = argparse.ArgumentParser(usage=__doc__.split("usage: ", 1)[1].split("\n  --", 1)[0], add_help=False)
    ap.add_argument("model")
    ap.add_argument("outdir")
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rope-scaling", default=None)
    ap.add_argument("--max-pos", type=int, default=None)
    ap.add_argument("--encode", nargs=2, metavar=("TEXTFILE", "OUT.json"))
    a = ap.parse_args()
    if a.dtype not in DTYPES:
        die("bad --dtype %r (want f32, f16 or bf16)" % a.dtype)
    if a.arch not in ARCHS:
        die("bad --arch %r (want llama, mistral, qwen2 or phi3)" % a.arch)
    if a.shards < 1:
        die("--shards must be at least 1")
    if a.max_pos is not None and a.max_pos < 1:
        die("--max-pos must be positive")
    if a.rope_scaling is not None:
        try:
            a.rope_scaling = json.loads(a.rope_scaling)
        except ValueError as e:
            die("--rope-scaling is not JSON: %s" % e)
        if a.rope_scaling is not None and not isinstance(a.rope_scaling, dict):
            die("--rope-scaling must be a JSON object or null")
    return a


def main():
    a = parse_args()
    kv, W = read_gguf(a.model)
    if kv.get("general.architecture") != "llama":
        die("unsupported GGUF architecture %r (want llama)" % kv.get("general.architecture"))
    g = "llama."
    n_embd, n_head = kv[g + "embedding_length"], kv[g + "attention.head_count"]
    head_dim = kv.get(g + "attention.key_length", n_embd // n_head)
    if head_dim % 2 or kv.get(g + "rope.dimension_count", head_dim) != head_dim:
        die("only full rotary over an even head_dim is supported")

    tied = "output.weight" not in W
    n_vocab = W["token_embd.weight"].shape[0] if "token_embd.weight" in W else 0
    tk, tok_cfg = build_tokenizer(kv)
    named = convert_weights(kv, W, a.arch, a.seed)
    cfg = build_config(kv, a.arch, a.dtype, a.max_pos, a.rope_scaling, tied, n_vocab)
    tok_cfg["model_max_length"] = cfg["max_position_embeddings"]

    try:
        os.makedirs(a.outdir, exist_ok=True)
        write_weights(a.outdir, named, a.dtype, a.shards)
        write_text(os.path.join(a.outdir, "config.json"), json.dumps(cfg, indent=2) + "\n")
        write_text(os.path.join(a.outdir, "tokenizer.json"), tk.to_str(pretty=True) + "\n")
        write_text(os.path.join(a.outdir, "tokenizer_config.json"),
                   json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
        if a.encode:
            text_path, out_path = a.encode
            with open(text_path, encoding="utf-8", newline="") as f:  # exact text: keep \r\n
                text = f.read()
            ids = tk.encode(text, add_special_tokens=False).ids
            write_text(out_path, json.dumps({"ids": ids}) + "\n")
    except (OSError, UnicodeDecodeError) as e:
        die(str(e))


if __name__ == "__main__":
    main()
