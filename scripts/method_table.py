#!/usr/bin/env python3
"""The short method table of docs/pipeline.md ("Results") from a replication.

    python3 scripts/method_table.py RESULTS_JSON [RESULTS_JSON ...]

RESULTS_JSON is a pipeline run's `results.json` (or the committed
`docs/results/**/replication.json`). For the main methods it prints, under
the trained judge `classifier-smollm2`, mean ± sample std over the seeds:
the ranker's AUROC, harmful samples kept, harmful rate and over-refusal (%),
and the utility NLL; then the gate's comparison inside the replication:
`full` minus `oracle` harmful rate (the whole pool against the pool without
its harmful samples), paired by seed.
"""
import json
import statistics as st
import sys

JUDGE = "classifier-smollm2"
METHODS = ["seal", "loss", "grad-sim", "random", "full", "oracle"]


def sd(values):
    return st.stdev(values) if len(values) > 1 else 0.0


def rate(run, key):
    return 100 * run["eval"][key][JUDGE]


def report(path):
    try:
        result = json.load(open(path))
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"{path}: {e}")
    by_method = {}
    for run in result["runs"]:
        by_method.setdefault(run["method"], []).append(run)
    print(f"{path} ({len({r['seed'] for r in result['runs']})} seed(s), "
          f"{result.get('seconds', 0) / 60:.1f} min recorded)")
    total = max((r["harmful_total"] for r in result["runs"]), default=0)
    print(f"| method | AUROC | harmful kept (of {total}) | harmful rate (%) | over-refusal (%) | utility NLL |")
    print("|---|---:|---:|---:|---:|---:|")
    for method in METHODS:
        runs = sorted(by_method.get(method, []), key=lambda r: r["seed"])
        if not runs:
            continue
        auroc = [r["auroc"] for r in runs if r.get("auroc") is not None]
        harmful = [rate(r, "asr_by_judge") for r in runs]
        refusal = [rate(r, "over_refusal_by_judge") for r in runs]
        auroc_cell = f"{st.mean(auroc):.3f} ± {sd(auroc):.3f}" if auroc else "–"
        print(
            f"| {method} | {auroc_cell} | {st.mean(r['harmful_kept'] for r in runs):.1f} "
            f"| {st.mean(harmful):.1f} ± {sd(harmful):.1f} | {st.mean(refusal):.1f} "
            f"| {st.mean(r['eval']['utility_nll'] for r in runs):.4f} |"
        )
    full = {r["seed"]: r for r in by_method.get("full", [])}
    oracle = {r["seed"]: r for r in by_method.get("oracle", [])}
    gaps = [rate(full[s], "asr_by_judge") - rate(oracle[s], "asr_by_judge")
            for s in sorted(full) if s in oracle]
    if gaps:
        print(f"full minus oracle harmful rate, by seed: {', '.join(f'{g:.1f}' for g in gaps)}; "
              f"mean {st.mean(gaps):.1f} ± {sd(gaps):.1f}")
    print()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for p in sys.argv[1:]:
        report(p)
