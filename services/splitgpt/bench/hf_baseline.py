"""The baseline: one Hugging Face process, `generate` with its KV cache.

It runs as its own process (`python -m splitgpt.bench.hf_baseline`) so its
thread pool and memory start clean, like a user's single-process server. It
loads the model once, in the dtype it is given (float32, bfloat16: the dtype
of the stack's nodes it is compared with), and then measures on request, one
JSON line in and one out, so the benchmark can interleave baseline and stack
measurements: on a shared machine whose speed drifts by tens of percent over
minutes, each ratio then compares two numbers taken seconds apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


class Measurer:
    def __init__(self, model_dir: str, threads: int, new_tokens: int, prompt_len: int, dtype: str = "float32") -> None:
        torch.set_num_threads(threads)
        self.threads, self.new_tokens, self.prompt_len = threads, new_tokens, prompt_len
        self.model = GPT2LMHeadModel.from_pretrained(model_dir, torch_dtype=getattr(torch, dtype)).eval()
        # What the weights really are, for the report (not the dtype asked for).
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        timed_generate(self.model, 1, prompt_len, 4)  # warm-up

    def single_stream(self, repeats: int, seed: int) -> dict:
        """Decode ms/token for one stream: (1+N tokens) minus (1 token) removes the prefill."""
        per_token = []
        for r in range(repeats):
            t1 = timed_generate(self.model, 1, self.prompt_len, 1, seed=seed + r)
            tn = timed_generate(self.model, 1, self.prompt_len, 1 + self.new_tokens, seed=seed + r)
            per_token.append((tn - t1) / self.new_tokens * 1000)
        return {"decode_ms_per_token": statistics.median(per_token), "runs_ms": per_token}

    def batch(self, size: int, seed: int) -> dict:
        seconds = timed_generate(self.model, size, self.prompt_len, self.new_tokens, seed=seed)
        return {"batch": size, "output_tokens_per_s": size * self.new_tokens / seconds, "seconds": seconds}

    def serve(self, inp, out) -> None:
        out.write(json.dumps({"ready": True, "threads": self.threads, "dtype": self.dtype}) + "\n")
        out.flush()
        for line in inp:
            cmd = json.loads(line)
            if cmd["op"] == "single":
                reply = self.single_stream(cmd.get("repeats", 3), cmd.get("seed", 0))
            elif cmd["op"] == "batch":
                reply = self.batch(cmd["size"], cmd.get("seed", cmd["size"]))
            else:
                reply = {"error": f"unknown op {cmd['op']!r}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()


class HFBaseline:
    """The parent's handle on a baseline process."""

    def __init__(
        self,
        model_dir: Path,
        threads: int,
        new_tokens: int,
        prompt_tokens: int = 16,
        dtype: str = "float32",
        wait: bool = True,
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "splitgpt.bench.hf_baseline", str(model_dir), "--threads", str(threads),
             "--new-tokens", str(new_tokens), "--prompt-tokens", str(prompt_tokens), "--dtype", dtype],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.threads = self.dtype = None
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Until the model is loaded and warm (`wait=False` lets the caller start other things meanwhile)."""
        if self.dtype is None:
            ready = self._read()  # {"ready": true, "threads": ..., "dtype": ...}
            self.threads, self.dtype = ready["threads"], ready["dtype"]

    def single_stream(self, repeats: int = 3, seed: int = 0) -> dict:
        return self._ask({"op": "single", "repeats": repeats, "seed": seed})

    def batch(self, size: int, seed: int | None = None) -> dict:
        return self._ask({"op": "batch", "size": size, "seed": size if seed is None else seed})

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)

    def _ask(self, cmd: dict) -> dict:
        self.process.stdin.write(json.dumps(cmd) + "\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the HF baseline process exited with {self.process.wait()}")
        return json.loads(line)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--dtype", default="float32", help="the weights' and activations' dtype (float32, bfloat16)")
    args = p.parse_args()
    Measurer(args.model_dir, args.threads, args.new_tokens, args.prompt_tokens, args.dtype).serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
