"""Starlette's CORS middleware, with its refused preflight in the gateway's one error shape.

A preflight (OPTIONS with Origin and Access-Control-Request-Method) from an
origin, method or header not allowed is answered by the middleware itself, as
plain text "Disallowed CORS origin": the one error the handlers never see.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from .errors import ApiError


class Cors(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        error = ApiError(
            400,
            "cors_refused",
            f"cross-origin request refused: its {refused} is not allowed here "
            "(SPLITGPT_API_CORS_ORIGINS lists the origins allowed)",
        )
        kept = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
        return JSONResponse(error.body(), status_code=400, headers=kept)
