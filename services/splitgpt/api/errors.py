"""Errors as HTTP status + a JSON body that says what to change."""

from __future__ import annotations

import grpc

# gRPC status from the tokenizer/coordinator -> HTTP status for the client.
HTTP_FOR_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,
}


class ApiError(Exception):
    def __init__(self, status: int, type_: str, message: str, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s

    def body(self) -> dict:
        error = {"type": self.type, "message": self.message}
        if self.param:
            error["param"] = self.param
        return {"error": error}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


def from_grpc(exc: grpc.aio.AioRpcError, service: str) -> ApiError:
    status = HTTP_FOR_GRPC.get(exc.code(), 502)
    type_ = {400: "invalid_request", 429: "overloaded", 503: "unavailable", 504: "timeout"}.get(status, "upstream_error")
    if exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (exc.details() or "").lower():
        message = f"the {service} service cannot be reached"
    else:
        message = f"{service}: {exc.details()}"
    return ApiError(status, type_, message, retry_after_s=1 if status in (429, 503) else None)
