"""Deterministic results cached in a real Redis server; the cache fails open."""

from __future__ import annotations

import httpx
import pytest

from splitgpt.api.cache import RedisCache, ResultCache
from tests.servers import ApiProcess, RedisServer


@pytest.fixture
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


async def test_redis_cache_stores_with_ttl(redis_server):
    cache = ResultCache(RedisCache(redis_server.url), ttl_s=30)
    await cache.set("splitgpt:result:k", '{"a": 1}')
    assert await cache.get("splitgpt:result:k") == '{"a": 1}'
    assert 0 < redis_server.client.ttl("splitgpt:result:k") <= 30
    await cache.close()


async def test_unreachable_redis_fails_open():
    cache = ResultCache(RedisCache("redis://127.0.0.1:1/0"), ttl_s=30)
    assert await cache.get("k") is None
    await cache.set("k", "v")
    assert cache.errors == 2
    await cache.close()


def test_api_caches_in_redis_and_keeps_serving_when_it_dies(stack, redis_server):
    api = ApiProcess(
        f"127.0.0.1:{stack.grpc_base + 1}",
        f"127.0.0.1:{stack.grpc_base}",
        {"REDIS_URL": redis_server.url, **stack.security_env()},
    )
    try:
        body = {"text": "Cache me in Redis", "max_tokens": 5}
        first = httpx.post(f"{api.url}/api/model/process", json=body, timeout=60).json()
        second = httpx.post(f"{api.url}/api/model/process", json=body, timeout=60).json()
        assert (first["cached"], second["cached"]) == (False, True)
        assert second["generated_text"] == first["generated_text"]
        keys = redis_server.client.keys("splitgpt:result:*")
        assert len(keys) == 1 and redis_server.client.ttl(keys[0]) > 0

        redis_server.stop()
        r = httpx.post(f"{api.url}/api/model/process", json={**body, "text": "Redis is gone"}, timeout=60)
        assert r.status_code == 200 and r.json()["cached"] is False
    finally:
        api.stop()


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
