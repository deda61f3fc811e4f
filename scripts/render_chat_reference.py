#!/usr/bin/env python3
"""Render chat templates with transformers (reference for seal-data's ChatTemplate tests).

Usage:
    render_chat_reference.py --cases CASES.json --out OUT.json

CASES.json: [{"template": str, "messages": [{"role": ..., "content": ...}],
              "add_generation_prompt": bool, "bos_token": str|null, "eos_token": str|null}, ...]

OUT.json: [{"rendered": str} | {"error": str}, ...], one per case, rendered with
`transformers.utils.chat_template_utils.render_jinja_template`, which is what
`tokenizer.apply_chat_template(..., tokenize=False)` uses. Written atomically.
"""

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from transformers.utils.chat_template_utils import render_jinja_template

    with open(args.cases, encoding="utf-8") as f:
        cases = json.load(f)
    results = []
    for case in cases:
        kwargs = {}
        for key in ("bos_token", "eos_token"):
            if case.get(key) is not None:
                kwargs[key] = case[key]
        try:
            rendered, _ = render_jinja_template(
                conversations=[case["messages"]],
                chat_template=case["template"],
                add_generation_prompt=case.get("add_generation_prompt", False),
                **kwargs,
            )
            results.append({"rendered": rendered[0]})
        except Exception as e:  # the template raised: report the message
            results.append({"error": str(e)})

    out_dir = os.path.dirname(os.path.abspath(args.out)) or "."
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".render_chat_reference.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(results, f, ensure_ascii=False)
        os.replace(tmp, args.out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
