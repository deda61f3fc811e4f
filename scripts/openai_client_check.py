"""Drives a running `seal serve` with the official `openai` Python client.

Usage: python scripts/openai_client_check.py --base-url http://127.0.0.1:PORT/v1 --model NAME

Prints one JSON object with what the client saw (the Rust test
`crates/seal-cli/tests/serve.rs` asserts on it). Exits with status 3 when the
`openai` package is not installed, so the caller can skip.
"""

import argparse
import json
import sys

try:
    import openai
except ImportError:
    print("the `openai` package is not installed", file=sys.stderr)
    sys.exit(3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    # The server needs no key; the client insists on one.
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=60)
    out = {"client_version": openai.__version__}

    out["models"] = [m.id for m in client.models.list().data]

    chat = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        n=2,
    )
    out["chat"] = {
        "object": chat.object,
        "choices": len(chat.choices),
        "texts": [c.message.content for c in chat.choices],
        "finish_reasons": [c.finish_reason for c in chat.choices],
        "logprob_tokens": [len(c.logprobs.content) for c in chat.choices],
        "logprobs_finite_nonpositive": all(
            t.logprob <= 0.0 and t.logprob == t.logprob for c in chat.choices for t in c.logprobs.content
        ),
        "completion_tokens": chat.usage.completion_tokens,
        "prompt_tokens": chat.usage.prompt_tokens,
    }

    pieces = []
    finish = None
    usage = None
    stream = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason is not None:
                finish = c.finish_reason
    out["stream"] = {"text": "".join(pieces), "finish_reason": finish, "completion_tokens": usage}

    done = client.completions.create(model=args.model, prompt="Once upon a time", max_tokens=4, temperature=0)
    out["completion"] = {
        "object": done.object,
        "text": done.choices[0].text,
        "completion_tokens": done.usage.completion_tokens,
    }

    try:
        client.chat.completions.create(model=args.model, messages=[], max_tokens=4)
        out["empty_messages"] = {"raised": None}
    except openai.APIStatusError as e:
        out["empty_messages"] = {"raised": type(e).__name__, "status": e.status_code, "message": str(e.message)}

    print(json.dumps(out))


if __name__ == "__main__":
    main()
