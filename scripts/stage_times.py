#!/usr/bin/env python3
"""Stage times of pipeline runs, side by side, as a Markdown table.

    python3 scripts/stage_times.py LABEL=OUT_DIR [LABEL=OUT_DIR ...] [--methods a,b] [--solvers c]

Each OUT_DIR is a `seal pipeline --out` directory (or a `results.json`
itself, such as docs/results/replication.json); its `results.json` gives
the time of every stage the run computed: the original model's evaluation,
alignment (blank when it came from the cache), the aligned model's
evaluation, each ranker (mean over seeds) and each method's selection,
fine-tuning and evaluation (mean over seeds; over the seeds where the
method ran its own fine-tuning when it reused another's, `reused_from`, in
some). A stage a run did not compute is shown as "–". The last row adds
up every listed stage over all seeds: what a run of only those methods
(`--methods`) and rankers (`--solvers`) would have spent, reused runs
counted as run once. One run's own times are also in its `seal report`; this
compares runs. docs/pipeline.md ("Cost on a 2-core CPU") is condensed from it.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path


def load(path: Path) -> dict:
    results = path if path.suffix == ".json" else path / "results.json"
    try:
        return json.loads(results.read_text())
    except FileNotFoundError:
        sys.exit(f"{results}: no such file (give a pipeline output directory or a results.json)")
    except json.JSONDecodeError as e:
        sys.exit(f"{results}: not JSON ({e})")


def stages(result: dict, methods: set | None, solvers: set | None) -> tuple:
    """Stage name -> seconds (means over seeds) of one run, and the sum of
    those stages over all seeds."""
    out = {}
    total = 0.0
    base = result.get("base_eval") or {}
    if "seconds" in base:
        out["evaluation, original model"] = base["seconds"]
        total += base["seconds"]
    aligned = result.get("aligned") or {}
    if aligned and not aligned.get("cached", False):
        out["alignment"] = aligned.get("seconds")
        total += aligned.get("seconds") or 0.0
    aligned_eval = result.get("aligned_eval") or {}
    if "seconds" in aligned_eval:
        out["evaluation, aligned model"] = aligned_eval["seconds"]
        total += aligned_eval["seconds"]
    for solver, rs in by_name(result.get("rankers", []), "solver", solvers).items():
        out[f"ranking `{solver}` ({rs[0].get('steps')} steps)"] = mean(rs, "seconds")
        total += sum(r["seconds"] for r in rs)
    for method, rs in by_name(result.get("runs", []), "method", methods).items():
        out[f"`{method}`: selection"] = mean(rs, "select_seconds")
        total += sum(r["select_seconds"] for r in rs)
        # A run that reused an earlier method's fine-tuning (`reused_from`)
        # computed neither stage: the means are over the seeds that did.
        own = [r for r in rs if not r.get("reused_from")]
        reused = len(rs) - len(own)
        if reused:
            out[f"`{method}`: reused another method's run in {reused} of {len(rs)} seed(s)"] = 0.0
        if own:
            out[f"`{method}`: fine-tuning ({own[0].get('steps')} steps)"] = mean(own, "finetune_seconds")
            out[f"`{method}`: evaluation"] = statistics.mean(r["eval"]["seconds"] for r in own)
            total += sum(r["finetune_seconds"] + r["eval"]["seconds"] for r in own)
    return out, total


def by_name(records: list, key: str, keep: set | None) -> dict:
    """Records grouped by `record[key]` (one per seed), in first-seen order."""
    groups: dict = {}
    for r in records:
        if keep is None or r[key] in keep:
            groups.setdefault(r[key], []).append(r)
    return groups


def mean(records: list, field: str) -> float:
    return statistics.mean(r[field] for r in records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="LABEL=OUT_DIR")
    ap.add_argument("--methods", help="only these methods (comma-separated)")
    ap.add_argument("--solvers", help="only these rankers (comma-separated)")
    args = ap.parse_args()
    methods = set(args.methods.split(",")) if args.methods else None
    solvers = set(args.solvers.split(",")) if args.solvers else None
    columns = []
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            sys.exit(f"{spec!r}: expected LABEL=OUT_DIR")
        columns.append((label, *stages(load(Path(path)), methods, solvers)))
    rows: list = []
    for _, times, _ in columns:
        rows += [k for k in times if k not in rows]
    print("| stage | " + " | ".join(f"{label} (s)" for label, _, _ in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for row in rows:
        cells = []
        for _, times, _ in columns:
            t = times.get(row)
            cells.append("–" if t is None else f"{t:.1f}")
        print(f"| {row} | " + " | ".join(cells) + " |")
    totals = " | ".join(f"{total:.1f} ({total / 60:.1f} min)" for _, _, total in columns)
    print(f"| **these stages, all seeds** | {totals} |")


if __name__ == "__main__":
    main()
