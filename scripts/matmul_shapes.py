#!/usr/bin/env python3
"""Matmul rates at the shapes a SmolLM2-135M LoRA fine-tuning step runs.

Prints GFLOP/s for each frozen projection of a block (forward, and the
input-gradient matmul of the backward pass) at T tokens, the LM head on
the response tokens, and the square 2048^3 "peak" that the benches quote,
in the same process. What a fine-tuning step could reach if everything but
its matmuls were free (docs/pipeline.md, "What a replication costs at
least").

    .venv/bin/python scripts/matmul_shapes.py [--threads 2] [--tokens 2048]
        [--response 1024] [--dtype bf16|f32]
"""

import argparse
import time

import torch

# (name, in, out) of SmolLM2-135M's frozen matmuls (hidden 576, MLP 1536,
# 3 key/value heads of 64, vocabulary 49152).
SHAPES = [
    ("q_proj, o_proj", 576, 576),
    ("k_proj, v_proj", 576, 192),
    ("gate_proj, up_proj", 576, 1536),
    ("down_proj", 1536, 576),
]
HEAD = ("lm_head", 576, 49152)


def rate(m, k, n, dtype, reps):
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--response", type=int, default=1024)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    peak = rate(2048, 2048, 2048, dtype, 10)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.dtype}")
    print(f"2048^3 matmul: {peak:.0f} GFLOP/s")
    print("| matmul | rows | forward GFLOP/s | input gradient GFLOP/s |")
    print("|---|---:|---:|---:|")
    for name, k, n in SHAPES + [HEAD]:
        m = args.response if name == "lm_head" else args.tokens
        fwd = rate(m, k, n, dtype, args.reps)
        bwd = rate(m, n, k, dtype, args.reps)
        print(f"| {name} ({k} -> {n}) | {m} | {fwd:.0f} | {bwd:.0f} |")


if __name__ == "__main__":
    main()
