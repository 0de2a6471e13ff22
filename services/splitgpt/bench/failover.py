"""`python -m splitgpt.bench.failover`: what losing a replica costs a running request.

Two replicas of every partition; one greedy request with a long prompt runs
twice, fault-free and then with the replica of the middle partition that
serves it killed (SIGKILL) after `--kill-after` tokens. Reported, from the
nodes' own `splitgpt_node_tokens_processed_total` counters: the token rows the
partitions that did not fail ran beyond the fault-free run (what the failover
made them recompute), the rows the failed partition's new replica ran to catch
up, and the seconds the failover added to the request. Run it against an older
checkout (PYTHONPATH=<checkout>/services) for the cost before a change.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from .checkpoints import ensure_gpt2_small
from .local_stack import Stack, scraped
from .machine import cpu_facts, cpu_line
from .sse_stream import stream_tokens

ROWS = "splitgpt_node_tokens_processed_total"
FAST_HEALTH = {"SPLITGPT_COORDINATOR_HEALTH_INTERVAL_S": "0.3", "SPLITGPT_COORDINATOR_STEP_TIMEOUT_S": "60"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m splitgpt.bench.failover", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/bench-gpt2-small"))
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--prompt-words", type=int, default=400, help="prompt length in words (about one token each)")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--kill-after", type=int, default=16, help="tokens generated before the kill")
    p.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    p.add_argument("--run-dir", type=Path, default=None, help="keep the stack's logs here (default: a temporary directory)")
    return p.parse_args(argv)


def node_rows(stack: Stack) -> dict[str, float]:
    """Token rows each live node has run through its blocks, by node id."""
    rows = {}
    for p in range(stack.partitions):
        for r in range(stack.replicas):
            try:
                rows[f"part{p}-r{r}"] = scraped(stack.node_metrics_url(p, r), ROWS)
            except httpx.HTTPError:  # killed
                continue
    return rows


def run(stack: Stack, args: argparse.Namespace, kill: bool, tag: str) -> dict:
    """One request; with `kill`, the middle partition's replica that serves it is
    killed as its `kill_after`-th token arrives (no polling: it would load the stack)."""
    body = {"text": " ".join(f"w{i % 50}" for i in range(args.prompt_words)), "max_tokens": args.new_tokens,
            "ignore_eos": True, "stop": [f"\u2400{tag}"]}  # a stop string of its own keeps the result cache out  # fmt: skip
    before = node_rows(stack)
    pids = {f"part{p}-r{r}": stack.node_pid(p, r) for p in range(stack.partitions) for r in range(stack.replicas)}
    killed: list[str] = []

    def on_token(n: int) -> None:
        if kill and n == args.kill_after:
            chain = httpx.get(f"{stack.url}/api/tasks", timeout=10).json()["tasks"][0]["chain"]
            killed.append(chain[stack.partitions // 2])
            os.kill(pids[killed[0]], signal.SIGKILL)

    started = time.perf_counter()
    times, _ = stream_tokens(stack.url, body, on_token)
    after = node_rows(stack)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "seconds": times[-1] - started,
        "ttft": times[0] - started,
        "median_gap": statistics.median(gaps),
        "gap_at_kill": gaps[args.kill_after - 1] if kill else None,  # from the kill to the next token
        "rows": {n: after.get(n, before.get(n, 0.0)) - before.get(n, 0.0) for n in set(before) | set(after)},
        "killed": killed[0] if killed else None,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(cpu_line(cpu_facts()), flush=True)
    ensure_gpt2_small(args.model)
    with tempfile.TemporaryDirectory() as temporary:
        run_dir = args.run_dir or temporary
        env = {**FAST_HEALTH, "SPLITGPT_COORDINATOR_ROUTING": "round_robin"}
        stack = Stack(args.model, Path(run_dir), args.partitions, replicas=2, env=env, extra_args=["--dtype", args.dtype])
        try:
            stack.wait_ready(timeout_s=1800)
            stream_tokens(stack.url, {"text": "warm up", "max_tokens": 4})
            clean = run(stack, args, kill=False, tag="clean")
            fault = run(stack, args, kill=True, tag="fault")
        finally:
            stack.stop()
    middle = args.partitions // 2
    by_partition = lambda rows: {p: sum(v for n, v in rows.items() if n.startswith(f"part{p}-")) for p in range(args.partitions)}  # noqa: E731
    clean_rows, fault_rows = by_partition(clean["rows"]), by_partition(fault["rows"])
    others = {p: fault_rows[p] - clean_rows[p] for p in range(args.partitions) if p != middle}
    # The failed partition's new replica: its rows, less the steps it took for the tokens after the kill.
    spare = next(n for n in fault["rows"] if n.startswith(f"part{middle}-") and n != fault["killed"])
    caught_up = fault["rows"][spare] - (args.new_tokens - args.kill_after)
    figures = {
        "model": str(args.model), "partitions": args.partitions, "dtype": args.dtype,
        "prompt_words": args.prompt_words, "new_tokens": args.new_tokens, "kill_after": args.kill_after,
        "killed": fault["killed"], "fault_free_s": clean["seconds"], "with_failover_s": fault["seconds"],
        "added_s": fault["seconds"] - clean["seconds"], "median_gap_s": clean["median_gap"],
        "gap_at_kill_s": fault["gap_at_kill"], "recomputed_rows_other_partitions": others,
        "rows_to_rebuild_failed_partition": caught_up,
    }  # fmt: skip
    print(
        f"failover of {fault['killed']} after {args.kill_after} tokens "
        f"({args.model}, {args.partitions} partitions, {args.dtype}):\n"
        f"  request: fault-free {clean['seconds']:.2f} s, with failover {fault['seconds']:.2f} s "
        f"(+{figures['added_s']:.2f} s); the next token after the kill came "
        f"{fault['gap_at_kill'] * 1000:.0f} ms later (fault-free median gap {clean['median_gap'] * 1000:.0f} ms)\n"
        f"  rows recomputed by the partitions that did not fail: "
        + ", ".join(f"partition {p}: {v:.0f}" for p, v in others.items())
        + f"\n  rows the failed partition's new replica ran to catch up: {caught_up:.0f}",
        flush=True,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
