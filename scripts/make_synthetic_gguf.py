#!/usr/bin/env python3
"""Write a synthetic Llama-2-7B-shaped GGUF file (random weights, real tokenizer layout).

The file is for benchmarks only (load time, memory, tokens/s at long context): the weights are
random, so the text it scores or generates is noise. It loads in longrope and in llama.cpp.

Usage:
  python3 scripts/make_synthetic_gguf.py OUT.gguf [--type q4_0|q4_k] [--seed N] [--layers N]
                                         [--tiny] [--ctx N]

Defaults give the Llama-2-7B shape: architecture "llama", n_embd 4096, 32 layers, 32 heads
(32 KV heads), n_ff 11008, vocab 32000, context 4096, rope freq_base 10000 with 128 rotary dims,
rms eps 1e-5. About 3.8 GB (q4_0 and q4_k are both 4.5 bits per weight). --tiny gives 2 layers,
n_embd 256, 4 heads, n_ff 512 and the same 32000-token vocabulary (about 13 MB).

Weights:
  * 2-D tensors are quantized: with --type q4_0 all of them are Q4_0 except output.weight (Q6_K),
    as llama.cpp's own Q4_0 quantization does; with --type q4_k they are Q4_K (output.weight Q6_K).
  * Quantized values are random and symmetric about zero; block scales are set so that every
    row has a standard deviation of about 1/sqrt(n_in) (n_in = ne[0], the row length), so each
    projection keeps the activations' scale and attention logits q.k/sqrt(d) have about unit
    variance (neither uniform nor one-hot attention). token_embd rows have std about 1.
  * 1-D norm weights are F32 1.0.
  * Everything is deterministic from --seed: each tensor has its own numpy generator seeded with
    (seed, tensor index), and is generated and written chunk by chunk (the whole model is never
    in memory). The file is written to OUT.part and renamed to OUT at the end.

Tokenizer: a SentencePiece-style ("llama") vocabulary laid out like Llama-2's: <unk> <s> </s>,
the 256 byte tokens <0x00>..<0xFF> (type BYTE), then normal pieces: frequent English words with
"\u2581" (the SentencePiece space) and every prefix of them (so the greedy pair merging can reach
them), printable ASCII characters, letter bigrams and trigrams, padded to the vocabulary size.
Scores decrease with the id. Text outside the pieces falls back to byte tokens.

GGUF v3 layout (little-endian): "GGUF", u32 version, u64 tensor count, u64 key/value count; the
key/value pairs (string key, u32 value type, value); the tensor infos (string name, u32 n_dims,
u64 ne[n_dims], u32 ggml type, u64 offset into the data section); zero padding to
general.alignment (32); the tensor data, each tensor starting at an aligned offset.
Strings are a u64 byte length followed by UTF-8 bytes, without a terminator.
"""

import argparse
import os
import struct
import sys
import time

try:
    import numpy as np
except ImportError:  # pragma: no cover
    sys.exit("make_synthetic_gguf.py needs numpy (pip install numpy)")

# --------------------------------------------------------------------------------------------
# GGUF constants

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32

# metadata value types
(T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STRING, T_ARRAY, T_U64, T_I64,
 T_F64) = range(13)

# ggml tensor types: id, elements per block, bytes per block
GGML_F32 = (0, 1, 4)
GGML_Q4_0 = (2, 32, 18)
GGML_Q4_K = (12, 256, 144)
GGML_Q6_K = (14, 256, 210)

# llama.cpp's llama_ftype values (general.file_type)
FTYPE_MOSTLY_Q4_0 = 2
FTYPE_MOSTLY_Q4_K_S = 14

# llama token types
TOK_NORMAL, TOK_UNKNOWN, TOK_CONTROL, TOK_USER_DEFINED, TOK_UNUSED, TOK_BYTE = 1, 2, 3, 4, 5, 6

SPACE = "\u2581"  # SentencePiece's visible space

# Elements generated per step (bounded memory: a few hundred MB of temporaries at most).
CHUNK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------------------------
# Metadata encoding


def enc_str(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def enc_kv(key, vtype, value, elem_type=None):
    out = [enc_str(key), struct.pack("<I", vtype)]
    if vtype == T_ARRAY:
        out.append(struct.pack("<IQ", elem_type, len(value)))
        if elem_type == T_STRING:
            out.extend(enc_str(s) for s in value)
        elif elem_type == T_F32:
            out.append(np.asarray(value, dtype="<f4").tobytes())
        elif elem_type == T_I32:
            out.append(np.asarray(value, dtype="<i4").tobytes())
        else:
            raise ValueError("unsupported array element type %d" % elem_type)
    elif vtype == T_STRING:
        out.append(enc_str(value))
    elif vtype == T_U32:
        out.append(struct.pack("<I", value))
    elif vtype == T_I32:
        out.append(struct.pack("<i", value))
    elif vtype == T_F32:
        out.append(struct.pack("<f", value))
    elif vtype == T_BOOL:
        out.append(struct.pack("<B", 1 if value else 0))
    else:
        raise ValueError("unsupported value type %d" % vtype)
    return b"".join(out)


def align_up(x, a=ALIGNMENT):
    return (x + a - 1) // a * a


# --------------------------------------------------------------------------------------------
# Tokenizer

# Frequent English words (a hand-written list; every prefix is added too).
COMMON_WORDS = """
the of and to a in is was that he for it with as his on be at by had not are but from or have
an they which one you were her all she there would their we him been has when who will more no
if out so said what up its about into than them can only other new some could time these two
may then do first any my now such like our over man me even most made after also did many before
must through back years where much your way well down should because each just those people mr
how too little state good very make world still own see men work long get here between both life
being under never day same another know while last might us great old year off come since against
go came right used take three himself few house use during without again place around however
home small found mrs thought went say part once general high upon school every don does got left
number course war until always away something fact though water less public put think almost hand
enough far took head yet government system better set told nothing night end why called didn
eyes find going look asked later knew point next program city business give group toward young
let room president side social given present several order national possible rather second face
per among form important often things looked early white case john become large big need four
within felt along children saw best church ever least power development light thing seemed family
interest want members mind country area others done turned although open god service certain kind
problem began different door thus help sense means whole matter perhaps itself york times law
human line above name example action company hands local show five history whether gave either act
feet across taken past quite anything seen having death experience body word half really week
miss lady sister father mother dear letter sir indeed herself elizabeth darcy bennet jane bingley
wickham lydia collins
""".split()

COMMON_SUFFIXES = """
ing ed er ly es tion ment ness ous ent ity ive able ful less est ies ers ted
""".split()


def build_vocab(n_vocab):
    """Returns (tokens, scores, token_types) for a Llama-2-style SentencePiece vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TOK_UNKNOWN, TOK_CONTROL, TOK_CONTROL]
    tokens += ["<0x%02X>" % b for b in range(256)]
    types += [TOK_BYTE] * 256
    if n_vocab < len(tokens) + 1:
        raise SystemExit("vocabulary of %d tokens is too small (expected at least %d)"
                         % (n_vocab, len(tokens) + 1))

    seen = set(tokens)
    normal = []

    def add(piece):
        if piece not in seen:
            seen.add(piece)
            normal.append(piece)

    def add_with_prefixes(piece, first):
        for k in range(first, len(piece) + 1):
            add(piece[:k])

    letters = "abcdefghijklmnopqrstuvwxyz"
    printable = [chr(c) for c in range(33, 127)]
    # Frequent pieces first (highest scores), each reachable by pair merges through its prefixes.
    for w in COMMON_WORDS:
        add_with_prefixes(SPACE + w, 2)
        add_with_prefixes(SPACE + w[0].upper() + w[1:], 2)
    for s in COMMON_SUFFIXES:
        add_with_prefixes(s, 1)
    add(SPACE)
    for c in printable:
        add(c)
        add(SPACE + c)
    for a in letters:
        for b in letters:
            add(SPACE + a + b)
            add(a + b)
    # Filler: letter trigrams, then numbered pieces if the vocabulary is still short.
    for a in letters:
        for b in letters:
            for c in letters:
                if len(tokens) + len(normal) >= n_vocab:
                    break
                add(SPACE + a + b + c)
                add(a + b + c)
    k = 0
    while len(tokens) + len(normal) < n_vocab:
        add("%sfiller%d" % (SPACE, k))
        k += 1
    normal = normal[: n_vocab - len(tokens)]

    scores = [0.0] * len(tokens) + [-float(i) for i in range(len(normal))]
    tokens += normal
    types += [TOK_NORMAL] * len(normal)
    assert len(tokens) == n_vocab and len(set(tokens)) == n_vocab
    return tokens, scores, types


# --------------------------------------------------------------------------------------------
# Random quantized blocks (n_blocks blocks of one type, as bytes)

# Random values are drawn from raw random bytes; a zero code is remapped to the middle code so the
# distribution is symmetric about zero. These are the resulting standard deviations (in units of
# the block scale) used to set the scales.
STD_Q4_0 = (2.0 * sum(k * k for k in range(1, 8)) / 16.0) ** 0.5  # codes -7..7, 0 twice: 4.18
STD_Q4_K = ((16 * 16 - 1) / 12.0) ** 0.5  # codes 0..15 minus 7.5: 4.61
STD_Q6_K = (2.0 * sum(k * k for k in range(1, 32)) / 64.0) ** 0.5  # codes -31..31, 0 twice: 18.3


def jitter(rng, n):
    """Per-block scale multipliers around 1 (quantized weights do not have equal scales)."""
    return rng.uniform(0.8, 1.2, n)


def blocks_q4_0(rng, n_blocks, std):
    out = np.empty((n_blocks, 18), dtype=np.uint8)
    d = (std / STD_Q4_0 * jitter(rng, n_blocks)).astype("<f2")
    out[:, 0:2] = d.view(np.uint8).reshape(n_blocks, 2)
    q = np.frombuffer(rng.bytes(n_blocks * 16), dtype=np.uint8).reshape(n_blocks, 16)
    lo = q & 0x0F
    hi = q >> 4
    lo[lo == 0] = 8  # code 8 is the value 0
    hi[hi == 0] = 8
    out[:, 2:] = lo | (hi << 4)
    return out


def blocks_q4_k(rng, n_blocks, std):
    # x = d * sc * q - dmin * m with q uniform in 0..15; m = sc and dmin = 7.5 d make each
    # sub-block zero-mean: x = d * sc * (q - 7.5).
    out = np.empty((n_blocks, 144), dtype=np.uint8)
    sc = rng.integers(24, 41, size=(n_blocks, 8), dtype=np.uint8)  # 6-bit sub-block scales
    d = std / (STD_Q4_K * 32.0) * jitter(rng, n_blocks)
    d16 = d.astype("<f2")
    dmin16 = (d16.astype(np.float32) * 7.5).astype("<f2")
    out[:, 0:2] = d16.view(np.uint8).reshape(n_blocks, 2)
    out[:, 2:4] = dmin16.view(np.uint8).reshape(n_blocks, 2)
    m = sc
    s = out[:, 4:16]
    # packing: bytes 0..3 = sc[0..3] | (sc[4..7] >> 4) << 6, bytes 4..7 = m[0..3] | (m[4..7] >> 4)
    # << 6, bytes 8..11 = (sc[4..7] & 15) | (m[4..7] & 15) << 4
    s[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    s[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
    out[:, 16:144] = np.frombuffer(rng.bytes(n_blocks * 128), dtype=np.uint8).reshape(n_blocks, 128)
    return out


def blocks_q6_k(rng, n_blocks, std):
    # x = d * sc[16] * (q - 32), q 6-bit: low 4 bits in ql[128], high 2 bits in qh[64].
    out = np.empty((n_blocks, 210), dtype=np.uint8)
    q = np.frombuffer(rng.bytes(n_blocks * 256), dtype=np.uint8) & 63
    q = q.reshape(n_blocks, 2, 4, 32).copy()  # [block][half][quarter][l]: element 128h+32k+l
    q[q == 0] = 32  # code 32 is the value 0
    ql = out[:, 0:128].reshape(n_blocks, 2, 64)
    qh = out[:, 128:192].reshape(n_blocks, 2, 32)
    ql[:, :, 0:32] = (q[:, :, 0] & 15) | ((q[:, :, 2] & 15) << 4)
    ql[:, :, 32:64] = (q[:, :, 1] & 15) | ((q[:, :, 3] & 15) << 4)
    qh[:, :, :] = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | (
        (q[:, :, 3] >> 4) << 6)
    sc = rng.integers(24, 41, size=(n_blocks, 16), dtype=np.int8)
    out[:, 192:208] = sc.view(np.uint8)
    d = (std / (STD_Q6_K * 32.0) * jitter(rng, n_blocks)).astype("<f2")
    out[:, 208:210] = d.view(np.uint8).reshape(n_blocks, 2)
    return out


BLOCK_WRITERS = {GGML_Q4_0: blocks_q4_0, GGML_Q4_K: blocks_q4_k, GGML_Q6_K: blocks_q6_k}


# --------------------------------------------------------------------------------------------
# Model layout


class TensorSpec:
    def __init__(self, name, ne, gtype, std=None):
        self.name, self.ne, self.gtype, self.std = name, list(ne), gtype, std
        n = 1
        for x in ne:
            n *= x
        self.n_elements = n
        _, bs, ts = gtype
        if ne[0] % bs:
            raise SystemExit("tensor %s: row of %d elements is not a multiple of the %d-element "
                             "block" % (name, ne[0], bs))
        self.nbytes = n // bs * ts
        self.offset = 0


def model_tensors(hp, qtype):
    E, F, V, L = hp["n_embd"], hp["n_ff"], hp["n_vocab"], hp["n_layer"]
    hd = E // hp["n_head"]
    KV = hp["n_head_kv"] * hd
    t = [TensorSpec("token_embd.weight", [E, V], qtype, 1.0)]
    for l in range(L):
        p = "blk.%d." % l
        t += [
            TensorSpec(p + "attn_norm.weight", [E], GGML_F32),
            TensorSpec(p + "attn_q.weight", [E, E], qtype, E ** -0.5),
            TensorSpec(p + "attn_k.weight", [E, KV], qtype, E ** -0.5),
            TensorSpec(p + "attn_v.weight", [E, KV], qtype, E ** -0.5),
            TensorSpec(p + "attn_output.weight", [E, E], qtype, E ** -0.5),
            TensorSpec(p + "ffn_norm.weight", [E], GGML_F32),
            TensorSpec(p + "ffn_gate.weight", [E, F], qtype, E ** -0.5),
            TensorSpec(p + "ffn_up.weight", [E, F], qtype, E ** -0.5),
            TensorSpec(p + "ffn_down.weight", [F, E], qtype, F ** -0.5),
        ]
    t += [
        TensorSpec("output_norm.weight", [E], GGML_F32),
        TensorSpec("output.weight", [E, V], GGML_Q6_K, E ** -0.5),
    ]
    off = 0
    for s in t:
        s.offset = off
        off = align_up(off + s.nbytes)
    return t


def metadata(hp, args, qtype):
    arch = "llama"
    tokens, scores, types = build_vocab(hp["n_vocab"])
    hd = hp["n_embd"] // hp["n_head"]
    ftype = FTYPE_MOSTLY_Q4_0 if qtype == GGML_Q4_0 else FTYPE_MOSTLY_Q4_K_S
    kv = [
        ("general.architecture", T_STRING, arch),
        ("general.name", T_STRING,
         "synthetic-tiny" if args.tiny else "synthetic-llama2-7b-shape"),
        ("general.description", T_STRING,
         "random weights for benchmarks (scripts/make_synthetic_gguf.py --seed %d)" % args.seed),
        ("general.file_type", T_U32, ftype),
        ("general.quantization_version", T_U32, 2),
        ("general.alignment", T_U32, ALIGNMENT),
        (arch + ".vocab_size", T_U32, hp["n_vocab"]),
        (arch + ".context_length", T_U32, hp["n_ctx"]),
        (arch + ".embedding_length", T_U32, hp["n_embd"]),
        (arch + ".block_count", T_U32, hp["n_layer"]),
        (arch + ".feed_forward_length", T_U32, hp["n_ff"]),
        (arch + ".attention.head_count", T_U32, hp["n_head"]),
        (arch + ".attention.head_count_kv", T_U32, hp["n_head_kv"]),
        (arch + ".attention.layer_norm_rms_epsilon", T_F32, hp["rms_eps"]),
        (arch + ".rope.dimension_count", T_U32, hd),
        (arch + ".rope.freq_base", T_F32, hp["rope_base"]),
        ("tokenizer.ggml.model", T_STRING, "llama"),
        ("tokenizer.ggml.tokens", T_ARRAY, tokens, T_STRING),
        ("tokenizer.ggml.scores", T_ARRAY, scores, T_F32),
        ("tokenizer.ggml.token_type", T_ARRAY, types, T_I32),
        ("tokenizer.ggml.bos_token_id", T_U32, 1),
        ("tokenizer.ggml.eos_token_id", T_U32, 2),
        ("tokenizer.ggml.unknown_token_id", T_U32, 0),
        ("tokenizer.ggml.add_bos_token", T_BOOL, True),
        ("tokenizer.ggml.add_eos_token", T_BOOL, False),
    ]
    return kv


# --------------------------------------------------------------------------------------------
# Writing


def write_tensor(f, spec, seed, index):
    if spec.gtype == GGML_F32:
        # Norm weights: 1.0 (small enough to write at once).
        f.write(np.ones(spec.n_elements, dtype="<f4").tobytes())
        return
    rng = np.random.default_rng([seed, index])
    gen = BLOCK_WRITERS[spec.gtype]
    _, bs, _ = spec.gtype
    total_blocks = spec.n_elements // bs
    step = max(1, CHUNK_ELEMENTS // bs)
    done = 0
    while done < total_blocks:
        n = min(step, total_blocks - done)
        f.write(gen(rng, n, spec.std).tobytes())
        done += n


def main():
    ap = argparse.ArgumentParser(
        description="Write a synthetic Llama-2-7B-shaped GGUF (random weights) for benchmarks.")
    ap.add_argument("out", help="output .gguf path (written to OUT.part, then renamed)")
    ap.add_argument("--type", choices=["q4_0", "q4_k"], default="q4_0",
                    help="quantization of the 2-D tensors (output.weight is always Q6_K)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--layers", type=int, default=None,
                    help="number of layers (default 32, or 2 with --tiny)")
    ap.add_argument("--tiny", action="store_true",
                    help="small shape for quick tests: n_embd 256, 4 heads, n_ff 512, 2 layers")
    ap.add_argument("--ctx", type=int, default=4096, help="llama.context_length (default 4096)")
    args = ap.parse_args()
    if args.seed < 0:
        ap.error("--seed must be >= 0")

    if args.tiny:
        hp = dict(n_embd=256, n_layer=2, n_head=4, n_head_kv=4, n_ff=512)
    else:
        hp = dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=32, n_ff=11008)
    hp.update(n_vocab=32000, n_ctx=args.ctx, rope_base=10000.0, rms_eps=1e-5)
    if args.layers is not None:
        if args.layers < 1:
            ap.error("--layers must be >= 1")
        hp["n_layer"] = args.layers
    qtype = GGML_Q4_0 if args.type == "q4_0" else GGML_Q4_K

    t0 = time.time()
    tensors = model_tensors(hp, qtype)
    kv = metadata(hp, args, qtype)

    header = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(kv))]
    header += [enc_kv(*e) for e in kv]
    for s in tensors:
        header.append(enc_str(s.name))
        header.append(struct.pack("<I", len(s.ne)))
        header.append(struct.pack("<%dQ" % len(s.ne), *s.ne))
        header.append(struct.pack("<IQ", s.gtype[0], s.offset))
    header = b"".join(header)
    data_start = align_up(len(header))
    data_size = align_up(tensors[-1].offset + tensors[-1].nbytes)
    total = data_start + data_size
    n_params = sum(s.n_elements for s in tensors)
    print("%s: %d tensors, %.2fB parameters, %s, %.2f GB" % (
        args.out, len(tensors), n_params / 1e9, args.type, total / 1e9), file=sys.stderr)

    part = args.out + ".part"
    try:
        with open(part, "wb") as f:
            f.write(header)
            f.write(b"\0" * (data_start - len(header)))
            last_report = time.time()
            for i, s in enumerate(tensors):
                pos = f.tell()
                expect = data_start + s.offset
                if pos > expect:
                    raise RuntimeError("tensor %s would start at %d, past %d"
                                       % (s.name, pos, expect))
                f.write(b"\0" * (expect - pos))
                write_tensor(f, s, args.seed, i)
                now = time.time()
                if now - last_report > 10 or i == len(tensors) - 1:
                    last_report = now
                    print("  %5.1f%%  %s  (%.0f s)" % (100.0 * f.tell() / total, s.name, now - t0),
                          file=sys.stderr)
            f.write(b"\0" * (total - f.tell()))
            if f.tell() != total:
                raise RuntimeError("wrote %d bytes, expected %d" % (f.tell(), total))
        os.replace(part, args.out)
    except BaseException:
        if os.path.exists(part):
            os.remove(part)
        raise
    print("wrote %s: %d bytes in %.1f s" % (args.out, total, time.time() - t0), file=sys.stderr)


if __name__ == "__main__":
    main()
