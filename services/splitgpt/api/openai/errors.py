"""Errors on /v1 in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

The gateway raises one ApiError everywhere; api/error_handlers.py answers
it in this shape on /v1 paths. `code` keeps the gateway's own error type
(context_length_exceeded, model_not_found, validation_error, ...); `type` is
the class OpenAI's clients know. A field that fails validation is a 400 here
(OpenAI's status for it), not the 422 /api answers.
"""

from __future__ import annotations

from ..errors import ApiError

PREFIX = "/v1"

TYPE_FOR_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


def is_openai_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def openai_status(error: ApiError) -> int:
    return 400 if error.status == 422 else error.status


# The codes that differ from the gateway's type: a per-key limit is OpenAI's
# rate_limit_exceeded, whether the edge middleware or a route (a request of
# several generations, api/rate_limit.py) refused it.
CODE_FOR_TYPE = {"rate_limited": "rate_limit_exceeded", "concurrency_limited": "rate_limit_exceeded"}


# The prompt is `text` to the generation service that /api and /v1 share; on /v1 it is the
# field the client sent.
PROMPT_PARAM = {PREFIX + "/completions": "prompt", PREFIX + "/chat/completions": "messages"}


def openai_body(error: ApiError, path: str = "") -> dict:
    """`path`: the route's, so that `param` names the /v1 field (`prompt`, `messages`), not /api's `text`."""
    status = openai_status(error)
    kind = TYPE_FOR_STATUS.get(status) or ("invalid_request_error" if status < 500 else "server_error")
    code = CODE_FOR_TYPE.get(error.type, error.type)
    param = PROMPT_PARAM.get(path.rstrip("/"), error.param) if error.param == "text" else error.param
    return {"error": {"message": error.message, "type": kind, "param": param, "code": code}}
