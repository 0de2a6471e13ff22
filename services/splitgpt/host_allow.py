"""A Host allow-list for HTTP servers that answer without a key (DNS rebinding).

A web page can make a browser send requests to a name of the page's choosing that
resolves, a moment later, to 127.0.0.1: the browser then treats a service on
loopback as the page's own origin and lets the page read its answers. Keys stop
that (the page has none); so does answering only the names a local user types.
So a gateway without keys that listens on loopback, and the web UI's server on
loopback, answer only `localhost`, `127.0.0.1` and `[::1]` (any port) unless told
more. A server that listens on the network is named whatever its users call it:
there the list is only what is configured.
"""

from __future__ import annotations

import ipaddress

from starlette.responses import JSONResponse

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(configured: str | None, bind_host: str, keys: bool) -> frozenset[str] | None:
    """The names served (lower case, no port), or None for any. `configured`: comma-separated,
    `*` for any; unset: the local names when the server is open (no keys) on loopback."""
    if configured is not None and configured.strip():
        names = {name.strip().lower().strip("[]") for name in configured.split(",") if name.strip()}
        return None if "*" in names else frozenset(names)
    if not keys and is_loopback(bind_host):
        return frozenset(LOCAL_NAMES)
    return None


def host_name(header: str) -> str:
    """`Host`'s name without its port: `[::1]:8000` -> `::1`, `Example.com:80` -> `example.com`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostAllowList:
    """ASGI middleware: 400 for a request whose Host is not on the list (every path: a
    rebinding page could read /api/cluster as well as generate)."""

    def __init__(self, app, allowed: frozenset[str] | None, setting: str) -> None:
        self.app = app
        self.allowed = allowed
        self.setting = setting

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allowed is None:
            await self.app(scope, receive, send)
            return
        given = ""
        for name, value in scope.get("headers", []):
            if name == b"host":
                given = value.decode("latin-1")
                break
        if host_name(given) in self.allowed:
            await self.app(scope, receive, send)
            return
        shown = given[:100].encode("ascii", "backslashreplace").decode()
        message = (
            f"the Host {shown!r} is not one this server answers ({', '.join(sorted(self.allowed))}): "
            f"{self.setting} lists the names it answers (without it, a server on loopback without API keys "
            "answers only local names, so no web page can reach it by DNS rebinding)"
        )
        response = JSONResponse({"error": {"type": "invalid_host", "message": message}}, status_code=400)
        await response(scope, receive, send)
