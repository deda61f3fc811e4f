#!/usr/bin/env python3
"""One attention layer's forward and backward on the CPU: SDPA (libtorch's
CPU flash attention) against the explicit math path, in bf16 and f32, at
SmolLM2-135M's shape (batch 8, 9 heads of 64, causal).

    .venv/bin/python scripts/attention_cpu.py [--threads 2] [--lengths 128,256,384]

docs/performance.md, "The fused loss", quotes its table.
"""

import argparse
import time

import torch
import torch.nn.functional as F


def math_attention(q, k, v):
    n = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores.float(), -1).to(q.dtype) @ v


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", default="128,256,384")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| positions | dtype | SDPA (ms) | math (ms) |")
    print("|---:|---|---:|---:|")
    for n in [int(x) for x in args.lengths.split(",")]:
        for dtype in (torch.bfloat16, torch.float32):
            q, k, v = (
                torch.randn(8, 9, n, 64, dtype=dtype, requires_grad=True) for _ in range(3)
            )
            times = []
            for f in (
                lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                lambda: math_attention(q, k, v),
            ):
                for _ in range(2):
                    f().float().sum().backward()
                t = time.perf_counter()
                for _ in range(args.reps):
                    f().float().sum().backward()
                times.append((time.perf_counter() - t) / args.reps * 1e3)
            name = "bf16" if dtype == torch.bfloat16 else "f32"
            print(f"| {n} | {name} | {times[0]:.1f} | {times[1]:.1f} |")


if __name__ == "__main__":
    main()
