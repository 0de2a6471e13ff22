"""A node's steps over one long-lived bidirectional stream, with unary semantics.

A unary call per step costs a call's set-up and tear-down each way (0.8 ms
per round trip between two Python processes here); a message pair on an open
stream costs 0.35 ms. `step` sends a request tagged with a number and waits for
the reply with that tag, so several steps (one per micro-batch) may be in
flight at once. A step's own failure comes back as its reply's status and is
raised as the unary call's would be (`error_from_status`); the stream itself
ending (the node died, restarted, drained) fails every step in flight through
that node with NodeFailed, and the next step opens a new stream. Every step
has a deadline.

All of a coordinator's streams share one `StepTable`: a relayed step
(shells.relay) goes out on the chain's first node's stream and is answered on
another's (the last node's, or the one that failed it), so tags are the
coordinator's, not a stream's. With a listener id the table's streams register
themselves with each node as that listener when they open.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import grpc

from ..core.node_contract import NodeFailed
from ..rpc import node_pb2, node_pb2_grpc
from .error_mapping import code_from_number, error_from_status


class LinkDown(NodeFailed):
    """The stream to `address` ended, or (`by_peer`) a node reported its link to it broken."""

    def __init__(self, address: str, why: str, by_peer: bool = False) -> None:
        self.address, self.by_peer = address, by_peer
        super().__init__(f"{address}: {why}")


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future
    involves: tuple[str, ...]  # the addresses whose loss fails this step


class StepTable:
    """The steps in flight on all of one coordinator's node streams."""

    def __init__(self, listener_id: str | None = None) -> None:
        self.listener_id = listener_id  # None: no relay, no registration
        self._tags = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}

    def expect(self, involves: tuple[str, ...]) -> tuple[int, asyncio.Future]:
        tag = next(self._tags)
        future = asyncio.get_running_loop().create_future()
        self._waiting[tag] = _Waiter(future, involves)
        return tag, future

    def forget(self, tag: int) -> None:
        self._waiting.pop(tag, None)

    def answered(self, response: node_pb2.StepResponse, address: str) -> None:
        """A reply heard on the stream to `address`: its step's, or a node's notice."""
        if not response.tag:
            if response.unreachable_address:  # a node's relay link broke: that node is gone
                self.fail_involving(LinkDown(response.unreachable_address, response.error_detail, by_peer=True))
            return
        waiter = self._waiting.get(response.tag)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result((response, address))

    def fail_involving(self, failure: LinkDown) -> None:
        for waiter in list(self._waiting.values()):
            if failure.address in waiter.involves and not waiter.future.done():
                waiter.future.set_exception(failure)

    def expire(self, tag: int, address: str, timeout_s: float) -> None:
        waiter = self._waiting.get(tag)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_exception(NodeFailed(f"{address}: DEADLINE_EXCEEDED: no reply to a step in {timeout_s:g}s"))


class StepStream:
    def __init__(
        self,
        stub: node_pb2_grpc.PartitionNodeStub,
        metadata,
        address: str,
        timeout_s: float,
        table: StepTable | None = None,
    ) -> None:
        self.stub, self.metadata = stub, metadata
        self.address, self.timeout_s = address, timeout_s
        self.table = table or StepTable()
        self._call = None
        self._reader: asyncio.Task | None = None
        self._opened: asyncio.Future | None = None  # done once the stream is usable (registered)
        self._write_lock = asyncio.Lock()  # one write at a time on a gRPC stream

    async def step(self, request: node_pb2.StepRequest) -> node_pb2.StepResponse:
        """This node's step, answered by this node: raises as a unary Step would."""
        response, address = await self.send(request, (self.address,))
        if response.error_code:
            raise error_from_status(code_from_number(response.error_code), response.error_detail, address)
        return response

    async def send(self, request: node_pb2.StepRequest, involves: tuple[str, ...]) -> tuple[node_pb2.StepResponse, str]:
        """Send a step on this stream; (its reply, the address of the stream it came
        back on). Raises NodeFailed (LinkDown: whose) if a node it involves is lost."""
        call = await self.ready()
        tag, reply = self.table.expect(involves)
        request.tag = tag
        deadline = asyncio.get_running_loop().call_later(self.timeout_s, self.table.expire, tag, self.address, self.timeout_s)
        try:
            await self._write(call, request)
            return await reply
        finally:
            deadline.cancel()
            self.table.forget(tag)
            if reply.done() and not reply.cancelled():
                reply.exception()  # retrieved: a failure raised by the write instead is no "never retrieved" warning

    async def ready(self):
        """The open stream, registered as the table's listener on the node first if it has one."""
        if self._opened is None or (self._opened.done() and self._call is None):
            self._opened = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._opened)

    def close(self) -> None:
        if self._call is not None:
            self._broken(self._call, None)

    async def _open(self):
        call = self._call = self.stub.StepStream(metadata=self.metadata)
        self._reader = asyncio.get_running_loop().create_task(self._read(call), name=f"steps-from-{self.address}")
        if self.table.listener_id is not None:
            tag, registered = self.table.expect((self.address,))
            try:
                await self._write(call, node_pb2.StepRequest(tag=tag, listen=self.table.listener_id))
                await asyncio.wait_for(registered, self.timeout_s)
            except TimeoutError:
                self._broken(call, None)
                raise NodeFailed(f"{self.address}: no answer to the relay registration in {self.timeout_s:g}s") from None
            finally:
                self.table.forget(tag)
        return call

    async def _write(self, call, request: node_pb2.StepRequest) -> None:
        try:
            async with self._write_lock:
                await call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
            self._broken(call, exc)
            raise LinkDown(self.address, f"the step stream ended ({exc})") from None

    async def _read(self, call) -> None:
        try:
            async for response in call:
                self.table.answered(response, self.address)
            self._broken(call, None)
        except grpc.aio.AioRpcError as exc:
            self._broken(call, exc)
        except asyncio.CancelledError:
            self._broken(call, None)
            raise

    def _broken(self, call, exc: grpc.aio.AioRpcError | Exception | None) -> None:
        """The stream ended: every step in flight through this node fails over; the next opens a new one."""
        if call is not self._call:
            return
        self._call = None
        call.cancel()
        if isinstance(exc, grpc.aio.AioRpcError):
            why = f"{exc.code().name}: {exc.details()}"
        else:
            why = f"the step stream ended{f' ({exc})' if exc else ''}"
        self.table.fail_involving(LinkDown(self.address, why))
