"""transformers reference for `crates/seal-model/tests/phi3.rs` (Phi-3 family).

Usage: phi3_reference.py --dir WORK --seed N --inputs INPUTS.json

Reads token ids from INPUTS.json (keys `ids`, `long_ids`, `padded_ids`,
`padded_mask`, `prompts`, `max_new_tokens`) and, in WORK:

* writes `hf_a/`: a tiny random `Phi3ForCausalLM` (vocab 97, hidden 32,
  2 layers, 4 heads, 2 key/value heads, intermediate 64, untied head, plain
  RoPE, f32), and records its logits for `ids` (unpadded) and for the
  left-padded batch `padded_ids` / `padded_mask` (position ids from the mask,
  as generation computes them), plus greedy continuations of `prompts`
  (`max_new_tokens` each, no EOS, so generation never stops early);
* writes `hf_b/`: the same shape with tied embeddings, a partial rotary
  factor of 0.5 and LongRoPE (original context 16), and records logits for
  `ids` (short factors) and `long_ids` (long factors);
* reads `ours/` (a model seal-rs saved, if present) with
  `AutoModelForCausalLM` and records its logits for `ids` and `long_ids`;
* applies `adapter/` (a PEFT adapter seal-rs saved for `hf_a`'s shapes, if
  present) to `hf_a` with `peft.PeftModel` and records the logits for `ids`.

Weights are drawn with a seeded generator at a larger scale than
transformers' init (0.2; norms 1 ± 0.1) so that logits are well separated
and greedy decoding has no near ties. Everything goes to WORK/reference.json
(logits flattened, float32 values).
"""
import argparse
import json
import os

import torch


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def logits_of(model, ids, mask=None, position_ids=None):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=None if mask is None else torch.tensor(mask),
            position_ids=position_ids,
        )
    return out.logits.flatten().tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--inputs", required=True)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig, Phi3Config, Phi3ForCausalLM

    with open(args.inputs) as f:
        inputs = json.load(f)
    work = args.dir
    common = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        rms_norm_eps=1e-5,
    )
    result = {"transformers_version": transformers.__version__}

    # A: Phi-3-mini's layout (full rotary, untied head).
    cfg_a = Phi3Config(
        max_position_embeddings=256,
        original_max_position_embeddings=256,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        **common,
    )
    model_a = Phi3ForCausalLM(cfg_a).eval()
    randomize(model_a, args.seed)
    dir_a = os.path.join(work, "hf_a")
    model_a.save_pretrained(dir_a, safe_serialization=True)
    mask = torch.tensor(inputs["padded_mask"])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    a = {
        "logits": logits_of(model_a, [inputs["ids"]]),
        "padded_logits": logits_of(model_a, inputs["padded_ids"], inputs["padded_mask"], positions),
    }
    gen_cfg = GenerationConfig(
        max_new_tokens=inputs["max_new_tokens"],
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    generated = []
    for prompt in inputs["prompts"]:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = model_a.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen_cfg)
        new = out[0, len(prompt):].tolist()
        assert len(new) == inputs["max_new_tokens"], new
        generated.append(new)
    a["generated"] = generated

    adapter = os.path.join(work, "adapter")
    if os.path.isdir(adapter):
        import peft
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(dir_a, dtype=torch.float32).eval()
        with_adapter = PeftModel.from_pretrained(base, adapter).eval()
        a["peft_logits"] = logits_of(with_adapter, [inputs["ids"]])
        result["peft_version"] = peft.__version__
    result["a"] = a

    # B: partial rotary embeddings and LongRoPE, tied head.
    cfg_b = Phi3Config(
        max_position_embeddings=64,
        original_max_position_embeddings=16,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 500.0,
            "partial_rotary_factor": 0.5,
            "short_factor": [1.0, 1.5],
            "long_factor": [2.0, 3.5],
        },
        **common,
    )
    model_b = Phi3ForCausalLM(cfg_b).eval()
    assert model_b.model.rotary_emb.inv_freq.numel() == 2
    randomize(model_b, args.seed + 1)
    model_b.save_pretrained(os.path.join(work, "hf_b"), safe_serialization=True)
    result["b"] = {
        "logits": logits_of(model_b, [inputs["ids"]]),
        "long_logits": logits_of(model_b, [inputs["long_ids"]]),
        "attention_scaling": model_b.model.rotary_emb.attention_scaling,
    }

    ours = os.path.join(work, "ours")
    if os.path.isdir(ours):
        model = AutoModelForCausalLM.from_pretrained(ours, dtype=torch.float32).eval()
        result["ours"] = {
            "rotary_freqs": model.model.rotary_emb.inv_freq.numel(),
            "logits": logits_of(model, [inputs["ids"]]),
            "long_logits": logits_of(model, [inputs["long_ids"]]),
        }

    with open(os.path.join(work, "reference.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
