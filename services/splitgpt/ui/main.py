"""`splitgpt ui`: serve the web UI on :5173, proxying the API, building it first when asked."""

from __future__ import annotations

import logging
import sys

import uvicorn

from ..host_allow import allowed_hosts
from ..logs import configure
from ..shells.cli_settings import settings_from_cli
from .build import ensure_built
from .server import UVICORN_OPTIONS, create_app
from .settings import UiSettings


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_cli(UiSettings, argv, "splitgpt ui", "Serve the web UI, with a same-origin proxy to the API.")
    configure(settings.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per proxied call: the page polls every second

    def say(line: str) -> None:
        print(f"splitgpt ui: {line}", flush=True)

    problem = None
    dist = settings.dist
    if settings.build:
        result = ensure_built(settings.frontend_dir, settings.dist, log=say)
        dist, problem = result.dist, result.problem
    elif not (dist / "index.html").exists():
        problem = f"no built page at {dist} (run `npm ci && npm run build` in {settings.frontend_dir}, or pass --build true)"
    if problem:
        # One line, and keep serving: the page at this port then says the same, and links the API.
        print(f"splitgpt ui: {problem}", file=sys.stderr, flush=True)
    say(f"web UI on http://{settings.host}:{settings.port} (API: {settings.api_url})")
    uvicorn.run(
        create_app(
            settings.api_url,
            dist,
            problem,
            max_body_bytes=settings.max_body_bytes,
            # no keys of its own: on loopback, local names only (the API behind may be open)
            allowed=allowed_hosts(settings.allowed_hosts, settings.host, keys=False),
        ),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the page polls every second; the API logs the calls that matter
        **UVICORN_OPTIONS,
    )


if __name__ == "__main__":
    main()
