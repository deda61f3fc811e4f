#!/usr/bin/env bash
# A/B of two `seal` binaries on the same fine-tuning: the replication's
# bf16 fine-tuning on recipe 4's whole small pool, run alternately so that
# both see the same machine state. Prints wall time, peak RSS and minor page
# faults per run, and the loss of the last step (to see that both train the
# same way).
#
#   scripts/finetune_ab.sh BEFORE_BIN AFTER_BIN [STEPS] [ROUNDS]
#
# e.g. keep a copy of target/release/seal before a change, rebuild
# (`cargo build --release -p seal-cli`) and run
#   scripts/finetune_ab.sh /tmp/seal-before target/release/seal 30 2
# Needs the aligned model of configs/replication.toml in the stage cache
# (`cargo xtask replicate` or `cargo xtask dose` fills it; ALIGNED=DIR to
# give another) and the small benchmark (target/seal-bench/v4-small).
set -euo pipefail
before=${1:?before binary}
after=${2:?after binary}
steps=${3:-30}
rounds=${4:-2}
cd "$(dirname "$0")/.."
aligned=${ALIGNED:-$(ls -d target/seal-cache/pipeline/aligned-* | head -n 1)}
pool=${POOL:-target/seal-bench/v4-small/finetune.jsonl}
work=$(mktemp -d /tmp/finetune_ab.XXXXXX)
echo "aligned model: $aligned; pool: $pool; $steps steps; scratch: $work"
for round in $(seq 1 "$rounds"); do
  for side in before after; do
    bin=$before
    [ "$side" = after ] && bin=$after
    out="$work/$side-$round"
    /usr/bin/time -o "$out.time" -f "%e %M %R" "$bin" finetune --model "$aligned" \
      --data "$pool" --out "$out" --epochs 5 --batch 8 --max-len 384 --lr 5e-4 \
      --seed 1 --threads 2 --dtype bf16 --max-steps "$steps" >"$out.log" 2>&1
    read -r wall rss faults <"$out.time"
    loss=$(tail -n 1 "$out/train_log.jsonl" | sed -E 's/.*"loss":([0-9.e+-]+).*/\1/')
    printf '%-6s round %d: wall %7.2f s, peak RSS %5.2f GB, minor faults %5.1f M, last loss %s\n' \
      "$side" "$round" "$wall" "$(echo "$rss / 1048576" | bc -l)" "$(echo "$faults / 1000000" | bc -l)" "$loss"
  done
done
