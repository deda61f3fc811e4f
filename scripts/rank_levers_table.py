#!/usr/bin/env python3
"""One Markdown table of the SEAL variants `scripts/rank_levers.sh` ranked.

    python3 scripts/rank_levers_table.py OUT
    python3 scripts/rank_levers_table.py OUT --best

Reads OUT/<variant>/lambda_sweep.json (written by `seal lambda-sweep`) and
prints, per variant and λ: the settings that differ from the config, the
ranker AUROC (benign above harmful; mean ± sample std over seeds), harmful
samples top-p keeps, ranker steps and seconds per ranking.

With --best it prints, one per line, the pipeline method of the variant and
λ with the highest mean AUROC over at least two seeds (`seal` or
`seal-full`) and the `--set` overrides that reproduce its whole `[rank]`
table, for `seal pipeline` (scripts/gpu_check.sh levers-best).
"""

import json
import statistics
import sys
from pathlib import Path

ORDER = [
    "seal-lambda",
    "seal-3ep",
    "seal-lr5e-4",
    "seal-official",
    "full-default",
    "full-warm200",
    "full-warm200-inner5-lr5",
    "full-sft",
    "full-cold",
    "full-warm400-lr10",
]


def mean_std(xs):
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def settings(cfg, solver):
    r = cfg["rank"]
    parts = [
        f"{r['epochs']} ep",
        f"lr {r['lr']:g}",
        f"ranker {r['ranker_optimizer']} {r['ranker_lr']:g}",
        f"clip {r['ranker_clip']:g}",
        f"α {r['lora']['alpha']:g}",
        f"epoch {r['epoch_length']}",
    ]
    if solver == "seal-full":
        f = r["full"]
        parts.append(
            f"θ̂ warm {f['warm_start_steps']}, inner {f['inner_steps']}, "
            f"lr×{f['lr_scale']:g}, read {'after' if f['read_after_update'] else 'before'}"
        )
    return "; ".join(parts)


def flatten(prefix, value):
    """`--set` overrides (KEY=TOML value) that write `value` at `prefix`."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from flatten(f"{prefix}.{k}", v)
    elif value is not None:
        yield f"{prefix}={json.dumps(value)}"


def best(found):
    cands = []
    for path in found.values():
        r = json.loads(path.read_text())
        for lam in r["sweep"]["lambdas"]:
            au = [x["auroc"] for x in r["runs"] if x["lambda"] == lam and x["auroc"] is not None]
            if len(au) >= 2:
                cands.append((statistics.mean(au), r, lam))
    if not cands:
        sys.exit("no variant has AUROCs of two seeds")
    _, r, lam = max(cands, key=lambda c: c[0])
    print(r["sweep"]["solver"])
    rank = dict(r["config"]["rank"], **{"lambda": lam})
    for line in flatten("rank", rank):
        print(line)


def main():
    out = Path(sys.argv[1])
    found = {p.parent.name: p for p in out.glob("*/lambda_sweep.json")}
    if "--best" in sys.argv[2:]:
        best(found)
        return
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    print("# SEAL variants on the current benchmark (issue 14's levers)\n")
    print("Made by `scripts/rank_levers.sh`; AUROC is benign above harmful, mean ± std over")
    print("seeds; harmful kept is of the pool's harmful samples among the top-p by logit.\n")
    print("| variant | solver | settings | λ (first epoch) | seeds | AUROC | harmful kept | steps | s per ranking |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        r = json.loads(found[name].read_text())
        solver = r["sweep"]["solver"]
        for lam in r["sweep"]["lambdas"]:
            runs = [x for x in r["runs"] if x["lambda"] == lam]
            if not runs:
                continue
            au = [x["auroc"] for x in runs if x["auroc"] is not None]
            kept = statistics.mean(x["harmful_kept"] for x in runs)
            secs = statistics.mean(x["seconds"] for x in runs)
            steps = runs[0]["steps"]
            print(
                f"| {name} | {solver} | {settings(r['config'], solver)} | {lam:g} | "
                f"{len(runs)} | {mean_std(au)} | {kept:.1f} of {r['harmful']} | {steps} | {secs:.1f} |"
            )


if __name__ == "__main__":
    main()
