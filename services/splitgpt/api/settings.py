from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPLITGPT_API_", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = 8000
    tokenizer_address: str = "127.0.0.1:50051"  # several, comma-separated: tried in turn
    coordinator_address: str = "127.0.0.1:50050"
    request_timeout_s: float = 300.0
    # On SIGTERM/SIGINT: running requests get this long to finish, then end with a 503 / SSE `error` shutting_down.
    shutdown_grace_s: float = 3.0
    rpc_timeout_s: float = 10.0
    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    cache_ttl_s: int = 3600
    cache_max_entries: int = 1024
    # Request bodies over this many bytes get 413 before any work. A prompt the
    # largest GPT-2 context can hold is far smaller: 1023 tokens of at most 66
    # characters is 67,518 characters: under 400 KiB even as \uXXXX escapes.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    cors_origins: list[str] = ["http://localhost:5173", "http://127.0.0.1:5173"]
    log_level: str = "INFO"
