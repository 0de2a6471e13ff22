"""Refuse request bodies over a size limit with 413, before any work.

Plain ASGI, like GenerationRequestMetrics (Starlette's BaseHTTPMiddleware
relays every chunk of a streaming response through an extra task). A declared
Content-Length over the limit is answered at once, without reading the body.
A body without one (chunked) is counted as it is received, and the read that
crosses the limit raises 413: FastAPI re-raises an HTTPException from body
reading as it is, so it reaches the error handlers and gets the one error shape.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from .errors import ApiError
from .openai import errors as openai_errors


def too_large(limit: int) -> ApiError:
    return ApiError(413, "request_too_large", f"the request body is larger than this gateway's limit of {limit} bytes")


class BodyLimit:
    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            error = too_large(self.max_bytes)
            # The unread body: the server closes the connection rather than read it.
            body = (
                openai_errors.openai_body(error, scope["path"]) if openai_errors.is_openai_path(scope["path"]) else error.body()
            )
            await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, too_large(self.max_bytes).message)
            return message

        await self.app(scope, counted_receive, send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server itself refuses a malformed length
    return None
