"""Real servers the tests use: a Redis server and the API gateway as processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time

import pytest

from splitgpt.bench.local_stack import Stack, free_port_base, wait_until_ready
from splitgpt.shells.redis_secret import CACHE_RULES, CACHE_USER


def require(binary: str, package: str = "redis-server") -> str:
    """The path of `binary`; a skip where it is missing, a failure under SPLITGPT_REQUIRE_REAL_SERVICES."""
    path = shutil.which(binary)
    if path:
        return path
    message = f"{binary} is not installed (apt-get install {package}); .ci/run installs it"
    if os.environ.get("SPLITGPT_REQUIRE_REAL_SERVICES"):
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def running(stack: Stack):
    """A stack that `splitgpt up` has started, ready; on leaving, stopped, and stopped cleanly."""
    try:
        stack.wait_ready()
        yield stack
    finally:
        code = stack.stop()
        assert code == 0, stack.log_path.read_text()[-3000:]


# The gateway's ACL user, as compose and Kubernetes define it: its own keys, get and set.
REDIS_CACHE_USER = CACHE_USER
REDIS_CACHE_RULES = list(CACHE_RULES)


class RedisServer:
    def __init__(self, password: str | None = None) -> None:
        """`password`: the default user off, and only REDIS_CACHE_USER with this password."""
        self.port = free_port_base(1)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        # The test itself inspects the store as an admin user with the same password.
        acl = (
            ["--user", "default", "off", "--user", REDIS_CACHE_USER, "on", ">" + password, *REDIS_CACHE_RULES,
             "--user", "admin", "on", ">" + password, "~*", "&*", "+@all"]
            if password else []
        )  # fmt: skip
        self.process = subprocess.Popen(
            [require("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *acl],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        import redis

        client = redis.Redis.from_url(self.url, username="admin" if password else None, password=password)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.client = client

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class ApiProcess:
    """`splitgpt api` against an existing tokenizer and coordinator."""

    def __init__(self, tokenizer: str, coordinator: str, env: dict[str, str] | None = None, log_path=None) -> None:
        self.port = free_port_base(1)
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {
            **os.environ,
            "SPLITGPT_API_TOKENIZER_ADDRESS": tokenizer,
            "SPLITGPT_API_COORDINATOR_ADDRESS": coordinator,
            **(env or {}),
        }
        # log_path: the gateway's whole output (stdout and stderr), for tests that read its log.
        self._log = open(log_path, "wb") if log_path else None  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "splitgpt.cli", "api", "--port", str(self.port)],
            env=full_env,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
        )
        wait_until_ready(self.url, self.process, 60, logs=lambda: log_path.read_text()[-3000:] if log_path else "")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)
        if self._log:
            self._log.close()
