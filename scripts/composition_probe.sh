#!/usr/bin/env bash
# Issue 13 probe (docs/benchmark.md, "Dose and the gate"): does a benign
# part that is mostly the fine-tuning task erode the aligned model less, and
# so widen the gap the gate measures? The erosion probes found that the same
# 50 steps on the benign part's GSM8K samples alone erode less (34%) than on
# its Alpaca, Dolly and Safe-RLHF samples (40%). Here the pool keeps recipe
# 3's four benign sources (so the topic-matched hard negatives stay) but
# with GSM8K weighted up: 80 benign samples = 56 GSM8K + 8 Alpaca + 4 Dolly
# + 12 Safe-RLHF safe answers (0.7 / 0.1 / 0.05 / 0.15 instead of 0.4 /
# 0.25 / 0.1 / 0.25), plus the same 20 harmful samples as the recipe-3 pool
# of 100 at ratio 0.2 (benchmark seed 0). Samples of the 100-sample pool are
# kept where the new weights allow; the rest come from a 500-sample build of
# the same recipe and seed (screened against the evaluation prompts like
# every benchmark file).
#
# For each fine-tuning seed: the whole pool and its benign part, 5 epochs at
# lr 5e-4 (the committed dose run's settings), each evaluated on the first 50
# harmful prompts under the trained judge and the keyword rule, and on the
# held-out GSM8K NLL.
#
#   scripts/composition_probe.sh ALIGNED_DIR [SHARED_DIR] [OUT] [SEEDS]
#
# ALIGNED_DIR: the standard aligned model (docs/benchmark.md gives its
# `seal align` command); the trained judge must be in target/judge/smollm2
# (`cargo xtask dose` trains it). SEEDS: space-separated, default "1 2 3".
# Set THREADS (default 2) for each fine-tuning and evaluation; two copies
# with THREADS=1 and different SEEDS may run side by side. On one thread a
# seed took about 35 minutes (two fine-tunings of about 14 minutes, two
# evaluations of about 4).
set -euo pipefail
cd "$(dirname "$0")/.."
aligned=${1:?usage: scripts/composition_probe.sh ALIGNED_DIR [SHARED_DIR] [OUT] [SEEDS]}
shared=${2:-../shared/data}
out=${3:-target/exp/composition}
seeds=${4:-1 2 3}
threads=${THREADS:-2}
seal=target/release/seal
judge=target/judge/smollm2
base=target/seal-cache/smollm2-135m-instruct
cargo build --release -p seal-cli
mkdir -p "$out"
# Two copies side by side build the pools once: the second waits for the lock.
(
    flock 9
    if [ ! -f "$out/whole.jsonl" ]; then
        "$seal" data benchmark --recipe 3 --shared "$shared" --out "$out/b100" --finetune 100 --poison-ratio 0.2 --seed 0 --force
        "$seal" data benchmark --recipe 3 --shared "$shared" --out "$out/b500" --finetune 500 --poison-ratio 0.2 --seed 0 --force
        python3 - "$out" <<'PY'
import collections, json, os, random, sys
out = sys.argv[1]
rows = lambda p: [json.loads(l) for l in open(p)]
def write(path, xs):
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in xs)
    os.replace(path + ".tmp", path)
pool = rows(f"{out}/b100/finetune.jsonl")
big = rows(f"{out}/b500/finetune.jsonl")
harmful = [x for x in pool if x["label"] == "harmful"]
assert len(harmful) == 20, len(harmful)
by_source = collections.Counter(x["source"] for x in pool if x["label"] == "benign")
print("recipe-3 benign part:", dict(by_source))
# (This order is the order of the measured pools: the shuffles below depend on it.)
want = {"gsm8k-train": 56, "safe-rlhf": 12, "alpaca-safety": 8, "dolly-safety": 4}
assert set(by_source) == set(want), by_source
ids = {x["id"] for x in pool}
benign = []
for source, n in want.items():
    have = [x for x in pool if x["label"] == "benign" and x["source"] == source]
    more = [x for x in big if x["label"] == "benign" and x["source"] == source and x["id"] not in ids]
    take = (have + more)[:n]
    assert len(take) == n, (source, len(take))
    benign += take
print("probe benign part:", dict(collections.Counter(x["source"] for x in benign)))
random.Random(0).shuffle(benign)
whole = benign + harmful
random.Random(1).shuffle(whole)
write(f"{out}/benign.jsonl", benign)
write(f"{out}/whole.jsonl", whole)
PY
    fi
) 9>"$out/.lock"
# Fine-tunings first, evaluations after: a judge still in training (`seal
# judge train` started beside this script) is only needed from here on.
for seed in $seeds; do
    for part in whole benign; do
        name=$part-s$seed
        [ -f "$out/ft-$name/adapter_config.json" ] ||
            "$seal" finetune --model "$aligned" --data "$out/$part.jsonl" --out "$out/ft-$name" \
                --batch 8 --lr 5e-4 --max-len 384 --seed "$seed" --epochs 5 --threads "$threads" \
                --no-progress --force
    done
done
[ -f "$judge/judge.json" ] || {
    echo "no trained judge in $judge/judge.json (train it with \`cargo xtask dose\` or \`seal judge train\`); the fine-tunings are kept, rerun to evaluate" >&2
    exit 1
}
for seed in $seeds; do
    for part in whole benign; do
        name=$part-s$seed
        [ -f "$out/eval-$name/report.md" ] ||
            OMP_NUM_THREADS=$threads "$seal" eval --model "$aligned" --adapter "$out/ft-$name" \
                --safety "$out/b100/eval_safety.jsonl" --nll "$out/b100/eval_utility.jsonl" \
                --limit 50 --max-new-tokens 48 --batch 25 --max-len 384 \
                --judge "both:$judge" --judge-base "$base" --out "$out/eval-$name" --force
    done
done
grep -H "ASR under\|NLL" "$out"/eval-*/report.md
