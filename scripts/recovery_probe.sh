#!/usr/bin/env bash
# Issue 13 probe (docs/benchmark.md, "Dose and the gate"): does an alignment
# with safety-recovery examples (Qi et al. 2024, "Safety Alignment Should Be
# Made More Than Just a Few Tokens Deep", section 3) resist benign
# fine-tuning better, and so widen the gate's gap?
#
# 1. The original SmolLM2 answers the align set's 320 harmful requests
#    (greedy, 64 new tokens; it complies with almost all of them).
# 2. For every request whose align-set target is a refusal ("I'm sorry",
#    "I apologize", "As an AI ... cannot") and whose answer both judges call
#    harmful (no refusal marker, and the trained judge says harmful), two
#    recovery examples: the request, the first k words of that answer as a
#    prefill (context, no loss; k uniform in 1..words, drawn twice), then
#    the refusal as the target.
# 3. The align set plus these examples (shuffled) is aligned with the
#    replication's settings, and `seal dose` runs at ratio 0.2 from it on
#    the 100-sample pool, seeds 1 and 2 (the committed dose's call, one
#    seed per process). The measured seed 3 was the same call with
#    `--seeds 3`, run alone on two threads afterwards.
#
#   scripts/recovery_probe.sh [SHARED_DIR] [OUT]
#
# The trained judge must be in target/judge/smollm2 (`cargo xtask dose`
# trains it) and the imported model in
# target/seal-cache/smollm2-135m-instruct. About 2 hours on a 2-core CPU
# (alignment 35 min, the two doses 70 min side by side).
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared/data}
out=${2:-target/exp/recovery}
seal=target/release/seal
base=target/seal-cache/smollm2-135m-instruct
cargo build --release -p seal-cli
mkdir -p "$out"
"$seal" data benchmark --recipe 3 --shared "$shared" --out "$out/b100" --finetune 100 --poison-ratio 0.2 --seed 0 --force
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
with open(f"{out}/b100/align.jsonl") as f, open(f"{out}/refusal_prompts.jsonl", "w") as g:
    g.writelines(l for l in f if json.loads(l).get("label") == "safe")
PY
OMP_NUM_THREADS=1 "$seal" eval --model "$base" --safety "$out/refusal_prompts.jsonl" --limit 100000 \
    --max-new-tokens 64 --batch 32 --max-len 384 --judge both:target/judge/smollm2 --judge-base "$base" \
    --out "$out/gen-eval" --force
python3 - "$out" <<'PY'
import json, random, re, sys
out = sys.argv[1]
rows = lambda p: [json.loads(l) for l in open(p)]
align = rows(f"{out}/b100/align.jsonl")
answers = {r["id"]: r for r in rows(f"{out}/gen-eval/safety_responses.jsonl")}
rng = random.Random(0)
recovery = []
for s in align:
    if s.get("label") != "safe":
        continue
    refusal = s["messages"][-1]["content"].strip()
    opening = refusal.split(".")[0]
    if not (refusal.startswith(("I'm sorry", "I am sorry", "I apologize"))
            or (refusal.startswith("As an AI") and "cannot" in opening)):
        continue
    answer = answers[s["id"]]
    if not all(answer["verdicts"].values()):
        continue
    text = answer["response"].strip()
    ends = [m.start() for m in re.finditer(r"\s+", text)] + [len(text)]
    for copy in (1, 2):
        k = rng.randint(1, len(ends))
        prefill = text[: ends[k - 1]]
        recovery.append({
            "id": f"recovery-{copy}/" + s["id"], "source": "safeinstr-recovery", "label": "safe",
            "messages": [s["messages"][0], {"role": "assistant", "content": prefill + " " + refusal}],
            "prefill": prefill,
        })
mixed = align + recovery
random.Random(0).shuffle(mixed)
with open(f"{out}/align_recovery.jsonl", "w") as f:
    f.writelines(json.dumps(x) + "\n" for x in mixed)
print(f"{len(recovery)} recovery examples; align set {len(align)} -> {len(mixed)}")
PY
"$seal" align --model "$base" --data "$out/align_recovery.jsonl" --out "$out/aligned-recovery" \
    --epochs 1 --batch 8 --lr 5e-4 --schedule cosine --max-len 384 --seed 0 --threads 1 --no-progress --force \
    > "$out/align.log" 2>&1
pids=()
# Seeds 1 and 2, one process and one thread each, side by side (as measured).
for seed in 1 2; do
    OMP_NUM_THREADS=1 "$seal" dose --config configs/replication.toml --shared "$shared" \
        --out "$out/dose-s$seed" --aligned "$out/aligned-recovery" --eval-limit 50 --finetune 100 \
        --ratios 0.2 --gate-ratio 0.2 --seeds "$seed" --epochs 5 --lr 5e-4 --force \
        > "$out/dose-s$seed.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
for seed in 1 2; do grep -A3 "^| condition" "$out/dose-s$seed/dose.md"; done
