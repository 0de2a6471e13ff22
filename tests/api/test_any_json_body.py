"""Any JSON value in any field of a generation request: never a 5xx, every error in the one shape.

Two runs of the same property. The bulk goes through the gateway app in this
process (FastAPI's TestClient) over the stack's real tokenizer and
coordinator; a bounded sample goes over HTTP to the stack's own gateway
process, so uvicorn's parsing is in the loop too.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitgpt.api.schemas import ProcessRequest

from .error_shape import error_of
from .json_strategies import FIELD_VALUES, JSON, dumps

PATHS = ["/api/model/process", "/api/model/stream"]
FIELDS = [*ProcessRequest.model_fields, "an_unknown_field"]
# Valid requests (short, so each costs a few decode steps at most); a
# mutation of one or more fields then decides what the request is.
VALID = st.fixed_dictionaries(
    {"text": st.text(min_size=1, max_size=24), "max_tokens": st.integers(1, 6)},
    optional={
        "metadata": st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=6) | st.none(), max_size=3),
        "min_tokens": st.integers(0, 1),
        "temperature": st.floats(0.0, 2.0),
        "top_k": st.integers(0, 50),
        "top_p": st.floats(0.01, 1.0),
        "seed": st.integers(0, 2**63 - 1),
        "stop": st.text(min_size=1, max_size=4) | st.lists(st.text(min_size=1, max_size=4), max_size=3),
        "ignore_eos": st.booleans(),
        "cache": st.booleans(),
    },
)

# What a hostile body may get (404 for a model name the cluster does not serve; 429 only if the
# queue were full). Not 5xx: the cluster is up and idle, so even 503/504 would be a defect.
ALLOWED = {200, 400, 404, 413, 415, 422, 429}

bodies = st.one_of(
    VALID,
    st.builds(lambda body, field, value: {**body, field: value}, VALID, st.sampled_from(FIELDS), FIELD_VALUES),
    st.builds(lambda body, fields: {**body, **fields}, VALID, st.dictionaries(st.sampled_from(FIELDS), FIELD_VALUES, max_size=4)),
    JSON,  # mostly not an object at all
)


def check(client, path: str, body) -> None:
    raw = dumps(body)
    headers = {"content-type": "application/json"}
    with client.stream("POST", path, content=raw, headers=headers) as r:
        r.read()
    assert r.status_code in ALLOWED, (r.status_code, r.text[:500], raw[:300])
    if r.status_code != 200:
        error_of(r)
    elif path.endswith("/stream"):
        events = [line for line in r.text.splitlines() if line.startswith("event: ")]
        assert events and events[-1] in ("event: done", "event: error"), r.text[-500:]
    else:
        whole = r.json()
        assert isinstance(whole["generated_text"], str) and whole["metadata"] == (
            body.get("metadata") if isinstance(body, dict) else None
        )


# No example database: it would be written into the (shared) working tree.
FAST = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("field", FIELDS)
@settings(FAST, max_examples=20)
@given(path=st.sampled_from(PATHS), body=VALID, value=FIELD_VALUES)
def test_any_json_in_each_field_in_process(gateway, field, path, body, value):
    check(gateway, path, {**body, field: value})


@settings(FAST, max_examples=60)
@given(path=st.sampled_from(PATHS), body=bodies)
def test_any_json_body_in_process(gateway, path, body):
    check(gateway, path, body)


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield client


@settings(FAST, max_examples=40)
@given(path=st.sampled_from(PATHS), body=bodies)
def test_any_json_in_any_field_over_http(http, path, body):
    check(http, path, body)


def test_the_strategy_reaches_the_hostile_values():
    """The property above is only as strong as what it draws: make sure that includes the known killers."""
    seen = set()

    @settings(max_examples=300, database=None)
    @given(FIELD_VALUES)
    def collect(value):
        raw = dumps(value).decode()
        seen.update(k for k in ("NaN", "Infinity", "\\ud8", "\\udc") if k in raw)

    collect()
    assert {"NaN", "Infinity"} <= seen and seen & {"\\ud8", "\\udc"}
    assert json.loads('"\\ud800"') == "\ud800"  # what the gateway's parser makes of such an escape
