"""The baseline: one Hugging Face process, `generate` with its KV cache.

Run as its own process (`python -m splitgpt.bench.hf_baseline`) so its thread
pool and memory start clean, like a user's single-process server would.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import GPT2LMHeadModel


def timed_generate(model, batch: int, prompt_len: int, new_tokens: int, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50000, (batch, prompt_len), generator=g)
    started = time.perf_counter()
    with torch.no_grad():
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # fixed length, as the stack's ignore_eos
            do_sample=False,
            pad_token_id=50256,
        )
    return time.perf_counter() - started


def measure(model_dir: str, threads: int, batches: list[int], new_tokens: int, prompt_len: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    timed_generate(model, 1, prompt_len, 4)  # warm-up
    # Decode only: 1+N tokens minus 1 token removes the prefill.
    per_token = []
    for r in range(repeats):
        t1 = timed_generate(model, 1, prompt_len, 1, seed=r)
        tn = timed_generate(model, 1, prompt_len, 1 + new_tokens, seed=r)
        per_token.append((tn - t1) / new_tokens)
    throughput = {}
    for b in batches:
        seconds = timed_generate(model, b, prompt_len, new_tokens, seed=b)
        throughput[str(b)] = b * new_tokens / seconds
    return {
        "threads": threads,
        "single_stream_decode_ms_per_token": statistics.median(per_token) * 1000,
        "single_stream_runs_ms": [v * 1000 for v in per_token],
        "batched_output_tokens_per_s": throughput,
        "new_tokens": new_tokens,
        "prompt_tokens": prompt_len,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batches", default="1,4,16,32,64")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(json.dumps(measure(args.model_dir, args.threads, batches, args.new_tokens, args.prompt_tokens, args.repeats)))


if __name__ == "__main__":
    main()
