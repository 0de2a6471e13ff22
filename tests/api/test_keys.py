"""API keys and limits on a real gateway process, over the stack's tokenizer and coordinator."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from splitgpt.api.auth import fingerprint
from tests.servers import ApiProcess

KEY_A = "key-a-5f1e0c9d8b7a6f5e4d3c"
KEY_B = "key-b-0a1b2c3d4e5f60718293"
ADMIN = "key-admin-77aa66bb55cc44dd"
LONG = {"text": "A long one", "max_tokens": 120, "ignore_eos": True}


@pytest.fixture(scope="module")
def keyed(stack, tmp_path_factory):
    """A second gateway with keys (one from a file) and a concurrency limit of one per key."""
    run = tmp_path_factory.mktemp("keyed")
    keys_file = run / "keys"
    keys_file.write_text(f"# admins\nadmin:{ADMIN}\n")
    log = run / "api.log"
    api = ApiProcess(
        f"127.0.0.1:{stack.grpc_base + 1}",
        f"127.0.0.1:{stack.grpc_base}",
        env={**stack.security_env(), "SPLITGPT_API_KEYS": f"{KEY_A},{KEY_B}", "SPLITGPT_API_KEYS_FILE": str(keys_file),
             "SPLITGPT_API_MAX_CONCURRENT_PER_KEY": "1"},
        log_path=log,
    )  # fmt: skip
    try:
        yield api, log
    finally:
        api.stop()


@pytest.fixture
def url(keyed):
    return keyed[0].url


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_key_is_needed_and_either_header_carries_it(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        body = {"text": "Hello", "max_tokens": 3, "cache": False}
        r = c.post("/api/model/process", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"]["type"] == "unauthorized"
        assert c.post("/api/model/process", json=body, headers=bearer("not-a-key")).status_code == 401
        assert c.post("/api/model/process", json=body, headers=bearer(KEY_A)).status_code == 200
        assert c.post("/api/model/process", json=body, headers={"X-API-Key": KEY_B}).status_code == 200
        for path in ("/api/cluster", "/api/tasks", "/metrics"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers=bearer(KEY_A)).status_code == 200, path
        assert "splitgpt_requests_total" in c.get("/metrics", headers={"X-API-Key": ADMIN}).text
        assert c.get("/api/health").status_code == 200 and c.get("/api/ready").status_code == 200
        for path in ("/docs", "/openapi.json"):
            assert c.get(path).status_code == 401 and c.get(path, headers=bearer(KEY_A)).status_code == 200, path


def test_a_stream_with_a_key(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        with c.stream("POST", "/api/model/stream", json={"text": "Hi", "max_tokens": 3}, headers=bearer(KEY_A)) as r:
            assert r.status_code == 200
            assert "event: done" in r.read().decode()


class Running:
    """A long stream of `key`'s, held open (one token read) until closed."""

    def __init__(self, url: str, key: str, request_id: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=60)
        self.cm = self.client.stream("POST", "/api/model/stream", json=LONG, headers={**bearer(key), "X-Request-ID": request_id})
        self.response = self.cm.__enter__()
        assert self.response.status_code == 200, self.response.read()
        self.lines = self.response.iter_lines()
        assert next(line for line in self.lines if line.startswith("event: token"))

    def rest(self) -> str:
        return "\n".join(self.lines)

    def close(self) -> None:
        self.cm.__exit__(None, None, None)
        self.client.close()


def listed(c: httpx.Client, key: str) -> list[str]:
    r = c.get("/api/tasks", headers=bearer(key))
    assert r.status_code == 200
    return [t["request_id"] for t in r.json()["tasks"]]


def test_a_key_sees_and_cancels_only_its_own_requests(url):
    running = Running(url, KEY_A, "mine")
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            assert "mine" in listed(c, KEY_A)
            assert listed(c, KEY_B) == []
            assert f"{fingerprint(KEY_A)}:mine" in listed(c, ADMIN)  # an admin sees every key's
            refused = c.delete("/api/tasks/mine", headers=bearer(KEY_B))
            assert refused.status_code == 404 and refused.json()["error"]["type"] == "not_found"
            assert c.delete(f"/api/tasks/{fingerprint(KEY_A)}:mine", headers=bearer(KEY_B)).status_code == 404
            # The same X-Request-ID under another key is another request, not a collision.
            other = c.post(
                "/api/model/process", json={"text": "x", "max_tokens": 2}, headers={**bearer(KEY_B), "X-Request-ID": "mine"}
            )
            assert other.status_code == 200 and other.json()["request_id"] == "mine"
            assert "mine" in listed(c, KEY_A)  # still running: B's cancel and B's request left it alone
            r = c.delete("/api/tasks/mine", headers=bearer(KEY_A))
            assert r.status_code == 200 and r.json() == {"request_id": "mine", "cancelled": True}
        assert '"finish_reason": "cancelled"' in running.rest()
    finally:
        running.close()


def test_an_admin_cancels_another_keys_request(url):
    running = Running(url, KEY_B, "theirs")
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.delete(f"/api/tasks/{fingerprint(KEY_B)}:theirs", headers=bearer(ADMIN))
            assert r.status_code == 200 and r.json()["cancelled"] is True
        assert '"finish_reason": "cancelled"' in running.rest()
    finally:
        running.close()


def test_the_concurrency_limit_answers_429(url):
    running = Running(url, KEY_A, "first")
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/api/model/process", json={"text": "x", "max_tokens": 2}, headers=bearer(KEY_A))
            assert r.status_code == 429 and r.json()["error"]["type"] == "concurrency_limited"
            assert int(r.headers["retry-after"]) >= 1
            # Another key is not held back by it.
            assert c.post("/api/model/process", json={"text": "x", "max_tokens": 2}, headers=bearer(KEY_B)).status_code == 200
            c.delete("/api/tasks/first", headers=bearer(KEY_A))
        running.rest()
    finally:
        running.close()
    with httpx.Client(base_url=url, timeout=60) as c:  # the slot is free again once the stream ended
        assert c.post("/api/model/process", json={"text": "x", "max_tokens": 2}, headers=bearer(KEY_A)).status_code == 200


def test_the_rate_limit_answers_429_with_retry_after(stack):
    api = ApiProcess(
        f"127.0.0.1:{stack.grpc_base + 1}",
        f"127.0.0.1:{stack.grpc_base}",
        env={
            **stack.security_env(),
            "SPLITGPT_API_KEYS": KEY_A,
            "SPLITGPT_API_RATE_LIMIT_PER_MIN": "3",
            "SPLITGPT_API_RATE_LIMIT_BURST": "2",
        },
    )
    try:
        with httpx.Client(base_url=api.url, timeout=60) as c:
            body = {"text": "Hello", "max_tokens": 2}
            codes = [c.post("/api/model/process", json=body, headers=bearer(KEY_A)).status_code for _ in range(2)]
            assert codes == [200, 200]
            r = c.post("/api/model/process", json=body, headers=bearer(KEY_A))
            assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limited"
            # One token every 20 s, and the burst spent just now: 20 s, less the time those two took.
            assert 10 <= int(r.headers["retry-after"]) <= 20
    finally:
        api.stop()


def test_no_key_appears_in_the_gateways_log(keyed, url):
    # Every path a key travels: accepted, refused, in both headers, on every kind of route.
    with httpx.Client(base_url=url, timeout=60) as c:
        for key in (KEY_A, KEY_B, ADMIN, "wrong-key-9a8b7c6d5e4f"):
            c.get("/api/tasks", headers=bearer(key))
            c.get("/metrics", headers={"X-API-Key": key})
            c.post("/api/model/process", json={"text": "x", "max_tokens": 1}, headers=bearer(key))
            c.post("/api/model/process", json={"text": ""}, headers=bearer(key))
    _, log = keyed
    time.sleep(0.5)  # the access log is written after the response
    text = log.read_text()
    assert "GET /api/tasks" in text  # the log is the gateway's, and it logged these requests
    assert fingerprint(ADMIN) in text  # keys are named by fingerprint
    for key in (KEY_A, KEY_B, ADMIN, "wrong-key-9a8b7c6d5e4f"):
        assert key not in text


def test_the_openai_client_needs_the_key(url):
    # What an OpenAI SDK user meets: AuthenticationError without a valid key, answers with one.
    with openai.OpenAI(base_url=f"{url}/v1", api_key="not-a-key", max_retries=0, timeout=60) as bad:
        with pytest.raises(openai.AuthenticationError) as exc:
            bad.models.list()
        assert exc.value.code == "invalid_api_key"
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY_A, max_retries=0, timeout=60) as good:
        model = good.models.list().data[0].id
        done = good.completions.create(model=model, prompt="Hello", max_tokens=3, temperature=0)
        assert done.usage.completion_tokens == 3
