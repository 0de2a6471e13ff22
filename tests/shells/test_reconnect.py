"""A client channel notices a server that comes up late within about a second.

gRPC's default reconnect backoff grows 1.6x per refused attempt: after a few
seconds of a node still starting, its coordinator would not see it for
several more. `insecure_channel` caps the backoff (grpc_runtime).
"""

from __future__ import annotations

import asyncio
import socket
import time

from splitgpt.shells.grpc_runtime import GrpcServer, insecure_channel, probe_health


async def test_a_server_that_starts_late_is_seen_serving_within_two_seconds():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with insecure_channel(f"127.0.0.1:{port}") as channel:
        started = time.monotonic()
        # Refused for 5.5 s: by default the next attempt would come ~4 s after this.
        while time.monotonic() - started < 5.5:
            assert await probe_health(channel, timeout_s=1.0) == "UNREACHABLE"
            await asyncio.sleep(0.3)
        server = GrpcServer("test.Late", "127.0.0.1", port)
        await server.start()
        await server.set_serving(True)
        bound = time.monotonic()
        try:
            while await probe_health(channel, timeout_s=1.0) != "SERVING":
                assert time.monotonic() - bound < 2.0, "the channel is still backing off"
                await asyncio.sleep(0.1)
        finally:
            await server.stop(0)
