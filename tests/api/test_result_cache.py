"""Deterministic results cached in a real Redis server: behind a password, sealed
against forged entries, scoped to the key that computed them; the cache fails open."""

from __future__ import annotations

import logging

import httpx
import pytest

from splitgpt.api.cache import RedisCache, ResultCache
from splitgpt.api.cache_security import seal
from tests.metrics_text import scrape
from tests.servers import REDIS_CACHE_USER, ApiProcess, RedisServer

SECRET = b"s" * 32
PASSWORD = "redis-password-0123456789"
CACHE_SECRET = "cache-secret-0123456789abcdef"
KEY_A = "key-a-5f1e0c9d8b7a6f5e4d3c"
KEY_B = "key-b-0a1b2c3d4e5f60718293"


@pytest.fixture
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def locked_redis():
    server = RedisServer(password=PASSWORD)
    yield server
    server.stop()


async def test_redis_cache_stores_sealed_entries_with_ttl(redis_server):
    cache = ResultCache(RedisCache(redis_server.url), ttl_s=30, secret=SECRET)
    await cache.set("splitgpt:result:k", '{"a": 1}')
    assert await cache.get("splitgpt:result:k") == '{"a": 1}'
    stored = redis_server.client.get("splitgpt:result:k").decode()
    assert stored == seal(SECRET, "splitgpt:result:k", '{"a": 1}') and stored.endswith('\n{"a": 1}')
    assert 0 < redis_server.client.ttl("splitgpt:result:k") <= 30
    await cache.close()


async def test_an_entry_not_sealed_by_a_gateway_is_a_miss_counted_and_logged(redis_server, caplog):
    cache = ResultCache(RedisCache(redis_server.url), ttl_s=30, secret=SECRET)
    redis_server.client.set("splitgpt:result:plain", '{"format": 2}')  # the old, unsealed form
    redis_server.client.set("splitgpt:result:other", seal(b"x" * 32, "splitgpt:result:other", "{}"))  # another secret
    await cache.set("splitgpt:result:mine", "{}")
    redis_server.client.set("splitgpt:result:moved", redis_server.client.get("splitgpt:result:mine"))  # another key's
    with caplog.at_level(logging.WARNING, logger="splitgpt.api.cache"):
        for key in ("plain", "other", "moved"):
            assert await cache.get(f"splitgpt:result:{key}") is None
    assert cache.forgeries.count == 3 and cache.errors == 0
    forged = [r for r in caplog.records if "failed the HMAC check" in r.getMessage()]
    assert len(forged) == 1  # at most once a minute: a writer cannot flood the log
    assert await cache.get("splitgpt:result:mine") == "{}"
    await cache.close()


async def test_unreachable_redis_fails_open():
    cache = ResultCache(RedisCache("redis://127.0.0.1:1/0"), ttl_s=30, secret=SECRET)
    assert await cache.get("k") is None
    await cache.set("k", "v")
    assert cache.errors == 2
    await cache.close()


def cache_lookups(api_url: str, result: str, headers=None) -> float:
    """Lookups with this result, summed over the models (the family is labelled by model too)."""
    return scrape(f"{api_url}/metrics", headers).value("splitgpt_cache_lookups_total", result=result)


def test_the_gateway_caches_in_a_locked_redis_and_keeps_serving_when_it_dies(stack, locked_redis, tmp_path):
    (tmp_path / "redis-password").write_text(PASSWORD + "\n")
    env = {"REDIS_URL": locked_redis.url, "SPLITGPT_API_REDIS_USERNAME": REDIS_CACHE_USER,
           "SPLITGPT_API_REDIS_PASSWORD_FILE": str(tmp_path / "redis-password"), **stack.security_env()}  # fmt: skip
    api = ApiProcess(f"127.0.0.1:{stack.grpc_base + 1}", f"127.0.0.1:{stack.grpc_base}", env)
    try:
        body = {"text": "Cache me in Redis", "max_tokens": 5}
        first = httpx.post(f"{api.url}/api/model/process", json=body, timeout=60).json()
        second = httpx.post(f"{api.url}/api/model/process", json=body, timeout=60).json()
        assert (first["cached"], second["cached"]) == (False, True)
        assert second["generated_text"] == first["generated_text"]
        keys = locked_redis.client.keys("splitgpt:result:*")
        assert len(keys) == 1 and locked_redis.client.ttl(keys[0]) > 0

        locked_redis.stop()
        r = httpx.post(f"{api.url}/api/model/process", json={**body, "text": "Redis is gone"}, timeout=60)
        assert r.status_code == 200 and r.json()["cached"] is False
    finally:
        api.stop()


def test_without_the_password_the_gateway_gets_nothing_from_redis_and_still_serves(stack, locked_redis):
    env = {"REDIS_URL": locked_redis.url, **stack.security_env()}
    api = ApiProcess(f"127.0.0.1:{stack.grpc_base + 1}", f"127.0.0.1:{stack.grpc_base}", env)
    try:
        body = {"text": "No password, no cache", "max_tokens": 3}
        for _ in range(2):
            r = httpx.post(f"{api.url}/api/model/process", json=body, timeout=60)
            assert r.status_code == 200 and r.json()["cached"] is False
        assert cache_lookups(api.url, "error") == 2
        assert locked_redis.client.keys("splitgpt:result:*") == []
    finally:
        api.stop()


def test_a_forged_entry_in_redis_is_never_served(stack, redis_server):
    env = {"REDIS_URL": redis_server.url, "SPLITGPT_API_CACHE_SECRET": CACHE_SECRET, **stack.security_env()}
    api = ApiProcess(f"127.0.0.1:{stack.grpc_base + 1}", f"127.0.0.1:{stack.grpc_base}", env)
    try:
        body = {"text": "Forge me", "max_tokens": 5}
        real = httpx.post(f"{api.url}/api/model/process", json=body, timeout=60).json()
        [key] = redis_server.client.keys("splitgpt:result:*")
        # Anyone who can write the store rewrites the entry, keeping its shape but not its seal.
        stored = redis_server.client.get(key).decode()
        forged = stored.split("\n", 1)[1].replace(real["generated_text"], "PWNED") if real["generated_text"] else stored
        redis_server.client.set(key, stored.split("\n", 1)[0] + "\n" + forged)
        again = httpx.post(f"{api.url}/api/model/process", json=body, timeout=60).json()
        assert again["cached"] is False and again["generated_text"] == real["generated_text"]
        assert "PWNED" not in again["generated_text"]
        assert cache_lookups(api.url, "forged") == 1
        # The fresh result is sealed again and served.
        assert httpx.post(f"{api.url}/api/model/process", json=body, timeout=60).json()["cached"] is True
    finally:
        api.stop()


def test_a_key_is_served_only_its_own_cached_results_unless_it_shares_a_salt(stack, redis_server):
    env = {"REDIS_URL": redis_server.url, "SPLITGPT_API_KEYS": f"{KEY_A},{KEY_B}", **stack.security_env()}
    api = ApiProcess(f"127.0.0.1:{stack.grpc_base + 1}", f"127.0.0.1:{stack.grpc_base}", env)

    def cached(key: str, **extra) -> bool:
        r = httpx.post(
            f"{api.url}/api/model/process", json={"text": "Which prompts did A send?", "max_tokens": 3, **extra},
            headers={"Authorization": f"Bearer {key}"}, timeout=60,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        return r.json()["cached"]

    try:
        assert [cached(KEY_A), cached(KEY_B), cached(KEY_A), cached(KEY_B)] == [False, False, True, True]
        # The opt-in: the same salt shares across keys (and not with the unsalted entries).
        assert [cached(KEY_A, cache_salt="team"), cached(KEY_B, cache_salt="team")] == [False, True]
        assert cached(KEY_B, cache_salt="other team") is False
    finally:
        api.stop()


def test_an_unreadable_cache_secret_or_password_stops_the_gateway_at_start(monkeypatch):
    from splitgpt.api.cache_security import CacheSecretError, redis_password, result_cache_secret
    from splitgpt.api.settings import ApiSettings

    with pytest.raises(CacheSecretError, match="at least 16"):
        result_cache_secret(ApiSettings(cache_secret="short"))
    with pytest.raises(CacheSecretError, match="cannot read"):
        result_cache_secret(ApiSettings(cache_secret_file="/nonexistent/secret"))
    with pytest.raises(CacheSecretError, match="not both"):
        redis_password(ApiSettings(redis_password=PASSWORD, redis_password_file="/x"))
    # Derived from the internal token when no secret is set: every gateway of a cluster agrees.
    token = "internal-token-0123456789"
    assert result_cache_secret(ApiSettings(internal_token=token)) == result_cache_secret(ApiSettings(internal_token=token))
    assert result_cache_secret(ApiSettings()) != result_cache_secret(ApiSettings())  # random, per process


def test_an_unreachable_tokenizer_replica_is_skipped(stack):
    """With two tokenizer addresses and the first one dead, requests are served by the second."""
    from splitgpt.bench.local_stack import free_port_base

    dead = f"127.0.0.1:{free_port_base(1)}"  # nothing listens there
    api = ApiProcess(f"{dead},127.0.0.1:{stack.grpc_base + 1}", f"127.0.0.1:{stack.grpc_base}", stack.security_env())
    try:
        r = httpx.post(f"{api.url}/api/model/process", json={"text": "Tokenizer failover", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200, r.text
        assert httpx.get(f"{api.url}/api/ready").status_code == 200
    finally:
        api.stop()
