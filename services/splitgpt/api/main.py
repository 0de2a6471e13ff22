"""`splitgpt api`: the gateway under uvicorn."""

from __future__ import annotations

import logging
import signal
import sys

import uvicorn

from ..logs import configure
from ..shells.cli_settings import settings_from_cli
from .app import create_app
from .auth import configured_keys
from .cache_security import CacheSecretError, redis_password, result_cache_secret
from .settings import ApiSettings
from .shutdown import DrainingServer


class _QuietProbes(logging.Filter):
    """Probes hit /api/ready and /api/health every second, Prometheus /metrics every
    few: keep them out of the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) >= 3 and str(args[2]).split("?")[0] in ("/api/ready", "/api/health", "/metrics"))


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_cli(ApiSettings, argv, "splitgpt api", "Serve the HTTP API gateway.")
    configure(settings.log_level)
    logging.getLogger("uvicorn.access").addFilter(_QuietProbes())
    # After a graceful stop uvicorn raises the signal it stopped on again, with
    # the handler it found: by default SIGTERM would then end a cleanly drained
    # gateway as "killed by SIGTERM". A stop that drained is a success.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    # Settings that cannot work stop the gateway with one line saying why, not a traceback
    # from inside the app's startup.
    try:
        configured_keys(settings)
        result_cache_secret(settings)
        redis_password(settings)
    except (CacheSecretError, ValueError, OSError) as exc:
        print(f"splitgpt api: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    DrainingServer(config, settings.shutdown_grace_s).run()
