"""Cache of deterministic results: Redis when REDIS_URL is set, else in-process LRU.

Failing open: a cache that errors is logged and skipped, never the request.
Entries are sealed (api.cache_security): one that fails its check is a miss.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from .cache_security import ForgeryLog, seal, unseal

log = logging.getLogger("splitgpt.api.cache")


class MemoryCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, str] = OrderedDict()

    async def get(self, key: str) -> str | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    async def set(self, key: str, value: str, ttl_s: int) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    async def close(self) -> None:
        pass


class RedisCache:
    def __init__(self, url: str, username: str | None = None, password: str | None = None) -> None:
        """`url`: redis:// or rediss:// (TLS; `?ssl_ca_certs=PATH` names the CA). The
        credentials come apart from the URL, so that the URL can sit in plain config."""
        import redis.asyncio as redis

        self.url = url
        self._redis = redis.Redis.from_url(
            url, username=username, password=password, socket_timeout=1.0, socket_connect_timeout=1.0
        )

    async def get(self, key: str) -> str | None:
        value = await self._redis.get(key)
        return value.decode("utf-8", "replace") if value is not None else None

    async def set(self, key: str, value: str, ttl_s: int) -> None:
        await self._redis.set(key, value, ex=ttl_s)

    async def close(self) -> None:
        await self._redis.aclose()


class ResultCache:
    def __init__(self, backend: MemoryCache | RedisCache, ttl_s: int, secret: bytes) -> None:
        self.backend = backend
        self.ttl_s = ttl_s
        self.secret = secret
        self.errors = 0
        self.forgeries = ForgeryLog()

    async def get(self, key: str) -> str | None:
        try:
            stored = await self.backend.get(key)
        except Exception as exc:  # fail open
            self.errors += 1
            log.warning("cache get failed: %s", exc)
            return None
        if stored is None:
            return None
        payload = unseal(self.secret, key, stored)
        if payload is None:
            self.forgeries.record(key)
        return payload

    async def set(self, key: str, value: str) -> None:
        try:
            await self.backend.set(key, seal(self.secret, key, value), self.ttl_s)
        except Exception as exc:  # fail open
            self.errors += 1
            log.warning("cache set failed: %s", exc)

    async def close(self) -> None:
        await self.backend.close()


def make_cache(
    redis_url: str | None,
    max_entries: int,
    ttl_s: int,
    secret: bytes,
    username: str | None = None,
    password: str | None = None,
) -> ResultCache:
    backend = RedisCache(redis_url, username, password) if redis_url else MemoryCache(max_entries)
    return ResultCache(backend, ttl_s, secret)
