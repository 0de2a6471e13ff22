"""Every error the gateway answers, on every route, in one shape: `{"error": {"type", "message", "param"?}}`.

FastAPI's own answers (`{"detail": ...}` for 404/405/400, a `detail` list
that echoes the input for 422) are replaced here. Nothing from the request is
echoed except the name of the field at fault, made printable.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import ApiError
from .openai import errors as openai_errors
from .schemas import ErrorResponse

log = logging.getLogger("splitgpt.api")

MAX_MESSAGE_CHARS = 400

DESCRIPTIONS = {
    400: "Malformed JSON, or the prompt (with max_tokens) does not fit the model's context.",
    403: "The API key may not do this (node and model management needs an admin key).",
    404: "No such resource: a route, a request id, a model or a node.",
    409: "The cluster's state refuses it: a node id already registered, or no other replica to drain to.",
    413: "The request body is over the gateway's size limit.",
    415: "The body is not sent as JSON (`content-type: application/json`).",
    422: "A field is invalid: the message and `param` name it.",
    429: "The coordinator's queue is full, or the API key is over its rate or concurrency limit: "
    "retry after `Retry-After` seconds.",
    500: "A bug in the gateway (logged); never caused by input.",
    502: "The tokenizer or coordinator failed in a way it should not.",
    503: "The tokenizer, the coordinator or a partition has no usable replica (with `Retry-After`).",
    504: "A deadline passed.",
}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses=` for the error statuses a route can answer."""
    return {status: {"model": ErrorResponse, "description": DESCRIPTIONS[status]} for status in statuses}


def _respond(error: ApiError, headers: dict[str, str] | None = None, request: Request | None = None) -> JSONResponse:
    headers = {**(headers or {}), **error.headers()}
    if request is not None and openai_errors.is_openai_path(request.url.path):  # OpenAI's shape on /v1
        return JSONResponse(
            openai_errors.openai_body(error, request.url.path), status_code=openai_errors.openai_status(error), headers=headers
        )
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def validation_error(errors: list[dict]) -> ApiError:
    """One ApiError for pydantic's error list: the first field at fault, by name, without its value."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        where = first.get("loc", ("body", "?"))[-1]
        reason = first.get("ctx", {}).get("error", "")
        return ApiError(400, "invalid_json", f"the request body is not valid JSON: {reason} (at character {where})")
    fields = [_field(e) for e in errors]
    param = fields[0] if fields else None
    if param is None:  # the body as a whole
        if first.get("type") == "string_unicode":  # pydantic's words for a field name with a lone surrogate
            return ApiError(422, "validation_error", "a field name in the body is not valid Unicode (a lone surrogate)")
        return ApiError(422, "validation_error", 'the request body must be a JSON object, e.g. {"text": "Hello"}')
    # A union (`stop`: a string or a list) fails once per member; where our
    # own check failed, it says more than "should be a valid list".
    own = [e for e, f in zip(errors, fields, strict=True) if f == param]
    own = [e for e in own if e.get("type") == "value_error"] or own
    reasons = list(dict.fromkeys(_reason(e) for e in own))
    message = f"{param}: {'; or: '.join(reasons)}"
    others = list(dict.fromkeys(f for f in fields if f and f != param))
    if others:
        message += f" (also invalid: {', '.join(others)})"
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return ApiError(422, "validation_error", message, param=param)


def _field(error: dict) -> str | None:
    loc = [p for p in error.get("loc", ()) if p != "body"]
    return str(loc[0]) if loc else None


def _reason(error: dict) -> str:
    msg = str(error.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _respond(exc, request=request)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _respond(validation_error(exc.errors()), request=request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        route = f"{request.method} {request.url.path}"
        if status == 404:
            message = f"no such route: {route} (the API is described at /docs)"
        elif status == 405:
            allowed = (exc.headers or {}).get("allow", (exc.headers or {}).get("Allow", ""))
            message = f"{request.url.path} does not take {request.method}" + (f"; it takes {allowed}" if allowed else "")
        elif exc.detail == "There was an error parsing the body":  # FastAPI's words, e.g. JSON nested too deep
            message = "the request body could not be read as JSON"
        else:
            message = str(exc.detail)
        return _respond(ApiError(status, None, message[:MAX_MESSAGE_CHARS]), headers=exc.headers, request=request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Only for bugs: every input the gateway refuses has its own status above.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        error = ApiError(500, "internal_error", f"internal error ({type(exc).__name__}); the gateway logged it")
        return _respond(error, request=request)
