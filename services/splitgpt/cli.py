"""`splitgpt`: one console script for every service, the local launcher and tools."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

USAGE = """splitgpt <command> [options]

commands:
  up           run the whole stack locally (tokenizer, coordinator, nodes, API)
  node         serve one partition of the model
  tokenizer    serve the tokenizer
  coordinator  drive generation across the nodes
  api          serve the HTTP API gateway
  ui           serve the web UI (frontend/) with a same-origin proxy to the API
  tiny-model   write a small random GPT-2 checkpoint for offline use
  redis-secret write the result cache's Redis password and ACL file (compose, Kubernetes)
  bench        the stack against one Hugging Face process (ratios measured in one run)
  probe        grpc.health.v1 check of a service (exit 0 when SERVING), for container health checks
"""


def tiny_model(argv: list[str]) -> None:
    from .core.tiny_model import GEOMETRIES, GPT2_SMALL, parameter_count, write_checkpoint

    p = argparse.ArgumentParser(
        prog="splitgpt tiny-model",
        description="Write a random GPT-2 checkpoint (safetensors and the real GPT-2 tokenizer): a small one, "
        "or one of the Hub's geometries by name, with random weights.",
    )
    p.add_argument("directory", type=Path)
    p.add_argument("--geometry", choices=sorted(GEOMETRIES),
                   help="a real GPT-2 size: gpt2 (124 M parameters, 0.5 GB), gpt2-medium (355 M, 1.4 GB), "
                        "gpt2-large (774 M, 3.1 GB), gpt2-xl (1.56 B, 6.2 GB); sharded as the Hub ships them")  # fmt: skip
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--positions", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpt2-small", action="store_true", help="the same as --geometry gpt2")
    args = p.parse_args(argv)
    if args.gpt2_small:
        args.geometry = "gpt2"
    geometry = (
        GEOMETRIES[args.geometry]
        if args.geometry
        else dict(n_layer=args.layers, n_embd=args.hidden, n_head=args.heads, n_positions=args.positions)
    )
    if args.geometry and geometry is not GPT2_SMALL:
        print(f"{args.geometry}: {parameter_count(**geometry) / 1e9:.2f} B parameters", flush=True)
    write_checkpoint(args.directory, seed=args.seed, say=lambda line: print(line, flush=True), **geometry)
    print(f"wrote a random GPT-2 checkpoint ({geometry}) to {args.directory}; use MODEL_ID={args.directory}")


def probe(argv: list[str]) -> None:
    import asyncio

    from .shells.grpc_runtime import client_channel, probe_health
    from .shells.internal_auth import InternalSecurity, InternalSecurityError
    from .shells.security_settings import InternalSecuritySettings

    p = argparse.ArgumentParser(prog="splitgpt probe", description="Exit 0 when the gRPC service is SERVING.")
    p.add_argument("address", help="host:port")
    p.add_argument("--timeout", type=float, default=2.0)
    # Health needs no token; TLS it does. Default: the same env as the services (SPLITGPT_TLS_*).
    p.add_argument("--tls-ca", type=Path, help="use TLS, verifying the server with this CA (env SPLITGPT_TLS_CA)")
    p.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS (env SPLITGPT_TLS_CLIENT_CERT)")
    p.add_argument("--tls-key", type=Path, help="its private key (env SPLITGPT_TLS_CLIENT_KEY)")
    p.add_argument("--tls-server-name", help="name to check the server's certificate against (env SPLITGPT_TLS_SERVER_NAME)")
    args = p.parse_args(argv)
    given = {"tls_ca": args.tls_ca, "tls_client_cert": args.tls_cert, "tls_client_key": args.tls_key,
             "tls_server_name": args.tls_server_name}  # fmt: skip
    settings = InternalSecuritySettings(**{k: v for k, v in given.items() if v is not None})
    # A client only: this process serves nothing, and health needs no token.
    client = settings.model_copy(update={"tls_cert": None, "tls_key": None, "tls_client_ca": None,
                                         "internal_token": None, "internal_token_file": None})  # fmt: skip
    try:
        security = InternalSecurity.from_settings(client)
    except InternalSecurityError as exc:
        print(f"splitgpt probe: {exc}", file=sys.stderr)
        sys.exit(2)

    async def check() -> str:
        async with client_channel(args.address, security) as channel:
            return await probe_health(channel, timeout_s=args.timeout)

    status = asyncio.run(check())
    print(f"{args.address}: {status}")
    sys.exit(0 if status == "SERVING" else 1)


SERVICES = ("up", "node", "tokenizer", "coordinator", "api", "ui")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command in SERVICES:
        # Until the service takes SIGINT over (its event loop's handler,
        # uvicorn's, the launcher's), it is importing or loading with nothing
        # to finish: a Ctrl-C, or `splitgpt up` stopping it, ends it at once.
        # A KeyboardInterrupt raised inside an import can be swallowed there
        # (seen in numpy's lazy imports) and leave the service running.
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    try:
        _run(command, rest)
    except KeyboardInterrupt:
        # Ctrl-C, or `splitgpt up` stopping a service that is still importing
        # or loading (before the service took SIGINT over): a stop, not a crash.
        sys.exit(130)


def _run(command: str, rest: list[str]) -> None:
    if command == "up":
        from .launcher import main as run
    elif command == "node":
        from .shells.node_service import main as run
    elif command == "tokenizer":
        from .shells.tokenizer_service import main as run
    elif command == "coordinator":
        from .shells.coordinator_service import main as run
    elif command == "api":
        from .api.main import main as run
    elif command == "ui":
        from .ui.main import main as run
    elif command == "tiny-model":
        run = tiny_model
    elif command == "probe":
        run = probe
    elif command == "redis-secret":
        from .shells.redis_secret import main as run
    elif command == "bench":
        from .bench.main import main as run
    else:
        print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    run(rest)


if __name__ == "__main__":
    main()
