#!/usr/bin/env bash
# GSM8K exact-match accuracy of every model of a replication run at a
# generation budget long enough for a worked solution: the original and the
# aligned SmolLM2, and (with `all`) each fine-tuned adapter of each seed and
# method, on the aligned model it was trained from. The CPU replication
# leaves exact match off during the run (at its 48 new tokens no solution is
# finished) and this script fills the column afterwards from the adapters
# the run kept.
#
#   scripts/gsm8k_accuracy.sh [REPLICATION_DIR] [DATA_DIR] [LIMIT] [MAX_NEW_TOKENS] [all]
#
# REPLICATION_DIR: the output of `cargo xtask replicate` (default
# target/replication/small), whose cache holds the imported and the aligned
# model; DATA_DIR: its benchmark (default target/seal-bench/small); LIMIT:
# prompts of eval_utility.jsonl (default 50); MAX_NEW_TOKENS (default 256).
# With `all`, the per-method table (mean ± std over seeds) is written to
# REPLICATION_DIR/gsm8k-accuracy-LIMIT-MAX_NEW_TOKENS.{md,json}. About one
# minute per model for 25 prompts on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-target/replication/small}
data=${2:-target/seal-bench/small}
limit=${3:-50}
tokens=${4:-256}
scope=${5:-models}
seal=target/release/seal
cargo build --release -p seal-cli

# evaluate MODEL_DIR OUT_DIR [ADAPTER]: prints the accuracy.
evaluate() {
    local model=$1 out=$2 adapter=${3:-}
    if [ ! -f "$out/report.json" ]; then
        "$seal" eval --model "$model" ${adapter:+--adapter "$adapter"} \
            --utility "$data/eval_utility.jsonl" --limit "$limit" \
            --max-new-tokens "$tokens" --batch 25 --out "$out" >/dev/null 2>"$out.log" ||
            { cat "$out.log" >&2; exit 1; }
    fi
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics"]["gsm8k.accuracy"])' \
        "$out/report.json"
}

aligned=""
for model in "$run"/cache/SmolLM2-* "$run"/cache/aligned-*; do
    [ -f "$model/config.json" ] || continue
    case "$(basename "$model")" in aligned-*) aligned=$model ;; esac
    acc=$(evaluate "$model" "$run/gsm8k-$(basename "$model")-$limit-$tokens")
    echo "$(basename "$model"): accuracy $acc"
done
[ "$scope" = all ] || exit 0
[ -n "$aligned" ] || { echo "no aligned model under $run/cache" >&2; exit 1; }

results=$run/gsm8k-accuracy-$limit-$tokens.tsv
: > "$results"
for adapter in "$run"/seed-*/*/adapter; do
    [ -f "$adapter/adapter_config.json" ] || continue
    method_dir=$(dirname "$adapter")
    method=$(basename "$method_dir")
    seed=$(basename "$(dirname "$method_dir")")
    acc=$(evaluate "$aligned" "$method_dir/gsm8k-$limit-$tokens" "$adapter")
    echo "$seed $method: accuracy $acc"
    printf '%s\t%s\t%s\n' "$seed" "$method" "$acc" >> "$results"
done

python3 - "$results" "$run" "$limit" "$tokens" <<'EOF'
import json, statistics, sys
path, run, limit, tokens = sys.argv[1:]
rows = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
by = {}
for seed, method, acc in rows:
    by.setdefault(method, {})[seed] = float(acc)
out = {"limit": int(limit), "max_new_tokens": int(tokens), "methods": by}
stem = f"{run}/gsm8k-accuracy-{limit}-{tokens}"
json.dump(out, open(stem + ".json", "w"), indent=1, sort_keys=True)
seeds = sorted({s for s, _, _ in rows})
lines = [f"| method | {' | '.join(seeds)} | mean ± std |", "|---" * (len(seeds) + 2) + "|"]
for method, accs in by.items():
    vals = [accs[s] for s in seeds if s in accs]
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    cells = " | ".join(f"{accs[s]:.2f}" if s in accs else "–" for s in seeds)
    lines.append(f"| {method} | {cells} | {statistics.mean(vals):.3f} ± {std:.3f} |")
open(stem + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"written to {stem}.md and {stem}.json")
EOF
