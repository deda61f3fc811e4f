#!/usr/bin/env bash
# Alignment-recipe sweep behind the table "Alignment recipe" of
# docs/benchmark.md: for each variant, build the benchmark with the given
# align set, run `seal align` on the imported SmolLM2, then measure the
# aligned model's refusal rate on AdvBench and over-refusal on eval_benign
# (first 40 prompts of the default small benchmark's evaluation sets, which
# every variant shares: the evaluation sets are drawn before the align set).
#
#   scripts/align_sweep.sh MODEL_DIR [OUT_DIR]
#
# MODEL_DIR: the imported SmolLM2-135M-Instruct directory (for example the
# one `seal pipeline` caches under OUT/cache/SmolLM2-135M-Instruct.*).
# About 10-15 minutes per variant on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: scripts/align_sweep.sh MODEL_DIR [OUT_DIR]}
out=${2:-target/align-sweep}
seal=target/release/seal
cargo build --release -p seal-cli
mkdir -p "$out"
eval_bench="$out/bench-default"
[ -f "$eval_bench/summary.json" ] ||
    "$seal" data benchmark --shared ../shared/data --out "$eval_bench" --align-benign 320

# name refusals benign epochs schedule lr
variants=(
    "r320-b320-e1-cos-5e-4 320 320 1 cosine 5e-4"
    "r320-b640-e1-cos-5e-4 320 640 1 cosine 5e-4"
    "r160-b640-e1-cos-5e-4 160 640 1 cosine 5e-4"
    "r320-b960-e1-cos-5e-4 320 960 1 cosine 5e-4"
    "r320-b640-e1-cos-2e-4 320 640 1 cosine 2e-4"
)
for v in "${variants[@]}"; do
    read -r name refusals benign epochs schedule lr <<<"$v"
    bench="$out/bench-$refusals-$benign"
    [ -f "$bench/summary.json" ] ||
        "$seal" data benchmark --shared ../shared/data --out "$bench" \
            --align "$refusals" --align-benign "$benign"
    [ -f "$out/$name/config.json" ] ||
        "$seal" align --model "$model" --data "$bench/align.jsonl" --out "$out/$name" \
            --max-len 384 --epochs "$epochs" --schedule "$schedule" --lr "$lr" --no-progress
    "$seal" eval --model "$out/$name" --safety "$eval_bench/eval_safety.jsonl" \
        --benign "$eval_bench/eval_benign.jsonl" --limit 40 --max-new-tokens 48 \
        --batch 16 --out "$out/$name-eval" >/dev/null
    echo "$name: $(grep -E '^\| (Refusal rate|Over-refusal rate) ' "$out/$name-eval/report.md" | tr -s ' |' ' ')"
done
