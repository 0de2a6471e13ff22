"""What every splitgpt gRPC server shares: message limits, health, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

log = logging.getLogger(__name__)

# A prefill of 1024 positions of gpt2-xl hidden states is 6.5 MB per sequence;
# gRPC's 4 MB default would refuse it.
MAX_MESSAGE_BYTES = 512 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcServer:
    """A grpc.aio server with grpc.health.v1, NOT_SERVING until `set_serving`."""

    def __init__(self, service_name: str, host: str, port: int) -> None:
        self.service_name = service_name
        self.server = grpc.aio.server(options=CHANNEL_OPTIONS)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"could not bind gRPC port {host}:{port}")

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

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)

    async def run_until_signal(self, grace_s: float = 5.0, drain_s: float = 0.0) -> None:
        """Serve until SIGTERM/SIGINT; then report NOT_SERVING, keep serving for
        `drain_s` so clients probing health move their work elsewhere, and stop,
        letting calls in flight finish within `grace_s`."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("%s: draining (NOT_SERVING for %.1fs, then %.1fs grace)", self.service_name, drain_s, grace_s)
        await self.set_serving(False)
        if drain_s > 0:
            await asyncio.sleep(drain_s)
        await self.stop(grace_s)


def insecure_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


async def probe_health(channel: grpc.aio.Channel, service: str = "", timeout_s: float = 1.0) -> str:
    """grpc.health.v1 Check: SERVING / NOT_SERVING / UNKNOWN / UNREACHABLE."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
