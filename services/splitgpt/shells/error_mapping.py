"""Core exceptions <-> gRPC status codes: each direction mapped once, here.

Server side: `ErrorMappingInterceptor`, installed on every `GrpcServer`, turns
an exception a servicer lets through into the status `status_for` names, so a
servicer method is protobuf in, a core call, protobuf out, with no try/except.
An exception the table does not know becomes INTERNAL with a generic message;
its traceback goes to the server's log, never to the client (as
text-generation-inference's `interceptor.py` does).

Client side: `error_from_status` turns a node's status back into the core
exception the coordinator's engine handles (`core.node_contract`).

Torch-free and tokenizer-free on purpose: every service, the gateway's
grpc_runtime import included, loads this module.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable

import grpc

from ..core.generation_types import GenerationError
from ..core.node_contract import (
    CacheBudgetExceeded,
    CacheMiss,
    NodeFailed,
    NodeNotReady,
    SessionSourceFailed,
    StepFailed,
    StepInputError,
    WrongPartition,
)
from ..core.vocabulary import ModelNotServed, TokenIdError

log = logging.getLogger(__name__)

Code = grpc.StatusCode

# First match wins (isinstance): list a subclass before its base.
STATUS_FOR_ERROR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (CacheMiss, Code.FAILED_PRECONDITION),  # the coordinator replays the sequence from position 0
    (WrongPartition, Code.FAILED_PRECONDITION),
    (StepInputError, Code.INVALID_ARGUMENT),  # tensors.TensorFormatError is one
    (TokenIdError, Code.INVALID_ARGUMENT),
    (ModelNotServed, Code.NOT_FOUND),
    (CacheBudgetExceeded, Code.RESOURCE_EXHAUSTED),
    (NodeNotReady, Code.UNAVAILABLE),
    (SessionSourceFailed, Code.ABORTED),  # a pull's source, not this node: move it another way
)
STATUS_FOR_GENERATION_KIND: dict[str, grpc.StatusCode] = {
    "invalid": Code.INVALID_ARGUMENT,
    "not_found": Code.NOT_FOUND,  # a model or node name the coordinator does not know
    "conflict": Code.FAILED_PRECONDITION,  # node management that the cluster's state refuses
    "overloaded": Code.RESOURCE_EXHAUSTED,
    "unavailable": Code.UNAVAILABLE,
    "internal": Code.INTERNAL,
}
INTERNAL_DETAILS = "internal error in {method}: the server's log has the details"


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status for a core exception; None for one the table does not know."""
    if isinstance(exc, GenerationError):
        return STATUS_FOR_GENERATION_KIND.get(exc.kind, Code.INTERNAL)
    for cls, code in STATUS_FOR_ERROR:
        if isinstance(exc, cls):
            return code
    return None


def error_from_status(code: grpc.StatusCode, details: str, address: str) -> Exception:
    """A node's status as the core exception the coordinator's engine handles.

    FAILED_PRECONDITION is a cache miss: replay. (WrongPartition shares the
    code, but a coordinator only embeds on a node whose identity it checked.)
    INVALID_ARGUMENT is a malformed step: a bug that another replica would
    refuse alike, so it fails the requests instead of failing over. INTERNAL
    is the node failing on this step while up (StepFailed: retried once, the
    node stays in). ABORTED is a pull whose source failed, not the node
    (SessionSourceFailed). Anything else (unreachable, deadline, draining) is the node failing.
    """
    if code == Code.FAILED_PRECONDITION:
        return CacheMiss({}, f"{address}: {details}")
    if code == Code.INVALID_ARGUMENT:
        return StepInputError(f"{address}: {details}")
    if code == Code.INTERNAL:
        return StepFailed(f"{address}: {details}")
    if code == Code.ABORTED:
        return SessionSourceFailed(f"{address}: {details}")
    return NodeFailed(f"{address}: {code.name}: {details}")


def status_and_details(exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """What a client is told of `exc`: its mapped status and message, or, for an
    exception the table does not know (a bug), INTERNAL and where, with the
    traceback in this server's log only."""
    code = status_for(exc)
    if code is None:
        log.error("%s failed", method, exc_info=exc)
        return Code.INTERNAL, INTERNAL_DETAILS.format(method=method)
    details = str(exc)
    if code == Code.INTERNAL:
        log.error("%s failed: %s", method, details)
    return code, details


def code_number(code: grpc.StatusCode) -> int:
    """The status as its wire number (a field of a streamed reply)."""
    return code.value[0]


def code_from_number(number: int) -> grpc.StatusCode:
    return _CODES_BY_NUMBER.get(number, Code.UNKNOWN)


_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str):
    """Raises grpc.aio.AbortError, which ends the call with the mapped status."""
    await context.abort(*status_and_details(exc, method))


def _mapped_call(behavior: Callable[..., Awaitable], method: str) -> Callable[..., Awaitable]:
    """A unary-response behavior (or a streaming one that writes through the context)."""

    async def call(request, context):
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:  # the servicer chose its status itself
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return call


def _mapped_stream(behavior: Callable, method: str) -> Callable:
    """A streaming-response behavior written as an async generator."""

    async def stream(request, context):
        try:
            # aclosing: when gRPC drops this stream (the client went away),
            # the servicer's generator is closed now, so it can free what it holds.
            async with contextlib.aclosing(behavior(request, context)) as replies:
                async for reply in replies:
                    yield reply
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return stream


def _mapped_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    if handler.request_streaming:
        kind = "stream_stream" if handler.response_streaming else "stream_unary"
    else:
        kind = "unary_stream" if handler.response_streaming else "unary_unary"
    behavior = getattr(handler, kind)
    if inspect.isasyncgenfunction(behavior):
        mapped = _mapped_stream(behavior, method)
    elif inspect.iscoroutinefunction(behavior):
        mapped = _mapped_call(behavior, method)
    else:  # a synchronous behavior (gRPC runs it on a thread): none of ours, left as it is
        return handler
    return handler._replace(**{kind: mapped})


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Applies `status_for` to every method of the server it is installed on.

    A method's handler is wrapped once and reused: per call this costs a dict
    lookup and one more coroutine frame, nothing allocated for the mapping.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED
            return None
        method = handler_call_details.method
        known = self._handlers.get(method)
        if known is None or known[0] is not handler:
            known = self._handlers[method] = (handler, _mapped_handler(handler, method))
        return known[1]
