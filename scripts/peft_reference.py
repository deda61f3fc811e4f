"""PEFT interoperability reference for `crates/seal-model/tests/peft_compat.rs`.

1. Loads the HF base model in `--base` (float32) with transformers, applies the
   adapter in `--adapter` (written by seal-rs) with `peft.PeftModel`, and
   records the logits of `--ids`.
2. Creates a fresh PEFT LoRA adapter on the same base with non-zero A and B
   (`init_lora_weights=False`), saves it to `--new-adapter-out` and records its
   logits for the same ids, so seal-rs can load PEFT's files and compare.

Writes `{"ours_logits": [...], "theirs_logits": [...], "peft_version": ...}`
(flattened [L, V] float32 lists) to `--out`.
"""
import argparse
import json
import os

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--new-adapter-out", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import peft
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[int(x) for x in args.ids.split(",")]])
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    ours = PeftModel.from_pretrained(base, args.adapter)
    with torch.no_grad():
        ours_logits = ours(input_ids=ids).logits[0].flatten().tolist()

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    cfg = LoraConfig(r=2, lora_alpha=5, target_modules=["k_proj", "o_proj", "up_proj"], init_lora_weights=False)
    theirs = get_peft_model(base, cfg)
    theirs.save_pretrained(args.new_adapter_out)
    with torch.no_grad():
        theirs_logits = theirs(input_ids=ids).logits[0].flatten().tolist()
    with open(args.out, "w") as f:
        json.dump({"ours_logits": ours_logits, "theirs_logits": theirs_logits, "peft_version": peft.__version__}, f)


if __name__ == "__main__":
    main()
