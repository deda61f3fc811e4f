#!/usr/bin/env python3
"""AUROC of a ranking per data source: each benign source against all harmful
samples, and all benign samples against each harmful family.

    scripts/auroc_by_source.py SCORES.jsonl [SCORES.jsonl ...]

SCORES: a `scores.jsonl` of `seal rank` or the pipeline (`id`, `label`,
`score`; higher = kept). The source is the id's prefix before the first ':'
(`gsm8k-train:01992` -> `gsm8k-train`); JailbreakBench families
(`jbb/<attack>__...`) are grouped as `jbb`. Standard library only.
"""
import bisect
import json
import statistics
import sys


def auroc(pos, neg):
    """P(a positive scores above a negative), ties counting one half."""
    if not pos or not neg:
        return float("nan")
    neg = sorted(neg)
    total = 0.0
    for x in pos:
        lo = bisect.bisect_left(neg, x)
        hi = bisect.bisect_right(neg, x)
        total += lo + 0.5 * (hi - lo)
    return total / (len(pos) * len(neg))


def family(sample_id):
    src = sample_id.split(":", 1)[0]
    return "jbb" if src.startswith("jbb/") else src


def main(paths):
    if not paths:
        sys.exit(__doc__)
    for path in paths:
        rows = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                try:
                    r = json.loads(line)
                    rows.append((family(r["id"]), r["label"], float(r["score"])))
                except (ValueError, KeyError) as e:
                    sys.exit(f"{path}:{n}: {e}")
        harmful = [s for _, l, s in rows if l == "harmful"]
        benign = [s for _, l, s in rows if l == "benign"]
        print(f"{path}: AUROC benign above harmful {auroc(benign, harmful):.3f} "
              f"({len(benign)} benign, {len(harmful)} harmful)")
        for src in sorted({src for src, _, _ in rows}):
            scores = [s for f_, _, s in rows if f_ == src]
            label = {l for f_, l, _ in rows if f_ == src}
            if label == {"benign"}:
                a, what = auroc(scores, harmful), "this source above all harmful"
            else:
                a, what = auroc(benign, scores), "all benign above this source"
            print(f"  {src:22s} n={len(scores):5d}  mean score {statistics.mean(scores):+.4f}  "
                  f"AUROC ({what}) {a:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
