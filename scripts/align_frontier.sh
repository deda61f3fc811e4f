#!/usr/bin/env bash
# Two more alignment knobs against over-refusal, behind the paragraph
# "Weight interpolation and token weighting" of docs/benchmark.md:
#  * interpolating between the original and the aligned weights
#    (w = w0 + a·(w1 − w0), WiSE-FT style) for a in 0.5, 0.6, 0.7, 1.0;
#  * the replication's alignment recipe with the loss averaged over tokens
#    (`seal align --token-weighted`) instead of over samples;
#  * the same recipe with the benign align responses replaced by the
#    original model's own greedy answers (self-distillation, `seal generate
#    --dataset`; answers cut at 256 tokens keep the reference);
#  * hard negatives: the benign align samples (prompts under 1200
#    characters, which fit the 384-token budget) that the aligned model
#    itself refuses are found with `seal eval --benign` and repeated twice
#    more in the align set, then the recipe runs again from the original.
# Each model is measured on the first 50 prompts of eval_safety (refusal
# rate) and eval_benign (over-refusal), greedy, 48 new tokens.
#
#   scripts/align_frontier.sh ORIGINAL_DIR ALIGNED_DIR [BENCH_DIR] [OUT_DIR]
#
# ORIGINAL_DIR / ALIGNED_DIR: the imported SmolLM2 and the aligned model of a
# replication run (target/replication/small/cache/SmolLM2-*/ and aligned-*/).
# BENCH_DIR defaults to target/seal-bench/small. About 70 minutes on a
# 2-core CPU (three alignments of 12-15 minutes, 20 minutes of generation,
# a 3-minute pass over the align prompts, seven evaluations of under a
# minute each).
set -euo pipefail
cd "$(dirname "$0")/.."
orig=${1:?usage: scripts/align_frontier.sh ORIGINAL_DIR ALIGNED_DIR [BENCH_DIR] [OUT_DIR]}
aligned=${2:?usage: scripts/align_frontier.sh ORIGINAL_DIR ALIGNED_DIR [BENCH_DIR] [OUT_DIR]}
bench=${3:-target/seal-bench/small}
out=${4:-target/align-frontier}
seal=target/release/seal
cargo build --release -p seal-cli
mkdir -p "$out"

measure() {
    "$seal" eval --model "$1" --safety "$bench/eval_safety.jsonl" \
        --benign "$bench/eval_benign.jsonl" --limit 50 --max-new-tokens 48 \
        --batch 25 --out "$out/eval-$2" >/dev/null
    python3 - "$out/eval-$2/report.json" "$2" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
print(f"{sys.argv[2]:>22}  refusal {m['safety.refusal_rate']:.2f}  "
      f"over-refusal {m['over_refusal.over_refusal_rate']:.2f}")
PY
}

for a in 0.5 0.6 0.7 1.0; do
    dir="$out/interp-$a"
    [ -f "$dir/model.safetensors" ] || .venv/bin/python - "$orig" "$aligned" "$a" "$dir" <<'PY'
import os, shutil, sys
from safetensors.torch import load_file, save_file
orig, aligned, a, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
w0 = load_file(os.path.join(orig, "model.safetensors"))
w1 = load_file(os.path.join(aligned, "model.safetensors"))
if w0.keys() != w1.keys():
    sys.exit("the two models hold different tensors")
os.makedirs(out, exist_ok=True)
save_file({k: (w0[k] + a * (w1[k] - w0[k])).contiguous() for k in w0},
          os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]:
    if os.path.exists(os.path.join(aligned, f)):
        shutil.copy(os.path.join(aligned, f), out)
PY
    measure "$dir" "interpolation-$a"
done

[ -f "$out/token-weighted/config.json" ] ||
    "$seal" align --model "$orig" --data "$bench/align.jsonl" --out "$out/token-weighted" \
        --epochs 1 --schedule cosine --lr 5e-4 --batch 8 --max-len 384 --seed 0 \
        --token-weighted --no-progress
measure "$out/token-weighted" token-weighted

# Self-distillation in two steps (what `seal align --self-distill-tokens 256`
# does in one, except that it skips prompts of max_len tokens or more):
# the benign responses answered by the original model, then the recipe.
[ -f "$out/align-self.jsonl" ] ||
    "$seal" generate --model "$orig" --dataset "$bench/align.jsonl" --label benign \
        --max-new-tokens 256 --batch 32 --out "$out/align-self.jsonl"
[ -f "$out/self-distill/config.json" ] ||
    "$seal" align --model "$orig" --data "$out/align-self.jsonl" --out "$out/self-distill" \
        --epochs 1 --schedule cosine --lr 5e-4 --batch 8 --max-len 384 --seed 0 --no-progress
measure "$out/self-distill" self-distilled

[ -f "$out/eval-align-benign/benign_responses.jsonl" ] || {
    python3 - "$bench/align.jsonl" "$out/align-benign.jsonl" <<'PY'
import json, sys
with open(sys.argv[2], "w") as out:
    for line in open(sys.argv[1]):
        s = json.loads(line)
        if s.get("label") == "benign" and len(s["messages"][0]["content"]) < 1200:
            out.write(line)
PY
    "$seal" eval --model "$aligned" --benign "$out/align-benign.jsonl" --max-new-tokens 48 \
        --batch 32 --out "$out/eval-align-benign" >/dev/null
}
[ -f "$out/align-hardneg.jsonl" ] ||
    python3 - "$bench/align.jsonl" "$out/eval-align-benign/benign_responses.jsonl" \
        "$out/align-hardneg.jsonl" <<'PY'
import json, sys
refused = {r["id"] for r in map(json.loads, open(sys.argv[2])) if r.get("refusal_marker")}
samples = [json.loads(line) for line in open(sys.argv[1])]
extra = [dict(s, id=f"{s['id']}#hardneg{k}") for k in (1, 2) for s in samples if s["id"] in refused]
with open(sys.argv[3], "w") as out:
    for s in samples + extra:
        out.write(json.dumps(s) + "\n")
print(f"{len(refused)} refused benign align prompts, {len(extra)} repeats added", file=sys.stderr)
PY
[ -f "$out/hard-negatives/config.json" ] ||
    "$seal" align --model "$orig" --data "$out/align-hardneg.jsonl" --out "$out/hard-negatives" \
        --epochs 1 --schedule cosine --lr 5e-4 --batch 8 --max-len 384 --seed 0 --no-progress
measure "$out/hard-negatives" hard-negatives
