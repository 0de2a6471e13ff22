"""API keys at the edge: which requests need one, checking it, and saying so in the OpenAPI document.

Pure ASGI middleware (Starlette's BaseHTTPMiddleware relays every SSE chunk
through an extra task) that decides by path, so routes added later, /v1
included, are covered without naming them. Deny by default: everything needs a
key except the probes and the API's own documentation.

A presented key is hashed, and its SHA-256 digest compared with every
configured key's with hmac.compare_digest, all of them, without stopping at a
match: equal lengths, and the time taken says neither whether nor which key
matched. Keys are never logged; the log and admin task listings name a key by
its fingerprint, the first 16 hex digits of its SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from .edge_errors import edge_error
from .ownership import Caller, reset_caller, set_caller
from .settings import ApiSettings

log = logging.getLogger("splitgpt.api")

ADMIN_PREFIX = "admin:"
# No key needed: load balancers and orchestrators probe these. Everything else,
# the API's own description (/docs, /openapi.json) included, needs a key once
# keys are set: an unkeyed caller learns nothing but that the gateway is up.
OPEN_PATHS = frozenset({"/api/health", "/api/ready"})
SHORT_KEY_CHARS = 16


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    caller: Caller


class KeyRing:
    """The configured keys, kept as SHA-256 digests."""

    def __init__(self, keys: list[str]) -> None:
        entries: dict[bytes, _Entry] = {}
        for raw in keys:
            admin = raw.startswith(ADMIN_PREFIX)
            key = raw.removeprefix(ADMIN_PREFIX).strip() if admin else raw.strip()
            if not key:
                continue
            digest = hashlib.sha256(key.encode()).digest()
            # A key listed both plainly and as admin is an admin key.
            if digest not in entries or admin:
                entries[digest] = _Entry(digest, Caller(owner=fingerprint(key), admin=admin))
        self._entries = list(entries.values())
        self.short = sum(1 for raw in keys if 0 < len(raw.removeprefix(ADMIN_PREFIX).strip()) < SHORT_KEY_CHARS)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def callers(self) -> list[Caller]:
        return [e.caller for e in self._entries]

    def check(self, presented: str) -> Caller | None:
        """The caller `presented` is the key of, or None; in time independent of which key, if any, matched."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for entry in self._entries:  # every entry, no early exit
            if hmac.compare_digest(digest, entry.digest):
                found = entry.caller
        return found


def load_keys(settings: ApiSettings) -> KeyRing:
    """SPLITGPT_API_KEYS (comma-separated) and SPLITGPT_API_KEYS_FILE (one a line, `#` comments), together."""
    return KeyRing(configured_keys(settings))


def configured_keys(settings: ApiSettings) -> list[str]:
    """The keys as configured (`admin:` prefixes kept); refuses a configuration that holds none."""
    keys: list[str] = []
    if settings.keys is not None:
        keys += [k.strip() for k in settings.keys.get_secret_value().split(",") if k.strip()]
    if settings.keys_file:
        for line in Path(settings.keys_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    if (settings.keys is not None or settings.keys_file) and not keys:
        # Configured, but empty: an open gateway here would be a surprise, so refuse to start.
        raise ValueError("SPLITGPT_API_KEYS / SPLITGPT_API_KEYS_FILE is set but holds no key")
    return keys


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """`Authorization: Bearer KEY`, else `X-API-Key: KEY`."""
    bearer = api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key" and value.strip():
            api_key = value.decode("latin-1").strip()
    return bearer if bearer is not None else api_key


class ApiKeys:
    """ASGI middleware: 401 without a valid key (when keys are configured); sets the caller for the request."""

    def __init__(self, app, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not len(self.keys):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope.get("headers", []))
        caller = self.keys.check(presented) if presented is not None else None
        if caller is None:
            await _unauthorized(path, given=presented is not None)(scope, receive, send)
            return
        token = set_caller(caller)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_caller(token)


def _unauthorized(path: str, given: bool):
    if given:
        message = "the API key is not valid"
        challenge = 'Bearer realm="splitgpt", error="invalid_token"'
    else:
        message = "this API needs a key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"
        challenge = 'Bearer realm="splitgpt"'
    return edge_error(
        path, 401, "unauthorized", message,
        openai_type="invalid_request_error", openai_code="invalid_api_key", headers={"WWW-Authenticate": challenge},
    )  # fmt: skip


def install_api_keys(app: FastAPI, settings: ApiSettings) -> KeyRing:
    """Add the middleware, say at start whether the gateway is open, and declare the keys in
    /openapi.json. Returns the keys."""
    keys = load_keys(settings)
    app.add_middleware(ApiKeys, keys=keys)
    if not len(keys):
        log.warning("no API keys configured (SPLITGPT_API_KEYS): every route is open to anyone who can reach this port")
        return keys
    admins = [c.owner for c in keys.callers if c.admin]
    log.info("API keys: %d configured (%d admin); admin fingerprints: %s", len(keys), len(admins), ", ".join(admins) or "none")
    if keys.short:
        log.warning(
            "%d API key(s) shorter than %d characters: use long random keys (openssl rand -hex 32)", keys.short, SHORT_KEY_CHARS
        )
    _declare_security(app)
    return keys


UNAUTHORIZED_API = {
    "description": "No API key, or not a valid one (`WWW-Authenticate: Bearer`).",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}
UNAUTHORIZED_OPENAI = {
    "description": "No API key, or not a valid one (`WWW-Authenticate: Bearer`), in OpenAI's error shape.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["message", "type", "param", "code"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"type": ["string", "null"]},
                        },
                    }
                },
            }
        }
    },
}


def _declare_security(app: FastAPI) -> None:
    """The bearer scheme (and X-API-Key), required with a 401 on every documented route that needs a key."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearerAuth"] = {"type": "http", "scheme": "bearer", "description": "An API key as a bearer token."}
        schemes["apiKeyHeader"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        for path, operations in schema.get("paths", {}).items():
            if path in OPEN_PATHS:
                continue
            for operation in operations.values():
                operation["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
                responses = operation.setdefault("responses", {})
                responses.setdefault("401", UNAUTHORIZED_OPENAI if path.startswith("/v1") else UNAUTHORIZED_API)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
