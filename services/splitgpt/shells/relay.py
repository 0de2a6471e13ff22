"""Relay, the node's side: a step goes on from node to node along its chain.

In the star (the coordinator calls each partition in turn) every partition
costs the coordinator a message each way and a wake-up, and the hidden state
crosses the coordinator twice per partition. With relay the coordinator sends
the step to the chain's first node with the rest of the chain (`forward`);
each node computes, sends its output rows to the next node over a stream of
its own (`PeerLinks`), and the last node answers. A token then costs the
coordinator two legs whatever the number of partitions.

Who hears what: the coordinator keeps a StepStream open to every node of its
chains and registers it (`listen`) under its listener id (`Listeners`). The
last node answers on that stream; any node that fails the step (its own error,
or a next hop it cannot reach) says so on its own stream to the coordinator,
so the coordinator knows which node of the chain failed and fails over as in
the star. A link to a next hop that breaks is announced to every listener (a
notice, tag 0), so steps in flight behind a dead node fail at once rather than
at their deadline; a peer's word alone takes no node out (core.engine: those
sequences go on through the star, where the coordinator sees for itself).
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from ..rpc import node_pb2, node_pb2_grpc
from .grpc_runtime import client_channel
from .internal_auth import InternalSecurity

log = logging.getLogger("splitgpt.node.relay")


class StreamWriter:
    """One server stream's writes, one at a time (gRPC allows no two at once)."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.context = context
        self._lock = asyncio.Lock()

    async def write(self, message) -> bool:
        """False if the stream has ended (its client went away)."""
        try:
            async with self._lock:
                await self.context.write(message)
            return True
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError, asyncio.InvalidStateError):
            return False


class Listeners:
    """The coordinators' streams to this node, by the listener id each registered."""

    def __init__(self) -> None:
        self._by_id: dict[str, StreamWriter] = {}

    def register(self, listener_id: str, writer: StreamWriter) -> None:
        self._by_id[listener_id] = writer

    def unregister(self, listener_id: str, writer: StreamWriter) -> None:
        if self._by_id.get(listener_id) is writer:  # not a newer stream of the same coordinator
            del self._by_id[listener_id]

    async def tell(self, listener_id: str, reply: node_pb2.StepResponse) -> bool:
        writer = self._by_id.get(listener_id)
        if writer is None:
            # Its stream ended: the coordinator has failed the step over already
            # (or will at its deadline); the answer has nobody to go to.
            log.warning("no listener %r here for step %d: answer dropped", listener_id, reply.tag)
            return False
        return await writer.write(reply)

    async def tell_all(self, reply: node_pb2.StepResponse) -> None:
        for writer in list(self._by_id.values()):
            await writer.write(reply)


class PeerUnreachable(Exception):
    pass


class _Link:
    """This node's stream to one next hop: relayed steps only go out on it (the
    next node answers the coordinator, never us); its end means the peer is gone."""

    def __init__(self, address: str, security: InternalSecurity | None, on_broken) -> None:
        self.address = address
        self.channel = client_channel(address, security, add_token=False)
        stub = node_pb2_grpc.PartitionNodeStub(self.channel)
        self.call = stub.StepStream(metadata=security.call_metadata if security is not None else None)
        self.broken = False
        self._on_broken = on_broken
        self._lock = asyncio.Lock()
        self._watch = asyncio.create_task(self._watch_end(), name=f"relay-link-{address}")

    async def write(self, request: node_pb2.StepRequest) -> None:
        try:
            async with self._lock:
                await self.call.write(request)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            self._break(f"{type(exc).__name__}: {exc}")
            raise PeerUnreachable(f"{self.address}: {exc}") from exc

    async def _watch_end(self) -> None:
        try:
            async for _ in self.call:  # nothing is expected back; an answer is ignored
                pass
            self._break("the stream ended")
        except grpc.aio.AioRpcError as exc:
            self._break(f"{exc.code().name}: {exc.details()}")
        except asyncio.CancelledError:
            self._break("closed")
            raise

    def _break(self, why: str) -> None:
        if self.broken:
            return
        self.broken = True
        self.call.cancel()
        asyncio.get_running_loop().create_task(self.channel.close())
        self._on_broken(self, why)

    def close(self) -> None:
        self.broken = True  # our own closing: no notice that the peer went away
        self._watch.cancel()
        self.call.cancel()


class PeerLinks:
    """Streams to the next hops this node has relayed to, opened on first use."""

    def __init__(self, security: InternalSecurity | None, listeners: Listeners) -> None:
        self.security = security
        self.listeners = listeners
        self._links: dict[str, _Link] = {}

    async def send(self, address: str, request: node_pb2.StepRequest) -> None:
        """Raises PeerUnreachable."""
        link = self._links.get(address)
        if link is None or link.broken:
            link = self._links[address] = _Link(address, self.security, self._broken)
        await link.write(request)

    def _broken(self, link: _Link, why: str) -> None:
        if self._links.get(link.address) is link:
            del self._links[link.address]
        log.warning("relay link to %s broke: %s", link.address, why)
        notice = node_pb2.StepResponse(
            error_code=grpc.StatusCode.UNAVAILABLE.value[0],
            error_detail=f"the relay link to {link.address} broke: {why}",
            unreachable_address=link.address,
        )
        task = asyncio.get_running_loop().create_task(self.listeners.tell_all(notice))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def close(self) -> None:
        for link in list(self._links.values()):
            link.close()
