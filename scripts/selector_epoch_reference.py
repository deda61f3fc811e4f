"""PyTorch + transformers + peft reference for `benches/selector_epoch.rs`.

Runs the selector epoch that the Rust benchmark runs, step for step on the
same batches, the way the official SEAL trainer (OpenRLHF) does it:

- each batch right-padded to its longest row, the LM head over every
  position;
- per step: the safe loss, forward and backward (times lambda), then the
  ranker-weighted task loss, forward and backward (times 1 - lambda) — both
  backward passes whatever lambda is — a clipped AdamW step on the LoRA, and
  an SGD step of the ranker logits on the detached task losses.

The plan (tokenised rows, the step batches, the settings) is written by the
Rust benchmark, so both sides see exactly the same tokens. Prints and writes
wall time, useful (non-padding) tokens per second and peak RSS.

    .venv/bin/python scripts/selector_epoch_reference.py --plan PLAN.json --out RESULT.json
"""
import argparse
import json
import os
import time

import torch


def peak_rss_mib():
    # VmHWM: the resident set's high-water mark, as the Rust side reads it.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def padded(rows, batch, pad_id):
    longest = max(len(rows[r]["input_ids"]) for r in batch)
    ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    labels = torch.full((len(batch), longest), -100, dtype=torch.long)
    for i, r in enumerate(batch):
        toks = rows[r]["input_ids"]
        start = max(rows[r]["response_start"], 1)
        ids[i, : len(toks)] = torch.tensor(toks)
        mask[i, : len(toks)] = 1
        labels[i, start : len(toks)] = torch.tensor(toks[start:])
    return ids, mask, labels


def per_sample_nll(model, ids, mask, labels):
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1))
    shift_labels = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        shift_logits, shift_labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(shift_labels.shape)
    counts = (shift_labels != -100).sum(1).clamp_min(1)
    return nll.sum(1) / counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with open(args.plan) as f:
        plan = json.load(f)
    torch.set_num_threads(plan["threads"])
    torch.manual_seed(plan["seed"])
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    d, name = os.path.split(os.path.abspath(plan["gguf"]))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=plan["lora_r"],
            lora_alpha=plan["lora_alpha"],
            target_modules=["q_proj", "v_proj"],
            lora_dropout=0.0,
        ),
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=plan["lr"], betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    finetune, safe, pad_id = plan["finetune"], plan["safe"], plan["pad_id"]
    logits = torch.zeros(len(finetune), requires_grad=True)
    ranker_opt = torch.optim.SGD([logits], lr=plan["ranker_lr"])
    lam = plan["lambda"]
    useful = 0
    start = time.perf_counter()
    for k, step in enumerate(plan["steps"]):
        opt.zero_grad(set_to_none=True)
        micro = len(step["finetune"])
        task_losses = []
        for ft, sf in zip(step["finetune"], step["safe"]):
            ids, mask, labels = padded(safe, sf, pad_id)
            useful += int(mask.sum())
            (lam * per_sample_nll(model, ids, mask, labels).mean() / micro).backward()
            ids, mask, labels = padded(finetune, ft, pad_id)
            useful += int(mask.sum())
            weights = (torch.softmax(logits, 0) * len(finetune)).detach()[ft]
            losses = per_sample_nll(model, ids, mask, labels)
            ((1.0 - lam) * (weights * losses).mean() / micro).backward()
            task_losses.append((ft, losses.detach()))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ranker_opt.zero_grad(set_to_none=True)
        weights = torch.softmax(logits, 0) * len(finetune)
        sum(((weights[ft] * c).mean() / micro) for ft, c in task_losses).backward()
        torch.nn.utils.clip_grad_norm_([logits], plan["ranker_clip"])
        ranker_opt.step()
        print(f"step {k + 1}/{len(plan['steps'])}: {time.perf_counter() - start:.1f} s", flush=True)
    wall = time.perf_counter() - start
    result = {
        "side": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "lambda": lam,
        "steps": len(plan["steps"]),
        "wall_s": wall,
        "useful_tokens": useful,
        "tokens_per_s": useful / wall,
        "peak_rss_mib": peak_rss_mib(),
    }
    print(json.dumps(result))
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
