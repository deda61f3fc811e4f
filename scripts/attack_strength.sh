#!/usr/bin/env bash
# How hard must fine-tuning push before it erodes the aligned model's safety?
# Fine-tunes the replication's aligned model on the whole pool (`full`) and
# on its benign part (`oracle`) for more epochs and a higher learning rate
# than configs/replication.toml, then measures the attack success rate on
# the same 25 AdvBench prompts. The measurement behind "Attack strength" in
# docs/pipeline.md.
#
#   scripts/attack_strength.sh [REPLICATION_DIR] [EPOCHS] [LR]
#
# About 4 minutes per method on a 2-core CPU at 3 epochs.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-target/replication/small}
epochs=${2:-3}
lr=${3:-5e-4}
seal=target/release/seal
cargo build --release -p seal-cli
data=$(sed -n 's/^dir = "\(.*\)"$/\1/p' "$run/config.toml" | head -1)
aligned=$(ls -d "$run"/cache/aligned-* | head -1)
out="$run/attack-e$epochs-lr$lr"
mkdir -p "$out"
grep -v '"label":"harmful"' "$data/finetune.jsonl" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p' >"$out/benign_ids.txt"
for method in full oracle; do
    kept=()
    [ "$method" = oracle ] && kept=(--kept "$out/benign_ids.txt")
    "$seal" finetune --model "$aligned" --data "$data/finetune.jsonl" "${kept[@]}" \
        --out "$out/$method" --epochs "$epochs" --lr "$lr" --max-len 384 --seed 1 --no-progress
    "$seal" eval --model "$aligned" --adapter "$out/$method" --safety "$data/eval_safety.jsonl" \
        --limit 25 --max-new-tokens 48 --batch 25 --out "$out/$method-eval" >/dev/null
    echo "$method (epochs $epochs, lr $lr): $(grep -E '^\| Attack success rate ' "$out/$method-eval/report.md" | tr -s ' |' ' ')"
done
