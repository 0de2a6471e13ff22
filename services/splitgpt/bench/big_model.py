"""`splitgpt bench --geometry gpt2-xl --partitions 4`: a model split so that no node holds it.

On a random checkpoint of a real GPT-2 geometry (written first if absent), one
Hugging Face process and the stack, in the same dtype:
1. memory: each node's weight bytes (its own `splitgpt_node_weight_bytes`) and
   resident memory (VmRSS) against the checkpoint's bytes and the HF process's
   resident memory;
2. single-stream decode ms/token, stack / HF, and tokens/s at `--concurrency`
   (8) requests, stack / HF batch of 8, in rounds taken back to back (the
   headline is the median round, as in the main benchmark);
3. the shared-prefix workload: requests that share a 400-token prefix and end
   in 20 tokens of their own, one at a time, time to first token with prefix
   reuse on and then off (the stack restarted with SPLITGPT_COORDINATOR_PREFIX_CACHE=false).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import tempfile
from pathlib import Path

import httpx

from ..core.tiny_model import GEOMETRIES, write_checkpoint
from .hf_baseline import HFBaseline
from .load import one_request, run_load
from .local_stack import Stack, scraped
from .machine import cpu_facts, cpu_line

# The targets: (key, what, op, bound).
TARGETS = (
    ("weights_share", "largest node's weights / checkpoint bytes", "<=", 0.30),
    ("resident_share", "largest node's resident memory / HF process's", "<=", 0.35),
    ("single_stream_decode", "single-stream decode, stack ms/token / HF ms/token", "<=", 1.0),
    ("throughput", "concurrent requests, stack tok/s / HF batch tok/s", ">=", 1.5),
    ("prefix_ttft", "shared-prefix TTFT, prefix reuse off / on", ">=", 3.0),
)


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """The geometry's checkpoint, written (with progress) if it is not there yet."""
    directory = args.geometry_dir or Path("models") / args.geometry
    if not (directory / "config.json").exists():
        print(f"writing a random {args.geometry} checkpoint to {directory} (a few GB: a minute or two) ...", flush=True)
        write_checkpoint(directory, seed=0, say=lambda line: print(f"  {line}", flush=True), **GEOMETRIES[args.geometry])
    return directory


def node_memory(stack: Stack) -> list[dict]:
    return [
        {
            "partition": p,
            "weight_bytes": scraped(stack.node_metrics_url(p), "splitgpt_node_weight_bytes"),
            "resident_bytes": resident_bytes(stack.node_pid(p)),
        }
        for p in range(stack.partitions)
    ]


def shared_prefix_prompts(model_dir: Path, prefix_tokens: int, unique_tokens: int, requests: int) -> list[str]:
    """Prompts that share their first `prefix_tokens` tokens exactly and end in `unique_tokens` of their own."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    words = " ".join(f"item {i} of the shared context," for i in range(prefix_tokens // 4 + 1))  # 7-8 tokens each
    prefix = tokenizer.decode(tokenizer(words)["input_ids"][:prefix_tokens])
    tail = lambda i: " " + " ".join(f"q{i}" for _ in range(unique_tokens))  # noqa: E731
    return [prefix + tokenizer.decode(tokenizer(tail(i))["input_ids"][:unique_tokens]) for i in range(requests)]


def reused_prompt_tokens(stack: Stack) -> float:
    """The coordinator's count of prompt tokens whose prefill was skipped: it shows
    that reuse was on in one run and off in the other, whatever the timings say."""
    (target,) = stack.metrics_targets()["splitgpt-coordinator"]
    return scraped(f"http://{target}/metrics", "splitgpt_coordinator_prefix_reused_tokens_total")


async def time_to_first_tokens(url: str, prompts: list[str]) -> dict:
    """One request at a time (each TTFT its own prefill, no queueing), 4 tokens each."""
    ttfts = []
    async with httpx.AsyncClient(timeout=1800) as client:
        for prompt in prompts:
            t = await one_request(client, url, {"text": prompt, "max_tokens": 4, "ignore_eos": True, "cache": False})
            if not t.ok:
                raise RuntimeError(f"a shared-prefix request failed: {t.error}")
            ttfts.append(t.ttft * 1000)
    return {"requests": len(ttfts), "ttft_ms_median": statistics.median(ttfts), "ttft_ms": ttfts}


def shared_prefix_run(stack: Stack, prompts: list[str]) -> dict:
    before = reused_prompt_tokens(stack)
    run = asyncio.run(time_to_first_tokens(stack.url, prompts))
    return {**run, "reused_prompt_tokens": reused_prompt_tokens(stack) - before}


def start(model_dir: Path, run_dir: str, args: argparse.Namespace, prefix_cache: bool) -> Stack:
    env = {"SPLITGPT_NODE_DTYPE": args.big_dtype, "SPLITGPT_COORDINATOR_PREFIX_CACHE": str(prefix_cache).lower()}
    stack = Stack(model_dir, Path(run_dir), partitions=args.partitions, split=args.split,
                  extra_args=["--dtype", args.big_dtype, *args.stack_args.split()], env=env)  # fmt: skip
    stack.wait_ready(timeout_s=1800)
    return stack


def measure(args: argparse.Namespace) -> dict:
    model_dir = checkpoint_dir(args)
    n, c = args.new_tokens, args.concurrency
    prompts = shared_prefix_prompts(model_dir, args.prefix_tokens, args.unique_tokens, args.prefix_requests)
    checkpoint_bytes = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    print(f"[{args.geometry}] loading the HF baseline and starting {args.partitions} nodes ({args.big_dtype}) ...", flush=True)
    hf = HFBaseline(model_dir, args.threads, n, dtype=args.big_dtype, wait=False)
    rounds = []
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            stack = start(model_dir, run_dir, args, prefix_cache=True)
            try:
                hf.wait_ready()
                asyncio.run(run_load(stack.url, 1, 2, 4, first_index=10**6))  # warm-up
                memory = {"nodes": node_memory(stack), "hf_resident_bytes": resident_bytes(hf.process.pid)}
                for r in range(args.rounds):
                    print(f"[{args.geometry}] round {r + 1}/{args.rounds} ...", flush=True)
                    hf_single = hf.single_stream(repeats=2, seed=100 * r)["decode_ms_per_token"]
                    single = asyncio.run(run_load(stack.url, 1, 2, n, first_index=1000 * (r + 1)))
                    hf_batch = hf.batch(c, seed=c + r)["output_tokens_per_s"]
                    many = asyncio.run(run_load(stack.url, c, c, n, first_index=1000 * (r + 1) + 500))
                    rounds.append({
                        "hf_ms_per_token": hf_single, "stack_ms_per_token": single["tpot_ms"]["mean"],
                        "hf_batch_tokens_per_s": hf_batch, "stack_tokens_per_s": many["output_tokens_per_s"],
                        "failed": single["failed"] + many["failed"],
                    })  # fmt: skip
                    rounds[-1]["single_ratio"] = rounds[-1]["stack_ms_per_token"] / hf_single
                    rounds[-1]["throughput_ratio"] = rounds[-1]["stack_tokens_per_s"] / hf_batch
                print(f"[{args.geometry}] shared prefix, reuse on: {len(prompts)} requests ...", flush=True)
                prefix_on = shared_prefix_run(stack, prompts)
            finally:
                stack.stop()
    finally:
        hf.close()
    with tempfile.TemporaryDirectory() as run_dir:
        print(f"[{args.geometry}] shared prefix, reuse off: restarting the stack ...", flush=True)
        stack = start(model_dir, run_dir, args, prefix_cache=False)
        try:
            asyncio.run(run_load(stack.url, 1, 1, 4, first_index=10**6))
            prefix_off = shared_prefix_run(stack, prompts)
        finally:
            stack.stop()
    median = lambda key: sorted(rounds, key=lambda x: x[key])[len(rounds) // 2][key]  # noqa: E731
    largest = max(memory["nodes"], key=lambda m: m["resident_bytes"])
    heaviest = max(memory["nodes"], key=lambda m: m["weight_bytes"])
    return {
        "model": str(model_dir), "geometry": args.geometry, "dtype": args.big_dtype, "partitions": args.partitions,
        "checkpoint_bytes": checkpoint_bytes, "memory": memory, "rounds": rounds,
        "prefix": {"on": prefix_on, "off": prefix_off, "prefix_tokens": args.prefix_tokens,
                   "unique_tokens": args.unique_tokens},
        "ratios": {
            "weights_share": heaviest["weight_bytes"] / checkpoint_bytes,
            "resident_share": largest["resident_bytes"] / memory["hf_resident_bytes"],
            "single_stream_decode": median("single_ratio"),
            "throughput": median("throughput_ratio"),
            "prefix_ttft": prefix_off["ttft_ms_median"] / prefix_on["ttft_ms_median"],
        },
        "failed_requests": sum(r["failed"] for r in rounds),
    }  # fmt: skip


def report(results: dict, args: argparse.Namespace) -> str:
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    m, r = results["memory"], results["ratios"]
    lines = [
        f"splitgpt bench (big model) — {results['model']}, {results['geometry']}, {results['dtype']} — {results['date']}",
        cpu_line(results["cpu"]),
        f"{results['partitions']} partitions ({args.split} split); checkpoint {gib(results['checkpoint_bytes'])}; "
        f"HF baseline: one process, {args.threads} threads, resident {gib(m['hf_resident_bytes'])}",
        "",
        "targets (the speed ratios are each the median of its rounds):",
    ]
    for key, what, op, bound in TARGETS:
        value = r[key]
        met = value <= bound if op == "<=" else value >= bound
        lines.append(f"  {'met' if met else 'not met':>8}: {what} = {value:.3f} (target {op} {bound})")
    lines += ["", "per node:"]
    for node in m["nodes"]:
        lines.append(
            f"  partition {node['partition']}: weights {gib(node['weight_bytes'])} "
            f"({node['weight_bytes'] / results['checkpoint_bytes']:.1%} of the checkpoint), resident "
            f"{gib(node['resident_bytes'])} ({node['resident_bytes'] / m['hf_resident_bytes']:.1%} of HF's)"
        )
    lines += ["", f"rounds ({args.new_tokens} tokens per request; stack and HF back to back):"]
    for i, x in enumerate(results["rounds"]):
        lines.append(
            f"  {i + 1}: single stream {x['stack_ms_per_token']:.1f} / {x['hf_ms_per_token']:.1f} ms = "
            f"{x['single_ratio']:.3f}; {args.concurrency} concurrent {x['stack_tokens_per_s']:.2f} / "
            f"{x['hf_batch_tokens_per_s']:.2f} tok/s = {x['throughput_ratio']:.3f}"
        )
    p = results["prefix"]
    lines += [
        "",
        f"shared prefix ({p['prefix_tokens']} shared tokens + {p['unique_tokens']} of each request's own, "
        f"{p['on']['requests']} requests one at a time): median TTFT {p['on']['ttft_ms_median']:.0f} ms with prefix "
        f"reuse, {p['off']['ttft_ms_median']:.0f} ms without -> {r['prefix_ttft']:.2f}x; prompt tokens reused "
        f"(the coordinator's count): {p['on']['reused_prompt_tokens']:.0f} with, {p['off']['reused_prompt_tokens']:.0f} without",
        "",
        f"failed requests: {results['failed_requests']}",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    if args.geometry not in GEOMETRIES:
        raise SystemExit(f"splitgpt bench: --geometry {args.geometry!r}: one of {sorted(GEOMETRIES)}")
    cpu = cpu_facts()
    print(cpu_line(cpu), flush=True)
    results = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu, **measure(args)}
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(results, args)
    (args.out / f"{args.geometry}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{args.geometry}.txt").write_text(text + "\n")
    print(text)
    print(f"\nwrote {args.out / (args.geometry + '.json')}, {args.out / (args.geometry + '.txt')}")
    if results["failed_requests"]:
        raise SystemExit(f"splitgpt bench: {results['failed_requests']} requests failed")
