"""A gRPC server never shares its port: a second one on a taken port fails to bind."""

from __future__ import annotations

import pytest

from splitgpt.shells.grpc_runtime import GrpcServer


async def test_a_taken_port_is_refused_naming_it():
    first = GrpcServer("splitgpt.v1.Test", "127.0.0.1", 0)
    await first.start()
    try:
        # Without grpc.so_reuseport=0 this bind succeeds and the two servers
        # split the incoming connections between them.
        with pytest.raises(OSError, match=f"127.0.0.1:{first.port}"):
            GrpcServer("splitgpt.v1.Test", "127.0.0.1", first.port)
    finally:
        await first.stop(0)
