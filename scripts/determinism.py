#!/usr/bin/env python3
"""Determinism report: runs the pipeline twice on the CPU with one seed and
compares every output file byte for byte.

Usage: scripts/determinism.py [--seal BIN] [--config FILE] [--seed N]
                              [--work DIR] [--report FILE] [--keep]

Both runs write into fresh directories under --work (default
target/determinism); nothing else is touched. Files that differ only in
timing fields (JSON keys naming seconds, times, rates or ETAs; Markdown
lines with such words) are listed as "equal but timings"; any other
difference is listed with its first differing line. Exit status 0 when
every file is equal apart from timings, 1 otherwise. The report is printed
and, with --report, written as Markdown.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

TIMING = re.compile(r"(second|seconds|_s$|^s$|time|elapsed|eta|per_s|/s|rate|minutes|min\b)", re.I)


def strip_timings(v):
    if isinstance(v, dict):
        return {k: strip_timings(x) for k, x in v.items() if not TIMING.search(k)}
    if isinstance(v, list):
        return [strip_timings(x) for x in v]
    return v


def normalise(path, data):
    """The file's content without timing fields, or None if not parseable."""
    name = path.lower()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if name.endswith(".json"):
        try:
            return json.dumps(strip_timings(json.loads(text)), sort_keys=True)
        except ValueError:
            return None
    if name.endswith(".jsonl"):
        out = []
        for line in text.splitlines():
            try:
                out.append(json.dumps(strip_timings(json.loads(line)), sort_keys=True))
            except ValueError:
                out.append(line)
        return "\n".join(out)
    if name.endswith((".md", ".toml", ".txt", ".svg")):
        timing_line = re.compile(r"(\d+(\.\d+)?\s*(s|min|ms)\b|seconds|tokens/s|elapsed)", re.I)
        return "\n".join(l for l in text.splitlines() if not timing_line.search(l))
    return None


def files(root):
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            yield os.path.relpath(p, root)


def first_diff(a, b):
    la, lb = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return f"line {i + 1}: `{x[:80]}` vs `{y[:80]}`"
    return f"{len(la)} vs {len(lb)} lines"


def main():
    ap = argparse.ArgumentParser()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--seal", default=os.path.join(root, "target/release/seal"))
    ap.add_argument("--config", default=None, help="pipeline TOML (default: the embedded demo)")
    ap.add_argument("--seed", default="1")
    ap.add_argument("--work", default=os.path.join(root, "target/determinism"))
    ap.add_argument("--report", default=None)
    args = ap.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = [os.path.join(args.work, f"{stamp}-run{i}") for i in (1, 2)]
    durations = []
    for out in runs:
        cmd = [args.seal, "pipeline", "--out", out, "--seeds", args.seed]
        if args.config:
            cmd += ["--config", args.config]
        print("+", " ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        durations.append(time.time() - t0)

    a_root, b_root = runs
    names = sorted(set(files(a_root)) | set(files(b_root)))
    equal, timing_only, differ = [], [], []
    for n in names:
        pa, pb = os.path.join(a_root, n), os.path.join(b_root, n)
        if not (os.path.exists(pa) and os.path.exists(pb)):
            differ.append((n, "only in run " + ("1" if os.path.exists(pa) else "2")))
            continue
        da, db = open(pa, "rb").read(), open(pb, "rb").read()
        if da == db:
            equal.append(n)
            continue
        na, nb = normalise(n, da), normalise(n, db)
        if na is not None and na == nb:
            timing_only.append(n)
        else:
            detail = first_diff(na, nb) if na is not None and nb is not None else "binary content differs"
            differ.append((n, detail))

    lines = [
        "# Determinism report",
        "",
        f"`{' '.join(sys.argv)}`: the pipeline ({args.config or 'embedded demo config'}, seed "
        f"{args.seed}) run twice on the CPU ({durations[0] / 60:.1f} and {durations[1] / 60:.1f} min).",
        "",
        f"- {len(names)} files; {len(equal)} byte-for-byte equal; {len(timing_only)} equal apart "
        f"from timing fields; {len(differ)} different.",
    ]
    if timing_only:
        lines += ["", "Equal apart from timings:", ""] + [f"- `{n}`" for n in timing_only]
    if differ:
        lines += ["", "Different:", ""] + [f"- `{n}`: {d}" for n, d in differ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.report:
        tmp = args.report + ".tmp"
        with open(tmp, "w") as f:
            f.write(report)
        os.replace(tmp, args.report)
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
