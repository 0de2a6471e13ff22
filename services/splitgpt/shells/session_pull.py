"""A node reads another replica's session itself (live migration, node to node).

Through the coordinator, a session's K/V crosses the network twice and is
decoded and encoded once more on the way; pulled, it goes from the source
straight to the target. The target calls the source's ExportSession with its
own credentials (the internal token, and its client certificate under mTLS:
the ones a relaying node uses), reading the stream as an import would.

A source that does not hold the session is a CacheMiss, as its own export
would be. Anything else that keeps the target from reading the source (no
route, refused, the source gone, a deadline) is SessionSourceFailed: the
coordinator then moves the session through itself, where it can tell a source
that is gone (rebuild) from a link between nodes that is not there.
"""

from __future__ import annotations

import asyncio

import grpc

from ..core.node_contract import CacheMiss, SessionSnapshot, SessionSourceFailed
from ..rpc import node_pb2, node_pb2_grpc
from .grpc_runtime import client_channel
from .internal_auth import InternalSecurity
from .node_client import SnapshotReader

# How long a target waits to connect to a source before it gives up: a node
# that cannot reach its peer (a network policy, a firewall that drops) costs
# the moving sequences this, not the whole call's deadline.
CONNECT_TIMEOUT_S = 2.0


async def read_session(
    security: InternalSecurity | None, source_address: str, session_id: str, layers: int, timeout_s: float | None
) -> SessionSnapshot:
    """The session as the source exports it, checked as an import checks it
    (SnapshotReader, bounded to `layers` layers: StepInputError if it is not)."""
    channel = client_channel(source_address, security)
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise SessionSourceFailed(f"could not connect to {source_address} in {CONNECT_TIMEOUT_S:.0f} s") from None
        stub = node_pb2_grpc.PartitionNodeStub(channel)
        call = stub.ExportSession(node_pb2.ExportSessionRequest(session_id=session_id), timeout=timeout_s)
        reader = SnapshotReader(layers)
        try:
            async for chunk in call:
                reader.add(chunk)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # reachable, but it does not hold the session
                raise CacheMiss({session_id: f"{source_address}: {exc.details()}"}) from None
            raise SessionSourceFailed(f"{source_address}: {exc.code().name}: {exc.details()}") from None
        found_id, snapshot = reader.snapshot()
        if found_id != session_id:
            raise SessionSourceFailed(f"{source_address} exported session {found_id!r}, not {session_id!r}")
        return snapshot
    finally:
        await channel.close()
