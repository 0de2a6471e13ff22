"""`python -m splitgpt.bench.migration`: what moving a node's running requests costs them.

Two replicas of every partition of a GPT-2-small-sized model. `--streams` greedy
streams with long prompts all start on replica 0 of the middle partition (the
other replica is cordoned until they run). Three runs on one stack, same prompts:

1. undisturbed: each stream's gaps between tokens (the baseline);
2. drain: once every stream has `--after` tokens, replica 0 is drained: each
   sequence's K/V is transferred to replica 1 (which reads it from replica 0
   itself) and the sequence goes on there;
3. remove: the same, but replica 0 is removed (as when its node is lost): each
   sequence's K/V is rebuilt on replica 1 from its tokens.

A second stack, where the coordinator carries the K/V itself
(SPLITGPT_COORDINATOR_MIGRATION_PULL=false), runs 1 and 2 again.

Reported: per stream, the stall (its longest gap between two tokens once every
stream decodes, less its median gap there undisturbed), drain against remove,
in the same run; the drain's own per-sequence pause, node to node against
through the coordinator; and whether every text equals the undisturbed run's.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from transformers import GPT2Config

from .checkpoints import ensure_gpt2_small
from .failover import FAST_HEALTH
from .local_stack import Stack
from .machine import cpu_facts, cpu_line
from .sse_stream import stream_tokens

# Common English words that are one GPT-2 token each (with their leading space), so
# a prompt of N of them is N tokens long plus its "Stream i:" label.
WORDS = (
    "the of and to in is that it was for on are with as be at by this from have or one had not but what all "
    "were when we there can an your which their said if do will each about how up out them then she many some"
).split()
MOVED = "part{p}-r0"  # the replica whose requests move
SPARE = "part{p}-r1"  # where they move to


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m splitgpt.bench.migration", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/bench-gpt2-small"))
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--prompt-words", type=int, default=300, help="prompt length in words (one token each)")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--after", type=int, default=12, help="tokens every stream has before its replica goes")
    p.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    p.add_argument("--run-dir", type=Path, default=None, help="keep the stack's logs here (default: a temporary directory)")
    return p.parse_args(argv)


def wait_until_decoding(url: str, runs: list[concurrent.futures.Future], after: int, timeout_s: float = 600) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    streams = len(runs)
    while True:
        for run in runs:  # a stream refused or failed ends the bench now, not at the deadline
            if run.done():
                run.result()
                raise RuntimeError(f"a stream ended before every stream had {after} tokens")
        tasks = httpx.get(f"{url}/api/tasks", timeout=10).json()["tasks"]
        if len(tasks) == streams and all(t["state"] == "decode" and t["generated_tokens"] >= after for t in tasks):
            return tasks
        if time.monotonic() > deadline:
            raise RuntimeError(f"the streams did not all reach token {after}: {tasks}")
        time.sleep(0.05)  # a poll, not a spin: it shares the cores with the stack


def wait_until_online(url: str, node_id: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = {n["id"]: n for n in httpx.get(f"{url}/api/nodes", timeout=10).json()["nodes"]}
        if nodes.get(node_id, {}).get("lifecycle") == "online":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node_id} is not back online: {nodes.get(node_id)}")
        time.sleep(0.1)


def run(stack: Stack, args: argparse.Namespace, event: str) -> dict:
    """The streams, started on MOVED while SPARE is cordoned; then, once each has
    `after` tokens, SPARE uncordoned and `event` ("none", "drain", "remove") done to MOVED."""
    middle = args.partitions // 2
    moved, spare = MOVED.format(p=middle), SPARE.format(p=middle)
    api = stack.url
    httpx.post(f"{api}/api/nodes/{spare}/cordon", timeout=10).raise_for_status()
    bodies = [
        {"text": f"Stream {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(args.prompt_words)),
         "max_tokens": args.new_tokens, "ignore_eos": True, "stop": [f"\u2400{event}"]}  # its own cache key
        for i in range(args.streams)
    ]  # fmt: skip
    report = None
    print(f"run {event!r}: {args.streams} streams", flush=True)
    with concurrent.futures.ThreadPoolExecutor(args.streams) as pool:
        runs = [pool.submit(stream_tokens, api, body) for body in bodies]
        tasks = wait_until_decoding(api, runs, args.after)
        if not all(moved in t["chain"] for t in tasks):
            raise RuntimeError(f"not every stream runs on {moved}: {[t['chain'] for t in tasks]}")
        at = time.perf_counter()  # every stream decodes: gaps from here on are the ones compared
        httpx.post(f"{api}/api/nodes/{spare}/uncordon", timeout=10).raise_for_status()
        print(f"  every stream has {args.after} tokens on {moved}: {'left alone' if event == 'none' else event}", flush=True)
        if event == "drain":
            r = httpx.post(f"{api}/api/nodes/{moved}/drain", json={"timeout_s": 600}, timeout=660)
            r.raise_for_status()
            report = r.json()
        elif event == "remove":
            httpx.delete(f"{api}/api/nodes/{moved}", timeout=10).raise_for_status()
        results = [r.result() for r in runs]
    if event != "none":  # MOVED back in the cluster, as it was, for the next run
        r = httpx.post(f"{api}/api/nodes", json={"id": moved, "address": stack.node_address(middle, 0)}, timeout=60)
        r.raise_for_status()
        wait_until_online(api, moved)
    return {"times": [t for t, _ in results], "texts": [text for _, text in results], "drain": report, "at": at}


def decoding_gaps(times: list[float], at: float) -> list[float]:
    """The gaps between a stream's tokens that end after `at`: once every stream
    decodes, so no other stream's prefill is in them (those make the early gaps long)."""
    return [b - a for a, b in itertools.pairwise(times) if b > at]


def stalls(undisturbed: dict, disturbed: dict) -> list[float]:
    """Per stream: its longest gap between two tokens after the event, less its
    median gap over the same stretch undisturbed (seconds)."""
    out = []
    for calm, times in zip(undisturbed["times"], disturbed["times"], strict=True):
        calm_gap = statistics.median(decoding_gaps(calm, undisturbed["at"]))
        out.append(max(decoding_gaps(times, disturbed["at"])) - calm_gap)
    return out


def kv_bytes_per_token(model: Path, partitions: int, dtype: str) -> int:
    """K and V of one position on the middle partition: what a drain transfers per token."""
    config = GPT2Config.from_pretrained(model)
    layers = -(-config.n_layer // partitions)
    return layers * 2 * config.n_embd * (2 if dtype == "bfloat16" else 4)


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"


def measure(args: argparse.Namespace, run_dir: Path, pull: bool, events: list[str]) -> dict[str, dict]:
    """The runs `events`, in order, on a stack of their own; `pull`: whether a drain's
    target reads the K/V from the source (node to node) or the coordinator carries it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**FAST_HEALTH, "SPLITGPT_COORDINATOR_MIGRATION_PULL": "true" if pull else "false"}
    stack = Stack(args.model, run_dir, args.partitions, replicas=2, env=env, extra_args=["--dtype", args.dtype])
    try:
        stack.wait_ready(timeout_s=1800)
        stream_tokens(stack.url, {"text": "warm up", "max_tokens": 4})
        return {event: run(stack, args, event) for event in events}
    finally:
        stack.stop()


def pauses(report: dict) -> list[float]:
    return [p / 1000 for p in report["pause_ms"]]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(cpu_line(cpu_facts()), flush=True)
    ensure_gpt2_small(args.model)
    with tempfile.TemporaryDirectory() as temporary:
        run_dir = Path(args.run_dir or temporary)
        print("stack 1: a drain's target reads the K/V from the drained node", flush=True)
        direct = measure(args, run_dir / "node-to-node", True, ["none", "drain", "remove"])
        print("stack 2: the coordinator carries the K/V (SPLITGPT_COORDINATOR_MIGRATION_PULL=false)", flush=True)
        carried = measure(args, run_dir / "through-coordinator", False, ["none", "drain"])
    calm = direct["none"]
    drain_stalls, remove_stalls = stalls(calm, direct["drain"]), stalls(calm, direct["remove"])
    carried_stalls = stalls(carried["none"], carried["drain"])
    report, carried_report = direct["drain"]["drain"], carried["drain"]["drain"]
    same = all(r["texts"] == calm["texts"] for r in (direct["drain"], direct["remove"], *carried.values()))
    calm_gap = statistics.median(gap for times in calm["times"] for gap in decoding_gaps(times, calm["at"]))
    tokens_at_move = args.prompt_words + 3 + args.after  # 3: the "Stream i:" label
    kv_mb = kv_bytes_per_token(args.model, args.partitions, args.dtype) * tokens_at_move / 1e6
    if not report["moved"] or not carried_report["moved"]:
        raise SystemExit(f"a drain moved no sequence: {report}, {carried_report}")
    ratio = statistics.median(drain_stalls) / statistics.median(remove_stalls)
    pause_ratio = statistics.median(report["pause_ms"]) / statistics.median(carried_report["pause_ms"])
    figures = {
        "model": str(args.model), "partitions": args.partitions, "dtype": args.dtype, "streams": args.streams,
        "prompt_words": args.prompt_words, "new_tokens": args.new_tokens, "after": args.after,
        "median_gap_undisturbed_s": calm_gap, "drain_stall_s": drain_stalls, "remove_stall_s": remove_stalls,
        "drain_over_remove_median_stall": ratio, "drain_moved": report["moved"],
        "drain_recomputed": report["recomputed"], "drain_pause_ms": report["pause_ms"],
        "drain_moved_direct": report["moved_direct"],
        "carried_stall_s": carried_stalls, "carried_pause_ms": carried_report["pause_ms"],
        "carried_moved": carried_report["moved"], "carried_moved_direct": carried_report["moved_direct"],
        "carried_recomputed": carried_report["recomputed"], "node_to_node_over_carried_median_pause": pause_ratio,
        "kv_mb_per_sequence_about": kv_mb, "texts_equal_undisturbed": same,
    }  # fmt: skip
    print(
        f"{args.streams} streams on {MOVED.format(p=args.partitions // 2)} ({args.model}, {args.partitions} partitions, "
        f"{args.dtype}, ~{tokens_at_move} tokens each when they move, ~{kv_mb:.2f} MB of K/V each):\n"
        f"  undisturbed median gap between tokens: {calm_gap * 1000:.0f} ms\n"
        f"  drain  (K/V transferred): stall per stream {ms(drain_stalls)}; "
        f"{report['moved']} moved ({report['moved_direct']} node to node), {report['recomputed']} recomputed; "
        f"the coordinator's pause per sequence {ms(pauses(report))}\n"
        f"  drain, K/V through the coordinator: stall per stream {ms(carried_stalls)}; "
        f"{carried_report['moved']} moved, {carried_report['recomputed']} recomputed; "
        f"pause per sequence {ms(pauses(carried_report))}\n"
        f"  remove (K/V rebuilt):     stall per stream {ms(remove_stalls)}\n"
        f"  drain / remove, median stall: {ratio:.3f}\n"
        f"  node to node / through the coordinator, median pause: {pause_ratio:.3f}\n"
        f"  every text equals the undisturbed run's: {same}",
        flush=True,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))
    if not same or report["recomputed"] or carried_report["recomputed"]:
        raise SystemExit("a moved request's text differs from the undisturbed run's, or a drain recomputed one")


if __name__ == "__main__":
    main()
