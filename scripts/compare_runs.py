"""Compares two pipeline runs' selections and metrics, ignoring times.

Used for before/after checks of refactors: the same config and seed run by
two builds must keep the same samples (every `kept_ids.txt`) and report the
same numbers (`results.json`: runs, rankers, the original and aligned
models' evaluations), up to `--tol` (default 0: exactly).

    python3 scripts/compare_runs.py OUT_BEFORE OUT_AFTER [--tol 1e-9] [--common]

`--common` compares only what both runs finished (method runs matched by
seed and method, rankers by seed and solver, kept-id files present in
both) and lists what only one of them has: for a run still going or
stopped, to be finished with `--resume`.

Exit status 0 when they agree, 1 with the differences listed otherwise.

`scripts/determinism.py --compare` is the check for two runs of one build
(every file byte for byte); across builds it would flag fields and files a
newer build adds, and its timing filter also drops metric keys such as
`*_rate`. Here only wall-clock keys are ignored.
"""
import argparse
import json
import os
import sys

# Wall-clock fields.
IGNORED = {"seconds", "select_seconds", "finetune_seconds", "seconds_per_step", "tokens_per_second"}


def empty(v):
    return v in (None, {}, [])


def walk(a, b, where, tol, out):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in IGNORED:
                continue
            if k not in a or k not in b:
                # A field added by the newer build, empty on this run.
                if empty(a.get(k)) and empty(b.get(k)):
                    continue
                out.append(f"{where}.{k}: only in {'after' if k in b else 'before'}")
                continue
            walk(a[k], b[k], f"{where}.{k}", tol, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} vs {len(b)} entries")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            # Method runs and rankers are named by seed and method or solver.
            name = x.get("method") or x.get("solver") if isinstance(x, dict) else None
            label = f"[seed {x.get('seed')} {name}]" if isinstance(name, str) else f"[{i}]"
            walk(x, y, f"{where}{label}", tol, out)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if abs(a - b) > tol:
            out.append(f"{where}: {a!r} vs {b!r}")
    elif a != b:
        out.append(f"{where}: {a!r} vs {b!r}")


def kept_id_files(out):
    """Relative paths of every `kept_ids.txt` of a run (the model cache skipped)."""
    found = set()
    for root, dirs, files in os.walk(out):
        if root == out and "cache" in dirs:
            dirs.remove("cache")
        if "kept_ids.txt" in files:
            found.add(os.path.relpath(os.path.join(root, "kept_ids.txt"), out))
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--tol", type=float, default=0.0)
    ap.add_argument("--common", action="store_true", help="compare only what both runs finished")
    args = ap.parse_args()
    with open(os.path.join(args.before, "results.json")) as f:
        before = json.load(f)
    with open(os.path.join(args.after, "results.json")) as f:
        after = json.load(f)
    diffs = []
    missing = []
    if args.common:
        for key, name in (("runs", "method"), ("rankers", "solver")):
            b = {(r["seed"], r[name]): r for r in before.get(key, [])}
            a = {(r["seed"], r[name]): r for r in after.get(key, [])}
            missing += [f"{key} {k}: only {'after' if k in a else 'before'}" for k in sorted(set(a) ^ set(b))]
            common = sorted(set(a) & set(b))
            before[key] = [b[k] for k in common]
            after[key] = [a[k] for k in common]
    for key in ("runs", "rankers", "base_eval", "aligned_eval", "data"):
        walk(before.get(key), after.get(key), key, args.tol, diffs)
    kept_before, kept_after = kept_id_files(args.before), kept_id_files(args.after)
    for rel in sorted(kept_before ^ kept_after):
        (missing if args.common else diffs).append(f"{rel}: only {'after' if rel in kept_after else 'before'}")
    for rel in sorted(kept_before & kept_after):
        with open(os.path.join(args.before, rel)) as f, open(os.path.join(args.after, rel)) as g:
            if f.read() != g.read():
                diffs.append(f"{rel}: different kept ids")
    methods = len(before.get("runs", []))
    if missing:
        print(f"not compared ({len(missing)}, finished by one run only):")
        for m in missing:
            print("  " + m)
    if diffs:
        print(f"{len(diffs)} differences:")
        for d in diffs:
            print("  " + d)
        sys.exit(1)
    print(f"same: {methods} method runs, {len(before.get('rankers', []))} rankers, {len(kept_before & kept_after)} kept-id files (tol {args.tol})")


if __name__ == "__main__":
    main()
