"""What routes take besides their body: the services, the request id, a JSON content type."""

from __future__ import annotations

import email.message
import re
import uuid
from typing import Annotated

from fastapi import Depends, Header, Request

from .backends import Backends
from .errors import ApiError
from .generation import GenerationService


def _generation(request: Request) -> GenerationService:
    return request.app.state.generation


def _backends(request: Request) -> Backends:
    return request.app.state.backends


Generation = Annotated[GenerationService, Depends(_generation)]
BackendsDep = Annotated[Backends, Depends(_backends)]
RequestId = Annotated[
    str | None,
    Header(
        alias="X-Request-ID",
        description="Sets the response's request_id: 1-128 letters, digits and `-_.:~+=@` (a path segment as it "
        "is, so `DELETE /api/tasks/{request_id}` can always name it).",
    ),
]

# What a request id may hold: nothing a URL path would change (`/`, `%`, `?`, `#`, spaces),
# so the id a client chose is the one it cancels with.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:~+=@-]{1,128}")


def request_id(given: str | None) -> str:
    if given is None or given == "":
        return uuid.uuid4().hex
    if not _SAFE_ID.fullmatch(given):
        raise ApiError(
            400,
            "invalid_request_id",
            f"X-Request-ID must be 1-128 characters, each a letter, a digit or one of - _ . : ~ + = @ "
            f"(this one has {len(given)} characters)",
            "X-Request-ID",
        )
    return given


def require_json(request: Request) -> None:
    """415 for a body not declared as JSON (curl -d sends a form by default).

    FastAPI parses a body as JSON only under a JSON content type and would
    otherwise answer 422 "should be a valid dictionary", which never says
    what to change. Runs before the body is validated.
    """
    declared = request.headers.get("content-type")
    if declared:
        message = email.message.Message()
        message["content-type"] = declared
        subtype = message.get_content_subtype()
        if message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json")):
            return
    raise ApiError(
        415,
        "unsupported_media_type",
        "the body must be JSON sent with the header `content-type: application/json` "
        "(with curl: -H 'content-type: application/json' -d '{\"text\": \"Hello\"}')",
    )


JsonBody = Depends(require_json)
