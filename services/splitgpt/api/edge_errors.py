"""Errors answered by the ASGI middleware at the edge (auth, limits), in the shape of the route asked.

They answer before any route runs, so the exception handlers never see them:
`/v1/*` gets OpenAI's error shape (what OpenAI clients parse), everything else
the gateway's own `{"error": {"type", "message"}}`.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from .errors import ApiError


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def edge_error(
    path: str, status: int, type_: str, message: str, *, openai_type: str, openai_code: str, headers: dict[str, str]
) -> JSONResponse:
    if is_openai_path(path):
        body = {"error": {"message": message, "type": openai_type, "param": None, "code": openai_code}}
    else:
        body = ApiError(status, type_, message).body()
    return JSONResponse(body, status_code=status, headers=headers)
