"""`splitgpt bench`: the stack and one Hugging Face process, measured in one run, on this machine.

It first reads the CPU (/proc/cpuinfo: model, cores, the vector and matrix
units torch can use), then, for each dtype (float32, and bfloat16 where the CPU
has bf16 units), with an HF baseline process and the stack's nodes both in that
dtype:
1. single-stream decode ms/token, stack vs HF `generate` with KV cache;
2. output tokens/s at 32 concurrent requests x N tokens vs HF batch 32;
3. TTFT, TPOT and ITL p50/p99 (vLLM benchmark_serving definitions) at 1, 4,
   16, 64 concurrent requests, as a curve (float32 only, by default).
Then the cost of a hop: on a tiny checkpoint, where the arithmetic is almost
nothing, single-stream ms/token of the stack with 3 partitions against 1.
Ratios are against measurements made in this same run: baseline and stack (or
the 1- and 3-partition stacks) take turns, each ratio pairs measurements made
back to back, and the headline is the median round, so a machine whose speed
drifts does not tilt the comparison. Each headline is shown against its target.
Every measurement also records the CPU that other processes used meanwhile
(`machine.CpuWatch`): on a shared machine that, not the code, can decide a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
import json
import os
import tempfile
from pathlib import Path

import httpx

from ..core.tensors import DTYPES
from ..core.tiny_model import GPT2_SMALL, write_checkpoint
from .checkpoints import ensure_gpt2_small
from .hf_baseline import HFBaseline
from .load import run_load
from .local_stack import Stack
from .machine import CpuWatch, cpu_facts, cpu_line

HOP_PARTITIONS = 3  # the per-hop measurement: this many partitions against 1
HOP_REQUESTS = 3  # single-stream requests per hop measurement
HEADLINE_CONCURRENCY = 32
QUIET_CORES = 0.2  # other processes' CPU use (cores) above which a measurement counts as disturbed

# The issue's targets: (key, what, dtype, ratio, op, bound). Ratios are the median round's.
TARGETS = (
    ("float32_single_stream", "float32 single-stream decode, stack ms/token / HF ms/token", "float32",
     "single_stream_decode", "<=", 0.9),
    ("float32_throughput_32", "float32 32 concurrent, stack tok/s / HF batch-32 tok/s", "float32",
     "throughput_32", ">=", 1.5),
    ("bfloat16_throughput_32", "bfloat16 32 concurrent, stack tok/s / HF (bfloat16) batch-32 tok/s", "bfloat16",
     "throughput_32", ">=", 2.0),
    ("hop", f"per hop, {HOP_PARTITIONS}-partition ms/token / 1-partition ms/token (tiny checkpoint)", None,
     "ratio", "<=", 1.3),
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="splitgpt bench",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=__doc__.splitlines()[0],
        epilog="Run time on 2 cores: with the defaults (float32 and bfloat16, 3 rounds each, the float32 curve, "
        "the hop) about 8-10 minutes on a quiet machine and up to about 20 when other work holds a core "
        "(a round of one dtype takes about 35 s quiet, 2 minutes busy); each extra round adds one such round "
        "per dtype. `--rounds 1 --new-tokens 8 --curve 1`: about 2-3 minutes.",
    )
    p.add_argument("--model", type=Path, default=Path("models/bench-gpt2-small"),
                   help="checkpoint directory; a random GPT-2-small is written there if absent")  # fmt: skip
    p.add_argument("--tiny-model", type=Path, default=Path("models/tiny-gpt2"),
                   help="checkpoint of the per-hop measurement; a tiny random GPT-2 (6 blocks, d=64) is "
                        "written there if absent")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("run/bench"), help="where latest.{json,txt,png} go")
    p.add_argument("--partitions", type=int, default=3, help="the measured stacks' partitions")
    p.add_argument("--split", default="balanced", help="their split (the hop's stacks split evenly)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens per request (and per HF sequence)")
    p.add_argument("--dtypes", default="auto",
                   help="comma-separated dtypes to measure, each with the HF baseline in the same dtype; "
                        "auto: float32, and bfloat16 when the CPU has avx512_bf16 or amx_bf16")  # fmt: skip
    p.add_argument("--curve", default="1,4,16,64", help="concurrency levels of the curve (empty: none)")
    p.add_argument("--curve-dtypes", default="float32",
                   help="the dtypes (of those measured) that get the curve; 'all' for every one")  # fmt: skip
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="HF baseline's torch threads")
    p.add_argument("--rounds", type=int, default=3,
                   help="baseline/stack pairs per dtype (and 1-/3-partition pairs) for the headline ratios")  # fmt: skip
    p.add_argument("--stack-args", default="", help="extra `splitgpt up` arguments (every stack)")
    big = p.add_argument_group("big model (bench.big_model): memory per node, speed and prefix reuse on a real geometry")
    big.add_argument("--geometry", default=None,
                     help="measure this GPT-2 geometry instead (gpt2, gpt2-medium, gpt2-large, gpt2-xl), e.g. "
                          "--geometry gpt2-xl --partitions 4 --new-tokens 32")  # fmt: skip
    big.add_argument("--geometry-dir", type=Path, default=None,
                     help="its checkpoint (default models/<geometry>; a random one is written if absent)")  # fmt: skip
    big.add_argument("--concurrency", type=int, default=8, help="concurrent requests, against an HF batch of as many")
    big.add_argument("--prefix-tokens", type=int, default=400, help="the shared-prefix workload's shared tokens")
    big.add_argument("--unique-tokens", type=int, default=20, help="... and each request's own")
    big.add_argument("--prefix-requests", type=int, default=32, help="... and its requests, one at a time")
    args = p.parse_args(argv)
    # Big-model mode measures one dtype: the first asked for, float32 by default.
    args.big_dtype = "float32" if args.dtypes.strip() == "auto" else args.dtypes.split(",")[0].strip()
    return args


def describe_model(path: Path) -> str:
    config = json.loads((path / "config.json").read_text())
    shape = {k: config.get(k) for k in GPT2_SMALL}
    if shape == GPT2_SMALL:
        return f"GPT-2-small geometry ({path})"
    return f"GPT-2, {shape['n_layer']} blocks, d={shape['n_embd']} ({path})"


def choose_dtypes(spec: str, cpu: dict) -> list[str]:
    if spec.strip() == "auto":
        return ["float32", "bfloat16"] if cpu["bf16_units"] else ["float32"]
    names = [d.strip() for d in spec.split(",") if d.strip()]
    unknown = [d for d in names if d not in DTYPES]
    if unknown or not names:
        raise SystemExit(f"splitgpt bench: --dtypes {spec!r}: use 'auto' or some of {sorted(DTYPES)}")
    return list(dict.fromkeys(names))


def median_round(rounds: list[dict], key: str) -> dict:
    return sorted(rounds, key=lambda r: r[key])[len(rounds) // 2]


async def warm_up(url: str) -> None:
    async with httpx.AsyncClient(timeout=120) as client:  # every process's first-request paths
        for i in range(2):
            r = await client.post(f"{url}/api/model/process", json={"text": f"warm up {i}", "max_tokens": 8, "ignore_eos": True})
            r.raise_for_status()


async def node_dtypes(stack: Stack) -> list[str]:
    """The dtype each node says it computes in (its Info), so the report shows what ran, not what was asked."""
    from ..shells.node_client import GrpcNodeClient

    found = []
    for part in range(stack.partitions):
        client = GrpcNodeClient(stack.node_address(part), 10, stack.security())
        try:
            found.append((await client.info()).dtype)
        finally:
            await client.close()
    return found


def load(url: str, concurrency: int, requests: int, new_tokens: int, first_index: int) -> dict:
    return asyncio.run(run_load(url, concurrency=concurrency, requests=requests, max_tokens=new_tokens, first_index=first_index))


def measure_dtype(dtype: str, index: int, args: argparse.Namespace, levels: list[int]) -> dict:
    """One dtype: its HF baseline and its stack (the only stack running), taking turns round by round."""
    n, watch = args.new_tokens, CpuWatch()
    base = 100_000 * (index + 1)  # distinct prompts throughout: no result-cache hits
    print(f"[{dtype}] loading the Hugging Face baseline ({args.threads} threads) and starting the stack "
          f"({args.partitions} partitions, nodes in {dtype}) ...", flush=True)  # fmt: skip
    hf = HFBaseline(args.model, args.threads, n, dtype=dtype, wait=False)  # both load at once
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            stack = Stack(args.model, Path(run_dir), partitions=args.partitions, split=args.split,
                          extra_args=args.stack_args.split(), env={"SPLITGPT_NODE_DTYPE": dtype})  # fmt: skip
            try:
                hf.wait_ready()
                if hf.dtype != dtype:
                    raise RuntimeError(f"the HF baseline loaded {hf.dtype}, not {dtype}")
                stack.wait_ready()
                nodes = asyncio.run(node_dtypes(stack))
                if any(d != dtype for d in nodes):
                    raise RuntimeError(f"asked for {dtype} nodes, they report {nodes}")
                asyncio.run(warm_up(stack.url))
                rounds = []
                for r in range(args.rounds):
                    print(f"[{dtype}] round {r + 1}/{args.rounds} ...", flush=True)
                    hf_single, o1 = watch.measure(hf.single_stream, repeats=3, seed=100 * r)
                    single, o2 = watch.measure(load, stack.url, 1, 3, n, base + 1000 + 100 * r)
                    hf_32, o3 = watch.measure(hf.batch, HEADLINE_CONCURRENCY, seed=32 + r)
                    at32, o4 = watch.measure(
                        load, stack.url, HEADLINE_CONCURRENCY, HEADLINE_CONCURRENCY, n, base + 2000 + 100 * r
                    )
                    rounds.append(
                        {
                            "hf_single_stream_decode_ms_per_token": hf_single["decode_ms_per_token"],
                            "hf_batch_32_output_tokens_per_s": hf_32["output_tokens_per_s"],
                            "single_stream": single,
                            "concurrent_32": at32,
                            "single_stream_ratio": single["tpot_ms"]["mean"] / hf_single["decode_ms_per_token"],
                            "throughput_32_ratio": at32["output_tokens_per_s"] / hf_32["output_tokens_per_s"],
                            # CPU used by other processes (and stolen) while each was measured.
                            "others": {"hf_single": o1, "stack_single": o2, "hf_32": o3, "stack_32": o4},
                        }
                    )
                curve, hf_curve = [], {}
                for i, c in enumerate(levels):
                    print(f"[{dtype}] curve: {c} concurrent ...", flush=True)
                    hf_point, hf_others = watch.measure(hf.batch, c)
                    hf_curve[str(c)] = hf_point["output_tokens_per_s"]
                    point, others = watch.measure(load, stack.url, c, max(c, 4), n, base + 5000 + 1000 * i)
                    curve.append({**point, "others": {"hf": hf_others, "stack": others}})
            finally:
                stack.stop()
    finally:
        hf.close()

    single_round = median_round(rounds, "single_stream_ratio")
    throughput_round = median_round(rounds, "throughput_32_ratio")
    return {
        "hf": {
            "threads": hf.threads,
            "dtype": hf.dtype,
            "single_stream_decode_ms_per_token": single_round["hf_single_stream_decode_ms_per_token"],
            "batch_32_output_tokens_per_s": throughput_round["hf_batch_32_output_tokens_per_s"],
            "batched_output_tokens_per_s": hf_curve,
        },
        "stack": {
            "node_dtypes": nodes,
            "single_stream": single_round["single_stream"],
            "concurrent_32": throughput_round["concurrent_32"],
            "curve": curve,
        },
        # Each round's ratio compares measurements taken back to back; the
        # headline is the median round (its numbers are the ones above).
        "ratios": {
            "single_stream_decode": single_round["single_stream_ratio"],
            "throughput_32": throughput_round["throughput_32_ratio"],
        },
        "rounds": [round_summary(r) for r in rounds],
        "failed_requests": sum(r["single_stream"]["failed"] + r["concurrent_32"]["failed"] for r in rounds)
        + sum(c["failed"] for c in curve),
    }


def round_summary(r: dict) -> dict:
    """One round's figures without the stack's full latency summaries."""
    return {
        **{k: v for k, v in r.items() if k not in ("single_stream", "concurrent_32")},
        "stack_single_stream_ms_per_token": r["single_stream"]["tpot_ms"]["mean"],
        "stack_32_output_tokens_per_s": r["concurrent_32"]["output_tokens_per_s"],
        "failed": r["single_stream"]["failed"] + r["concurrent_32"]["failed"],
        "errors": r["single_stream"]["errors"] + r["concurrent_32"]["errors"],
    }


def measure_hop(args: argparse.Namespace) -> dict:
    """Single-stream ms/token of the stack with HOP_PARTITIONS partitions against 1, on the tiny checkpoint.

    Both stacks are up at once (the idle one costs next to nothing) and are
    measured in turns, ABBA, never at the same time."""
    n, watch = args.new_tokens, CpuWatch()
    counts = (1, HOP_PARTITIONS)
    print(f"[hop] starting the tiny stacks ({counts[0]} and {counts[1]} partitions, float32) ...", flush=True)
    with tempfile.TemporaryDirectory() as run_dir:
        stacks: dict[int, Stack] = {}
        try:
            for p in counts:
                (Path(run_dir) / f"p{p}").mkdir()
                stacks[p] = Stack(args.tiny_model, Path(run_dir) / f"p{p}", partitions=p, split="even",
                                  extra_args=args.stack_args.split())  # fmt: skip
            for s in stacks.values():
                s.wait_ready()
                asyncio.run(warm_up(s.url))
            rounds = []
            for r in range(args.rounds):
                print(f"[hop] round {r + 1}/{args.rounds} ...", flush=True)
                order = counts if r % 2 == 0 else counts[::-1]
                got, others = {}, {}
                for p in order:
                    got[p], others[str(p)] = watch.measure(load, stacks[p].url, 1, HOP_REQUESTS, n, 900_000 + 1000 * r + 100 * p)
                one, many = (got[p]["tpot_ms"]["mean"] for p in counts)
                rounds.append(
                    {
                        "order": list(order),
                        "ms_per_token": {str(p): got[p]["tpot_ms"]["mean"] for p in counts},
                        "ratio": many / one,
                        "overhead_ms_per_extra_partition": (many - one) / (counts[1] - counts[0]),
                        "failed": sum(got[p]["failed"] for p in counts),
                        "errors": [e for p in counts for e in got[p]["errors"]],
                        "others": others,
                    }
                )
        finally:  # both at once: each takes seconds
            with concurrent.futures.ThreadPoolExecutor(len(stacks) or 1) as pool:
                list(pool.map(Stack.stop, stacks.values()))
    headline = median_round(rounds, "ratio")
    return {
        "model": describe_model(args.tiny_model),
        "partitions": list(counts),
        "split": "even",
        "dtype": "float32",
        "requests": HOP_REQUESTS,
        "new_tokens": n,
        "ms_per_token": headline["ms_per_token"],
        "ratio": headline["ratio"],
        "overhead_ms_per_extra_partition": headline["overhead_ms_per_extra_partition"],
        "rounds": rounds,
        "failed_requests": sum(r["failed"] for r in rounds),
    }


def others_of(results: dict) -> list[dict]:
    """Every measurement's record of the CPU used by other processes."""
    found = []
    for d in results["dtypes"].values():
        found += [o for r in d["rounds"] for o in r["others"].values()] + [
            o for c in d["stack"]["curve"] for o in c["others"].values()
        ]
    return found + [o for r in results["hop"]["rounds"] for o in r["others"].values()]


def contention(results: dict) -> dict:
    """How busy others kept the machine over all measurements (in cores)."""
    other = [o["other_cores"] for o in others_of(results) if o["other_cores"] is not None]
    steal = [o["steal_cores"] for o in others_of(results) if o["steal_cores"] is not None]
    if not other:
        return {"measurements": 0, "max_other_cores": None, "mean_other_cores": None, "max_steal_cores": None,
                "disturbed": None, "quiet_below_cores": QUIET_CORES}  # fmt: skip
    return {
        "measurements": len(other),
        "max_other_cores": max(other),
        "mean_other_cores": round(sum(other) / len(other), 3),
        "max_steal_cores": max(steal),
        # measurements during which others used at least QUIET_CORES (or the hypervisor stole it)
        "disturbed": sum(o >= QUIET_CORES or s >= QUIET_CORES for o, s in zip(other, steal, strict=True)),
        "quiet_below_cores": QUIET_CORES,
    }


def _most(others: dict) -> str:
    """The most cores others used (or the hypervisor stole) during any of these measurements."""
    values = [o["other_cores"] + o["steal_cores"] for o in others.values() if o["other_cores"] is not None]
    return f"{max(values):.2f}" if values else "-"


def _busiest(others: dict) -> str:
    return f"; others {_most(others)} cores"


def check_targets(results: dict) -> list[dict]:
    checked = []
    for key, what, dtype, ratio, op, bound in TARGETS:
        section = results["hop"] if dtype is None else results["dtypes"].get(dtype)
        value = None if section is None else (section["ratio"] if dtype is None else section["ratios"][ratio])
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        checked.append({"key": key, "what": what, "value": value, "target": f"{op} {bound}", "met": met})
    return checked


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def report(results: dict) -> str:
    cpu = results["cpu"]
    lines = [
        f"splitgpt bench — {results['model']} — {results['date']}",
        cpu_line(cpu),
        f"stack: {results['partitions']} partitions ({results['split']} split)"
        + (f", `splitgpt up {results['stack_args']}`" if results["stack_args"] else "")
        + f"; HF baseline: one process, {results['hf_threads']} threads; {results['new_tokens']} tokens per request; "
        f"rounds: {results['rounds']}",
        f"dtypes: {', '.join(results['dtypes'])}"
        + ("" if "bfloat16" in results["dtypes"] else " (bfloat16 not measured: " + results["bf16_skipped"] + ")"),
        "",
        "targets (each the median of its rounds):",
    ]
    busy = results["contention"]
    for t in results["targets"]:
        state = "not measured" if t["met"] is None else ("met" if t["met"] else "not met")
        lines.append(f"  {state:>12}: {t['what']} = {_f(t['value'], '.3f')} (target {t['target']})")
    if busy["measurements"]:
        lines += [
            "",
            f"other processes during the {busy['measurements']} measurements: mean {busy['mean_other_cores']:.2f}, "
            f"max {busy['max_other_cores']:.2f} of {results['cpu']['usable_cpus']} cores; hypervisor steal max "
            f"{busy['max_steal_cores']:.2f} cores; {busy['disturbed']} measurements disturbed "
            f"(>= {busy['quiet_below_cores']} cores)" + (": rerun on a quiet machine" if busy["disturbed"] else ""),
        ]
    for dtype, d in results["dtypes"].items():
        hf, st, r = d["hf"], d["stack"], d["ratios"]
        lines += [
            "",
            f"{dtype} (HF in {hf['dtype']}, nodes in {', '.join(st['node_dtypes'])}):",
            f"  single-stream decode: stack {st['single_stream']['tpot_ms']['mean']:.1f} ms/token, "
            f"HF {hf['single_stream_decode_ms_per_token']:.1f} ms/token -> ratio {r['single_stream_decode']:.3f}",
            f"  32 concurrent x {results['new_tokens']} tokens: stack {st['concurrent_32']['output_tokens_per_s']:.1f} tok/s, "
            f"HF batch 32 {hf['batch_32_output_tokens_per_s']:.1f} tok/s -> ratio {r['throughput_32']:.3f}",
            "  rounds (baseline and stack back to back; the headline is the median round):",
            *(
                f"    {i + 1}: single-stream {x['stack_single_stream_ms_per_token']:.1f} / "
                f"{x['hf_single_stream_decode_ms_per_token']:.1f} ms = {x['single_stream_ratio']:.3f}; "
                f"32 concurrent {x['stack_32_output_tokens_per_s']:.1f} / {x['hf_batch_32_output_tokens_per_s']:.1f} tok/s "
                f"= {x['throughput_32_ratio']:.3f}{_busiest(x['others'])}"
                for i, x in enumerate(d["rounds"])
            ),
        ]
    hop = results["hop"]
    one, many = (str(p) for p in hop["partitions"])
    lines += [
        "",
        f"per-hop overhead, {hop['model']}: {hop['dtype']}, {hop['split']} split, single stream, "
        f"{hop['requests']} requests x {hop['new_tokens']} tokens:",
        f"  {one} partition {hop['ms_per_token'][one]:.2f} ms/token, {many} partitions {hop['ms_per_token'][many]:.2f} "
        f"ms/token -> ratio {hop['ratio']:.3f}, {hop['overhead_ms_per_extra_partition']:.2f} ms per extra partition",
        "  rounds (1- and 3-partition stacks back to back, in alternating order):",
        *(
            f"    {i + 1}: {x['ms_per_token'][one]:.2f} / {x['ms_per_token'][many]:.2f} ms/token = {x['ratio']:.3f}, "
            f"{x['overhead_ms_per_extra_partition']:+.2f} ms per extra partition{_busiest(x['others'])}"
            for i, x in enumerate(hop["rounds"])
        ),
    ]
    for dtype, d in results["dtypes"].items():
        if not d["stack"]["curve"]:
            continue
        lines += [
            "",
            f"curve ({dtype}; single measurements, not rounds):",
            f"{'conc':>5} {'tok/s':>8} {'HF tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'ITL p50':>8} "
            f"{'ITL p99':>8} {'failed':>6} {'others':>6}",
        ]
        for c in d["stack"]["curve"]:
            hf_tps = d["hf"]["batched_output_tokens_per_s"].get(str(c["concurrency"]))
            lines.append(
                f"{c['concurrency']:>5} {c['output_tokens_per_s']:>8.1f} {_f(hf_tps, '>9.1f')} "
                f"{_f(c['ttft_ms']['p50'], '>9.1f')} {_f(c['ttft_ms']['p99'], '>9.1f')} {_f(c['tpot_ms']['p50'], '>9.1f')} "
                f"{_f(c['itl_ms']['p50'], '>8.1f')} {_f(c['itl_ms']['p99'], '>8.1f')} {c['failed']:>6} {_most(c['others']):>6}"
            )
    lines += ["", f"failed requests in the whole run: {results['failed_requests']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.geometry:
        from .big_model import main as big_model_main

        return big_model_main(args)
    cpu = cpu_facts()
    print(cpu_line(cpu), flush=True)
    dtypes = choose_dtypes(args.dtypes, cpu)
    levels = [int(c) for c in args.curve.split(",") if c.strip()]
    curve_dtypes = set(dtypes) if args.curve_dtypes.strip() == "all" else {d.strip() for d in args.curve_dtypes.split(",")}
    ensure_gpt2_small(args.model)
    if not (args.tiny_model / "config.json").exists():
        print(f"writing a tiny random GPT-2 checkpoint to {args.tiny_model}", flush=True)
        write_checkpoint(args.tiny_model, n_layer=6, n_embd=64, n_head=4, n_positions=1024)
    args.out.mkdir(parents=True, exist_ok=True)

    # One dtype's stack at a time: two stacks never compete for the cores.
    measured = {d: measure_dtype(d, i, args, levels if d in curve_dtypes else []) for i, d in enumerate(dtypes)}
    hop = measure_hop(args)

    results = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "machine": f"{cpu['logical_cpus']} cores, {cpu['model']}",
        "model": describe_model(args.model),
        "partitions": args.partitions,
        "split": args.split,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "stack_args": args.stack_args,
        "hf_threads": args.threads,
        "bf16_skipped": None
        if "bfloat16" in dtypes
        else ("--dtypes " + args.dtypes if args.dtypes != "auto" else "the CPU has neither avx512_bf16 nor amx_bf16"),
        "dtypes": measured,
        "hop": hop,
        "failed_requests": sum(d["failed_requests"] for d in measured.values()) + hop["failed_requests"],
    }
    results["targets"] = check_targets(results)
    results["contention"] = contention(results)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results)
    (args.out / "latest.txt").write_text(text + "\n")
    try:
        from .plot import plot

        plot(results, args.out / "latest.png")
    except ImportError:
        print("(matplotlib is not installed: no plot; `make bench` installs it)")
    print(text)
    print(f"\nwrote {args.out / 'latest.json'}, {args.out / 'latest.txt'}, {args.out / 'latest.png'}")
    if results["failed_requests"]:
        rounds = [r for d in measured.values() for r in d["rounds"] + d["stack"]["curve"]] + hop["rounds"]
        errors = {e for r in rounds for e in r["errors"]}
        raise SystemExit(f"splitgpt bench: {results['failed_requests']} requests failed: {sorted(errors)[:5]}")
