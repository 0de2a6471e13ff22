"""`splitgpt bench`: the stack and one Hugging Face process, measured in one run.

1. single-stream decode ms/token, stack vs HF `generate` with KV cache;
2. output tokens/s at 32 concurrent requests x 64 tokens vs HF batch 32;
3. TTFT, TPOT and ITL p50/p99 (vLLM benchmark_serving definitions);
4. the same at 1, 4, 16, 64 concurrent requests, as a curve.
Ratios are against the baseline measured in this same run, on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from ..core.tiny_model import GPT2_SMALL, write_checkpoint
from .load import run_load
from .local_stack import Stack

SINGLE_STREAM_TARGET = 1.10  # stack ms/token / HF ms/token, at most
THROUGHPUT_TARGET = 1.2  # stack tokens/s / HF batch-32 tokens/s, at least


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="splitgpt bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/bench-gpt2-small"),
                   help="checkpoint directory; a random GPT-2-small is written there if absent")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("run/bench"))
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--split", default="balanced")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--curve", default="1,4,16,64", help="concurrency levels")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="HF baseline's torch threads")
    p.add_argument("--stack-args", default="", help="extra `splitgpt up` arguments")
    return p.parse_args(argv)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"


def hf_baseline(model: Path, args: argparse.Namespace, batches: list[int]) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "splitgpt.bench.hf_baseline", str(model), "--threads", str(args.threads),
         "--batches", ",".join(map(str, batches)), "--new-tokens", str(args.new_tokens)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


async def measure_stack(url: str, args: argparse.Namespace, levels: list[int]) -> dict:
    n = args.new_tokens
    async with httpx.AsyncClient(timeout=120) as client:  # warm every process's first-request paths
        for i in range(2):
            await client.post(f"{url}/api/model/process", json={"text": f"warm up {i}", "max_tokens": 8, "ignore_eos": True})
    single = await run_load(url, concurrency=1, requests=3, max_tokens=n, first_index=1000)
    at32 = await run_load(url, concurrency=32, requests=32, max_tokens=n, first_index=2000)
    curve = []
    for i, c in enumerate(levels):
        curve.append(await run_load(url, concurrency=c, requests=max(c, 4), max_tokens=n, first_index=3000 + 1000 * i))
    return {"single_stream": single, "concurrent_32": at32, "curve": curve}


def report(results: dict) -> str:
    hf, st = results["hf"], results["stack"]
    r = results["ratios"]
    lines = [
        f"splitgpt bench — {results['model']} — {results['machine']} — {results['date']}",
        f"single-stream decode: stack {st['single_stream']['tpot_ms']['mean']:.1f} ms/token, "
        f"HF {hf['single_stream_decode_ms_per_token']:.1f} ms/token -> ratio {r['single_stream_decode']:.3f} "
        f"(target <= {SINGLE_STREAM_TARGET})",
        f"32 concurrent x {results['new_tokens']} tokens: stack {st['concurrent_32']['output_tokens_per_s']:.1f} tok/s, "
        f"HF batch 32 {hf['batched_output_tokens_per_s']['32']:.1f} tok/s -> ratio {r['throughput_32']:.3f} "
        f"(target >= {THROUGHPUT_TARGET}); failed requests {st['concurrent_32']['failed']}",
        "",
        f"{'conc':>5} {'tok/s':>8} {'HF tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'ITL p50':>8} {'ITL p99':>8} {'failed':>6}",
    ]
    for c in st["curve"]:
        hf_tps = hf["batched_output_tokens_per_s"].get(str(c["concurrency"]))
        lines.append(
            f"{c['concurrency']:>5} {c['output_tokens_per_s']:>8.1f} {hf_tps or float('nan'):>9.1f} "
            f"{c['ttft_ms']['p50']:>9.1f} {c['ttft_ms']['p99']:>9.1f} {c['tpot_ms']['p50'] or float('nan'):>9.1f} "
            f"{c['itl_ms']['p50'] or float('nan'):>8.1f} {c['itl_ms']['p99'] or float('nan'):>8.1f} {c['failed']:>6}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.model / "config.json").exists():
        print(f"writing a random GPT-2-small checkpoint to {args.model}", flush=True)
        write_checkpoint(args.model, **GPT2_SMALL)
    levels = [int(c) for c in args.curve.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    print("measuring one Hugging Face process ...", flush=True)
    hf = hf_baseline(args.model, args, sorted(set(levels) | {1, 32}))

    print("starting the stack ...", flush=True)
    with tempfile.TemporaryDirectory() as run_dir:
        stack = Stack(args.model, Path(run_dir), partitions=args.partitions, split=args.split, extra_args=args.stack_args.split())
        try:
            stack.wait_ready()
            print("measuring the stack ...", flush=True)
            measured = asyncio.run(measure_stack(stack.url, args, levels))
        finally:
            stack.stop()

    results = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "model": f"GPT-2-small geometry ({args.model})",
        "partitions": args.partitions,
        "split": args.split,
        "new_tokens": args.new_tokens,
        "hf": hf,
        "stack": measured,
        "ratios": {
            "single_stream_decode": measured["single_stream"]["tpot_ms"]["mean"] / hf["single_stream_decode_ms_per_token"],
            "throughput_32": measured["concurrent_32"]["output_tokens_per_s"] / hf["batched_output_tokens_per_s"]["32"],
        },
    }
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results)
    (args.out / "latest.txt").write_text(text + "\n")
    try:
        from .plot import plot

        plot(results, args.out / "latest.png")
    except ImportError:
        print("(matplotlib is not installed: no plot; `make bench` installs it)")
    print(text)
    print(f"\nwrote {args.out / 'latest.json'}, {args.out / 'latest.png'}")
