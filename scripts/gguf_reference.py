#!/usr/bin/env python3
"""transformers reference outputs for a GGUF checkpoint (parity tests of seal-rs).

Usage:
    gguf_reference.py --gguf MODEL.gguf --inputs INPUTS.json --out OUT.json

INPUTS.json: {"chat_prompts": [...], "strings": [...]}

OUT.json:
    {"transformers_version": "...", "torch_version": "...",
     "chat": [{"prompt": p, "input_ids": [...], "logits": [... full vocab ...]}, ...],
     "strings": [{"text": s, "ids": [...], "ids_hf_pretokenizer": [...]}, ...]}

`input_ids` is `apply_chat_template([{"role": "user", "content": p}],
add_generation_prompt=True)`; `logits` are the f32 model's logits at the last
position over the whole vocabulary. `ids` is `tokenizer(s,
add_special_tokens=False).input_ids`; for `tokenizer.ggml.pre = smollm` files,
`ids_hf_pretokenizer` is the same vocabulary with the pre-tokenizer of the HF
SmolLM2 `tokenizer.json` (individual digits, then byte-level), which
transformers' GGUF loader does not apply. Runs offline (HF_HUB_OFFLINE=1). The
output is written to a temporary file next to OUT.json and renamed.
"""

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def gguf_pre_type(path: str):
    """`tokenizer.ggml.pre` of the GGUF, or None."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return None if field is None else field.contents()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True, help="the GGUF file")
    ap.add_argument("--inputs", required=True, help='JSON file {"chat_prompts": [...], "strings": [...]}')
    ap.add_argument("--out", required=True, help="output JSON file")
    args = ap.parse_args()

    with open(args.inputs, encoding="utf-8") as f:
        inputs = json.load(f)
    chat_prompts = list(inputs.get("chat_prompts", []))
    strings = list(inputs.get("strings", []))

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = os.path.abspath(args.gguf)
    directory, name = os.path.dirname(gguf), os.path.basename(gguf)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)

    out = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "chat": [],
        "strings": [],
    }
    # transformers' GGUF loader ignores `tokenizer.ggml.pre = smollm`; the HF
    # SmolLM2 tokenizer.json (and llama.cpp) first split digits individually.
    # Also report the ids of that pipeline so both can be compared.
    hf_pretok = None
    if gguf_pre_type(gguf) == "smollm":
        from tokenizers import Tokenizer, pre_tokenizers

        hf_pretok = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        hf_pretok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    for s in strings:
        ids = tokenizer(s, add_special_tokens=False)["input_ids"]
        entry = {"text": s, "ids": [int(i) for i in ids]}
        if hf_pretok is not None:
            entry["ids_hf_pretokenizer"] = list(hf_pretok.encode(s, add_special_tokens=False).ids)
        out["strings"].append(entry)

    if chat_prompts:
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
        model.eval()
        torch.manual_seed(0)
        with torch.no_grad():
            for p in chat_prompts:
                ids = tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True
                )
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                ids = [int(i) for i in ids]
                logits = model(torch.tensor([ids])).logits[0, -1].float()
                out["chat"].append({"prompt": p, "input_ids": ids, "logits": logits.tolist()})

    out_dir = os.path.dirname(os.path.abspath(args.out)) or "."
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".gguf_reference.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False)
        os.replace(tmp, args.out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
