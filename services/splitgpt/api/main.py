"""`splitgpt api`: the gateway under uvicorn."""

from __future__ import annotations

import uvicorn

from ..logs import configure
from ..shells.cli_settings import settings_from_cli
from .app import create_app
from .settings import ApiSettings


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_cli(ApiSettings, argv, "splitgpt api", "Serve the HTTP API gateway.")
    configure(settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())
