"""Secrets never come from the command line, which every user of the host can read."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "argv,told",
    [
        (["api", "--keys", "key-0123456789abcdef"], "SPLITGPT_API_KEYS_FILE (a file holding it) or SPLITGPT_API_KEYS"),
        (["api", "--redis-password", "pw"], "SPLITGPT_API_REDIS_PASSWORD_FILE"),
        (["api", "--cache-secret", "s" * 32], "SPLITGPT_API_CACHE_SECRET_FILE"),
        (["node", "--internal-token", "t" * 32], "SPLITGPT_INTERNAL_TOKEN_FILE (a file holding it) or SPLITGPT_INTERNAL_TOKEN"),
        (["coordinator", "--internal-token", "t" * 32], "SPLITGPT_INTERNAL_TOKEN_FILE"),
        (["tokenizer", "--internal-token", "t" * 32], "SPLITGPT_INTERNAL_TOKEN_FILE"),
    ],
)
def test_a_secret_given_as_a_flag_is_refused_naming_the_variables_to_use(argv, told):
    r = subprocess.run([sys.executable, "-m", "splitgpt.cli", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "is not taken on the command line" in r.stderr and told in r.stderr
    assert argv[-1] not in r.stderr  # nor echoed back


def test_help_still_lists_a_secret_and_where_it_goes():
    r = subprocess.run([sys.executable, "-m", "splitgpt.cli", "api", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--keys" in r.stdout and "SPLITGPT_API_KEYS_FILE" in r.stdout


@pytest.mark.parametrize(
    "env,told",
    [
        ({"SPLITGPT_API_REDIS_PASSWORD_FILE": "/nonexistent/password"}, "cannot read the Redis password file"),
        ({"SPLITGPT_API_KEYS_FILE": "/nonexistent/keys"}, "/nonexistent/keys"),
        ({"SPLITGPT_API_CACHE_SECRET": "short"}, "the cache secret must be at least"),
    ],
)
def test_gateway_settings_that_cannot_work_stop_it_with_one_line(env, told):
    import os

    r = subprocess.run([sys.executable, "-m", "splitgpt.cli", "api", "--port", "1"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **env})  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert told in r.stderr and "Traceback" not in r.stderr
