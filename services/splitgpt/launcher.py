"""`splitgpt up`: the whole stack as local processes, one command.

Starts the tokenizer, N x R partition nodes, the coordinator and the API,
writes the cluster config they share, and prefixes every log line with the
service's name. Every port is checked before anything starts. A child that
dies is reported and restarted (supervisor.py). Ctrl-C or SIGTERM stops the
stack front to back: the API first (running requests get a grace period),
then the coordinator, then the nodes and the tokenizer; a second Ctrl-C
kills everything at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import httpx

from .core.cluster_config import ClusterConfig, ModelConfig, NodeEntry
from .core.memory_plan import Geometry, memory_split, parse_budgets
from .core.partitioning import PartitionError, parse_split, resolve_split
from .core.pipelining import overflows_cache, shared_host_micro_batches
from .monitoring.local_prometheus import REPO_ALERTS, find_prometheus, prometheus_argv, write_local_config
from .ports import can_listen, listener_of
from .supervisor import Child, RestartPolicy, Supervisor

# Stop order (supervisor.py): what takes requests first, what serves them last.
FRONT, COORDINATION, BACKENDS = 0, 1, 2
# The Makefile variable that sets an option of `make up`.
MAKE_VARIABLES = {"--api-port": "API_PORT", "--grpc-port-base": "GRPC_PORT_BASE"}
# What the nodes compute in (`--dtype`; the nodes' own setting, SPLITGPT_NODE_DTYPE). Every node
# of a stack takes the same: a node refuses hidden states in another dtype than its own.
NODE_DTYPES = ("float32", "bfloat16")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="splitgpt up", description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="[NAME=]MODEL",
        help="Hub id or checkpoint directory (env MODEL_ID; default gpt2). Repeat it to serve several models at once, "
        "each split into --partitions x --replicas nodes of its own; the first is the default. NAME= sets the name "
        "requests call it by (default: the first model's id, the others' directory names)",
    )
    p.add_argument("--partitions", type=int, default=3, help="the model's blocks are cut into this many nodes")
    p.add_argument("--replicas", type=int, default=1, help="nodes serving each partition")
    p.add_argument(
        "--split",
        default="balanced",
        help="balanced (counts the embedding/head on the last part as the blocks it is worth) "
        "| even | explicit ranges like 0-4,4-8,8-12",
    )
    p.add_argument(
        "--node-memory",
        default=os.environ.get("SPLITGPT_NODE_MEMORY") or None,
        help="each node's memory, one value for all or one per partition (4G or 4G,2G,2G,2G; env SPLITGPT_NODE_MEMORY): "
        "the split then gives each node blocks in proportion to its room (replacing --split), and a plan that "
        "cannot fit is refused before anything loads",
    )
    p.add_argument("--host", default="127.0.0.1", help="every service listens on this address")
    p.add_argument("--api-port", type=int, default=8000, help="the HTTP API")
    p.add_argument("--ui-port", type=int, default=5173, help="the web UI (built from frontend/ when stale)")
    p.add_argument("--no-ui", action="store_true", help="do not serve the web UI")
    p.add_argument("--grpc-port-base", type=int, default=50050, help="coordinator on it, tokenizer on +1, nodes from +50 on")
    p.add_argument(
        "--metrics-port-base",
        type=int,
        default=9400,
        help="Prometheus /metrics of the gRPC services: coordinator on it, tokenizer on +1, node i on +10+i; 0: off",
    )
    p.add_argument(
        "--monitoring",
        action="store_true",
        help="also start a Prometheus (Debian's `prometheus` package) that scrapes every service and evaluates "
        "prometheus/alerts.yml",
    )
    p.add_argument("--prometheus-port", type=int, default=9090, help="with --monitoring: Prometheus' web UI and API")
    p.add_argument("--run-dir", type=Path, default=Path("run"), help="where the cluster config is written")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="per node, at most; 0: every core, divided among the micro-batches in flight at each step",
    )
    p.add_argument(
        "--micro-batches",
        type=int,
        default=0,
        help="in flight at once (pipeline parallelism); 0: 1 when a node's weights overflow the CPU's last-level "
        "cache (each step streams them from memory), else min(partitions, cores)",
    )
    p.add_argument(
        "--dtype",
        choices=NODE_DTYPES,
        default=os.environ.get("SPLITGPT_NODE_DTYPE", "float32"),
        help="what every node holds its weights and KV cache in and sends between nodes (env SPLITGPT_NODE_DTYPE). "
        "float32: exactly Hugging Face's tokens; bfloat16: half the weight memory and wire bytes, native on CPUs with "
        "avx512_bf16/AMX, greedy tokens may part from float32's at near-ties (README: bf16)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (the split, with --node-memory what each node needs) and start nothing",
    )
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds for the whole stack to become ready")
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=3.0,
        help="on Ctrl-C, seconds that running requests get to finish before they end with a shutting_down error",
    )
    p.add_argument(
        "--restart",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start a child that dies again, after a backoff (1s, doubling)",
    )
    p.add_argument("--max-restarts", type=int, default=5, help="restarts in a row before giving up on a child")
    p.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS on every gRPC hop, with a throwaway CA and certificates written to RUN_DIR/tls",
    )
    args = p.parse_args(argv)
    args.models = [served_model(spec, first=i == 0) for i, spec in enumerate(args.model or [os.environ.get("MODEL_ID", "gpt2")])]
    names = [name for name, _ in args.models]
    if len(set(names)) != len(names):
        p.error(f"--model: two models share a name ({', '.join(names)}): give one NAME=")
    args.model = args.models[0][1]  # the default model: what a request without `model` runs on
    if len(args.models) > 1 and args.node_memory:
        p.error("--node-memory plans one model's split: serve one model with it, or split several with --split")
    if args.dtype not in NODE_DTYPES:  # a default from the environment skips argparse's own check
        p.error(f"SPLITGPT_NODE_DTYPE={args.dtype!r}: --dtype must be one of {', '.join(NODE_DTYPES)}")
    return args


def served_model(spec: str, first: bool) -> tuple[str | None, str]:
    """`[NAME=]MODEL` -> (name, model). The first model's name defaults to its id (as
    with one model, so nothing changes for it), another's to its directory's name."""
    name, sep, model = spec.partition("=")
    if not sep:
        name, model = None, spec
    if name is None and not first:
        name = model.rstrip("/").rsplit("/", 1)[-1]
    return name, model


def inside_env(args: argparse.Namespace) -> dict[str, str]:
    """What every gRPC service and the API get by environment (never on a command
    line, never printed): the internal token, random for this run unless the
    environment sets one, and with --tls the certificates' paths."""
    env = {}
    if not os.environ.get("SPLITGPT_INTERNAL_TOKEN") and not os.environ.get("SPLITGPT_INTERNAL_TOKEN_FILE"):
        env["SPLITGPT_INTERNAL_TOKEN"] = secrets.token_urlsafe(32)
    if args.tls:
        from .shells.tls import write_dev_pki

        env.update(write_dev_pki((args.run_dir / "tls").resolve(), [args.host]).env())
    return env


def node_prefix(model_index: int) -> str:
    """Node ids of the default model are `part0-r0`, ...; of the k-th other model `m{k}-part0-r0`, ..."""
    return "" if model_index == 0 else f"m{model_index}-"


def _node_ids(args: argparse.Namespace) -> list[str]:
    """The nodes, in the order they are created (and numbered for their ports and metrics ports)."""
    models = len(getattr(args, "models", None) or [None])
    return [f"{node_prefix(k)}part{p}-r{r}" for k in range(models) for p in range(args.partitions) for r in range(args.replicas)]


def metrics_ports(args: argparse.Namespace) -> dict[str, int]:
    """Each gRPC service's metrics port by child name (docs/metrics.md); empty when off."""
    base = getattr(args, "metrics_port_base", 0)
    if not base:
        return {}
    return {"coordinator": base, "tokenizer": base + 1} | {node: base + 10 + i for i, node in enumerate(_node_ids(args))}


def _scrape_host(host: str) -> str:
    """Where a local Prometheus reaches a service bound to `host`."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def metrics_targets(args: argparse.Namespace) -> dict[str, list[str]]:
    """Prometheus scrape targets (host:port) by job name, for the stack `args` describes
    (any object with host, api_port, metrics_port_base, partitions and replicas).
    The API serves its metrics at /metrics on its own port; the others on theirs."""
    host = _scrape_host(args.host)
    ports = metrics_ports(args)
    targets = {"splitgpt-api": [f"{host}:{args.api_port}"], "splitgpt-tokenizer": [], "splitgpt-coordinator": [],
               "splitgpt-node": []}  # fmt: skip
    for name, port in ports.items():
        job = f"splitgpt-{name}" if name in ("tokenizer", "coordinator") else "splitgpt-node"
        targets[job].append(f"{host}:{port}")
    return targets


def metrics_urls(args: argparse.Namespace) -> list[str]:
    """One line per service: its name and its /metrics URL."""
    host = _scrape_host(args.host)
    lines = [f"api         http://{host}:{args.api_port}/metrics"]
    return lines + [f"{name:<11} http://{host}:{port}/metrics" for name, port in metrics_ports(args).items()]


def metrics_port_claims(args: argparse.Namespace) -> list[tuple[int, str, str]]:
    """(port, child, option that moves it) of every metrics port, for `port_problems`."""
    return [(port, f"{name} metrics", "--metrics-port-base") for name, port in metrics_ports(args).items()]


def plan(
    args: argparse.Namespace, model_dir: Path | list[Path], inside: dict[str, str] | None = None
) -> tuple[list[Child], ClusterConfig, Path]:
    """The children to start and the cluster config they share (written by the caller).
    `inside`: the token and certificates (`inside_env`) the gRPC services and the API get.

    A child names the port it listens on and the option that moves it (both
    checked before anything starts), and its tier: when it stops, see FRONT.
    """
    base = args.grpc_port_base
    coordinator_addr, tokenizer_addr = f"{args.host}:{base}", f"{args.host}:{base + 1}"
    served = getattr(args, "models", None) or [(None, args.model)]
    # `model_dir`: the default model's directory, or every model's (in --model order).
    dirs = [model_dir] if isinstance(model_dir, Path) else list(model_dir)
    dirs += [Path(model) for _, model in served[len(dirs) :]]
    per_model = args.partitions * args.replicas
    models = []
    for k, ((name, _), directory) in enumerate(zip(served, dirs, strict=True)):
        first_port = base + 50 + k * per_model
        entries = [
            NodeEntry(id=f"{node_prefix(k)}part{p}-r{r}", address=f"{args.host}:{first_port + p * args.replicas + r}",
                      partition=p)
            for p in range(args.partitions)
            for r in range(args.replicas)
        ]  # fmt: skip
        models.append(
            ModelConfig(
                name=name, model=str(directory), num_partitions=args.partitions, split=parse_split(args.split), nodes=entries
            )
        )
    nodes = [(entry, model.model) for model in models for entry in model.nodes]
    metrics = metrics_ports(args)  # by node id, numbered in this order

    def metrics_flag(name: str) -> list[str]:
        return ["--metrics-port", str(metrics[name])] if name in metrics else []

    budgets = parse_budgets(args.node_memory, args.partitions) if args.node_memory else None

    def memory_flag(partition: int) -> list[str]:  # each node checks its own share again before it loads
        return ["--memory-budget", str(budgets[partition])] if budgets else []

    config = ClusterConfig(models=models)
    config_path = (args.run_dir / "cluster.json").resolve()

    # All nodes share this host's cores: `run` chose the micro-batches in flight
    # (choose_micro_batches; one per core when this is reached without it); at
    # each step a node takes the cores divided by the micro-batches then in
    # flight, so a lone stream computes on all of them.
    cores = os.cpu_count() or 1
    micro_batches = args.micro_batches or max(1, min(args.partitions, cores))
    threads = args.torch_threads or cores
    divide = [] if args.torch_threads else ["--divide-threads", "true"]
    ui_env = {**os.environ, "MODEL_ID": str(dirs[0]), "PYTHONUNBUFFERED": "1"}
    env = {**ui_env, **(inside or {})}  # the web UI speaks HTTP to the API only: it gets neither
    # After a parallel region OpenMP's threads spin, by default for ~300k
    # iterations, waiting for the next one. On a shared host that spin eats the
    # core the next node in the pipeline is computing on (single-stream steps
    # measured 1.5x slower); a short spin keeps the quick hand-off between a
    # step's own regions without starving the neighbours.
    node_env = {"GOMP_SPINCOUNT": "10000", **env}
    me = [sys.executable, "-m", "splitgpt.cli"]
    grpc_port = "--grpc-port-base"
    # The backends stop on SIGINT: it skips a node's drain (DRAIN_S), which is
    # for a coordinator to move requests away, and by then the coordinator is gone.
    # Several models: the tokenizer holds each one's, by the name the coordinator gives it.
    tokenizer_env = env
    if len(models) > 1:
        pairs = ",".join(f"{m.served_name(str(dirs[0]))}={m.model}" for m in models)
        tokenizer_env = {**env, "SPLITGPT_TOKENIZER_MODELS": pairs}
    children = [
        Child("tokenizer", me + ["tokenizer", "--host", args.host, "--port", str(base + 1), *metrics_flag("tokenizer")],
              tokenizer_env,
              tier=BACKENDS, stop_signal=signal.SIGINT, port=base + 1, port_flag=grpc_port)
    ]  # fmt: skip
    for node, node_model in nodes:
        host, port = node.address.rsplit(":", 1)
        children.append(
            Child(
                node.id,
                me + ["node", "--node-id", node.id, "--partition", str(node.partition),
                      "--num-partitions", str(args.partitions), "--split", args.split,
                      "--host", host, "--port", port, "--dtype", args.dtype, "--torch-threads", str(threads), *divide,
                      *memory_flag(node.partition), *metrics_flag(node.id)],
                {**node_env, "MODEL_ID": node_model},
                tier=BACKENDS, stop_signal=signal.SIGINT, port=int(port), port_flag=grpc_port,
                essential=False,  # another replica may serve its partition; /api/ready tells
            )
        )  # fmt: skip
    children.append(
        Child(
            "coordinator",
            me + ["coordinator", "--cluster-config", str(config_path), "--host", args.host, "--port", str(base),
                  "--micro-batches", str(micro_batches), *metrics_flag("coordinator")],
            env,
            tier=COORDINATION, port=base, port_flag=grpc_port,
        )
    )  # fmt: skip
    api_env = {**env, "SPLITGPT_API_TOKENIZER_ADDRESS": tokenizer_addr, "SPLITGPT_API_COORDINATOR_ADDRESS": coordinator_addr}
    children.append(
        Child(
            "api",
            me + ["api", "--host", args.host, "--port", str(args.api_port), "--shutdown-grace-s", str(args.shutdown_grace)],
            api_env,
            tier=FRONT, port=args.api_port, port_flag="--api-port",
            stop_timeout_s=args.shutdown_grace + 5,  # uvicorn's own backstop is at grace + 2
        )
    )  # fmt: skip
    if getattr(args, "monitoring", False) and (prometheus := find_prometheus()):
        directory = (args.run_dir / "prometheus").resolve()
        argv = prometheus_argv(directory / "prometheus.yml", directory / "data", args.host, args.prometheus_port, prometheus)
        # Stopped with the front tier: nothing depends on it, and it scrapes until then.
        children.append(
            Child("prometheus", argv, ui_env, tier=FRONT, port=args.prometheus_port, port_flag="--prometheus-port",
                  essential=False)
        )  # fmt: skip
    if not args.no_ui:
        # Builds the page first when it is missing or stale (npm ci, vite build); without
        # Node it says so in one line and serves a page saying the same: the stack runs on.
        api_url = f"http://{args.host}:{args.api_port}"
        ui_argv = ["ui", "--host", args.host, "--port", str(args.ui_port), "--api-url", api_url, "--build", "true"]
        # Stopped with the API: it relays the API's last events to the page, then exits.
        children.append(
            Child("ui", me + ui_argv, ui_env, tier=FRONT, port=args.ui_port, port_flag="--ui-port",
                  stop_timeout_s=args.shutdown_grace + 5, essential=False)
        )  # fmt: skip
    return children, config, config_path


def start_monitoring(args: argparse.Namespace) -> str | None:
    """With --monitoring, write the config of the Prometheus child (`plan`) and return its URL;
    None (and a line saying why) when it is not asked for or not installed."""
    if not args.monitoring:
        return None
    if find_prometheus() is None:
        say("--monitoring: no Prometheus here (Debian: apt-get install prometheus); the stack starts without it")
        return None
    if not args.metrics_port_base:
        say("--monitoring with --metrics-port-base 0: Prometheus scrapes the API alone")
    rules = [REPO_ALERTS] if REPO_ALERTS.is_file() else []
    from .api.auth import ADMIN_PREFIX, configured_keys
    from .api.settings import ApiSettings

    # With API keys set the API's /metrics needs one too: Prometheus presents the first
    # plain key configured (SPLITGPT_API_KEYS, then SPLITGPT_API_KEYS_FILE), read as the API
    # reads them. Never an admin key: one that sees and cancels every key's requests does not
    # belong in a scrape config.
    try:
        configured = configured_keys(ApiSettings())
    except (ValueError, OSError):
        configured = []  # the API refuses these settings itself when it starts, and says why
    keys = [key.strip() for key in configured if not key.startswith(ADMIN_PREFIX)]
    if configured and not keys:
        say("--monitoring: only admin keys are set, and Prometheus gets none of them: its scrapes of the API's "
            "/metrics answer 401 until a plain key is added (SPLITGPT_API_KEYS_FILE)")  # fmt: skip
    directory = (args.run_dir / "prometheus").resolve()
    write_local_config(
        directory, metrics_targets(args), scrape_interval_s=5.0, rules_files=rules, api_key=keys[0] if keys else None
    )
    return f"http://{_scrape_host(args.host)}:{args.prometheus_port}"


def port_problems(host: str, children: list[Child], more: list[tuple[int, str, str]] = ()) -> list[str]:
    """One line per port that a child could not listen on, naming the option that moves it.
    `more`: further (port, user, option) claims, e.g. `metrics_port_claims`."""
    problems, planned = [], {}
    claims = [(c.port, c.name, c.port_flag) for c in children if c.port is not None] + list(more)
    for port, name, flag in claims:
        if port in planned:
            problems.append(f"port {port} is planned for both {planned[port]} and {name}: change {flag}")
            continue
        planned[port] = name
        if not can_listen(host, port):
            holder = listener_of(port)
            make = f" (make up {MAKE_VARIABLES[flag]}=...)" if flag in MAKE_VARIABLES else ""
            problems.append(f"port {port} on {host} (for {name}) is already in use"
                            f"{f' by {holder}' if holder else ''}: stop that, or choose another with {flag}{make}")  # fmt: skip
    return problems


async def _wait_ready(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    return False


def say(line: str) -> None:
    print(f"splitgpt up: {line}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    # Ports first: that answer needs no model, and loading one (torch, transformers) takes seconds.
    try:
        children, _, _ = plan(args, Path(args.model))
    except PartitionError as exc:
        say(str(exc))
        return 2
    if not args.dry_run and (problems := port_problems(args.host, children, metrics_port_claims(args))):
        say("nothing was started:\n  " + "\n  ".join(problems))
        return 2
    from .core.checkpoint import ModelSourceError, load_config, resolve_model_dir

    try:
        model_dir = await asyncio.to_thread(resolve_model_dir, args.model)
        config = load_config(model_dir)
        if args.node_memory:
            args.split = memory_plan_split(args, config)
        ranges = resolve_split(args.split, config.n_layer, args.partitions, config.vocab_size, config.n_embd)
    except (ModelSourceError, PartitionError) as exc:
        say(str(exc))
        return 2
    blocks = f"{config.n_layer} blocks in {args.partitions} partitions: {ranges}"
    print(f"splitgpt up: {args.model}, {blocks}, {args.dtype}", flush=True)
    model_dirs = [model_dir]
    for name, other in args.models[1:]:  # every other model: found, and splittable as asked, before anything starts
        try:
            other_dir = await asyncio.to_thread(resolve_model_dir, other)
            other_config = load_config(other_dir)
            other_ranges = resolve_split(
                args.split, other_config.n_layer, args.partitions, other_config.vocab_size, other_config.n_embd
            )
        except (ModelSourceError, PartitionError) as exc:
            say(f"{name}: {exc}")
            return 2
        model_dirs.append(other_dir)
        print(f"splitgpt up: also {name} ({other}), {other_config.n_layer} blocks: {other_ranges}", flush=True)
    if not args.micro_batches:
        args.micro_batches = choose_micro_batches(args, config, ranges)
    if args.dry_run:
        print("SPLITGPT_NODE_SPLIT=" + ",".join(f"{a}-{b}" for a, b in ranges), flush=True)
        return 0
    children, cluster, config_path = plan(args, model_dirs, inside_env(args))
    config_path.parent.mkdir(parents=True, exist_ok=True)
    cluster.dump(config_path)
    print("splitgpt up: Prometheus metrics:\n  " + "\n  ".join(metrics_urls(args)), flush=True)
    prometheus_url = start_monitoring(args)

    supervisor = Supervisor(children, RestartPolicy(enabled=args.restart, max_restarts=args.max_restarts))
    stop_asked = asyncio.Event()
    forced: list[int] = []

    def on_signal(sig: int) -> None:
        if not stop_asked.is_set():
            stop_asked.set()
            say(f"stopping: the API first (running requests get {args.shutdown_grace:g}s), then the coordinator, "
                "then the nodes and the tokenizer. Ctrl-C again to kill everything now.")  # fmt: skip
        else:
            forced.append(sig)
            say("killing every child now")
            supervisor.kill_now()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    await supervisor.start()
    api = f"http://{args.host}:{args.api_port}"
    stopping = asyncio.ensure_future(stop_asked.wait())
    ready = asyncio.ensure_future(_wait_ready(f"{api}/api/ready", args.ready_timeout))
    await asyncio.wait([ready, stopping, supervisor.failed], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if ready.done() and ready.result():
        supervisor.serving = True
        print(
            f"splitgpt is ready: {cluster.num_partitions} partitions x {args.replicas} replicas of "
            + ", ".join(m.served_name(args.model) for m in cluster.models)
            + "\n"
            f"  curl -s {api}/api/model/process -H 'content-type: application/json' -d '{{\"text\": \"Hello\"}}'\n"
            f"  docs: {api}/docs"
            + ("" if args.no_ui else f"\n  web UI: http://{args.host}:{args.ui_port}")
            + (f"\n  Prometheus: {prometheus_url} (alerts: {prometheus_url}/alerts)" if prometheus_url else "")
            + ("\n  internal gRPC: token and mutual TLS (certificates in " + str(args.run_dir / "tls") + ")" if args.tls else ""),
            flush=True,
        )
        await asyncio.wait([stopping, supervisor.failed], return_when=asyncio.FIRST_COMPLETED)
    if supervisor.failed.done():
        say("stopping the stack")  # the reason is the line above
        code = 1
    elif not stopping.done():
        say(f"the stack did not become ready within {args.ready_timeout:g}s (--ready-timeout); stopping")
        code = 1
    ready.cancel()
    stopping.cancel()
    started = time.monotonic()
    await supervisor.stop()
    if forced:
        return 128 + forced[0]
    say(f"stopped in {time.monotonic() - started:.1f}s")
    return code


def main(argv: list[str] | None = None) -> None:
    sys.exit(asyncio.run(run(parse_args(argv))))


def last_level_cache_bytes() -> int | None:
    """The size of the largest cache sysfs lists for cpu0 (its L3 on x86), or None."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes, default=None)


def run_geometry(args: argparse.Namespace, config) -> Geometry:
    """The model's sizes as its nodes will hold them: the dtype, and the head packed or not."""
    return Geometry(
        config.n_layer,
        config.n_embd,
        config.n_positions,
        config.vocab_size,
        dtype_bytes=2 if args.dtype in ("bfloat16", "float16") else 4,
        pack_head=os.environ.get("SPLITGPT_NODE_PACK_HEAD", "true").lower() not in ("0", "false", "no"),
    )


def choose_micro_batches(args: argparse.Namespace, config, ranges) -> int:
    """--micro-batches 0: the nodes share this host's cores (core.pipelining)."""
    geometry = run_geometry(args, config)
    largest = max(
        (b - a) * geometry.block_bytes + (geometry.head_bytes if i == len(ranges) - 1 else 0) for i, (a, b) in enumerate(ranges)
    )
    cache = last_level_cache_bytes()
    chosen = shared_host_micro_batches(args.partitions, os.cpu_count() or 1, largest, cache)
    cache_text = f"{cache / 2**20:.0f} MiB" if cache else "unknown"
    why = "streamed from memory at every step" if overflows_cache(largest, cache) else "within the CPU's cache"
    print(f"splitgpt up: {chosen} micro-batch(es) in flight: the largest node's weights ({largest / 2**20:.0f} MiB) are "
          f"{why} (last-level cache {cache_text}); --micro-batches sets it", flush=True)  # fmt: skip
    return chosen


def memory_plan_split(args: argparse.Namespace, config) -> str:
    """--node-memory as explicit ranges (core.memory_plan), which every node and the coordinator then take."""
    budgets = parse_budgets(args.node_memory, args.partitions)
    geometry = run_geometry(args, config)
    ranges = memory_split(geometry, budgets)
    print(
        "splitgpt up: memory split: "
        + ", ".join(
            f"partition {i} blocks [{a}, {b}) needs {geometry.need(b - a, i == len(ranges) - 1) / 2**30:.2f} "
            f"of {budgets[i] / 2**30:.2f} GiB"
            for i, (a, b) in enumerate(ranges)
        ),
        flush=True,
    )
    return ",".join(f"{a}-{b}" for a, b in ranges)
