"""API keys and generation limits without a cluster: the key check, the token bucket, ownership,
and the middleware's answers through the app (its backends unreachable, which the routes that
pass the check then say with a 503)."""

from __future__ import annotations

import hmac
import logging

import pytest
from fastapi.testclient import TestClient

from splitgpt.api import auth, ownership
from splitgpt.api.app import create_app
from splitgpt.api.auth import KeyRing, fingerprint, load_keys, presented_key
from splitgpt.api.ownership import Caller
from splitgpt.api.rate_limit import TokenBuckets
from splitgpt.api.settings import ApiSettings

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
ADMIN = "key-admin-0123456789ab"


# --- the key check ---


def test_a_key_is_known_by_its_fingerprint_and_admin_by_its_prefix():
    ring = KeyRing([KEY_A, f"admin:{ADMIN}"])
    assert ring.check(KEY_A) == Caller(owner=fingerprint(KEY_A), admin=False)
    assert ring.check(ADMIN) == Caller(owner=fingerprint(ADMIN), admin=True)
    assert ring.check(KEY_B) is None
    assert ring.check("admin:" + ADMIN) is None  # the prefix marks the key; it is not part of it
    assert ring.check(KEY_A[:-1]) is None and ring.check(KEY_A + "x") is None and ring.check("") is None
    assert len(fingerprint(KEY_A)) == 16 and KEY_A not in fingerprint(KEY_A)


@pytest.mark.parametrize("presented", [KEY_A, "key-c-0123456789abcdef", ADMIN, "x"])
def test_the_check_compares_with_every_key_whichever_matches(monkeypatch, presented):
    """No early exit: as many constant-time comparisons, of equal-length digests, for a match on the
    first key, on the last, and for no match at all."""
    seen: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def counting(a, b):
        seen.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    ring = KeyRing([KEY_A, KEY_B, f"admin:{ADMIN}"])
    ring.check(presented)
    assert seen == [(32, 32)] * 3


def test_keys_come_from_the_list_and_the_file_together(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# team keys\n{KEY_B}\n\nadmin:{ADMIN}\n")
    ring = load_keys(ApiSettings(keys=f" {KEY_A} ,", keys_file=str(keys_file)))
    assert len(ring) == 3
    assert ring.check(KEY_A).admin is False and ring.check(KEY_B).admin is False and ring.check(ADMIN).admin is True


def test_keys_configured_but_empty_refuse_to_start(tmp_path):
    empty = tmp_path / "keys"
    empty.write_text("# nobody yet\n")
    with pytest.raises(ValueError, match="holds no key"):
        load_keys(ApiSettings(keys_file=str(empty)))
    with pytest.raises(ValueError, match="holds no key"):
        load_keys(ApiSettings(keys=" , "))


def test_the_key_setting_never_shows_in_a_repr():
    assert KEY_A not in repr(ApiSettings(keys=KEY_A))


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ([(b"authorization", b"Bearer k1")], "k1"),
        ([(b"authorization", b"bearer  k1 ")], "k1"),
        ([(b"x-api-key", b"k2")], "k2"),
        ([(b"authorization", b"Basic dTpw"), (b"x-api-key", b"k2")], "k2"),
        ([(b"x-api-key", b"k2"), (b"authorization", b"Bearer k1")], "k1"),
        ([(b"authorization", b"Bearer ")], None),
        ([], None),
    ],
)
def test_the_key_is_taken_from_a_bearer_token_or_x_api_key(headers, key):
    assert presented_key(headers) == key


# --- the token bucket ---


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_allows_the_burst_then_one_request_per_interval():
    clock = Clock()
    buckets = TokenBuckets(per_min=6, burst=3, clock=clock)  # one token every 10 s
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(10.0)
    assert buckets.take("b") == 0.0  # buckets are per client
    clock.now += 4
    assert buckets.take("a") == pytest.approx(6.0)  # a refused request takes nothing
    clock.now += 6
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(10.0)
    clock.now += 1000  # refills up to the burst, not beyond
    assert [buckets.take("a") for _ in range(4)][-1] == pytest.approx(10.0)


def test_the_burst_defaults_to_one_minute_of_requests():
    buckets = TokenBuckets(per_min=2.5, burst=0, clock=Clock())
    assert [buckets.take("a") for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(24.0)]


# --- ownership ---


def test_a_key_sees_and_cancels_only_its_own_requests_an_admin_all():
    a, admin = Caller("aaaa", False), Caller("ffff", True)
    token = ownership.set_caller(a)
    try:
        assert ownership.coordinator_id("r1") == "aaaa:r1"
        assert ownership.visible_id("aaaa:r1") == "r1"
        assert ownership.visible_id("bbbb:r1") is None and ownership.visible_id("r1") is None
        assert ownership.cancel_candidates("bbbb:r1") == ["aaaa:bbbb:r1"]
    finally:
        ownership.reset_caller(token)
    token = ownership.set_caller(admin)
    try:
        assert ownership.visible_id("ffff:r1") == "r1"
        assert ownership.visible_id("bbbb:r1") == "bbbb:r1"
        assert ownership.cancel_candidates("bbbb:r1") == ["ffff:bbbb:r1", "bbbb:r1"]
    finally:
        ownership.reset_caller(token)
    # No keys: ids as given, everything visible.
    assert ownership.coordinator_id("r1") == "r1" and ownership.visible_id("bbbb:r1") == "bbbb:r1"


# --- the middleware, through the app ---


def client(**settings) -> TestClient:
    # Nothing listens on port 1: a route that passes the checks answers 503.
    app = create_app(ApiSettings(tokenizer_address="127.0.0.1:1", coordinator_address="127.0.0.1:1", rpc_timeout_s=2, **settings))
    return TestClient(app, raise_server_exceptions=False, base_url="http://localhost")


def test_without_a_key_protected_routes_answer_401_in_their_shape():
    with client(keys=f"{KEY_A},admin:{ADMIN}") as c:
        for path in ("/api/tasks", "/api/cluster", "/metrics", "/api/nowhere", "/elsewhere"):
            r = c.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json() == {"error": {"type": "unauthorized", "message": r.json()["error"]["message"]}}
        r = c.post("/v1/completions", json={"model": "m", "prompt": "hi"})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"] | {"message": ""} == {
            "message": "", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"
        }  # fmt: skip
        wrong = c.get("/api/tasks", headers={"Authorization": f"Bearer {KEY_B}"})
        assert wrong.status_code == 401 and "invalid_token" in wrong.headers["www-authenticate"]
        assert "not valid" in wrong.json()["error"]["message"]
        # Past the check: the unreachable coordinator's 503, with either header.
        assert c.get("/api/cluster", headers={"Authorization": f"Bearer {KEY_A}"}).status_code == 503
        assert c.get("/api/cluster", headers={"X-API-Key": ADMIN}).status_code == 503
        assert c.get("/metrics", headers={"X-API-Key": KEY_A}).status_code == 200
        assert c.get("/api/health").status_code == 200
        for path in ("/docs", "/openapi.json"):  # the API's description too, once keys are set
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"X-API-Key": KEY_A}).status_code == 200, path
        assert c.get("/api/ready").status_code == 503  # open: says why it is not ready, not 401


def test_a_browser_preflight_is_answered_without_a_key():
    with client(keys=KEY_A) as c:
        r = c.options(
            "/api/model/stream",
            headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"},
        )  # fmt: skip
        assert r.status_code == 200
        # And a 401 carries the CORS headers, so the page can read it.
        r = c.get("/api/tasks", headers={"Origin": "http://localhost:5173"})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_the_openapi_document_declares_the_keys_only_when_there_are_keys():
    with client(keys=KEY_A) as c:
        doc = c.get("/openapi.json", headers={"X-API-Key": KEY_A}).json()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "An API key as a bearer token."
    }  # fmt: skip
    process = doc["paths"]["/api/model/process"]["post"]
    assert {"bearerAuth": []} in process["security"] and "401" in process["responses"]
    assert "security" not in doc["paths"]["/api/health"]["get"] and "401" not in doc["paths"]["/api/ready"]["get"]["responses"]
    with client() as c:
        doc = c.get("/openapi.json").json()
    assert "securitySchemes" not in doc["components"]
    assert "401" not in doc["paths"]["/api/model/process"]["post"]["responses"]


def test_an_open_gateway_says_so_once_at_start(caplog):
    with caplog.at_level(logging.WARNING, logger="splitgpt.api"):
        client()
    assert [r.message for r in caplog.records if "API keys" in r.message and r.levelno == logging.WARNING] == [
        "no API keys configured (SPLITGPT_API_KEYS): every route is open to anyone who can reach this port"
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="splitgpt.api"):
        client(keys=f"{KEY_A},admin:{ADMIN}")
    text = caplog.text
    assert "2 configured (1 admin)" in text and fingerprint(ADMIN) in text
    assert KEY_A not in text and ADMIN not in text


def test_the_rate_limit_answers_429_with_retry_after_per_client():
    with client(rate_limit_per_min=2, rate_limit_burst=2, keys=f"{KEY_A},{KEY_B}") as c:
        a = {"X-API-Key": KEY_A}
        body = {"text": "hi", "max_tokens": 1}
        assert [c.post("/api/model/process", json=body, headers=a).status_code for _ in range(2)] == [503, 503]
        r = c.post("/api/model/process", json=body, headers=a)
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 30
        v1 = c.post("/v1/completions", json={"model": "m", "prompt": "hi"}, headers=a)
        assert v1.status_code == 429 and v1.json()["error"]["code"] == "rate_limit_exceeded"
        # Other routes are not limited; another key has its own bucket.
        assert c.get("/api/cluster", headers=a).status_code == 503
        assert c.post("/api/model/process", json=body, headers={"X-API-Key": KEY_B}).status_code == 503


def test_a_request_of_several_generations_is_charged_one_per_generation():
    """A /v1 body with several prompts (or n > 1) costs the rate limit and the concurrency
    cap what as many single requests would: checked before the route does any work."""
    with client(rate_limit_per_min=4, rate_limit_burst=4, keys=f"{KEY_A},{KEY_B}") as c:
        a, b = {"X-API-Key": KEY_A}, {"X-API-Key": KEY_B}
        three = {"model": "m", "prompt": ["one", "two", "three"], "max_tokens": 1}
        assert c.post("/v1/completions", json=three, headers=a).status_code == 503  # 3 of 4 taken; no backend
        two = {"model": "m", "prompt": "hi", "n": 2, "max_tokens": 1}
        r = c.post("/v1/completions", json=two, headers=a)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded", r.text
        assert int(r.headers["retry-after"]) >= 1
        # More than the burst in one request could never pass: a 400 naming n, not a 429 to retry.
        r = c.post("/v1/completions", json={"model": "m", "prompt": "hi", "n": 5, "max_tokens": 1}, headers=b)
        assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
    with client(max_concurrent_per_key=2, keys=KEY_A) as c:
        r = c.post(
            "/v1/completions", json={"model": "m", "prompt": ["a", "b", "c"], "max_tokens": 1}, headers={"X-API-Key": KEY_A}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "over_concurrency_limit", r.text
        two = {"model": "m", "prompt": ["a", "b"], "max_tokens": 1}
        assert c.post("/v1/completions", json=two, headers={"X-API-Key": KEY_A}).status_code == 503  # charged, then released


def test_the_fan_out_caps_are_checked_before_the_backends_and_configurable():
    with client(max_prompts_per_request=2, max_generations_per_request=3) as c:
        r = c.post("/v1/completions", json={"model": "m", "prompt": ["a", "b", "c"]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
        r = c.post("/v1/completions", json={"model": "m", "prompt": ["a", "b"], "n": 2})
        assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_generations", r.text
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 4})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
        assert c.post("/v1/completions", json={"model": "m", "prompt": [[1, 2], [3]], "n": 1}).status_code == 503


def test_the_coordinator_learns_whose_request_it_is_by_fingerprint_only():
    from splitgpt.api import wire
    from splitgpt.core.generation_types import GenerationRequest

    assert ownership.tenant() == ""  # no keys: one anonymous tenant, never capped
    token = ownership.set_caller(Caller(owner=fingerprint("key-a-5f1e0c9d8b7a6f5e4d3c"), admin=False))
    try:
        assert ownership.tenant() == fingerprint("key-a-5f1e0c9d8b7a6f5e4d3c")
        message = wire.generate_request(GenerationRequest("r", [1, 2], 4, tenant=ownership.tenant()))
        assert message.tenant == fingerprint("key-a-5f1e0c9d8b7a6f5e4d3c") and "key-a" not in str(message)
    finally:
        ownership.reset_caller(token)
