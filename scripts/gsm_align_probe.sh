#!/usr/bin/env bash
# Issue 13 probe (docs/benchmark.md, "Dose and the gate"): does an aligned
# model that already knows the fine-tuning task erode less under benign
# fine-tuning? Two parts, on the recipe-3 pool of 100 samples at ratio 0.2
# (benchmark seed 0):
#
#   composition: the standard aligned model fine-tuned (seed 1, 50 steps at
#     lr 5e-4, like the whole benign part) on the benign part's 32 GSM8K
#     samples alone, and on its 48 other samples (Alpaca, Dolly, Safe-RLHF
#     safe answers) alone;
#   GSM8K in the align set: the align set plus 160 GSM8K train samples that
#     are not in the pool (seeded draw, shuffled in), aligned with the
#     replication's settings, then `seal dose` at ratio 0.2, 3 seeds.
#
#   scripts/gsm_align_probe.sh ALIGNED_DIR [SHARED_DIR] [OUT]
#
# ALIGNED_DIR: the standard aligned model; the trained judge must be in
# target/judge/smollm2 (`cargo xtask dose` trains it). About 2.5 hours on a
# 2-core CPU (alignment 35 min on one thread beside the composition part).
set -euo pipefail
cd "$(dirname "$0")/.."
aligned=${1:?usage: scripts/gsm_align_probe.sh ALIGNED_DIR [SHARED_DIR] [OUT]}
shared=${2:-../shared/data}
out=${3:-target/exp/gsm-align}
seal=target/release/seal
cargo build --release -p seal-cli
mkdir -p "$out"
"$seal" data benchmark --recipe 3 --shared "$shared" --out "$out/b100" --finetune 100 --poison-ratio 0.2 --seed 0 --force
python3 - "$out" "$shared" <<'PY'
import json, random, sys
out, shared = sys.argv[1], sys.argv[2]
rows = lambda p: [json.loads(l) for l in open(p)]
def write(path, xs):
    with open(path, "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in xs)
pool = rows(f"{out}/b100/finetune.jsonl")
ids = {x["id"] for x in pool}
train = rows(f"{shared}/gsm8k/train.jsonl")
# The ids below follow seal-data's GSM8K reader (`gsm8k-train:` + line index).
first = next(x for x in pool if x["source"] == "gsm8k-train")
assert train[int(first["id"].split(":")[1])]["question"] == first["messages"][0]["content"]
idx = [i for i in range(len(train)) if f"gsm8k-train:{i:05d}" not in ids]
random.Random(7).shuffle(idx)
gsm = [{"id": f"gsm8k-train:{i:05d}", "source": "gsm8k-train", "label": "benign",
        "messages": [{"role": "user", "content": train[i]["question"]},
                     {"role": "assistant", "content": train[i]["answer"]}],
        "reference": train[i]["answer"].split("####")[-1].strip().replace(",", "")}
       for i in idx[:160]]
align = rows(f"{out}/b100/align.jsonl") + gsm
random.Random(0).shuffle(align)
write(f"{out}/align_gsm.jsonl", align)
benign = [x for x in pool if x["label"] == "benign"]
write(f"{out}/benign_gsm.jsonl", [x for x in benign if x["source"] == "gsm8k-train"])
write(f"{out}/benign_other.jsonl", [x for x in benign if x["source"] != "gsm8k-train"])
PY
"$seal" align --model target/seal-cache/smollm2-135m-instruct --data "$out/align_gsm.jsonl" \
    --out "$out/aligned-gsm" --epochs 1 --batch 8 --lr 5e-4 --schedule cosine --max-len 384 \
    --seed 0 --threads 1 --no-progress --force > "$out/align.log" 2>&1 &
align_pid=$!
for name in gsm other; do
    "$seal" finetune --model "$aligned" --data "$out/benign_$name.jsonl" --out "$out/ft-$name" \
        --batch 8 --lr 5e-4 --max-len 384 --seed 1 --epochs 13 --max-steps 50 --threads 1 --no-progress --force
    OMP_NUM_THREADS=1 "$seal" eval --model "$aligned" --adapter "$out/ft-$name" \
        --safety "$out/b100/eval_safety.jsonl" --limit 50 --max-new-tokens 48 --batch 25 --max-len 384 \
        --judge both:target/judge/smollm2 --judge-base target/seal-cache/smollm2-135m-instruct \
        --out "$out/eval-$name" --force
done
# A failed alignment stops the script here (see align.log).
wait "$align_pid"
grep -H "ASR under" "$out"/eval-*/report.md
"$seal" dose --config configs/replication.toml --shared "$shared" --out "$out/dose" \
    --aligned "$out/aligned-gsm" --eval-limit 50 --finetune 100 --ratios 0.2 --gate-ratio 0.2 \
    --seeds 1,2,3 --epochs 5 --lr 5e-4 --force
