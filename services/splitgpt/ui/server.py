"""The web UI's server: the built page, and a same-origin proxy to the API.

The page calls /api/* on its own origin, so no CORS is involved, and the same
build works behind `splitgpt up`, nginx in a container, or Vite in development.
Responses stream through unbuffered: a server-sent event reaches the browser
as soon as the API writes it, and a browser that goes away (Stop, a closed tab)
closes the upstream request, which cancels the generation on the nodes.

What it does not pass on: a body over the API's own limit (streamed, counted, and
refused with 413 as soon as it is over, never held whole), the client's own
X-Forwarded-* and Forwarded headers (the proxy says who the client is, the
client does not), and paths with `.` or `..` segments (a URL library would fold
them, and /api/../x would reach something other than what the proxy checked).
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..host_allow import HostAllowList

# Paths that belong to the API; everything else is the page.
PROXIED = ("/api/{path:path}", "/docs", "/docs/{path:path}", "/redoc", "/openapi.json", "/v1/{path:path}")

# Set by this proxy alone: a client's own would tell the API a made-up address or host.
FORWARDING = {"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "x-real-ip"}

# How uvicorn must serve this app: the client's address as the socket says. With uvicorn's
# default, a client on loopback (any browser of this host) could set request.client, and so
# the X-Forwarded-For passed on, with a header of its own.
UVICORN_OPTIONS = {"proxy_headers": False}

# The API's own default (SPLITGPT_API_MAX_BODY_BYTES): the proxy refuses no less than it would.
DEFAULT_MAX_BODY_BYTES = 1 << 20

# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


class _BodyTooLarge(Exception):
    pass


def _error(status: int, type_: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message}}, status_code=status)


def create_app(
    api_url: str,
    dist: Path | None,
    problem: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allowed: frozenset[str] | None = None,
) -> Starlette:
    """`allowed`: the Host names answered (host_allow.allowed_hosts), None: any."""

    @asynccontextmanager
    async def lifespan(app: Starlette):
        # No read timeout: a generation streams for as long as it takes; the API has its own deadline.
        timeout = httpx.Timeout(connect=5.0, read=None, write=30.0, pool=5.0)
        async with httpx.AsyncClient(base_url=api_url, timeout=timeout) as client:
            app.state.client = client
            yield

    too_large = f"the request body is over {max_body_bytes} bytes, the limit"

    async def limited_body(request: Request) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > max_body_bytes:
                raise _BodyTooLarge
            yield chunk

    async def proxy(request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        if any(segment in (".", "..") for segment in request.url.path.split("/")):
            return _error(400, "invalid_path", "a path with `.` or `..` segments is not proxied")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            return _error(413, "request_too_large", too_large)
        skip = HOP_BY_HOP | FORWARDING | {"host", "content-length"}
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in skip]
        headers.append(("x-forwarded-host", request.headers.get("host", "")))
        if request.client:
            headers.append(("x-forwarded-for", request.client.host))
        has_body = request.method not in ("GET", "HEAD", "OPTIONS", "DELETE") or declared not in ("", "0")
        if declared.isdigit():
            headers.append(("content-length", declared))  # streamed on as it arrives, still with its length
        upstream_request = client.build_request(
            request.method,
            request.url.path,
            params=request.query_params,
            headers=headers,
            content=limited_body(request) if has_body else None,
        )
        try:
            upstream = await client.send(upstream_request, stream=True)
        except _BodyTooLarge:
            return _error(413, "request_too_large", too_large)
        except httpx.HTTPError as exc:
            message = f"the splitgpt API at {api_url} cannot be reached ({type(exc).__name__}); is it running?"
            return _error(502, "api_unreachable", message)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            except httpx.HTTPError:
                pass  # the API went away mid-stream: the page sees the stream end without `done`
            finally:
                await upstream.aclose()  # also when the browser left: the API then cancels the generation

        response_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        response_headers["x-accel-buffering"] = "no"  # any proxy in front: don't buffer the events
        return StreamingResponse(body(), status_code=upstream.status_code, headers=response_headers)

    routes = [Route(path, proxy, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]) for path in PROXIED]
    if dist is not None and (dist / "index.html").exists():
        routes.append(Mount("/", StaticFiles(directory=dist, html=True), name="page"))
    else:
        routes.append(Route("/{path:path}", _not_built_page(problem or f"no built page at {dist}")))
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(HostAllowList, allowed=allowed, setting="SPLITGPT_UI_ALLOWED_HOSTS")],
    )


def _not_built_page(problem: str):
    """Port 5173 still answers, and says why there is no UI and where the API is."""
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>splitgpt: web UI not built</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 44rem; margin: 3rem auto; padding: 0 1rem; line-height: 1.5">
<h1>The splitgpt web UI is not built</h1><p>{html.escape(problem)}</p>
<p>The API works without it: <a href="/docs">/docs</a>, <a href="/api/cluster">/api/cluster</a>.
Build the UI with <code>cd frontend &amp;&amp; npm ci &amp;&amp; npm run build</code>, then reload.</p></body></html>"""

    async def endpoint(request: Request) -> Response:
        return HTMLResponse(page, status_code=503)

    return endpoint
