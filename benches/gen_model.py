#!/usr/bin/env python3
"""Generate a synthetic fp16 safetensors checkpoint for the peer benchmarks.

    gen_model.py --size-mib N [--seed S] --out v1.safetensors
    gen_model.py --finetune v1.safetensors [--seed S] --out v2.safetensors

The first form writes a Llama-shaped decoder of about N MiB (default 1024):
an embedding and an untied LM head, 11 layers of nine tensors each (q, k, v,
o projections; gate, up, down MLP; two RMSNorm weights) and a final norm,
102 tensors in all. The hidden size is the largest multiple of 64 that fits
the budget with a 32000-token vocabulary; the vocabulary then absorbs the
rest, so the file is N MiB to within a few rows. Matrix weights are Gaussian
with sigma 0.02 (the usual initialization scale, and close to trained
weights' spread); norm weights are 1 + the same noise. Values are stored as
float16, so the bytes behave like a real checkpoint's under chunking and
compression (fp16 Gaussian weights compress about 1.09 x with zstd).

The second form reads v1 and writes v2 with every tenth tensor (in file
order) changed as a fine-tune would change it: a small update (sigma 0.002)
added to every value, which rewrites nearly every byte of those tensors and
none of the others. Of the ten ways to pick every tenth tensor (starting at
the first, the second, ...), the one whose bytes come closest to 10 % of the
file is used (8 % at 1 GiB: the embedding and LM head are 13 % each, so the
ways that include one change 20 %). The fraction changed is printed.

Output is deterministic for a given size and seed. Diagnostics go to stderr.
"""

import argparse
import json
import struct
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

SIGMA = 0.02
LAYERS = 11
VOCAB = 32000
METADATA = {"format": "pt"}


def ffn_size(d):
    """The MLP width: 8/3 of the hidden size, rounded to a multiple of 64."""
    return max(64, int(round(8 * d / 3 / 64)) * 64)


def param_count(d, vocab):
    per_layer = 4 * d * d + 3 * d * ffn_size(d) + 2 * d
    return 2 * vocab * d + d + LAYERS * per_layer


def shapes(size_mib):
    """Tensor names and shapes whose fp16 bytes come to about size_mib MiB."""
    budget = size_mib * 1024 * 1024 // 2  # parameters
    d = 64
    while param_count(d + 64, VOCAB) <= budget:
        d += 64
    vocab = max(1, (budget - param_count(d, 0)) // (2 * d))
    ff = ffn_size(d)
    out = [("lm_head.weight", (vocab, d)), ("model.embed_tokens.weight", (vocab, d))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (d,)),
            (p + "self_attn.q_proj.weight", (d, d)),
            (p + "self_attn.k_proj.weight", (d, d)),
            (p + "self_attn.v_proj.weight", (d, d)),
            (p + "self_attn.o_proj.weight", (d, d)),
            (p + "post_attention_layernorm.weight", (d,)),
            (p + "mlp.gate_proj.weight", (ff, d)),
            (p + "mlp.up_proj.weight", (ff, d)),
            (p + "mlp.down_proj.weight", (d, ff)),
        ]
    out.append(("model.norm.weight", (d,)))
    return out, d, vocab


def generate(size_mib, seed, out):
    rng = np.random.default_rng(seed)
    specs, d, vocab = shapes(size_mib)
    tensors = {}
    for name, shape in specs:
        values = rng.standard_normal(shape, dtype=np.float32)
        values *= SIGMA
        if name.endswith("norm.weight"):
            values += 1.0
        tensors[name] = values.astype(np.float16)
        del values
    save_file(tensors, out, metadata=METADATA)
    total = sum(t.nbytes for t in tensors.values())
    print(
        f"gen_model: {out}: {len(tensors)} fp16 tensors, hidden {d}, vocab {vocab}, "
        f"{total / 2**20:.1f} MiB of weights",
        file=sys.stderr,
    )


def file_order(path):
    """Tensor names in the order their bytes lie in the file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return sorted(header, key=lambda k: header[k]["data_offsets"][0])


def finetune(v1, seed, out):
    rng = np.random.default_rng(seed + 1_000_003)
    tensors = load_file(v1)
    order = file_order(v1)
    size = {name: t.nbytes for name, t in tensors.items()}
    total = sum(size.values())

    def phase(k):
        return [name for i, name in enumerate(order) if i % 10 == k]

    changed = min((phase(k) for k in range(10)), key=lambda names: abs(sum(size[n] for n in names) / total - 0.10))
    for name in changed:
        t = tensors[name]
        delta = rng.standard_normal(t.shape, dtype=np.float32) * (SIGMA / 10)
        tensors[name] = (t.astype(np.float32) + delta).astype(np.float16)
    save_file(tensors, out, metadata=METADATA)
    touched = sum(size[n] for n in changed)
    print(
        f"gen_model: {out}: {len(changed)} of {len(order)} tensors changed "
        f"({100 * touched / total:.1f} % of the bytes)",
        file=sys.stderr,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="checkpoint size in MiB (default 1024)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--finetune", metavar="V1", help="write a fine-tuned version of V1 instead")
    ap.add_argument("--out", required=True, help="output .safetensors path")
    args = ap.parse_args()
    if args.finetune:
        finetune(args.finetune, args.seed, args.out)
    else:
        if args.size_mib < 1:
            ap.error("--size-mib must be at least 1")
        generate(args.size_mib, args.seed, args.out)


if __name__ == "__main__":
    main()
