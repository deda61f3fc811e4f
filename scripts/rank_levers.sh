#!/usr/bin/env bash
# Issue 14's levers on the current benchmark: ranker AUROC (benign above
# harmful) and harmful samples kept by top-80% for every SEAL variant the
# issue names, each by `seal lambda-sweep` from configs/replication.toml
# with `--set` overrides, 3 seeds, then one table (levers.md, from
# scripts/rank_levers_table.py).
#
#   scripts/rank_levers.sh OUT [VARIANT ...]
#
# Variants (all: the config's aligned model, recipe-4 small pool of 100
# samples with 20 harmful, safe set of 40; λ decays 0.03 per epoch):
#   seal-lambda      memory-efficient penalty, 1 epoch, λ 1, 0.75, 0.5, 0.25
#                    (below 1 the model also trains on the weighted pool)
#   seal-3ep         the same at 3 epochs, λ 1 and 0.5
#   seal-lr5e-4      model lr 5e-4 (5x), λ 0.5 and 0.25: the model fits the
#                    weighted pool faster
#   seal-official    --preset official: Adam 5e-3, clipping 10, LoRA α 16,
#                    model lr 1e-5, 3 epochs of the shorter loader, λ 1
#   full-default     full penalty, θ̂ warm-started by 50 task steps, 2 inner
#                    steps, ℓ(θ̂) read after its update; λ 1 and 0.5
#   full-warm200     the same with 200 warm-start steps (θ̂ nearer a task
#                    solution), λ 1
#   full-warm200-inner5-lr5   and 5 inner steps at 5x the model's rate, λ 1
#   full-sft         θ̂ warm-started as the `full` method's fine-tuning (50
#                    steps at 5e-4: 5x the model's rate), 2 inner steps, λ 1
#   full-cold        the old behaviour: θ̂ starts as the model, ℓ(θ̂) read
#                    before its update, λ 1
#   full-warm400-lr10  θ̂ fitted hard: 400 warm-start steps, 10x the model's
#                    rate, λ 1
# Without VARIANT arguments, all of them in this order. Environment:
#   SEAL      the binary (default target/release/seal)
#   CONFIG    the pipeline config (default configs/replication.toml)
#   DATA      its benchmark directory override (default: the config's)
#   SEEDS     default 1,2,3
#   SET       extra `--set` overrides for every variant (space-separated,
#             e.g. "device=cuda cache_dir=/tmp/cache")
#   DEADLINE  stop starting new rankings after this many seconds (the
#             variant that runs out is continued by rerunning: each sweep
#             resumes from its lambda_sweep.json)
# Wall time: on one H200 about 6 minutes for everything; on the 2-core CPU
# the seal variants take about 50 s per ranking epoch and the full penalty
# about 6 minutes per ranking (hours in all: run a few variants at a time).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/rank_levers.sh OUT [VARIANT ...]}
shift
seal=${SEAL:-target/release/seal}
config=${CONFIG:-configs/replication.toml}
seeds=${SEEDS:-1,2,3}
deadline=${DEADLINE:-100000}
start=$(date +%s)
mkdir -p "$out"

# name | solver | λ values | overrides
variants=(
    "seal-lambda|seal|1,0.75,0.5,0.25|"
    "seal-3ep|seal|1,0.5|rank.epochs=3"
    "seal-lr5e-4|seal|0.5,0.25|rank.lr=5e-4"
    "seal-official|seal|1|rank.preset=official rank.epochs= rank.lr= rank.ranker_lr= rank.ranker_optimizer= rank.bucket= rank.lambda_decay="
    "full-default|seal-full|1,0.5|"
    "full-warm200|seal-full|1|rank.full.warm_start_steps=200"
    "full-warm200-inner5-lr5|seal-full|1|rank.full.warm_start_steps=200 rank.full.inner_steps=5 rank.full.lr_scale=5.0"
    "full-sft|seal-full|1|rank.full.lr_scale=5.0"
    "full-cold|seal-full|1|rank.full.warm_start_steps=0 rank.full.read_after_update=false"
    "full-warm400-lr10|seal-full|1|rank.full.warm_start_steps=400 rank.full.lr_scale=10.0"
)
wanted=" $* "
for v in "${variants[@]}"; do
    IFS='|' read -r name solver lambdas sets <<< "$v"
    [ $# -gt 0 ] && [[ "$wanted" != *" $name "* ]] && continue
    left=$(( deadline - ($(date +%s) - start) ))
    if [ "$left" -le 10 ]; then
        echo "deadline reached before $name" | tee -a "$out/levers.log"
        break
    fi
    args=()
    for s in $sets ${SET:-}; do args+=(--set "$s"); done
    [ -n "${DATA:-}" ] && args+=(--data "$DATA")
    resume=()
    [ -f "$out/$name/lambda_sweep.json" ] && resume=(--resume)
    echo "== $name ($solver, λ $lambdas; $sets) budget ${left} s" | tee -a "$out/levers.log"
    t0=$(date +%s)
    timeout "$left" "$seal" lambda-sweep --config "$config" --out "$out/$name" \
        --solver "$solver" --lambdas "$lambdas" --seeds "$seeds" "${args[@]}" "${resume[@]}" \
        2>&1 | grep -E 'ranker trained|error|Error|kept from|^\|' >> "$out/levers.log"
    echo "== $name exit ${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s" | tee -a "$out/levers.log"
done
python3 scripts/rank_levers_table.py "$out" > "$out/levers.md" && cat "$out/levers.md"
