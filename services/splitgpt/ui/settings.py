from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# frontend/ of this checkout (the package is installed editable from services/).
CHECKOUT_FRONTEND = Path(__file__).resolve().parents[3] / "frontend"


class UiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPLITGPT_UI_")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(5173, description="port to listen on")
    api_url: str = Field("http://127.0.0.1:8000", description="the API that /api, /docs, /openapi.json and /v1 go to")
    frontend_dir: Path = Field(CHECKOUT_FRONTEND, description="the React app (package.json, src/)")
    dist_dir: Path | None = Field(None, description="the built page to serve (default: FRONTEND_DIR/dist)")
    max_body_bytes: int = Field(
        1 << 20, gt=0, description="request bodies over this are refused (413) before the API sees them; the API's own limit"
    )
    allowed_hosts: str | None = Field(
        None,
        description="Host names answered, comma-separated (`*`: any); unset: localhost names only when listening on "
        "loopback (DNS rebinding)",
    )
    build: bool = Field(False, description="run npm ci / vite build first when the build is missing or stale")
    log_level: str = Field("INFO", description="log level")

    @property
    def dist(self) -> Path:
        return self.dist_dir or self.frontend_dir / "dist"
