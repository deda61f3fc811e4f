#!/usr/bin/env bash
# How hard must fine-tuning push before it erodes the aligned model's safety?
# Fine-tunes the replication's aligned model on the whole pool (`full`) and
# on its benign part (`oracle`) for more epochs and a higher learning rate
# than configs/replication.toml, then measures the attack success rate on
# the same 25 AdvBench prompts. The measurement behind "Attack strength" in
# docs/pipeline.md.
#
#   scripts/attack_strength.sh [REPLICATION_DIR] [DATA_DIR] [EPOCHS] [LR]
#
# REPLICATION_DIR: the output of `cargo xtask replicate` (default
# target/replication/small), whose cache holds the aligned model; DATA_DIR:
# its benchmark (default target/seal-bench/small).
# About 4 minutes per method on a 2-core CPU at 3 epochs.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-target/replication/small}
data=${2:-target/seal-bench/small}
epochs=${3:-3}
lr=${4:-5e-4}
seal=target/release/seal
cargo build --release -p seal-cli
aligned=$(ls -d "$run"/cache/aligned-* | head -1)
out="$run/attack-e$epochs-lr$lr"
mkdir -p "$out"
"$seal" select --rule oracle --dataset "$data/finetune.jsonl" --out "$out/benign_ids.txt"
for method in full oracle; do
    kept=()
    [ "$method" = oracle ] && kept=(--kept "$out/benign_ids.txt")
    "$seal" finetune --model "$aligned" --data "$data/finetune.jsonl" "${kept[@]}" \
        --out "$out/$method" --epochs "$epochs" --lr "$lr" --max-len 384 --seed 1 --no-progress
    "$seal" eval --model "$aligned" --adapter "$out/$method" --safety "$data/eval_safety.jsonl" \
        --limit 25 --max-new-tokens 48 --batch 25 --out "$out/$method-eval" >/dev/null
    echo "$method (epochs $epochs, lr $lr): $(grep -E '^\| Attack success rate ' "$out/$method-eval/report.md" | tr -s ' |' ' ')"
done
