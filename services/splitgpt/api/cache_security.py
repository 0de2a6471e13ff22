"""What keeps the result cache honest: entries sealed with an HMAC, and results
scoped to the key that asked for them.

A shared store (Redis) is reachable by more than the gateways: anything that
can write a key there could otherwise make every user receive its text as the
model's answer. So each entry carries an HMAC-SHA256, under a secret only the
gateways hold, over its cache key and its payload: an entry written by anyone
else, or moved under another key, fails the check and is a miss (counted and
logged), never an answer.

The secret, in order: SPLITGPT_API_CACHE_SECRET or SPLITGPT_API_CACHE_SECRET_FILE;
else one derived from the internal token (every gateway of a cluster has it);
else a random one, which this gateway alone can check (it forgets its entries
on restart, and gateways sharing a Redis do not share entries).

Scope: a cached result also tells whoever gets it, by `cached: true` and by its
speed, that the same prompt was sent before. So a key is served only results
that requests with the same key computed; requests that pass the same
`cache_salt` share results across keys instead (the explicit opt-in, like
vLLM's `cache_salt`). An open gateway (no keys) has a single scope.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from pathlib import Path

from . import ownership

log = logging.getLogger("splitgpt.api.cache")

SEAL_PREFIX = "hmac-sha256:"
DIGEST_HEX_CHARS = 64
MIN_SECRET_BYTES = 16
FORGED_LOG_INTERVAL_S = 60.0


class CacheSecretError(ValueError):
    """A cache secret setting that cannot work (too short, both forms, an unreadable file)."""


def cache_secret(secret: str | None, secret_file: str | None, internal_token: str | None, shared_store: bool) -> bytes:
    """The HMAC key for cache entries (see the module docstring for the order)."""
    if secret and secret_file:
        raise CacheSecretError("set SPLITGPT_API_CACHE_SECRET or SPLITGPT_API_CACHE_SECRET_FILE, not both")
    if secret_file:
        try:
            secret = Path(secret_file).read_text().strip()
        except OSError as exc:
            raise CacheSecretError(f"cannot read the cache secret file: {exc}") from exc
    if secret:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise CacheSecretError(f"the cache secret must be at least {MIN_SECRET_BYTES} bytes")
        return hashlib.sha256(b"splitgpt result cache\0" + secret.encode()).digest()
    if internal_token:
        # Domain-separated: knowing a cache MAC tells nothing about the token.
        return hmac.new(internal_token.encode(), b"splitgpt result cache", hashlib.sha256).digest()
    if shared_store:
        log.warning(
            "result cache: no SPLITGPT_API_CACHE_SECRET(_FILE) and no internal token: entries are sealed with a "
            "secret of this process only, so other gateways (and this one after a restart) cannot use them"
        )
    return secrets.token_bytes(32)


def _mac(secret: bytes, key: str, payload: str) -> str:
    return hmac.new(secret, key.encode() + b"\0" + payload.encode(), hashlib.sha256).hexdigest()


def seal(secret: bytes, key: str, payload: str) -> str:
    """The stored form of `payload` under `key`."""
    return f"{SEAL_PREFIX}{_mac(secret, key, payload)}\n{payload}"


def unseal(secret: bytes, key: str, stored: str) -> str | None:
    """The payload, or None when the entry was not sealed with this secret for this key."""
    head_len = len(SEAL_PREFIX) + DIGEST_HEX_CHARS
    if not stored.startswith(SEAL_PREFIX) or len(stored) <= head_len or stored[head_len] != "\n":
        return None
    payload = stored[head_len + 1 :]
    if not hmac.compare_digest(stored[len(SEAL_PREFIX) : head_len], _mac(secret, key, payload)):
        return None
    return payload


class ForgeryLog:
    """Says that forged entries were found, at most once a minute: an attacker
    who can write the store must not also be able to flood the log."""

    def __init__(self) -> None:
        self.count = 0
        self._unlogged = 0
        self._last = -FORGED_LOG_INTERVAL_S

    def record(self, key: str) -> None:
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last >= FORGED_LOG_INTERVAL_S:
            log.warning(
                "result cache: %d entr%s failed the HMAC check (latest %s): something other than a gateway "
                "writes the cache store; served as misses",
                self._unlogged, "y" if self._unlogged == 1 else "ies", key,
            )  # fmt: skip
            self._last, self._unlogged = now, 0


def cache_scope(salt: str | None) -> str:
    """Whose results a request may be served: its salt's, else its key's, else (open) everyone's."""
    if salt:
        return "salt:" + salt
    caller = ownership.current()
    return "open" if caller is None else "key:" + caller.owner


def result_cache_secret(settings) -> bytes:
    """cache_secret() from the gateway's settings (api.settings.ApiSettings)."""
    from ..shells.internal_auth import InternalSecurity

    given = settings.cache_secret.get_secret_value() if settings.cache_secret is not None else None
    token = InternalSecurity.from_settings(settings).token
    return cache_secret(given, settings.cache_secret_file, token, shared_store=settings.redis_url is not None)


def redis_password(settings) -> str | None:
    """The Redis password: SPLITGPT_API_REDIS_PASSWORD or the file SPLITGPT_API_REDIS_PASSWORD_FILE names."""
    if settings.redis_password is not None and settings.redis_password_file:
        raise CacheSecretError("set SPLITGPT_API_REDIS_PASSWORD or SPLITGPT_API_REDIS_PASSWORD_FILE, not both")
    if settings.redis_password is not None:
        return settings.redis_password.get_secret_value()
    if settings.redis_password_file:
        try:
            return Path(settings.redis_password_file).read_text().strip()
        except OSError as exc:
            raise CacheSecretError(f"cannot read the Redis password file: {exc}") from exc
    return None
