"""What every splitgpt process exports, and the plain-HTTP /metrics of the gRPC services.

A gRPC service serves its metrics on a port of its own (`metrics_port`, 0: off),
outside gRPC: no internal token, no TLS, so it belongs inside the cluster
network only (docs/metrics.md). Each process has its own registry, never
prometheus_client's global one, so tests can build several in one interpreter.
"""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, GCCollector, PlatformCollector, ProcessCollector, start_http_server

from .. import __version__

log = logging.getLogger(__name__)

__all__ = ["MetricsPortError", "MetricsServer", "process_registry", "serve_metrics"]


class MetricsPortError(OSError):
    """The metrics port could not be bound."""


def process_registry(service: str) -> CollectorRegistry:
    """A registry with what every splitgpt process exports: the process, platform
    and GC collectors, and `splitgpt_service_info{service,version}` = 1."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    info = Gauge("splitgpt_service_info", "This process: which splitgpt service, which version", ["service", "version"],
                 registry=registry)  # fmt: skip
    info.labels(service, __version__).set(1)
    return registry


class MetricsServer:
    """GET /metrics of one registry, on a daemon thread: scrapes never touch the event loop."""

    def __init__(self, server: WSGIServer, thread) -> None:
        self._server, self._thread = server, thread
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(registry: CollectorRegistry, host: str, port: int, service: str) -> MetricsServer | None:
    """Serve `registry` on host:port; port 0 is off (returns None)."""
    if not port:
        return None
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsPortError(f"could not bind the metrics port {host}:{port} ({exc.strerror or exc}): "
                               f"choose another with --metrics-port") from None  # fmt: skip
    log.info("%s metrics on http://%s:%d/metrics", service, host, server.server_port)
    return MetricsServer(server, thread)
