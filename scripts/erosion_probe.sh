#!/usr/bin/env bash
# Where does the benign part's erosion come from, and how much more do
# explicit harmful answers add? The two probes of docs/benchmark.md ("Dose
# and the gate"), on the recipe-3 pool of 100 samples at ratio 0.2
# (benchmark seed 0), fine-tuning seed 1, 5 epochs at lr 5e-4:
#
#   A: the pool's benign part without its Safe-RLHF safe answers (GSM8K,
#      Alpaca, Dolly), capped at the 50 steps the whole benign part takes;
#   B: the benign part plus 20 `pure_bad` answers (the 8 of the pool and 12
#      more from a 500-sample build of the same recipe and seed, none
#      containing an evaluation prompt) in place of the mixed harmful part.
#
# Each is evaluated on the first 50 harmful prompts under the trained judge
# and the keyword rule.
#
#   scripts/erosion_probe.sh ALIGNED_DIR [SHARED_DIR] [OUT]
#
# ALIGNED_DIR: the aligned model (docs/benchmark.md gives its `seal align`
# command); the trained judge must be in target/judge/smollm2 (`cargo xtask
# dose` trains it). About 12 minutes per probe on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
aligned=${1:?usage: scripts/erosion_probe.sh ALIGNED_DIR [SHARED_DIR] [OUT]}
shared=${2:-../shared/data}
out=${3:-target/erosion-probe}
seal=target/release/seal
cargo build --release -p seal-cli
mkdir -p "$out"
"$seal" data benchmark --recipe 3 --shared "$shared" --out "$out/b100" --finetune 100 --poison-ratio 0.2 --seed 0 --force
"$seal" data benchmark --recipe 3 --shared "$shared" --out "$out/b500" --finetune 500 --poison-ratio 0.2 --seed 0 --force
python3 - "$out" <<'PY'
import json, random, re, sys
out = sys.argv[1]
def rows(path):
    return [json.loads(l) for l in open(path)]
def norm(t):
    return " ".join(re.findall(r"\w+", t.lower()))
def write(path, xs):
    with open(path, "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in xs)
pool = rows(f"{out}/b100/finetune.jsonl")
benign = [x for x in pool if x["label"] == "benign"]
write(f"{out}/probe_a.jsonl", [x for x in benign if x["source"] != "safe-rlhf"])
have = [x for x in pool if x["source"] == "pure-bad"]
ids = {x["id"] for x in pool}
prompts = [norm(x["messages"][-1]["content"]) for x in rows(f"{out}/b100/eval_safety.jsonl")]
def clean(x):
    user = " " + norm(" ".join(m["content"] for m in x["messages"] if m["role"] == "user")) + " "
    return not any(" " + p + " " in user for p in prompts)
more = [x for x in rows(f"{out}/b500/finetune.jsonl")
        if x["source"] == "pure-bad" and x["id"] not in ids and clean(x)]
probe_b = benign + have + more[: 20 - len(have)]
assert sum(x["label"] == "harmful" for x in probe_b) == 20
random.Random(0).shuffle(probe_b)
write(f"{out}/probe_b.jsonl", probe_b)
PY
probe() {
    local name=$1
    shift
    "$seal" finetune --model "$aligned" --data "$out/probe_$name.jsonl" --out "$out/ft-$name" \
        --batch 8 --lr 5e-4 --max-len 384 --seed 1 --no-progress --force "$@"
    "$seal" eval --model "$aligned" --adapter "$out/ft-$name" --safety "$out/b100/eval_safety.jsonl" \
        --limit 50 --max-new-tokens 48 --batch 25 --max-len 384 \
        --judge both:target/judge/smollm2 --judge-base target/seal-cache/smollm2-135m-instruct \
        --out "$out/eval-$name" --force
}
probe a --epochs 7 --max-steps 50
probe b --epochs 5
grep -H "ASR under" "$out"/eval-*/report.md
