"""Errors as HTTP status + one JSON body shape, `{"error": {"type", "message", "param"?}}`.

Transport-free: the gRPC side (api/grpc_errors.py) looks statuses up here by
name, so modules that only raise ApiError never import grpc.
"""

from __future__ import annotations

# gRPC status (by name) from the tokenizer/coordinator -> HTTP status for the client.
# Anything not listed is the upstream's own failure: 502.
HTTP_FOR_GRPC_STATUS = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 409,
    "OUT_OF_RANGE": 400,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "CANCELLED": 499,
}
UPSTREAM_FAILURE = 502

# The `type` an error of each status gets when nothing more specific is known.
TYPE_FOR_STATUS = {
    400: "invalid_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "overloaded",
    499: "client_closed_request",
    500: "internal_error",
    502: "upstream_error",
    503: "unavailable",
    504: "timeout",
}

MAX_PARAM_CHARS = 100


def printable(text: str, limit: int | None = None) -> str:
    """`text` as something JSON can always carry: lone surrogates (which UTF-8
    cannot encode) become `\\udXXX` escapes; cut to `limit` characters."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe if limit is None or len(safe) <= limit else safe[: limit - 1] + "…"


class ApiError(Exception):
    def __init__(
        self, status: int, type_: str | None, message: str, param: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_ or TYPE_FOR_STATUS.get(status, "error")
        self.message = printable(message)
        self.param = printable(param, MAX_PARAM_CHARS) if param else None
        self.retry_after_s = retry_after_s

    def body(self) -> dict:
        error = {"type": self.type, "message": self.message}
        if self.param:
            error["param"] = self.param
        return {"error": error}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


def from_rpc_status(status_name: str, details: str, service: str) -> ApiError:
    """The ApiError for a gRPC failure of `service` (`status_name` as in grpc.StatusCode.X.name)."""
    status = HTTP_FOR_GRPC_STATUS.get(status_name, UPSTREAM_FAILURE)
    if status_name == "UNAVAILABLE" and "failed to connect" in (details or "").lower():
        message = f"the {service} service cannot be reached"
    else:
        message = f"{service}: {details}"
    return ApiError(status, None, message, retry_after_s=1 if status in (429, 503) else None)
