#!/usr/bin/env python3
"""Determinism report: runs the pipeline twice on the CPU with one seed and
compares every output file byte for byte.

Usage: scripts/determinism.py [--seal BIN] [--config FILE] [--seed N]
                              [--work DIR] [--report FILE]
       scripts/determinism.py --compare RUN1 RUN2 [--report FILE]

Both runs write into fresh directories under --work (default
target/determinism); nothing else is touched. Files that differ only in
timing fields (JSON keys naming seconds, times, rates or ETAs; Markdown
lines with such words) are listed as "equal but timings"; any other
difference is listed with its first differing line. Each run's own
directory name is replaced by `<OUT>` first, and cache entries keyed by a
hash of that path (`cache/aligned-<hash>`) are paired by name prefix, so
only content counts. Exit status 0 when
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


TIMING_COLUMN = re.compile(r"(\(s\)|s/step|tokens/s|time|seconds)", re.I)


def strip_timings(v):
    """JSON without timing keys, timing items (`key`) and timing table
    columns (`columns` + `rows`, as the reports write tables)."""
    if isinstance(v, dict):
        if isinstance(v.get("key"), str) and TIMING.search(v["key"]):
            return None
        if isinstance(v.get("columns"), list) and isinstance(v.get("rows"), list):
            keep = [i for i, c in enumerate(v["columns"]) if not TIMING_COLUMN.search(str(c))]
            v = dict(v)
            v["columns"] = [v["columns"][i] for i in keep]
            v["rows"] = [[r[i] for i in keep if i < len(r)] for r in v["rows"]]
        return {k: strip_timings(x) for k, x in v.items() if not TIMING.search(k)}
    if isinstance(v, list):
        return [strip_timings(x) for x in v]
    return v


def strip_markdown_timings(text):
    """Markdown without timing lines and without the timing columns of
    tables (found by their header)."""
    timing_line = re.compile(r"(\d+(\.\d+)?\s*(s|min|ms)\b|seconds|time \(s\)|tokens/s|elapsed)", re.I)
    out, drop, in_table = [], [], False
    for line in text.splitlines():
        if line.startswith("|"):
            cells = line.strip().strip("|").split("|")
            timing = [i for i, c in enumerate(cells) if TIMING_COLUMN.search(c)]
            if not in_table:
                drop = timing  # the header: timing columns
            elif timing and not set(line) <= set("|-: "):
                continue  # a row labelled as a timing (`| Alignment time (s) | 99.1 |`)
            in_table = True
            out.append("|".join(c for i, c in enumerate(cells) if i not in drop))
            continue
        drop, in_table = [], False
        if not timing_line.search(line):
            out.append(line)
    return "\n".join(out)


def normalise(path, data, root):
    """The file's content without timing fields and with the run's own
    directory replaced by `<OUT>`, or None if it is not text."""
    name = path.lower()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.replace(os.path.abspath(root), "<OUT>")
    text = re.sub(r"aligned-[0-9a-f]{16}", "aligned-<key>", text)
    # Durations written into prose ("Total wall time 18.3 min").
    text = re.sub(r"\b\d+(\.\d+)?\s*(min|ms|s)\b", "<duration>", text)
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
        return strip_markdown_timings(text)
    return None


def files(root):
    """Relative path (cache keys normalised) -> real relative path."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), root)
            out[re.sub(r"aligned-[0-9a-f]{16}", "aligned-<key>", rel)] = rel
    return out


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
    ap.add_argument("--compare", nargs=2, metavar="RUN", help="only compare two existing runs")
    args = ap.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = args.compare or [os.path.join(args.work, f"{stamp}-run{i}") for i in (1, 2)]
    durations = []
    for out in [] if args.compare else runs:
        cmd = [args.seal, "pipeline", "--out", out, "--seeds", args.seed]
        if args.config:
            cmd += ["--config", args.config]
        print("+", " ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        durations.append(time.time() - t0)

    a_root, b_root = runs
    fa, fb = files(a_root), files(b_root)
    names = sorted(set(fa) | set(fb))
    equal, timing_only, differ = [], [], []
    for n in names:
        pa = os.path.join(a_root, fa.get(n, n))
        pb = os.path.join(b_root, fb.get(n, n))
        if not (os.path.exists(pa) and os.path.exists(pb)):
            differ.append((n, "only in run " + ("1" if os.path.exists(pa) else "2")))
            continue
        da, db = open(pa, "rb").read(), open(pb, "rb").read()
        if da == db:
            equal.append(n)
            continue
        na, nb = normalise(n, da, a_root), normalise(n, db, b_root)
        if na is not None and na == nb:
            timing_only.append(n)
        else:
            detail = first_diff(na, nb) if na is not None and nb is not None else "binary content differs"
            differ.append((n, detail))

    lines = [
        "# Determinism report",
        "",
        f"`{' '.join(sys.argv)}`: "
        + (
            f"the pipeline ({args.config or 'embedded demo config'}, seed {args.seed}) run twice "
            f"on the CPU ({durations[0] / 60:.1f} and {durations[1] / 60:.1f} min)."
            if durations
            else f"comparison of `{a_root}` and `{b_root}`."
        ),
        "",
        f"- {len(names)} files; {len(equal)} byte-for-byte equal; {len(timing_only)} equal apart "
        f"from timings and the run's own directory name; {len(differ)} different.",
    ]
    if timing_only:
        lines += ["", "Equal apart from timings and the run directory:", ""] + [f"- `{n}`" for n in timing_only]
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
