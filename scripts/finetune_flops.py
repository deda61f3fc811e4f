#!/usr/bin/env python3
"""A lower bound on the fine-tuning compute of a pipeline run, and on its time.

    .venv/bin/python scripts/finetune_flops.py OUT_DIR --model MODEL_DIR [--peak GFLOPS] [--seeds N]

OUT_DIR is a `seal pipeline --out` directory (e.g. target/replication/small):
its `results.json` names the pool, the safe set, the fine-tuning settings and
every (seed, method) run, and each `seed-N/METHOD/kept_ids.txt` the samples
that run trained on. MODEL_DIR holds the model's `config.json` and tokenizer
(the imported SmolLM2 directory). Each sample is rendered with the model's
chat template, cut to the run's `max_len` and counted: all its tokens, and
its response tokens (the ones that carry a loss).

The bound counts only the matmuls no LoRA fine-tuning can skip: for every
token, the frozen linear layers forward and their input gradients backward
(4 FLOPs per weight; the weight gradients of a frozen base are not needed),
and for every response token the LM head forward and backward (4 FLOPs per
weight of the head; prompt tokens skip it). Attention scores, LoRA factors,
norms, element-wise work, ranking and evaluation are left out, so the real
cost is higher. Runs that reused another method's fine-tuning (`reused_from`)
count nothing; the mixed objective's safe batch of each step counts as a
batch of mean-length safe samples.

`--peak` (GFLOP/s, e.g. the f32 matmul peak `cargo bench -p seal-bilevel
--bench seal_step` prints) turns the FLOPs into the shortest possible time;
`--seeds N` scales one run's seeds to N seeds. docs/pipeline.md ("What a
replication costs at least") is produced by it.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path


def read_jsonl(path: Path) -> list:
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{number}: not JSON ({e})")
    return rows


def token_counts(tokenizer, path: Path, max_len: int) -> dict:
    """id -> (tokens kept at max_len, response tokens among them)."""

    def ids(x):
        return x["input_ids"] if hasattr(x, "keys") else x

    counts = {}
    for number, sample in enumerate(read_jsonl(path), 1):
        messages = sample.get("messages")
        if not messages or "id" not in sample:
            sys.exit(f"{path}:{number}: a sample needs `id` and `messages`")
        whole = len(ids(tokenizer.apply_chat_template(messages, tokenize=True)))
        prompt = len(
            ids(
                tokenizer.apply_chat_template(
                    messages[:-1], tokenize=True, add_generation_prompt=True
                )
            )
        )
        # Longer samples lose prompt tokens from the left (the response stays).
        kept = min(whole, max_len)
        counts[sample["id"]] = (kept, min(whole - prompt, kept))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--peak", type=float, help="matmul peak in GFLOP/s")
    parser.add_argument("--seeds", type=int, help="scale to this many seeds")
    args = parser.parse_args()

    results_path = args.out / "results.json"
    try:
        results = json.loads(results_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"{results_path}: {e}")
    config = results["config"]
    data_dir = Path(config["data"]["dir"])
    max_len = config["max_len"]
    finetune = config["finetune"]
    epochs, batch = finetune["epochs"], finetune["batch"]

    model_config_path = args.model / "config.json"
    try:
        mc = json.loads(model_config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"{model_config_path}: {e}")
    h, inter = mc["hidden_size"], mc["intermediate_size"]
    head_dim = mc.get("head_dim") or h // mc["num_attention_heads"]
    q = mc["num_attention_heads"] * head_dim
    kv = mc["num_key_value_heads"] * head_dim
    layer_weights = h * q + 2 * h * kv + q * h + 3 * h * inter
    body_weights = mc["num_hidden_layers"] * layer_weights
    head_weights = mc["vocab_size"] * h

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    counts = token_counts(tokenizer, data_dir / "finetune.jsonl", max_len)
    safe = token_counts(tokenizer, data_dir / "safe.jsonl", max_len)
    counts.update(safe)
    safe_mean = (
        statistics.mean(c[0] for c in safe.values()),
        statistics.mean(c[1] for c in safe.values()),
    )

    rows = []
    for run in results["runs"]:
        seed, method = run["seed"], run["method"]
        if run.get("reused_from"):
            rows.append((seed, method, 0, 0, 0.0, run["finetune_seconds"]))
            continue
        kept_path = args.out / f"seed-{seed}" / method / "kept_ids.txt"
        try:
            kept = [line.strip() for line in kept_path.open() if line.strip()]
        except OSError as e:
            sys.exit(f"{kept_path}: {e}")
        missing = [i for i in kept if i not in counts]
        if missing:
            sys.exit(f"{kept_path}: id {missing[0]} is in neither {data_dir}/finetune.jsonl nor safe.jsonl")
        tokens = epochs * sum(counts[i][0] for i in kept)
        response = epochs * sum(counts[i][1] for i in kept)
        if method == "mixed":
            tokens += run["steps"] * batch * safe_mean[0]
            response += run["steps"] * batch * safe_mean[1]
        flops = 4 * body_weights * tokens + 4 * head_weights * response
        rows.append((seed, method, tokens, response, flops, run["finetune_seconds"]))

    print(
        f"model: {mc['num_hidden_layers']} layers, {body_weights / 1e6:.1f} M body weights, "
        f"{head_weights / 1e6:.1f} M head weights; {epochs} epochs at batch {batch}, max_len {max_len}"
    )
    print()
    print("| seed | method | tokens | response tokens | TFLOP (bound) | fine-tune (s) | achieved GFLOP/s |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for seed, method, tokens, response, flops, seconds in rows:
        rate = f"{flops / seconds / 1e9:.0f}" if seconds > 0 and flops > 0 else "–"
        print(
            f"| {seed} | {method} | {tokens:,.0f} | {response:,.0f} | {flops / 1e12:.1f} | {seconds:.0f} | {rate} |"
        )
    total = sum(r[4] for r in rows)
    seconds = sum(r[5] for r in rows)
    seeds = len({r[0] for r in rows})
    print()
    print(
        f"total: {total / 1e12:.1f} TFLOP over {seeds} seed(s), {seconds / 60:.1f} min of fine-tuning measured "
        f"({total / seconds / 1e9:.0f} GFLOP/s achieved by the bound's count)"
    )
    if args.seeds:
        total = total / seeds * args.seeds
        print(f"scaled to {args.seeds} seed(s): {total / 1e12:.1f} TFLOP")
    if args.peak:
        print(
            f"at {args.peak:.0f} GFLOP/s (100% of the peak, nothing but these matmuls): "
            f"{total / (args.peak * 1e9) / 60:.1f} min of fine-tuning at least"
        )


if __name__ == "__main__":
    main()
