"""What every splitgpt gRPC server shares: message limits, health, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from .error_mapping import ErrorMappingInterceptor
from .internal_auth import InternalSecurity
from .main_thread import SignalRelay

log = logging.getLogger(__name__)

# What a client channel may carry: a prefill of 1024 positions of gpt2-xl hidden
# states is 6.5 MB per sequence, and gRPC's 4 MB default would refuse it.
MAX_MESSAGE_BYTES = 512 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# What a server accepts is its own, sized to what it legitimately receives
# (GrpcServer's `max_receive_bytes`): the tokenizer and the coordinator take
# text and token ids, which the gateway's body limit keeps far below this; a
# node takes hidden states, up to what its KV budget lets one step add
# (node_receive_limit). Larger messages end with RESOURCE_EXHAUSTED, before
# a servicer (or the memory for them) is involved.
SERVICE_RECEIVE_BYTES = 8 * 1024 * 1024
# HTTP/2 streams one connection may hold open at once. The gateway multiplexes
# all its calls to a service over one connection, so the cap sits above what a
# service admits (the coordinator: its batch and queue; a refused call must
# still get its stream, to hear RESOURCE_EXHAUSTED rather than wait) but bounds
# what one connection can pile up.
DEFAULT_MAX_STREAMS = 1024
# A client retries a refused connection after a backoff that gRPC grows 1.6x
# per attempt up to 120 s: a node that took 25 s to start (a loaded host) was
# then seen SERVING only ~10 s later, and every probe in between failed fast.
# Capped at a second, a replica that comes up (or back) is noticed within one.
CLIENT_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.max_reconnect_backoff_ms", 1000)]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcServer:
    """A grpc.aio server with grpc.health.v1, NOT_SERVING until `set_serving`,
    and core exceptions mapped to status codes (shells.error_mapping)."""

    def __init__(
        self,
        service_name: str,
        host: str,
        port: int,
        security: InternalSecurity | None = None,
        max_receive_bytes: int = SERVICE_RECEIVE_BYTES,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        """`security`: the internal token and TLS (shells.internal_auth). None: open and
        plain text, quietly (tests); a service passes its settings' own, and is told
        with a WARNING when that has no token. `max_receive_bytes`: the largest
        message accepted; `max_streams`: concurrent calls per connection."""
        self.service_name = service_name
        self.draining = False  # set by a stop signal (the node's splitgpt_node_draining)
        self.on_stop: list[Callable[[], None]] = []  # e.g. closing the metrics port
        # No SO_REUSEPORT: a second server on a taken port must fail to bind,
        # not silently share the port with a stale node of an earlier stack.
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_concurrent_streams", max_streams),
            ("grpc.so_reuseport", 0),
        ]
        # The token is checked first: a refused call reaches no servicer.
        interceptors = [*(security.server_interceptors() if security else []), ErrorMappingInterceptor()]
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        credentials = security.server_credentials() if security else None
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(f"{host}:{port}")
            else:
                self.port = self.server.add_secure_port(f"{host}:{port}", credentials)
        except RuntimeError:  # grpc's "Failed to bind": say which port, as a socket would
            self.port = 0
        if self.port == 0:
            raise OSError(f"could not bind gRPC port {host}:{port}: it is in use or the address is not this host's")
        if security is not None:
            log.info("%s on port %d: %s", service_name, self.port, security.describe_server())
            if security.token is None:
                log.warning(
                    "%s: no internal token (SPLITGPT_INTERNAL_TOKEN or SPLITGPT_INTERNAL_TOKEN_FILE): "
                    "anyone who can reach port %d can call it", service_name, self.port,
                )  # fmt: skip

    def add(self, add_to_server: Callable[[object, grpc.aio.Server], None], servicer: object) -> None:
        add_to_server(servicer, self.server)

    async def start(self) -> None:
        await self.server.start()
        # "" is the whole server; probes may ask for either name.
        for name in ("", self.service_name):
            await self.health.set(name, NOT_SERVING)

    async def set_serving(self, serving: bool = True) -> None:
        for name in ("", self.service_name):
            await self.health.set(name, SERVING if serving else NOT_SERVING)

    async def stop(self, grace_s: float | None = 5.0) -> None:
        """Refuse new calls, let those in flight finish within `grace_s` (None: end them now)."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        while self.on_stop:
            self.on_stop.pop()()

    async def run_until_signal(self, grace_s: float = 5.0, drain_s: float = 0.0, relay: SignalRelay | None = None) -> None:
        """Serve until SIGTERM or SIGINT, then report NOT_SERVING and stop,
        letting calls in flight finish within `grace_s`.

        SIGTERM (an orchestrator, or a replica taken out on purpose) first keeps
        serving for `drain_s`, so that clients probing health move their work
        elsewhere. SIGINT skips that wait: a person at a terminal, or `splitgpt
        up` stopping the backends once their clients are gone. A second signal
        ends the calls still in flight at once. `relay`: the signals, where
        this loop runs on another thread than the main one.
        """
        loop = asyncio.get_running_loop()
        first: asyncio.Future[int] = loop.create_future()
        again = asyncio.Event()

        def on_signal(sig: int) -> None:
            if first.done():
                again.set()
            else:
                first.set_result(sig)

        if relay is not None:  # this loop is not on the main thread (shells.main_thread)
            relay.attach(loop, on_signal)
        else:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal, sig)
        sig = await first
        drain_s = drain_s if sig == signal.SIGTERM else 0.0
        log.info("%s: %s: draining (NOT_SERVING for %.1fs, then %.1fs grace)", self.service_name, signal.Signals(sig).name, drain_s, grace_s)  # fmt: skip
        self.draining = True
        await self.set_serving(False)
        stopping = asyncio.ensure_future(self._drain_then_stop(drain_s, grace_s))
        forced = asyncio.ensure_future(again.wait())
        await asyncio.wait([stopping, forced], return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not stopping.done():
            log.info("%s: second signal: ending the calls in flight now", self.service_name)
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
            await self.stop(None)  # grpc allows a second stop; the shorter grace wins

    async def _drain_then_stop(self, drain_s: float, grace_s: float) -> None:
        if drain_s > 0:
            await asyncio.sleep(drain_s)
        await self.stop(grace_s)


def insecure_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CLIENT_CHANNEL_OPTIONS)


def client_channel(address: str, security: InternalSecurity | None = None, add_token: bool = True) -> grpc.aio.Channel:
    """A channel to another splitgpt service: with the internal token on every
    call and TLS (mutual when a client certificate is set) as `security` says.
    `add_token=False`: the caller passes `security.call_metadata` on each call."""
    if security is None:
        return insecure_channel(address)
    return security.channel(address, CLIENT_CHANNEL_OPTIONS, add_token)


async def probe_health(channel: grpc.aio.Channel, service: str = "", timeout_s: float = 1.0) -> str:
    """grpc.health.v1 Check: SERVING / NOT_SERVING / UNKNOWN / UNREACHABLE."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
