#!/usr/bin/env bash
# GSM8K exact-match accuracy of the original and the aligned SmolLM2 at a
# generation budget long enough for a worked solution: the measurement
# behind "GSM8K accuracy on CPU" in docs/pipeline.md (why the CPU
# replication reports the held-out GSM8K NLL and leaves exact match off).
#
#   scripts/gsm8k_accuracy.sh [REPLICATION_DIR] [DATA_DIR] [LIMIT] [MAX_NEW_TOKENS]
#
# REPLICATION_DIR: the output of `cargo xtask replicate` (default
# target/replication/small), whose cache holds the imported and the aligned
# model; DATA_DIR: its benchmark (default target/seal-bench/small). About 1-2 minutes per model for 50 prompts on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-target/replication/small}
data=${2:-target/seal-bench/small}
limit=${3:-50}
tokens=${4:-256}
seal=target/release/seal
cargo build --release -p seal-cli
for model in "$run"/cache/SmolLM2-* "$run"/cache/aligned-*; do
    [ -f "$model/config.json" ] || continue
    out="$run/gsm8k-$(basename "$model")-$limit-$tokens"
    "$seal" eval --model "$model" --utility "$data/eval_utility.jsonl" \
        --limit "$limit" --max-new-tokens "$tokens" --batch 25 --out "$out" >/dev/null
    echo "$(basename "$model"): $(grep -iE '^\| *accuracy' "$out/report.md" | tr -s ' |' ' ')"
done
