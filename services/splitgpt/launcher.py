"""`splitgpt up`: the whole stack as local processes, one command.

Starts the tokenizer, N x R partition nodes, the coordinator and the API,
writes the cluster config they share, prefixes every log line with the
service's name, and stops every child on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .core.checkpoint import ModelSourceError, load_config, resolve_model_dir
from .core.cluster_config import ClusterConfig, NodeEntry
from .core.partitioning import PartitionError, parse_split, resolve_split

COLORS = ["36", "32", "33", "35", "34", "31", "96", "92", "93", "95"]


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="splitgpt up", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.environ.get("MODEL_ID", "gpt2"), help="Hub id or checkpoint directory (env MODEL_ID)")
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument(
        "--split",
        default="balanced",
        help="balanced (default: counts the embedding/head on the last part as the blocks it is worth) "
        "| even | explicit ranges like 0-4,4-8,8-12",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--api-port", type=int, default=8000)
    p.add_argument("--grpc-port-base", type=int, default=50050, help="coordinator; tokenizer +1; nodes from +50")
    p.add_argument("--run-dir", type=Path, default=Path("run"), help="where the cluster config is written")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="per node, at most; 0: every core, divided among the micro-batches in flight at each step",
    )
    p.add_argument(
        "--micro-batches", type=int, default=0, help="in flight at once (pipeline parallelism); 0: min(partitions, cores)"
    )
    p.add_argument("--ready-timeout", type=float, default=300.0)
    return p.parse_args(argv)


def plan(args: argparse.Namespace, model_dir: Path) -> tuple[list[Child], ClusterConfig]:
    base = args.grpc_port_base
    coordinator_addr, tokenizer_addr = f"{args.host}:{base}", f"{args.host}:{base + 1}"
    nodes = [
        NodeEntry(id=f"part{p}-r{r}", address=f"{args.host}:{base + 50 + p * args.replicas + r}", partition=p)
        for p in range(args.partitions)
        for r in range(args.replicas)
    ]
    config = ClusterConfig(model=str(model_dir), num_partitions=args.partitions, split=parse_split(args.split), nodes=nodes)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    config_path = (args.run_dir / "cluster.json").resolve()
    config.dump(config_path)

    # All nodes share this host's cores: as many micro-batches in flight as
    # there are cores (each busy node gets one), unless told otherwise; at each
    # step a node takes the cores divided by the micro-batches then in flight,
    # so a lone stream computes on all of them.
    cores = os.cpu_count() or 1
    micro_batches = args.micro_batches or max(1, min(args.partitions, cores))
    threads = args.torch_threads or cores
    divide = [] if args.torch_threads else ["--divide-threads", "true"]
    env = {**os.environ, "MODEL_ID": str(model_dir), "PYTHONUNBUFFERED": "1"}
    # After a parallel region OpenMP's threads spin, by default for ~300k
    # iterations, waiting for the next one. On a shared host that spin eats the
    # core the next node in the pipeline is computing on (single-stream steps
    # measured 1.5x slower); a short spin keeps the quick hand-off between a
    # step's own regions without starving the neighbours.
    node_env = {"GOMP_SPINCOUNT": "10000", **env}
    me = [sys.executable, "-m", "splitgpt.cli"]
    children = [Child("tokenizer", me + ["tokenizer", "--host", args.host, "--port", str(base + 1)], env)]
    for node in nodes:
        host, port = node.address.rsplit(":", 1)
        children.append(
            Child(
                node.id,
                me + ["node", "--node-id", node.id, "--partition", str(node.partition),
                      "--num-partitions", str(args.partitions), "--split", args.split,
                      "--host", host, "--port", port, "--torch-threads", str(threads), *divide],
                node_env,
            )
        )  # fmt: skip
    children.append(
        Child(
            "coordinator",
            me + ["coordinator", "--cluster-config", str(config_path), "--host", args.host, "--port", str(base),
                  "--micro-batches", str(micro_batches)],  # fmt: skip
            env,
        )
    )
    api_env = {**env, "SPLITGPT_API_TOKENIZER_ADDRESS": tokenizer_addr, "SPLITGPT_API_COORDINATOR_ADDRESS": coordinator_addr}
    children.append(Child("api", me + ["api", "--host", args.host, "--port", str(args.api_port)], api_env))
    return children, config


async def _pump(child: Child, color: str) -> None:
    assert child.process and child.process.stdout
    tag = f"\033[{color}m{child.name:<12}|\033[0m " if sys.stdout.isatty() else f"{child.name:<12}| "
    async for line in child.process.stdout:
        sys.stdout.write(tag + line.decode(errors="replace"))
        sys.stdout.flush()


async def _wait_ready(url: str, timeout_s: float, children: list[Child]) -> bool:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if any(c.process and c.process.returncode is not None for c in children):
                return False
            try:
                if (await client.get(url)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    return False


async def _stop(children: list[Child], grace_s: float = 10.0) -> None:
    running = [c.process for c in children if c.process and c.process.returncode is None]
    for p in running:
        p.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), grace_s)
    except TimeoutError:
        for p in running:
            if p.returncode is None:
                p.kill()
        await asyncio.gather(*(p.wait() for p in running))


async def run(args: argparse.Namespace) -> int:
    try:
        model_dir = await asyncio.to_thread(resolve_model_dir, args.model)
        config = load_config(model_dir)
        ranges = resolve_split(args.split, config.n_layer, args.partitions, config.vocab_size, config.n_embd)
    except (ModelSourceError, PartitionError) as exc:
        print(f"splitgpt up: {exc}", file=sys.stderr)
        return 2
    print(f"splitgpt up: {args.model}, {config.n_layer} blocks in {args.partitions} partitions: {ranges}", flush=True)
    children, config = plan(args, model_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pumps = []
    for i, child in enumerate(children):
        child.process = await asyncio.create_subprocess_exec(
            *child.argv, env=child.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )  # fmt: skip
        pumps.append(asyncio.create_task(_pump(child, COLORS[i % len(COLORS)])))
    api = f"http://{args.host}:{args.api_port}"
    ready = asyncio.create_task(_wait_ready(f"{api}/api/ready", args.ready_timeout, children))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([ready, stopped], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if ready.done() and ready.result():
        print(
            f"splitgpt is ready: {config.num_partitions} partitions x {args.replicas} replicas of {args.model}\n"
            f"  curl -s {api}/api/model/process -H 'content-type: application/json' -d '{{\"text\": \"Hello\"}}'\n"
            f"  docs: {api}/docs",
            flush=True,
        )
        await stopped
    elif not stopped.done():
        print("splitgpt up: the stack did not become ready; stopping", file=sys.stderr, flush=True)
        code = 1
    ready.cancel()
    stopped.cancel()
    await _stop(children)
    for pump in pumps:
        pump.cancel()
    return code


def main(argv: list[str] | None = None) -> None:
    sys.exit(asyncio.run(run(parse_args(argv))))
