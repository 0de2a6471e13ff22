"""The settings of the cluster's inside (token, TLS) that every service class mixes in.

No gRPC here: the gateway's settings import this, and parts of the gateway
must load no transport. What the settings build is `internal_auth`'s.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class InternalSecuritySettings(BaseSettings):
    """Shared by every service class; the names carry no service prefix."""

    model_config = SettingsConfigDict(populate_by_name=True)

    internal_token: SecretStr | None = Field(
        None,
        validation_alias="SPLITGPT_INTERNAL_TOKEN",
        description="the shared token every internal gRPC call carries (prefer the _FILE form; never a flag)",
    )
    internal_token_file: Path | None = Field(
        None, validation_alias="SPLITGPT_INTERNAL_TOKEN_FILE", description="file holding the internal token"
    )
    tls_cert: Path | None = Field(None, validation_alias="SPLITGPT_TLS_CERT", description="this server's certificate (PEM)")
    tls_key: Path | None = Field(None, validation_alias="SPLITGPT_TLS_KEY", description="this server's private key (PEM)")
    tls_client_ca: Path | None = Field(
        None, validation_alias="SPLITGPT_TLS_CLIENT_CA", description="servers require client certificates signed by this CA"
    )
    tls_ca: Path | None = Field(
        None, validation_alias="SPLITGPT_TLS_CA", description="clients use TLS and verify servers with this CA"
    )
    tls_client_cert: Path | None = Field(
        None, validation_alias="SPLITGPT_TLS_CLIENT_CERT", description="client certificate for mutual TLS"
    )
    tls_client_key: Path | None = Field(
        None, validation_alias="SPLITGPT_TLS_CLIENT_KEY", description="client private key for mutual TLS"
    )
    tls_server_name: str | None = Field(
        None,
        validation_alias="SPLITGPT_TLS_SERVER_NAME",
        description="name servers' certificates are checked against (default: the address's host)",
    )
