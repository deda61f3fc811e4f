"""GPT-NeoX (Pythia) reference for `crates/seal-model/tests/neox.rs`.

1. Builds two tiny random `GPTNeoXForCausalLM`s with transformers (vocab 97,
   hidden 32, 2 layers, 4 heads, rotary_pct 0.5, intermediate 64, f32), one
   with the parallel residual and one sequential, with random (non-trivial)
   biases and LayerNorm parameters, and saves them with `save_pretrained`
   under `<out>/parallel` and `<out>/sequential`.
2. For each: logits of an unpadded row, logits of a left-padded batch of two
   rows (position ids counted over real tokens, as `generate` does), and 32
   greedily generated tokens from one prompt and from a left-padded batch of
   two prompts (no EOS, so generation never stops early).
3. With `--ours-base` / `--ours-adapter` (a base model and a LoRA adapter
   written by seal-rs): logits of the unpadded row from the base as
   transformers loads it, and with the adapter applied by
   `peft.PeftModel.from_pretrained`.

Writes everything to `<out>/reference.json` (logits flattened, float32).
"""
import argparse
import json
import os

import torch

IDS = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26]
PADDED = [[0, 0, 0, 0, 5, 17, 2, 60, 41, 8], [12, 7, 33, 90, 1, 44, 61, 25, 19, 70]]
PADDED_MASK = [[0, 0, 0, 0, 1, 1, 1, 1, 1, 1], [1] * 10]
PROMPT = [11, 42, 7, 88, 23]
BATCH_PROMPTS = [[0, 0, 0, 9, 54, 31], [76, 4, 18, 66, 2, 50]]
BATCH_MASK = [[0, 0, 0, 1, 1, 1], [1] * 6]
NEW_TOKENS = 32


def tiny_model(parallel, seed):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        rotary_pct=0.5,
        rotary_emb_base=10000,
        max_position_embeddings=128,
        use_parallel_residual=parallel,
        # Larger weights than the default 0.02 spread the logits, so greedy
        # decoding has clear winners rather than near-ties.
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # transformers starts biases at 0 and norms at 1: perturb them so
            # that the comparison sees every parameter.
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif "layernorm" in name or "layer_norm" in name:
                p.normal_(1.0, 0.1)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.generation_config.bos_token_id = None
    return model


def positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


def greedy(model, ids, mask):
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
    )
    # Smallest gap between the best and second-best logit over all steps: a
    # port differing by ~1e-6 agrees on every choice when this is large.
    margin = min(
        float((s.topk(2, dim=-1).values[:, 0] - s.topk(2, dim=-1).values[:, 1]).min())
        for s in out.scores
    )
    return out.sequences[:, ids.shape[1]:].tolist(), margin


def reference(model):
    with torch.no_grad():
        ids = torch.tensor([IDS])
        logits = model(input_ids=ids).logits[0]
        padded = torch.tensor(PADDED)
        pmask = torch.tensor(PADDED_MASK)
        padded_logits = model(input_ids=padded, attention_mask=pmask, position_ids=positions(pmask)).logits
        generated, margin = greedy(model, torch.tensor([PROMPT]), torch.ones(1, len(PROMPT), dtype=torch.long))
        batch_generated, batch_margin = greedy(model, torch.tensor(BATCH_PROMPTS), torch.tensor(BATCH_MASK))
    return {
        "logits": logits.flatten().tolist(),
        "padded_logits": padded_logits.flatten().tolist(),
        "generated": generated[0],
        "batch_generated": batch_generated,
        "min_margin": min(margin, batch_margin),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ours-base")
    ap.add_argument("--ours-adapter")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    import transformers

    result = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "ids": IDS,
        "padded": PADDED,
        "padded_mask": PADDED_MASK,
        "prompt": PROMPT,
        "batch_prompts": BATCH_PROMPTS,
        "batch_mask": BATCH_MASK,
        "models": {},
    }
    for i, (name, parallel) in enumerate([("parallel", True), ("sequential", False)]):
        model = tiny_model(parallel, args.seed + i)
        model.save_pretrained(os.path.join(args.out, name))
        result["models"][name] = reference(model)

    if args.ours_base:
        import peft
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        ids = torch.tensor([IDS])
        base = AutoModelForCausalLM.from_pretrained(args.ours_base, dtype=torch.float32).eval()
        with torch.no_grad():
            result["ours_base_logits"] = base(input_ids=ids).logits[0].flatten().tolist()
        if args.ours_adapter:
            model = PeftModel.from_pretrained(base, args.ours_adapter).eval()
            with torch.no_grad():
                result["ours_peft_logits"] = model(input_ids=ids).logits[0].flatten().tolist()
            result["peft_version"] = peft.__version__

    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
