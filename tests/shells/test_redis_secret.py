"""`splitgpt redis-secret`: the files compose and Kubernetes give Redis and the gateway, loaded
by a real redis-server: without the password nothing runs, with it only the cache's reads and
writes on its own keys."""

from __future__ import annotations

import stat
import subprocess
import sys
import time

import pytest

import redis
from splitgpt.core.cache_keys import result_key
from tests.servers import free_port_base, require


@pytest.fixture
def secret_dir(tmp_path):
    directory = tmp_path / "redis"
    subprocess.run([sys.executable, "-m", "splitgpt.cli", "redis-secret", str(directory)], check=True, timeout=60)
    return directory


@pytest.fixture
def acl_redis(secret_dir):
    port = free_port_base(1)
    process = subprocess.Popen(
        [require("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--aclfile", str(secret_dir / "users.acl")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port).ping()
        except redis.AuthenticationError:
            break  # up, and refusing the default user
        except redis.ConnectionError:
            assert process.poll() is None, "redis-server refused the ACL file"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(timeout=10)


def test_the_password_is_private_kept_across_reruns_and_absent_from_the_acl_file(secret_dir):
    password = (secret_dir / "password").read_text().strip()
    assert len(password) >= 40
    assert stat.S_IMODE((secret_dir / "password").stat().st_mode) == 0o600
    acl = (secret_dir / "users.acl").read_text()
    assert stat.S_IMODE((secret_dir / "users.acl").stat().st_mode) == 0o644
    assert password not in acl and "user default off" in acl
    subprocess.run([sys.executable, "-m", "splitgpt.cli", "redis-secret", str(secret_dir)], check=True, timeout=60)
    assert (secret_dir / "password").read_text().strip() == password  # a running stack keeps working
    assert (secret_dir / "users.acl").read_text() == acl


def test_redis_runs_nothing_without_the_password_and_only_cache_reads_and_writes_with_it(acl_redis, secret_dir):
    password = (secret_dir / "password").read_text().strip()
    anonymous = redis.Redis(port=acl_redis)
    with pytest.raises(redis.AuthenticationError):
        anonymous.get(result_key("m", "p", {}))
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_redis, username="splitgpt", password="not-the-password").ping()

    gateway = redis.Redis(port=acl_redis, username="splitgpt", password=password)
    key = result_key("m", "p", {})
    assert gateway.set(key, "v", ex=30) and gateway.get(key) == b"v"
    # Anything else, or a key outside the cache's prefix, is refused.
    for command in (("KEYS", "*"), ("FLUSHALL",), ("CONFIG", "GET", "*"), ("DEL", key), ("SET", "other:key", "v"),
                    ("EVAL", "return 1", "0"), ("PUBLISH", "c", "m")):  # fmt: skip
        with pytest.raises(redis.exceptions.NoPermissionError):
            gateway.execute_command(*command)
    assert gateway.get(key) == b"v"
