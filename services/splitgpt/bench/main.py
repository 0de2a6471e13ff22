"""`splitgpt bench`: the stack and one Hugging Face process, measured in one run.

1. single-stream decode ms/token, stack vs HF `generate` with KV cache;
2. output tokens/s at 32 concurrent requests x 64 tokens vs HF batch 32;
3. TTFT, TPOT and ITL p50/p99 (vLLM benchmark_serving definitions);
4. the same at 1, 4, 16, 64 concurrent requests, as a curve.
Ratios are against the baseline measured in this same run, on this machine:
baseline and stack take turns, and each ratio pairs measurements made back to
back, so a machine whose speed drifts does not tilt the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import tempfile
from pathlib import Path

import httpx

from ..core.tiny_model import GPT2_SMALL, write_checkpoint
from .hf_baseline import HFBaseline
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
    p.add_argument("--rounds", type=int, default=5, help="baseline/stack pairs for the headline ratios")
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


async def warm_up(url: str) -> None:
    async with httpx.AsyncClient(timeout=120) as client:  # every process's first-request paths
        for i in range(2):
            await client.post(f"{url}/api/model/process", json={"text": f"warm up {i}", "max_tokens": 8, "ignore_eos": True})


def measure(hf: HFBaseline, url: str, args: argparse.Namespace, levels: list[int]) -> dict:
    """Baseline and stack alternately, each pair seconds apart; ratios per round, then their median."""
    n = args.new_tokens
    asyncio.run(warm_up(url))
    rounds = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds} ...", flush=True)
        hf_single = hf.single_stream(repeats=3, seed=100 * r)
        single = asyncio.run(run_load(url, concurrency=1, requests=3, max_tokens=n, first_index=1000 + 100 * r))
        hf_32 = hf.batch(32, seed=32 + r)
        at32 = asyncio.run(run_load(url, concurrency=32, requests=32, max_tokens=n, first_index=2000 + 100 * r))
        rounds.append(
            {
                "hf_single_stream_decode_ms_per_token": hf_single["decode_ms_per_token"],
                "hf_batch_32_output_tokens_per_s": hf_32["output_tokens_per_s"],
                "single_stream": single,
                "concurrent_32": at32,
                "single_stream_ratio": single["tpot_ms"]["mean"] / hf_single["decode_ms_per_token"],
                "throughput_32_ratio": at32["output_tokens_per_s"] / hf_32["output_tokens_per_s"],
            }
        )
    curve, hf_curve = [], {}
    for i, c in enumerate(levels):
        print(f"curve: {c} concurrent ...", flush=True)
        hf_curve[str(c)] = hf.batch(c)["output_tokens_per_s"]
        curve.append(asyncio.run(run_load(url, concurrency=c, requests=max(c, 4), max_tokens=n, first_index=5000 + 1000 * i)))
    return {"rounds": rounds, "curve": curve, "hf_curve": hf_curve}


def round_summary(r: dict) -> dict:
    """One round's figures without the stack's full latency summaries."""
    return {
        **{k: v for k, v in r.items() if k not in ("single_stream", "concurrent_32")},
        "stack_single_stream_ms_per_token": r["single_stream"]["tpot_ms"]["mean"],
        "stack_32_output_tokens_per_s": r["concurrent_32"]["output_tokens_per_s"],
        "failed": r["single_stream"]["failed"] + r["concurrent_32"]["failed"],
    }


def median_round(rounds: list[dict], key: str) -> dict:
    return sorted(rounds, key=lambda r: r[key])[len(rounds) // 2]


def report(results: dict) -> str:
    hf, st = results["hf"], results["stack"]
    r = results["ratios"]
    lines = [
        f"splitgpt bench — {results['model']} — {results['machine']} — {results['date']}",
        f"single-stream decode: stack {st['single_stream']['tpot_ms']['mean']:.1f} ms/token, "
        f"HF {hf['single_stream_decode_ms_per_token']:.1f} ms/token -> ratio {r['single_stream_decode']:.3f} "
        f"(target <= {SINGLE_STREAM_TARGET})",
        f"32 concurrent x {results['new_tokens']} tokens: stack {st['concurrent_32']['output_tokens_per_s']:.1f} tok/s, "
        f"HF batch 32 {hf['batch_32_output_tokens_per_s']:.1f} tok/s -> ratio {r['throughput_32']:.3f} "
        f"(target >= {THROUGHPUT_TARGET}); failed requests in the whole run {results['failed_requests']}",
        "rounds (baseline and stack back to back; the headline is the median round):",
        *(
            f"  {i + 1}: single-stream {x['stack_single_stream_ms_per_token']:.1f} / {x['hf_single_stream_decode_ms_per_token']:.1f} ms "
            f"= {x['single_stream_ratio']:.3f}; 32 concurrent {x['stack_32_output_tokens_per_s']:.1f} / "
            f"{x['hf_batch_32_output_tokens_per_s']:.1f} tok/s = {x['throughput_32_ratio']:.3f}"
            for i, x in enumerate(results["rounds"])
        ),
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

    print(f"loading the Hugging Face baseline ({args.threads} threads) and starting the stack ...", flush=True)
    hf = HFBaseline(args.model, args.threads, args.new_tokens)
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            stack = Stack(
                args.model, Path(run_dir), partitions=args.partitions, split=args.split, extra_args=args.stack_args.split()
            )
            try:
                stack.wait_ready()
                measured = measure(hf, stack.url, args, levels)
            finally:
                stack.stop()
    finally:
        hf.close()

    rounds = measured["rounds"]
    single_round = median_round(rounds, "single_stream_ratio")
    throughput_round = median_round(rounds, "throughput_32_ratio")
    results = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "model": f"GPT-2-small geometry ({args.model})",
        "partitions": args.partitions,
        "split": args.split,
        "new_tokens": args.new_tokens,
        "stack_args": args.stack_args,
        "hf": {
            "threads": args.threads,
            "single_stream_decode_ms_per_token": single_round["hf_single_stream_decode_ms_per_token"],
            "batch_32_output_tokens_per_s": throughput_round["hf_batch_32_output_tokens_per_s"],
            "batched_output_tokens_per_s": measured["hf_curve"],
        },
        "stack": {
            "single_stream": single_round["single_stream"],
            "concurrent_32": throughput_round["concurrent_32"],
            "curve": measured["curve"],
        },
        # Each round's ratio compares measurements taken back to back; the
        # headline is the median round (its numbers are the ones above).
        "ratios": {
            "single_stream_decode": single_round["single_stream_ratio"],
            "throughput_32": throughput_round["throughput_32_ratio"],
        },
        "rounds": [round_summary(r) for r in rounds],
        "failed_requests": sum(r["single_stream"]["failed"] + r["concurrent_32"]["failed"] for r in rounds)
        + sum(c["failed"] for c in measured["curve"]),
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
