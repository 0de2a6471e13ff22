"""The inside of the cluster: one shared bearer token, and TLS on every gRPC hop.

`InternalSecuritySettings` is mixed into every service's settings class: the
same environment variables (no service prefix) for all of them. From those,
`InternalSecurity` builds what a server installs (`BearerTokenInterceptor`,
TLS server credentials) and what a client channel carries (the token in
`authorization: Bearer ...` metadata, TLS channel credentials).

grpc.health.v1 stays open without a token: orchestrators' probes (kubelet,
compose healthchecks) carry none. Everything else needs the token when one is
set. The check compares precomputed bytes (hmac.compare_digest): no per-call
work beyond a scan of the call's few metadata pairs.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from .security_settings import InternalSecuritySettings

log = logging.getLogger(__name__)

# Probes carry no token; health says only SERVING or not.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
AUTH_KEY = "authorization"
MIN_TOKEN_CHARS = 16


class InternalSecurityError(ValueError):
    """Settings for the token or TLS that cannot work (a missing file, half a key pair)."""


__all__ = ["InternalSecurity", "InternalSecurityError", "InternalSecuritySettings", "BearerTokenInterceptor"]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InternalSecurityError(f"{what} {path}: {exc.strerror or exc}") from None


def check_token(token: str) -> str:
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise InternalSecurityError(f"the internal token must be at least {MIN_TOKEN_CHARS} characters")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise InternalSecurityError("the internal token must be printable ASCII without spaces (it travels as gRPC metadata)")
    return token


@dataclass(frozen=True)
class InternalSecurity:
    """What one process needs to serve and to call the others. Empty: open and plain text."""

    token: str | None = field(default=None, repr=False)  # secrets stay out of any repr or log
    server_cert: bytes | None = field(default=None, repr=False)
    server_key: bytes | None = field(default=None, repr=False)
    client_ca: bytes | None = field(default=None, repr=False)  # set: servers require client certificates (mTLS)
    ca: bytes | None = field(default=None, repr=False)  # set: channels use TLS
    client_cert: bytes | None = field(default=None, repr=False)
    client_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    @classmethod
    def from_settings(cls, s: InternalSecuritySettings) -> InternalSecurity:
        if s.internal_token is not None and s.internal_token_file is not None:
            raise InternalSecurityError("set SPLITGPT_INTERNAL_TOKEN or SPLITGPT_INTERNAL_TOKEN_FILE, not both")
        token = None
        if s.internal_token is not None:
            token = check_token(s.internal_token.get_secret_value())
        elif s.internal_token_file is not None:
            token = check_token(_read(s.internal_token_file, "SPLITGPT_INTERNAL_TOKEN_FILE").decode("ascii", "replace"))
        if (s.tls_cert is None) != (s.tls_key is None):
            raise InternalSecurityError("SPLITGPT_TLS_CERT and SPLITGPT_TLS_KEY go together")
        if (s.tls_client_cert is None) != (s.tls_client_key is None):
            raise InternalSecurityError("SPLITGPT_TLS_CLIENT_CERT and SPLITGPT_TLS_CLIENT_KEY go together")
        if s.tls_client_ca is not None and s.tls_cert is None:
            raise InternalSecurityError("SPLITGPT_TLS_CLIENT_CA (mutual TLS) needs SPLITGPT_TLS_CERT and SPLITGPT_TLS_KEY")
        if s.tls_client_cert is not None and s.tls_ca is None:
            raise InternalSecurityError("SPLITGPT_TLS_CLIENT_CERT needs SPLITGPT_TLS_CA (the CA that signed the servers)")

        def opt(path: Path | None, name: str) -> bytes | None:
            return None if path is None else _read(path, name)

        return cls(
            token=token,
            server_cert=opt(s.tls_cert, "SPLITGPT_TLS_CERT"),
            server_key=opt(s.tls_key, "SPLITGPT_TLS_KEY"),
            client_ca=opt(s.tls_client_ca, "SPLITGPT_TLS_CLIENT_CA"),
            ca=opt(s.tls_ca, "SPLITGPT_TLS_CA"),
            client_cert=opt(s.tls_client_cert, "SPLITGPT_TLS_CLIENT_CERT"),
            client_key=opt(s.tls_client_key, "SPLITGPT_TLS_CLIENT_KEY"),
            server_name=s.tls_server_name or None,
        )

    # -- server side --------------------------------------------------------

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [] if self.token is None else [BearerTokenInterceptor(self.token)]

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if self.server_cert is None:
            return None
        return grpc.ssl_server_credentials(
            [(self.server_key, self.server_cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def describe_server(self) -> str:
        """For the start-up log line; never the token itself."""
        tls = "plain text" if self.server_cert is None else ("mutual TLS" if self.client_ca else "TLS")
        return f"{tls}, {'token required' if self.token else 'NO internal token'}"

    # -- client side --------------------------------------------------------

    @property
    def call_metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The token as per-call metadata, for a hot path that passes it itself."""
        return None if self.token is None else ((AUTH_KEY, f"Bearer {self.token}"),)

    def channel(self, address: str, options: list[tuple[str, object]], add_token: bool = True) -> grpc.aio.Channel:
        """`add_token=False`: the caller passes `call_metadata` on each call itself
        (no interceptor: grpc.aio runs each intercepted call through an extra task)."""
        interceptors = token_client_interceptors(self.token) if self.token is not None and add_token else []
        if self.ca is None:
            return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.client_key, certificate_chain=self.client_cert
        )
        if self.server_name:
            options = [*options, ("grpc.ssl_target_name_override", self.server_name)]
        return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)


# -- the token on the wire -----------------------------------------------------


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without `authorization: Bearer <token>` with UNAUTHENTICATED,
    except grpc.health.v1. Installed first, so a refused call reaches no servicer."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()
        self._refusals: dict[tuple[str, str], grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_METHOD_PREFIXES):
            return await continuation(handler_call_details)
        why = "missing internal token (authorization: Bearer metadata)"
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTH_KEY:
                given = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
                if hmac.compare_digest(given, self._expected):
                    return await continuation(handler_call_details)
                why = "wrong internal token"
                break
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        refusal = self._refusals.get((method, why))
        if refusal is None:
            refusal = self._refusals[(method, why)] = _refusing_handler(handler, why)
        log.debug("refused %s: %s", method, why)
        return refusal


def _refusing_handler(handler: grpc.RpcMethodHandler, why: str) -> grpc.RpcMethodHandler:
    """A handler that ends the call with UNAUTHENTICATED before reading its request.

    Always a request-streaming handler, whatever the method's kind: grpc reads
    a unary request whole (up to the receive limit) before a unary handler
    runs, while a streaming one receives messages only when it asks, so a
    tokenless caller's payload is never taken off the wire beyond HTTP/2's flow
    control window. The wire is the same for both kinds; only the server's
    reading differs, and the client sees the status either way."""
    code = grpc.StatusCode.UNAUTHENTICATED

    async def refuse(_requests, context):
        await context.abort(code, why)

    async def refuse_stream(_requests, context):
        await context.abort(code, why)
        yield  # pragma: no cover  (abort raises)

    serializer = handler.response_serializer
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, None, serializer)
    return grpc.stream_unary_rpc_method_handler(refuse, None, serializer)


class _AddsToken:
    def __init__(self, token: str) -> None:
        self._pair = (AUTH_KEY, f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*details.metadata, self._pair) if details.metadata else grpc.aio.Metadata(self._pair)
        return details._replace(metadata=metadata)


class _UnaryUnary(_AddsToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _UnaryStream(_AddsToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _StreamUnary(_AddsToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStream(_AddsToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def token_client_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """The token on every call of a channel, whatever its kind (a plain-text channel
    too, where gRPC refuses call credentials). One interceptor per kind: grpc.aio
    files an interceptor under the first kind it implements only."""
    return [cls(token) for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
