from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from ..shells.security_settings import InternalSecuritySettings


class ApiSettings(InternalSecuritySettings):  # + the internal token and TLS of its gRPC channels
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
    # Redis credentials apart from the URL (an ACL user; compose and Kubernetes give
    # the password as a file). rediss:// in REDIS_URL is TLS.
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_password_file: str | None = None
    # The HMAC key that seals cache entries (api.cache_security); unset: derived from
    # the internal token, else random per process.
    cache_secret: SecretStr | None = None
    cache_secret_file: str | None = None
    cache_ttl_s: int = 3600
    cache_max_entries: int = 1024
    # Request bodies over this many bytes get 413 before any work. A prompt the
    # largest GPT-2 context can hold is far smaller: 1023 tokens of at most 66
    # characters is 67,518 characters: under 400 KiB even as \uXXXX escapes.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    cors_origins: list[str] = ["http://localhost:5173", "http://127.0.0.1:5173"]
    # The Host names answered, comma-separated (`*`: any); unset: localhost names only when
    # the gateway has no keys and listens on loopback (splitgpt.host_allow: DNS rebinding).
    allowed_hosts: str | None = None
    log_level: str = "INFO"
    # The model's id on /v1 (OpenAI API); None: the id the coordinator reports. Its basename is also accepted.
    served_model_name: str | None = None
    # API keys (README "Security"): comma-separated, `admin:KEY` for a key that sees every
    # request; unset (with keys_file) leaves the gateway open. Secret, so never in a repr or log.
    keys: SecretStr | None = Field(None, description="API keys, comma-separated; `admin:KEY` marks an admin key")
    keys_file: str | None = Field(None, description="a file of API keys, one a line (`admin:KEY`, # comments)")
    # Generation routes only, per key (per client address when open), per gateway replica. 0 = off.
    # A request of several generations (prompts x n on /v1) is charged one per generation.
    rate_limit_per_min: float = Field(0.0, ge=0.0, description="generations a minute per key; 0 = no limit")
    rate_limit_burst: int = Field(0, ge=0, description="requests allowed at once before the rate applies; 0 = one minute's worth")
    max_concurrent_per_key: int = Field(0, ge=0, description="generations running at once per key; 0 = no limit")
    # Generations one request may ask for (api/fan_out.py): /v1/completions' prompts, and prompts x n.
    max_prompts_per_request: int = Field(64, ge=1, description="prompts in one /v1/completions request")
    max_generations_per_request: int = Field(64, ge=1, description="prompts x n in one request")
