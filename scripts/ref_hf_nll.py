#!/usr/bin/env python3
"""Independent per-token NLLs for a Hugging Face model folder, for the tests of the HF loader.

A float64 numpy forward pass written from HF transformers' conventions (rotate_half rotary,
[out, in] weights, HF tensor names, config.json fields), independent of this project's code and
of ../shared/tools/ref_llama.py. Reads config.json and model.safetensors or the sharded
model.safetensors.index.json (F32, F16, BF16, F64). Tokenization is the caller's.

Supported: model_type llama, mistral, qwen2 (q/k/v biases), phi3 (fused qkv_proj and
gate_up_proj); partial_rotary_factor; rope_scaling null/default, linear, longrope, llama3.

usage: ref_hf_nll.py DIR IDS.json OUT.json
  IDS.json: [t0, t1, ..., tn] (positions 0..n)
  OUT.json: {"nll": [n values]}, nll[i] = -log p(t(i+1) | t0..ti)
"""
import json
import math
import os
import struct
import sys

import numpy as np

MODEL_TYPES = ("llama", "mistral", "qwen2", "phi3")


def die(msg):
    sys.exit("ref_hf_nll: " + msg)


# ----------------------------------------------------------------------------------------------
# safetensors

def read_safetensors(path):
    """{name: float64 array}. BF16 is widened by hand (numpy has no bfloat16); other types go
    through safetensors.numpy."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    if all(h["dtype"] != "BF16" for h in header.values()):
        from safetensors.numpy import load_file

        return {k: v.astype(np.float64) for k, v in load_file(path).items()}
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    types = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}
    out = {}
    for name, h in header.items():
        b, e = h["data_offsets"]
        chunk = np.asarray(raw[b:e])
        if h["dtype"] == "BF16":
            # bfloat16 is the top half of a float32
            a = (chunk.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif h["dtype"] in types:
            a = chunk.view(types[h["dtype"]])
        else:
            die("%s: unsupported dtype %s" % (name, h["dtype"]))
        out[name] = a.astype(np.float64).reshape(h["shape"])
    return out


def load_weights(d):
    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    W = {}
    for fn in files:
        W.update(read_safetensors(os.path.join(d, fn)))
    return W


# ----------------------------------------------------------------------------------------------
# Rotary

def rope_tables(cfg, rot, n):
    """cos, sin tables [n, rot] for positions 0..n-1 in the rotate_half layout (the rot/2
    frequencies repeated twice), attention factor included."""
    base = float(cfg.get("rope_theta", 10000.0))
    inv = 1.0 / base ** (np.arange(0, rot, 2, dtype=np.float64) / rot)
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    max_pos = cfg["max_position_embeddings"]
    orig = rs.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings"))
    att = 1.0
    if kind == "default":
        pass
    elif kind == "linear":
        inv = inv / rs["factor"]  # same as positions / factor
    elif kind == "longrope":
        if orig is None:
            orig = max_pos
        ext = np.array(rs["long_factor"] if n > orig else rs["short_factor"], dtype=np.float64)
        if ext.shape != inv.shape:
            die("longrope factors have %d values, want %d" % (ext.size, inv.size))
        inv = inv / ext
        att = rs.get("attention_factor")
        if att is None:
            s = max_pos / orig
            att = math.sqrt(1 + math.log(s) / math.log(orig)) if s > 1 else 1.0
    elif kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        scaled = np.where(wl > lo_wl, inv / factor, inv)  # long wavelengths: interpolate
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wl < hi_wl) & ~(wl > lo_wl)
        inv = np.where(medium, smoothed, scaled)
    else:
        die("unsupported rope_scaling type %r" % kind)
    ang = np.arange(n, dtype=np.float64)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], axis=1)
    return np.cos(ang) * att, np.sin(ang) * att


def apply_rotary(x, cos, sin, rot):
    """x: [heads, n, head_dim]; rotates the first rot dims, HF rotate_half convention."""
    xr, xp = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = np.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)
    return np.concatenate([xr * cos + rotated * sin, xp], axis=-1)


# ----------------------------------------------------------------------------------------------
# Forward pass

def forward_nll(cfg, W, ids):
    mt = cfg.get("model_type")
    if mt not in MODEL_TYPES:
        die("unsupported model_type %r" % mt)
    D = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads") or H
    hd = cfg.get("head_dim") or D // H
    F = cfg["intermediate_size"]
    eps = cfg["rms_norm_eps"]
    act = cfg.get("hidden_act", cfg.get("hidden_activation", "silu"))
    if act != "silu":
        die("unsupported hidden_act %r" % act)
    rot = int(hd * cfg.get("partial_rotary_factor", 1.0))
    n = len(ids)
    sw = cfg.get("sliding_window")
    if sw is not None and (mt != "qwen2" or cfg.get("use_sliding_window")) and n > sw:
        die("sequence longer than the sliding window is not supported")

    cos, sin = rope_tables(cfg, rot, n)

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def linear(x, name):
        y = x @ W[name + ".weight"].T
        if name + ".bias" in W:
            y = y + W[name + ".bias"]
        return y

    causal = np.triu(np.full((n, n), -np.inf), 1)
    x = W["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        h = rms(x, W[p + "input_layernorm.weight"])
        if mt == "phi3":
            qkv = linear(h, p + "self_attn.qkv_proj")
            q, k, v = np.split(qkv, [H * hd, H * hd + KV * hd], axis=-1)
        else:
            q = linear(h, p + "self_attn.q_proj")
            k = linear(h, p + "self_attn.k_proj")
            v = linear(h, p + "self_attn.v_proj")
        q = q.reshape(n, H, hd).transpose(1, 0, 2)  # [H, n, hd]
        k = k.reshape(n, KV, hd).transpose(1, 0, 2)
        v = v.reshape(n, KV, hd).transpose(1, 0, 2)
        q, k = apply_rotary(q, cos, sin, rot), apply_rotary(k, cos, sin, rot)
        # GQA: query head j uses key/value head j // (H / KV)
        k, v = np.repeat(k, H // KV, axis=0), np.repeat(v, H // KV, axis=0)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + causal
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(n, H * hd)
        x = x + linear(o, p + "self_attn.o_proj")

        h = rms(x, W[p + "post_attention_layernorm.weight"])
        if mt == "phi3":
            gate, up = np.split(linear(h, p + "mlp.gate_up_proj"), [F], axis=-1)
        else:
            gate, up = linear(h, p + "mlp.gate_proj"), linear(h, p + "mlp.up_proj")
        x = x + linear(gate / (1 + np.exp(-gate)) * up, p + "mlp.down_proj")

    x = rms(x, W["model.norm.weight"])
    head = W.get("lm_head.weight")
    if head is None:
        if not cfg.get("tie_word_embeddings", True):
            die("no lm_head.weight and tie_word_embeddings is false")
        head = W["model.embed_tokens.weight"]
    logits = x[:-1] @ head.T
    logits -= logits.max(axis=-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return -logp[np.arange(n - 1), ids[1:]]


def run(d, ids_path, out_path):
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    with open(ids_path) as f:
        ids = np.array(json.load(f), dtype=np.int64)
    if ids.ndim != 1 or len(ids) < 2:
        die("IDS.json must be a list of at least two token ids")
    W = load_weights(d)
    vocab = W["model.embed_tokens.weight"].shape[0]
    if ids.min() < 0 or ids.max() >= vocab:
        die("token id out of range [0, %d)" % vocab)
    nll = forward_nll(cfg, W, ids)
    with open(out_path, "w") as f:
        json.dump({"nll": nll.tolist()}, f)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    try:
        run(*sys.argv[1:])
    except KeyError as e:  # a tensor or config field the model type needs
        die("missing %s" % e)
    except (OSError, ValueError, TypeError) as e:
        die(str(e))


if __name__ == "__main__":
    main()
